"""Lag that shows what is committed, and a profile whose model appears after the daemon starts:
the daemon as a subprocess against the real Kafka and InfluxDB 1.x of deploy/local."""

from __future__ import annotations

import re
import signal
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest
import test_daemon_service as service
from conftest import Query, http_request
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from test_daemon_service import (
    FAULTY,
    HEALTHY,
    HOP,
    WINDOW,
    DaemonProcess,
    interleave,
    make_topic,
    metric_value,
    metrics,
    produce,
    score_times,
    stream,
    train_pumps,
    wait_for,
    wait_for_all_scores,
)

from daemon.settings import WindowSettings

pytestmark = pytest.mark.integration
models_root, setup = service.models_root, service.setup  # the daemon fixtures, shared

PARTITIONS = 2
_SAMPLE = re.compile(r"^(seqae_\w+)\{([^}]*)\} (\S+)$")


def lag_gauges(text: str, topic: str) -> dict[int, tuple[float, float, float]]:
    """Per partition of `topic`: (consumer lag, committed lag, held offsets) from /metrics."""
    names = ("seqae_consumer_lag", "seqae_committed_lag", "seqae_held_offsets")
    found: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m.group(1) not in names:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if labels.get("topic") == topic:
            found.setdefault(int(labels["partition"]), {})[m.group(1)] = float(m.group(3))
    return {p: tuple(v.get(n, -1.0) for n in names) for p, v in found.items()}  # type: ignore[misc]


def group_committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets, as the broker has them (not the daemon)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic}


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: end for tp, end in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def waiting_partitions(port: int) -> float:
    """`seqae_partitions_waiting_for_model`; 0 while the health server is not up yet."""
    try:
        return metric_value(metrics(port), "seqae_partitions_waiting_for_model")
    except urllib.error.URLError:
        return 0


@pytest.mark.parametrize("seek_back", [True, False], ids=["default", "no-seek-back"])
def test_committed_lag_and_held_offsets_agree_with_the_groups_commits(
    setup: Callable[..., tuple[DaemonProcess, int]],
    kafka_bootstrap: str,
    unique_topic: str,
    query: Query,
    seek_back: bool,
) -> None:
    make_topic(kafka_bootstrap, unique_topic, PARTITIONS)
    produce(
        kafka_bootstrap,
        unique_topic,
        interleave(stream(FAULTY), stream(HEALTHY), assets=(FAULTY, HEALTHY)),
    )
    daemon, port = setup(env={"SEQAE_KAFKA__SEEK_BACK_ON_ASSIGN": str(seek_back).lower()})
    wait_for_all_scores(query, daemon, "all scores")
    group = f"g-{unique_topic}"
    ends = end_offsets(kafka_bootstrap, unique_topic)
    seen: dict[str, object] = {}

    def exported_matches_the_group() -> bool:
        gauges = lag_gauges(metrics(port), unique_topic)
        committed = group_committed(kafka_bootstrap, group, unique_topic)
        seen.update(gauges=gauges, committed=committed)
        if set(gauges) != set(ends):
            return False
        for p, (consumed, committed_lag, held) in gauges.items():
            want = ends[p] - committed.get(p, 0)
            # the stream stopped and everything was read: what is not committed is held
            if (consumed, committed_lag, held) != (0, want, want):
                return False
        return True

    # the gauges are exported every 10 s: wait for a tick after the last commit
    wait_for(exported_matches_the_group, 60, "lag gauges matching the group's offsets", daemon)
    gauges = lag_gauges(metrics(port), unique_topic)
    held = sum(g[2] for g in gauges.values())
    if seek_back:
        # The partial windows are rebuilt from the offsets in the changelog: nothing is held,
        # the group has committed every reading.
        assert held == 0 and seen["committed"] == ends, seen
    else:
        # Nothing would re-read a partial window, so the newest, incomplete window of each asset
        # holds its readings back: about one window (plus the slots max_lateness_s keeps open
        # and the forward-fill reach) per asset.
        lateness = WindowSettings().max_lateness_s  # the test's period is 1 s
        assert 0 < held <= 2 * (WINDOW + HOP + lateness + 3), seen
    assert daemon.signal(signal.SIGTERM) == 0, daemon.log()


def test_a_profile_without_a_model_waits_then_scores_every_window(
    setup: Callable[..., tuple[DaemonProcess, int]],
    tmp_path: Path,
    kafka_bootstrap: str,
    unique_topic: str,
    query: Query,
) -> None:
    make_topic(kafka_bootstrap, unique_topic, PARTITIONS)
    empty = tmp_path / "models-later"
    empty.mkdir()
    daemon, port = setup(models=empty)
    produce(
        kafka_bootstrap,
        unique_topic,
        interleave(stream(FAULTY), stream(HEALTHY), assets=(FAULTY, HEALTHY)),
    )
    wait_for(
        lambda: waiting_partitions(port) >= 1,
        60,
        "a partition waiting for the model",
        daemon,
    )
    status, body = http_request("GET", f"http://127.0.0.1:{port}/readyz")
    assert status == 503 and "no model yet for profile(s) pumps" in body.decode(), body
    assert score_times(query, FAULTY) == [] and score_times(query, HEALTHY) == []
    group = f"g-{unique_topic}"
    # nothing was scored, so nothing may be committed past the first waiting message
    assert all(off <= 0 for off in group_committed(kafka_bootstrap, group, unique_topic).values())
    assert daemon.proc is not None and daemon.proc.poll() is None

    train_pumps(empty)  # CURRENT appears; the registry's reload poll loads it
    want = wait_for_all_scores(query, daemon, "all scores once the model is there")
    status, body = http_request("GET", f"http://127.0.0.1:{port}/readyz")
    assert status == 200, body
    text = metrics(port)
    assert metric_value(text, "seqae_partitions_waiting_for_model") == 0
    assert metric_value(text, "seqae_windows_scored_total", profile="pumps") == sum(
        map(len, want.values())
    )
    assert daemon.signal(signal.SIGTERM) == 0, daemon.log()
    for asset in (FAULTY, HEALTHY):
        assert score_times(query, asset) == want[asset]  # every window, none twice
    assert "profile pumps: now serving v0001 (its first model)" in daemon.log_path.read_text()
