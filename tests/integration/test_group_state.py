"""Per-asset state that follows its partition: daemons in one consumer group on the real Kafka
and InfluxDB of deploy/local, the instance owning the faulty pump killed while its alert is open.

Pumps 1 and 2 hash to partition 3 of a 4-partition topic, pump-3 to 0 and pump-4 to 1, so with
two members each owns two pumps; the faulty pump-1 moves when its owner dies.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import InfluxV1, Query
from test_daemon_service import (
    FAULT,
    FAULTY,
    HEALTHY,
    PERIOD_NS,
    DaemonProcess,
    expected_ends,
    free_port,
    interleave,
    make_topic,
    metric_value,
    metrics,
    produce,
    score_times,
    stream,
    train_pumps,
    wait_for,
    write_config,
)

from seqae.synth import DEFAULT_START_NS

pytestmark = pytest.mark.integration

ASSETS = ("pump-1", "pump-2", "pump-3", "pump-4")
WARMUP = 30
ENV = {
    "SEQAE_BASELINES__MODE": "per_asset",
    "SEQAE_BASELINES__WARMUP_WINDOWS": str(WARMUP),
    "SEQAE_COMMIT_INTERVAL_S": "1",
    # a short session lets the group drop the killed member soon
    "SEQAE_KAFKA__SESSION_TIMEOUT_MS": "6000",
    "SEQAE_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
}


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    train_pumps(root)
    return root


@pytest.fixture
def group(
    tmp_path: Path,
    kafka_bootstrap: str,
    unique_topic: str,
    influx_v1: InfluxV1,
    database: str,
    models_root: Path,
) -> Iterator[Callable[[str], tuple[DaemonProcess, int]]]:
    """Start members of one group (own state folder each, as separate hosts would have)."""
    started: list[DaemonProcess] = []

    def launch(name: str) -> tuple[DaemonProcess, int]:
        port = free_port()
        config = write_config(
            tmp_path,
            name,
            bootstrap=kafka_bootstrap,
            topic=unique_topic,
            influx_url=influx_v1.url,
            database=database,
            models_root=models_root,
            group=f"g-{unique_topic}",
            health_port=port,
        )
        daemon = DaemonProcess(config, tmp_path / f"{name}.log", ENV).start()
        started.append(daemon)
        return daemon, port

    yield launch
    for daemon in started:
        daemon.stop()


def ready_lines(daemon: DaemonProcess) -> list[str]:
    return [ln for ln in daemon.log_path.read_text().splitlines() if "ready in" in ln]


def log_time(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_killed_owners_assets_move_with_their_state_and_open_alert(
    group: Callable[[str], tuple[DaemonProcess, int]],
    kafka_bootstrap: str,
    unique_topic: str,
    query: Query,
) -> None:
    make_topic(kafka_bootstrap, unique_topic, 4)
    first, port1 = group("d1")
    wait_for(lambda: bool(ready_lines(first)), 60, "d1's partitions", first)
    second, port2 = group("d2")
    wait_for(lambda: bool(ready_lines(second)), 60, "d2's partitions", second)
    wait_for(lambda: len(ready_lines(first)) >= 2, 30, "d1's share after d2 joined", first)

    messages = interleave(*(stream(a) for a in ASSETS), assets=ASSETS)
    cut = 700 * len(ASSETS)  # inside the fault (600-800): the alert is open at the kill
    produce(kafka_bootstrap, unique_topic, messages[:cut])
    opened = f"SELECT alert_id FROM seqae_alert WHERE asset = '{FAULTY}' AND state = 'open'"
    wait_for(lambda: bool(query(opened)), 60, "the alert to open", first)
    # pump-1's partition is 3: its owner is the member whose last assignment names it
    owns_3 = [d for d in (first, second) if re.search(r"\[(\d,)*3\] ready in", ready_lines(d)[-1])]
    assert len(owns_3) == 1, (ready_lines(first), ready_lines(second))
    owner, survivor = (first, second) if owns_3[0] is first else (second, first)
    owner_port, survivor_port = (port1, port2) if owner is first else (port2, port1)
    upto = {a: expected_ends(a, 700) for a in ASSETS}
    wait_for(
        lambda: all(len(score_times(query, a)) >= len(upto[a]) for a in ASSETS),
        60,
        "scores up to the kill",
        owner,
    )
    commits = metric_value(metrics(owner_port), "seqae_commits_total")
    wait_for(
        lambda: metric_value(metrics(owner_port), "seqae_commits_total") > commits,
        30,
        "a commit with the alert open",
        owner,
    )
    restores_before = len(ready_lines(survivor))
    assert [
        r[2]
        for r in query(f"SELECT alert_id, state FROM seqae_alert WHERE asset = '{FAULTY}'")[0][
            "values"
        ]
    ][-1] != "closed"
    assert owner.signal(signal.SIGKILL) == -signal.SIGKILL
    killed_at = time.time()
    produce(kafka_bootstrap, unique_topic, messages[cut:])

    want = {a: expected_ends(a) for a in ASSETS}
    try:
        wait_for(
            lambda: all(len(score_times(query, a)) >= len(want[a]) for a in ASSETS),
            90,
            "all scores after the kill",
            survivor,
        )
    except AssertionError:
        missing = {a: sorted(set(want[a]) - set(score_times(query, a)))[:5] for a in ASSETS}
        raise AssertionError(f"missing windows {missing}\n{survivor.log()}") from None
    text = metrics(survivor_port)
    assert survivor.signal(signal.SIGTERM) == 0, survivor.log()

    # the survivor took every partition and restored every asset from the changelog
    takeover = ready_lines(survivor)[restores_before:]
    assert takeover, survivor.log()
    log = survivor.log_path.read_text()
    assert re.search(r"restored state of 4 assets of partitions", log), survivor.log()
    print(
        f"failover: SIGKILL to the survivor's partitions ready "
        f"{log_time(takeover[-1]) - killed_at:.1f} s (session timeout 6 s); "
        f"restore seconds {metric_value(text, 'seqae_state_restore_seconds'):.3f}; "
        f"changelog bytes/record "
        f"{metric_value(text, 'seqae_changelog_bytes_total') / max(1, metric_value(text, 'seqae_changelog_records_total')):.0f}"
    )

    for a in ASSETS:
        rows = query(f"SELECT threshold, state FROM seqae_score WHERE asset = '{a}'")[0]["values"]
        assert [r[0] for r in rows] == want[a], a  # none lost, none doubled, on the grid
        states = [r[2] for r in rows]
        # warm-up once, at the start: no moved asset calibrates again
        assert states[:WARMUP] == ["calibrating"] * WARMUP, a
        assert "calibrating" not in states[WARMUP:], a
        # one threshold to the last digit, whichever member scored the window
        assert len({r[1] for r in rows[WARMUP:]}) == 1, (a, sorted({r[1] for r in rows[WARMUP:]}))

    # the alert opened by the killed member is closed by the survivor, with the same id
    alerts = query(f"SELECT alert_id, state FROM seqae_alert WHERE asset = '{FAULTY}'")
    story = [(r[1], r[2]) for r in alerts[0]["values"]]
    assert [s for _, s in story if s in ("open", "closed")] == ["open", "closed"], story
    assert len({i for i, _ in story}) == 1, story
    # closed on a window after the kill's (sample 700): by the survivor, the owner was dead
    closed_at = next(r[0] for r in alerts[0]["values"] if r[2] == "closed")
    assert closed_at >= DEFAULT_START_NS + FAULT[1] * PERIOD_NS
    assert query(f"SELECT state FROM seqae_alert WHERE asset = '{HEALTHY}'") == []
