"""Per-asset state that follows its partition: daemons in one consumer group on the real Kafka
and InfluxDB of deploy/local, the instance owning the faulty pump killed while its alert is open.

Keys hash as Kafka's default partitioner does: of 4 partitions pumps 1 and 2 go to 3, pump-3 to 0
and pump-4 to 1, so with two members each owns two pumps; of 8, pumps 1-2 go to 7, 3 to 4, 4 to
1, 5 to 5 and 6 to 3, so three members own 1, 3 and 2 pumps. The faulty pump-1 moves when its
owner dies.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import InfluxV1, Query
from kafka import KafkaConsumer, TopicPartition
from test_daemon_service import (
    FAULT,
    FAULTY,
    HEALTHY,
    PERIOD_NS,
    SAMPLES,
    SCORE_RTOL,
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

from seqae.synth import DEFAULT_START_NS, generate_asset

pytestmark = pytest.mark.integration

FAULTY_PARTITION = {4: 3, 8: 7}
WARMUP = 30
ENV = {
    "SEQAE_BASELINES__MODE": "per_asset",
    "SEQAE_BASELINES__WARMUP_WINDOWS": str(WARMUP),
    "SEQAE_COMMIT_INTERVAL_S": "1",
    # a short session lets the group drop the killed member soon
    "SEQAE_KAFKA__SESSION_TIMEOUT_MS": "6000",
    "SEQAE_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
}


@dataclass
class Member:
    name: str
    daemon: DaemonProcess
    port: int

    def ready_lines(self) -> list[str]:
        text = self.daemon.log_path.read_text()
        return [ln for ln in text.splitlines() if "ready in" in ln]

    def partitions(self) -> set[int]:
        """The partitions it owns by its log: its latest assignment, less those revoked since
        (a cooperative rebalance revokes some without assigning any)."""
        owned: set[int] = set()
        for line in self.daemon.log_path.read_text().splitlines():
            if "ready in" in line:
                found = re.search(r"assigned now \S*\[([\d,]+)\]", line)
                owned = {int(p) for p in found.group(1).split(",")} if found else set()
            elif "partitions revoked" in line or "partitions lost" in line:
                owned -= {int(p) for p in re.findall(r"', (\d+)\)", line)}
        return owned

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(metrics(self.port), name, **labels)


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
) -> Iterator[Callable[..., Member]]:
    """Start members of one group (own state folder each, as separate hosts would have)."""
    started: list[DaemonProcess] = []

    def launch(name: str, env: dict[str, str] | None = None) -> Member:
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
        daemon = DaemonProcess(config, tmp_path / f"{name}.log", ENV | (env or {})).start()
        started.append(daemon)
        return Member(name, daemon, port)

    yield launch
    for daemon in started:
        daemon.stop()


def log_time(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def settled(members: list[Member], partitions: int) -> bool:
    """Every partition assigned to exactly one of `members`, by their latest assignments."""
    owned = [m.partitions() for m in members]
    return sum(map(len, owned)) == partitions and set().union(*owned) == set(range(partitions))


def start_group(
    group: Callable[..., Member],
    names: list[str],
    partitions: int,
    env: dict[str, str] | None = None,
) -> list[Member]:
    members = []
    for name in names:  # one by one: each join is one rebalance
        member = group(name, env)
        members.append(member)
        wait_for(lambda m=member: bool(m.ready_lines()), 60, f"{name} joining", member.daemon)
    wait_for(lambda: settled(members, partitions), 60, "the group to settle")
    return members


def wait_for_scores(
    query: Query, want: dict[str, list[int]], what: str, logs: list[Member]
) -> None:
    try:
        wait_for(lambda: all(len(score_times(query, a)) >= len(want[a]) for a in want), 90, what)
    except AssertionError:
        missing = {a: sorted(set(want[a]) - set(score_times(query, a)))[:5] for a in want}
        tails = "\n".join(m.daemon.log() for m in logs)
        raise AssertionError(f"{what}: missing windows {missing}\n{tails}") from None


def wait_for_a_commit(member: Member) -> None:
    """Until `member` has committed what it has read: a commit since this call, then none for
    three commit intervals. A commit follows the acknowledged changelog write of the checkpoint
    marked one commit pass earlier, so the first one from now may cover a mark older than now;
    with no new input the commits stop once the newest mark is committed."""
    commits = member.metric("seqae_commits_total")
    wait_for(
        lambda: member.metric("seqae_commits_total") > commits,
        30,
        f"a commit by {member.name}",
        member.daemon,
    )
    quiet_s = 3 * float(ENV["SEQAE_COMMIT_INTERVAL_S"])
    last, since, deadline = commits, time.monotonic(), time.monotonic() + 60
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"{member.name} kept committing for 60 s"
        time.sleep(0.2)
        now = member.metric("seqae_commits_total")
        if now != last:
            last, since = now, time.monotonic()


def assert_state_followed_the_assets(query: Query, assets: tuple[str, ...]) -> None:
    """Every window once, one warm-up per asset, one threshold per asset, and the faulty
    pump's alert opened once and closed once under one id."""
    for a in assets:
        rows = query(f"SELECT threshold, state FROM seqae_score WHERE asset = '{a}'")[0]["values"]
        assert [r[0] for r in rows] == expected_ends(a), a  # none lost, none doubled
        states = [r[2] for r in rows]
        # warm-up once, at the start: no moved asset calibrates again
        assert states[:WARMUP] == ["calibrating"] * WARMUP, a
        assert "calibrating" not in states[WARMUP:], a
        # one threshold to the last digit, whichever member scored the window
        assert len({r[1] for r in rows[WARMUP:]}) == 1, (a, sorted({r[1] for r in rows[WARMUP:]}))
    alerts = query(f"SELECT alert_id, state FROM seqae_alert WHERE asset = '{FAULTY}'")
    story = [(r[1], r[2]) for r in alerts[0]["values"]]
    assert [s for _, s in story if s in ("open", "closed")] == ["open", "closed"], story
    assert len({i for i, _ in story}) == 1, story
    closed_at = next(r[0] for r in alerts[0]["values"] if r[2] == "closed")
    assert closed_at >= DEFAULT_START_NS + FAULT[1] * PERIOD_NS
    assert query(f"SELECT state FROM seqae_alert WHERE asset = '{HEALTHY}'") == []


def faulty_alert_is_open(query: Query) -> bool:
    alerts = query(f"SELECT alert_id, state FROM seqae_alert WHERE asset = '{FAULTY}'")
    return bool(alerts) and alerts[0]["values"][-1][2] != "closed"


@pytest.mark.parametrize(
    ("partitions", "names", "assets", "sigterm_another", "protocol"),
    [
        (4, ["d1", "d2"], 4, False, "eager"),
        (8, ["d1", "d2", "d3"], 6, True, "eager"),
        (8, ["d1", "d2", "d3"], 6, True, "cooperative"),
    ],
    ids=[
        "2-members-4-partitions",
        "3-members-8-partitions-and-a-sigterm",
        "3-members-cooperative-rebalancing",
    ],
)
def test_killed_owners_assets_move_with_their_state_and_open_alert(
    group: Callable[..., Member],
    kafka_bootstrap: str,
    unique_topic: str,
    query: Query,
    partitions: int,
    names: list[str],
    assets: int,
    sigterm_another: bool,
    protocol: str,
) -> None:
    fleet = tuple(f"pump-{i}" for i in range(1, assets + 1))
    make_topic(kafka_bootstrap, unique_topic, partitions)
    env = {"SEQAE_KAFKA__REBALANCE_PROTOCOL": protocol}
    members = start_group(group, names, partitions, env)
    messages = interleave(*(stream(a) for a in fleet), assets=fleet)
    cut = 700 * len(fleet)  # inside the fault (600-800): the alert is open at the kill
    produce(kafka_bootstrap, unique_topic, messages[:cut])
    wait_for_scores(query, {a: expected_ends(a, 700) for a in fleet}, "scores to the kill", members)
    assert faulty_alert_is_open(query)
    (owner,) = [m for m in members if FAULTY_PARTITION[partitions] in m.partitions()]
    wait_for_a_commit(owner)
    survivors = [m for m in members if m is not owner]
    restores_before = {m.name: len(m.ready_lines()) for m in survivors}
    assert owner.daemon.signal(signal.SIGKILL) == -signal.SIGKILL
    killed_at = time.time()
    if sigterm_another:
        second_cut = 900 * len(fleet)
        produce(kafka_bootstrap, unique_topic, messages[cut:second_cut])
        wait_for(lambda: settled(survivors, partitions), 60, "the survivors to take over")
        want = {a: expected_ends(a, 900) for a in fleet}
        wait_for_scores(query, want, "scores after the kill", survivors)
        leaving = survivors.pop(0)
        assert leaving.daemon.signal(signal.SIGTERM) == 0, leaving.daemon.log()
        cut = second_cut
    produce(kafka_bootstrap, unique_topic, messages[cut:])
    wait_for_scores(query, {a: expected_ends(a) for a in fleet}, "all scores", survivors)
    texts = {m.name: metrics(m.port) for m in survivors}
    for m in survivors:
        assert m.daemon.signal(signal.SIGTERM) == 0, m.daemon.log()

    takeover = [ln for m in survivors for ln in m.ready_lines()[restores_before[m.name] :]]
    assert takeover
    ready_after = min(log_time(ln) for ln in takeover) - killed_at
    restore_s = max(metric_value(t, "seqae_state_restore_seconds") for t in texts.values())
    written = sum(metric_value(t, "seqae_changelog_bytes_total") for t in texts.values())
    records = sum(metric_value(t, "seqae_changelog_records_total") for t in texts.values())
    print(
        f"\n{len(names)} members, {partitions} partitions: SIGKILL to the first takeover "
        f"{ready_after:.1f} s (session timeout 6 s); last restore {restore_s:.3f} s; "
        f"changelog {written / max(1, records):.0f} bytes per state"
    )
    assert_state_followed_the_assets(query, fleet)


def test_a_full_restart_without_state_folders_restores_everything_from_kafka(
    group: Callable[..., Member],
    kafka_bootstrap: str,
    unique_topic: str,
    query: Query,
) -> None:
    fleet = tuple(f"pump-{i}" for i in range(1, 5))
    make_topic(kafka_bootstrap, unique_topic, 4)
    members = start_group(group, ["d1", "d2"], 4)
    messages = interleave(*(stream(a) for a in fleet), assets=fleet)
    cut = 700 * len(fleet)
    produce(kafka_bootstrap, unique_topic, messages[:cut])
    wait_for_scores(query, {a: expected_ends(a, 700) for a in fleet}, "scores to the stop", members)
    assert faulty_alert_is_open(query)
    for m in members:
        assert m.daemon.signal(signal.SIGTERM) == 0, m.daemon.log()
    produce(kafka_bootstrap, unique_topic, messages[cut:])
    # new members with empty state folders (as on new hosts): only Kafka has the state
    members = start_group(group, ["d3", "d4"], 4)
    wait_for_scores(query, {a: expected_ends(a) for a in fleet}, "all scores", members)
    for m in members:
        assert m.daemon.signal(signal.SIGTERM) == 0, m.daemon.log()
        assert "restored state of 2 assets of partitions" in m.daemon.log_path.read_text()
    assert_state_followed_the_assets(query, fleet)


def test_a_static_member_restarted_after_sigkill_continues_its_assets(
    group: Callable[..., Member],
    kafka_bootstrap: str,
    unique_topic: str,
    query: Query,
) -> None:
    """Static membership with the default 45 s session: the restarted instance (same
    `group_instance_id`, a new host's empty state folder) takes its own place in the group."""
    fleet = tuple(f"pump-{i}" for i in range(1, 5))
    make_topic(kafka_bootstrap, unique_topic, 4)
    static = {
        "SEQAE_KAFKA__GROUP_INSTANCE_ID": "host-1",
        "SEQAE_KAFKA__SESSION_TIMEOUT_MS": "45000",
        "SEQAE_KAFKA__HEARTBEAT_INTERVAL_MS": "3000",
    }
    (first,) = start_group(group, ["d1"], 4, static)
    messages = interleave(*(stream(a) for a in fleet), assets=fleet)
    cut = 700 * len(fleet)
    produce(kafka_bootstrap, unique_topic, messages[:cut])
    wait_for_scores(query, {a: expected_ends(a, 700) for a in fleet}, "scores to the kill", [first])
    assert faulty_alert_is_open(query)
    wait_for_a_commit(first)
    assert first.daemon.signal(signal.SIGKILL) == -signal.SIGKILL
    killed_at = time.time()
    produce(kafka_bootstrap, unique_topic, messages[cut:])
    (again,) = start_group(group, ["d1-again"], 4, static)
    rejoined = log_time(again.ready_lines()[0]) - killed_at
    wait_for_scores(query, {a: expected_ends(a) for a in fleet}, "all scores", [again])
    assert again.daemon.signal(signal.SIGTERM) == 0, again.daemon.log()
    print(f"\nstatic member: SIGKILL to its partitions restored {rejoined:.1f} s (session 45 s)")
    assert "restored state of 4 assets of partitions" in again.daemon.log_path.read_text()
    assert_state_followed_the_assets(query, fleet)


def test_partitions_wait_while_their_changelog_cannot_be_read(
    group: Callable[..., Member],
    kafka_bootstrap: str,
    unique_topic: str,
    query: Query,
) -> None:
    """A changelog with fewer partitions than the input is refused: nothing is scored (no
    asset without its state) and /readyz says why, until the operator adds partitions."""
    from conftest import http_request
    from kafka.admin import KafkaAdminClient, NewPartitions

    make_topic(kafka_bootstrap, unique_topic, 2)
    changelog = f"g-{unique_topic}-seqae-changelog"
    make_topic(kafka_bootstrap, changelog, 1)
    produce(kafka_bootstrap, unique_topic, [(HEALTHY, m) for m in stream(HEALTHY)])
    member = group("d1")
    wait_for(lambda: "has 1 partitions" in member.daemon.log_path.read_text(), 60, "the refusal")

    def readyz() -> tuple[int, str]:
        status, body = http_request("GET", f"http://127.0.0.1:{member.port}/readyz")
        return status, body.decode()

    wait_for(lambda: "restoring asset state" in readyz()[1], 30, "/readyz naming it")
    assert readyz()[0] == 503
    assert score_times(query, HEALTHY) == []
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_partitions({changelog: NewPartitions(total_count=2)})
    finally:
        admin.close()
    want = {HEALTHY: expected_ends(HEALTHY)}
    wait_for_scores(query, want, "all scores once the changelog has its partitions", [member])
    assert member.daemon.signal(signal.SIGTERM) == 0, member.daemon.log()
    assert score_times(query, HEALTHY) == want[HEALTHY]


def committed_lag(bootstrap: str, topic: str, group_id: str) -> int:
    """Records of `topic` past the group's committed offsets, as the broker says (a reader
    with the group's id that never joins it)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        ends = consumer.end_offsets(tps)
        return sum(ends[tp] - (consumer.committed(tp) or 0) for tp in tps)
    finally:
        consumer.close()


@pytest.mark.parametrize("restart", ["same-state-folder", "state-folder-deleted"])
def test_a_stream_stopped_mid_window_is_committed_to_its_end_and_its_window_survives_a_kill(
    group: Callable[..., Member],
    kafka_bootstrap: str,
    unique_topic: str,
    query: Query,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    restart: str,
) -> None:
    """Partial windows pin no offsets: the changelog names the readings each asset's next
    window spans, so committed lag reaches 0 when the streams stop mid-window (no idle
    eviction). SIGKILL then, restart: the window that spans the stop is whole, with the readings
    from before the kill, and every window is scored exactly once."""
    from daemon.backtest import backtest
    from daemon.settings import load_settings

    fleet = (FAULTY, HEALTHY)
    make_topic(kafka_bootstrap, unique_topic, 2)
    env = {"SEQAE_WINDOWS__IDLE_EVICTION_S": "3600"}
    (first,) = start_group(group, ["d1"], 2, env)
    messages = interleave(stream(FAULTY), stream(HEALTHY), assets=fleet)
    stop = 452  # samples: mid-window for both pumps (window 20, hop 5)
    produce(kafka_bootstrap, unique_topic, messages[: stop * len(fleet)])
    before = {a: expected_ends(a, stop) for a in fleet}
    wait_for_scores(query, before, "scores to the stop", [first])
    group_id = f"g-{unique_topic}"
    wait_for(
        lambda: committed_lag(kafka_bootstrap, unique_topic, group_id) == 0,
        30,
        "committed lag 0 with the windows partial",
        first.daemon,
    )
    scored_before = first.metric("seqae_windows_scored_total", profile="pumps")
    assert scored_before == sum(map(len, before.values()))
    text = metrics(first.port)
    for name in ("seqae_changelog_lag_states", "seqae_changelog_lag_seconds"):
        assert f"\n{name} 0.0" in text, name  # nothing waits for the changelog
    assert "\nseqae_changelog_restore_lag_records 0.0" in text
    wait_for(lambda: first.metric("seqae_assets_owned") == 2, 30, "assets owned", first.daemon)
    assert first.daemon.signal(signal.SIGKILL) == -signal.SIGKILL
    killed_ready = len(first.ready_lines())
    if restart == "state-folder-deleted":
        # as on a new host: only Kafka has the state (the local cache is written at a stop or a
        # revocation, so after a kill there may be nothing to delete)
        shutil.rmtree(tmp_path / "state-d1", ignore_errors=True)
    again = group("d1", env)  # the same name: config, state folder and log of the first
    wait_for(
        lambda: len(again.ready_lines()) > killed_ready and settled([again], 2),
        60,
        "the restarted member's partitions",
        again.daemon,
    )
    produce(kafka_bootstrap, unique_topic, messages[stop * len(fleet) :])
    wait_for_scores(query, {a: expected_ends(a) for a in fleet}, "all scores", [again])
    scored_after = again.metric("seqae_windows_scored_total", profile="pumps")
    assert again.daemon.signal(signal.SIGTERM) == 0, again.daemon.log()
    total = sum(len(expected_ends(a)) for a in fleet)
    assert scored_after == total - scored_before  # none scored twice, none left out
    assert committed_lag(kafka_bootstrap, unique_topic, group_id) == 0

    # an uninterrupted run of the same streams through the same core gives the same scores
    for key, value in (ENV | env).items():
        monkeypatch.setenv(key, value)
    settings = load_settings(tmp_path / "d1.toml")
    faults = {FAULTY: [("cavitation", *FAULT)], HEALTHY: []}
    series = [generate_asset(a, SAMPLES, seed=0, faults=faults[a], plant_seed=0)[0] for a in fleet]
    offline = backtest(settings, series).traces
    for a in fleet:
        rows = query(f"SELECT score, threshold, state FROM seqae_score WHERE asset = '{a}'")
        values = rows[0]["values"]
        assert [r[0] for r in values] == expected_ends(a) == offline[a].end_ns, a
        spanning = [i for i, r in enumerate(values) if r[0] > before[a][-1]][:3]
        assert spanning and values[spanning[0]][0] - (20 - 1) * PERIOD_NS < before[a][-1]
        np.testing.assert_allclose(
            [r[1] for r in values], offline[a].score, rtol=SCORE_RTOL, atol=1e-6
        )
        np.testing.assert_allclose([r[2] for r in values], offline[a].threshold, rtol=1e-6)
        assert [r[3] for r in values] == offline[a].state, a
