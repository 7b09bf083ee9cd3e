"""An asset's durable state (StreamCore.asset_state / restore_assets), as the changelog carries
it: a second core restored from it and fed from the offsets it names continues the asset
exactly as the first one does (windows, scores, thresholds, warm-up, alert ids)."""

import json
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from daemon.backtest import readings
from daemon.changelog import PartWriter, assemble_states, decode_state, encode_state
from daemon.core import CoreOutput, StreamCore
from daemon.engine import ProfileRegistry
from daemon.settings import DaemonSettings
from seqae.synth import generate_asset
from seqae.train import train_profile

TP = ("sensors", 3)
ASSET = "pump-1"
FAULT = (500, 700)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    history = [generate_asset(f"pump-{i}", 2000, seed=0, plant_seed=0)[0] for i in (1, 2)]
    train_profile(
        history,
        models_root=root,
        profile="pumps",
        window=20,
        hop=5,
        kind="pca",
        progress=False,
        device="cpu",
    )
    return root


def settings_for(models_root: Path, state_dir: Path, **extra: Any) -> DaemonSettings:
    return DaemonSettings.model_validate(
        {
            **extra,
            "state_dir": str(state_dir),
            "profiles": {
                "models_root": str(models_root),
                "routes": [{"pattern": "pump-*", "profile": "pumps"}],
            },
            "baselines": {"mode": "per_asset", "warmup_windows": 30},
            "alerts": {"min_duration_s": 10, "clear_duration_s": 10, "update_every_s": 20},
            "engine": {"device": "cpu"},
        }
    )


def make_core(models_root: Path, state_dir: Path, **kwargs: Any) -> StreamCore:
    settings = settings_for(models_root, state_dir)
    profiles = ProfileRegistry(models_root, ["pumps"], "cpu", "never")
    return StreamCore(settings, profiles, **kwargs)


def run(core: StreamCore, stream: list, start: int, stop: int) -> list[tuple]:
    """Feed readings [start, stop) at their stream index as offset; every window's outcome."""
    outs: list[CoreOutput] = []
    for offset in range(start, stop):
        core.add(stream[offset], TP, offset)
    outs += core.score(everything=True, wait=True)
    rows = []
    for out in outs:
        for w in out.scored:
            rows.append(("score", w.end_ns, w.score, w.threshold, w.state))
        for e in out.events:
            rows.append(("alert", e.time_ns, e.alert_id, e.state))
    return rows


@pytest.mark.parametrize("via", ["record", "changelog"])
@pytest.mark.parametrize("cut", [60, 650], ids=["during-warm-up", "alert-open"])
def test_a_restored_core_continues_the_asset_exactly(
    models_root: Path, tmp_path: Path, cut: int, via: str
) -> None:
    series = generate_asset(ASSET, 1200, seed=0, faults=[("cavitation", *FAULT)], plant_seed=0)[0]
    stream = list(readings([series]))
    first = make_core(models_root, tmp_path / "a")
    before = run(first, stream, 0, cut)
    if via == "changelog":  # its record and parts, as a compacted topic keeps them
        batch = PartWriter().encode(first.changed_states())
        topic = {m.key: (m.partition, m.value) for m in [*batch.parts, *batch.records]}
        state = assemble_states(topic, PartWriter())[ASSET]
    else:
        state = json.loads(json.dumps(first.asset_state(ASSET)))  # the whole state inline
    assert state["partition"] == list(TP)
    if cut == 650:
        assert state["alert"]["phase"] == "open"
        assert any(r[0] == "alert" and r[3] == "open" for r in before)
    else:
        assert state["baselines"][0]["baseline"] is None and state["baselines"][0]["warmup"]
    # the new owner: another state folder, nothing but the state
    second = make_core(models_root, tmp_path / "b")
    assert second.restore_assets({ASSET: state}) == []
    replay_from = min(off for _, _, off in state["window_offsets"])
    assert replay_from < cut  # the next window's readings come before the cut
    rest_first = run(first, stream, cut, len(stream))
    rest_second = run(second, stream, replay_from, len(stream))
    assert rest_second == rest_first
    assert [r for r in rest_first if r[0] == "score"]  # something was compared
    states = [r[4] for r in before + rest_first if r[0] == "score"]
    assert states.count("calibrating") == 30 and "calibrating" not in states[30:]
    if cut == 650:  # the alert opened before the cut is closed after it, same id
        ids = {r[2] for r in before + rest_second if r[0] == "alert"}
        assert len(ids) == 1 and any(r[0] == "alert" and r[3] == "closed" for r in rest_second)
    first.close()
    second.close()


def test_only_changed_assets_are_taken_and_a_bad_state_is_refused(
    models_root: Path, tmp_path: Path
) -> None:
    series = generate_asset(ASSET, 200, seed=0, plant_seed=0)[0]
    stream = list(readings([series]))
    clock = [0.0]
    core = make_core(models_root, tmp_path / "a", clock=lambda: clock[0])
    run(core, stream, 0, 100)
    assert list(core.changed_states()) == [ASSET]
    assert core.changed_states() == {}  # nothing changed since
    run(core, stream, 100, 101)  # completes no window: no change worth writing
    assert core.changed_states() == {}
    run(core, stream, 101, 200)
    taken = core.changed_states()
    core.mark_changed(taken)  # not written: taken again next time
    assert list(core.changed_states()) == [ASSET]
    assert taken[ASSET]["window_offsets"]  # its next window's readings
    clock[0] += 10_000.0  # the stream stopped: its window is evicted, and that is a change
    core.evict_idle()
    evicted = core.changed_states()[ASSET]
    assert evicted["window_offsets"] == [] and evicted["last_end_ns"] == taken[ASSET]["last_end_ns"]
    bad = dict(taken[ASSET], baselines=[{"profile": "pumps"}])
    other = make_core(models_root, tmp_path / "b")
    failed = other.restore_assets({ASSET: bad})
    assert [a for a, _ in failed] == [ASSET] and ASSET in str(failed[0][1])
    assert other.assets_owned == 0
    core.close()
    other.close()


def test_changelog_records_name_their_asset_and_format() -> None:
    state = {"asset": ASSET, "partition": list(TP)}
    assert decode_state(ASSET.encode(), encode_state(state))["partition"] == list(TP)
    with pytest.raises(ValueError, match="not JSON"):
        decode_state(b"pump-1", b"{")
    with pytest.raises(ValueError, match="format"):
        decode_state(b"pump-1", json.dumps({"asset": ASSET}).encode())
    with pytest.raises(ValueError, match="names asset"):
        decode_state(b"pump-2", encode_state(state))


class Broker:
    """Stands in for InfluxDB, Kafka and the changelog: acknowledges everything at once and
    records what each checkpoint wrote and committed."""

    def __init__(self) -> None:
        self.tickets: list[int] = []
        self.written: list[list[str]] = []
        self.commits: list[dict] = []

    def submit(self, points: list, ticket: int, completed_ms: int) -> None:
        self.tickets.append(ticket)

    def take_acknowledged(self) -> list[int]:
        done, self.tickets = self.tickets, []
        return done

    def start_write(self, states: dict[str, dict[str, Any]]) -> Future[int]:
        self.written.append(sorted(states))
        done: Future[int] = Future()
        done.set_result(1)
        return done

    def commit(self, offsets: dict) -> bool:
        self.commits.append(dict(offsets))
        return True


PARTS = {"pump-1": ("sensors", 0), "pump-2": ("sensors", 1)}


def daemon_on(broker: Broker, models_root: Path, tmp_path: Path) -> tuple[Any, Any]:
    """A daemon whose sink, changelog and source are `broker`, and `feed(asset, upto)`, which
    hands it the asset's readings up to offset `upto` as consumed; returns the windows made."""
    from daemon.app import Daemon

    daemon = Daemon(settings_for(models_root, tmp_path))
    daemon.sink = daemon.changelog = daemon.source = broker
    streams = {a: list(readings([generate_asset(a, 200, seed=0)[0]])) for a in PARTS}
    fed = dict.fromkeys(PARTS, 0)

    def feed(asset: str, upto: int) -> int:
        ready = 0
        for offset in range(fed[asset], upto):
            ready += daemon.core.add(streams[asset][offset], PARTS[asset], offset)
            daemon.ledger.consumed(PARTS[asset], offset)
        fed[asset] = upto
        return ready

    return daemon, feed


def commit_pass(daemon: Any) -> None:
    """What the run loop does each commit interval."""
    daemon._take_acks()
    daemon._advance_checkpoint()


def test_a_checkpoint_writes_only_changed_assets_and_commits_past_partial_windows(
    models_root: Path, tmp_path: Path
) -> None:
    broker = Broker()
    daemon, feed = daemon_on(broker, models_root, tmp_path)

    def checkpoint() -> None:  # a mark, then its commit
        commit_pass(daemon)
        commit_pass(daemon)

    feed("pump-1", 100)
    feed("pump-2", 100)
    checkpoint()
    assert broker.written == [["pump-1", "pump-2"]]
    # the commit passes the partial windows: the states written name their readings
    assert broker.commits[-1] == {tp: 100 for tp in PARTS.values()}
    assert feed("pump-1", 101) == 0  # a reading that completes no window
    checkpoint()
    assert broker.written == [["pump-1", "pump-2"]]  # neither state written again
    assert broker.commits[-1] == {PARTS["pump-1"]: 101}
    assert not (tmp_path / "warmup").exists()  # the changelog holds warm-ups: no file written
    assert feed("pump-2", 110) > 0
    checkpoint()
    assert broker.written[1:] == [["pump-2"]]  # only the asset whose window completed
    assert not (tmp_path / "warmup").exists()
    daemon._commit_now(daemon._safe_offsets())  # a stop or revocation: the local cache too
    assert sorted(p.stem for p in (tmp_path / "warmup").rglob("*.npy")) == ["pump-1", "pump-2"]
    assert daemon.core.baseline_snapshot().files == []  # written: nothing left to write
    daemon.core.close()


class SlowChangelog(Broker):
    """A changelog whose writes stay in flight until the test answers them."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight: list[Future[int]] = []

    def start_write(self, states: dict[str, dict[str, Any]]) -> Future[int]:
        self.written.append(sorted(states))
        self.in_flight.append(Future())
        return self.in_flight[-1]


def test_offsets_are_committed_only_once_the_changelog_acknowledged_and_a_failed_write_is_redone(
    models_root: Path, tmp_path: Path
) -> None:
    from daemon.changelog import ChangelogError

    broker = SlowChangelog()
    daemon, feed = daemon_on(broker, models_root, tmp_path)
    feed("pump-1", 100)
    feed("pump-2", 100)
    commit_pass(daemon)  # the mark
    commit_pass(daemon)  # its tickets are acknowledged: its states go to the changelog
    assert broker.written == [["pump-1", "pump-2"]] and broker.commits == []
    feed("pump-1", 110)
    commit_pass(daemon)  # still in flight: no second write, nothing committed
    commit_pass(daemon)
    assert len(broker.in_flight) == 1 and broker.commits == []
    broker.in_flight[0].set_exception(ChangelogError("not acknowledged"))
    assert daemon._finish_commit()  # what the run loop asks each turn
    assert broker.commits == []  # the failed write commits nothing ...
    commit_pass(daemon)
    commit_pass(daemon)
    assert broker.written[1] == ["pump-1", "pump-2"]  # ... and its states are written again
    assert broker.commits == []
    broker.in_flight[1].set_result(1)
    assert daemon._finish_commit()
    assert broker.commits == [{PARTS["pump-1"]: 110, PARTS["pump-2"]: 100}]
    daemon.core.close()


def test_without_the_seek_back_on_assignment_commits_wait_for_partial_windows(
    models_root: Path, tmp_path: Path
) -> None:
    from daemon.app import Daemon

    kafka = {"seek_back_on_assign": False}
    daemon = Daemon(settings_for(models_root, tmp_path, kafka=kafka))
    broker = Broker()
    daemon.sink = daemon.changelog = daemon.source = broker  # type: ignore[assignment]
    tp = ("sensors", 0)
    stream = list(readings([generate_asset(ASSET, 100, seed=0)[0]]))
    for offset, reading in enumerate(stream):
        daemon.core.add(reading, tp, offset)
        daemon.ledger.consumed(tp, offset)
    for _ in range(4):
        daemon._take_acks()
        daemon._advance_checkpoint()
    held = daemon.core.windows.hold()[tp]
    assert broker.commits and broker.commits[-1] == {tp: held} and held < len(stream)
    daemon.core.close()


def test_late_readings_and_gap_resets_are_exported_once_each(
    models_root: Path, tmp_path: Path
) -> None:
    """The run loop counts them per poll (`_export_window_counters`), not per reading: each
    drop and reset reaches /metrics once, however often the export runs."""
    from prometheus_client import REGISTRY

    from daemon.app import Daemon
    from daemon.source import Record

    daemon = Daemon(settings_for(models_root, tmp_path))
    stream = list(readings([generate_asset(ASSET, 120, seed=0)[0]]))

    def handle(offset: int, reading: Any) -> None:
        body = {"asset": ASSET, "ts": reading.ts_ns // 1_000_000, "values": reading.values}
        daemon._handle(Record(*TP, offset, None, json.dumps(body).encode(), 0))

    def exported() -> tuple[float | None, float | None]:
        return (
            REGISTRY.get_sample_value("seqae_late_readings_total"),
            REGISTRY.get_sample_value("seqae_gap_resets_total"),
        )

    late0, gaps0 = (value or 0.0 for value in exported())
    for offset in range(50):
        handle(offset, stream[offset])
    handle(50, stream[10])  # 40 slots behind the newest: dropped
    handle(51, stream[100])  # 50 slots empty: the window resets
    assert daemon.core.windows.counters.late_dropped == 1
    assert daemon.core.windows.counters.gap_resets == 1
    daemon._export_window_counters()
    daemon._export_window_counters()
    assert exported() == (late0 + 1, gaps0 + 1)
    daemon.core.close()
