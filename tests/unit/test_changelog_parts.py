"""The changelog's split of an asset's state into a small record and immutable parts
(daemon.changelog.PartWriter) and its assembly on restore (assemble_states), on a topic kept
in a dict the way compaction keeps it: the newest value per key."""

import json
import logging
from pathlib import Path

import pytest

from daemon.backtest import readings
from daemon.changelog import (
    PART_SEPARATOR,
    Batch,
    Message,
    PartWriter,
    assemble_states,
    encode_state,
)
from daemon.core import StreamCore
from daemon.engine import ProfileRegistry
from daemon.settings import DaemonSettings
from seqae.synth import generate_asset
from seqae.train import train_profile

TP = ("sensors", 2)
ASSET = "pump-1"
WARMUP = 30
HOP = 5

Topic = dict[bytes, tuple[int, bytes | None]]


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    history = [generate_asset(f"pump-{i}", 2000, seed=0, plant_seed=0)[0] for i in (1, 2)]
    train_profile(
        history,
        models_root=root,
        profile="pumps",
        window=20,
        hop=HOP,
        kind="pca",
        progress=False,
        device="cpu",
    )
    return root


def make_core(models_root: Path, state_dir: Path) -> StreamCore:
    settings = DaemonSettings.model_validate(
        {
            "state_dir": str(state_dir),
            "profiles": {
                "models_root": str(models_root),
                "routes": [{"pattern": "pump-*", "profile": "pumps"}],
            },
            "baselines": {"mode": "per_asset", "warmup_windows": WARMUP},
            "engine": {"device": "cpu"},
        }
    )
    return StreamCore(settings, ProfileRegistry(models_root, ["pumps"], "cpu", "never"))


class Fed:
    """One asset's readings fed to a core a few at a time, each step scored."""

    def __init__(self, core: StreamCore, samples: int = 600) -> None:
        self.core = core
        self.stream = list(readings([generate_asset(ASSET, samples, seed=0, plant_seed=0)[0]]))
        self.offset = 0

    def to(self, stop: int) -> None:
        for offset in range(self.offset, stop):
            self.core.add(self.stream[offset], TP, offset)
        self.offset = stop
        list(self.core.score(everything=True, wait=True))


def send(topic: Topic, messages: list[Message]) -> None:
    for m in messages:
        topic[m.key] = (m.partition, m.value)


def checkpoint(core: StreamCore, writer: PartWriter, topic: Topic) -> tuple[Batch, list[Message]]:
    """What `Changelog.write` sends, in its order, every message acknowledged."""
    batch = writer.encode(core.changed_states())
    send(topic, batch.parts)
    send(topic, batch.records)
    tombstones = writer.acknowledged(batch)
    send(topic, tombstones)
    return batch, tombstones


def whole(core: StreamCore) -> dict:
    """The asset's state as a restore must give it: `asset_state`, through JSON, with the
    record's format."""
    return json.loads(encode_state(core.asset_state(ASSET)))


def test_a_growing_warm_up_writes_only_its_new_windows_and_restores_exactly(
    models_root: Path, tmp_path: Path
) -> None:
    core = make_core(models_root, tmp_path / "a")
    fed, writer, topic = Fed(core), PartWriter(), {}
    fed.to(20)
    sizes, records, inline = [], [], []
    for _ in range(WARMUP - 2):  # one more window per checkpoint, warm-up still running
        batch, tombstones = checkpoint(core, writer, topic)
        assert tombstones == []  # appended: every segment stays named
        sizes.append(batch.part_bytes)
        records.append(batch.record_bytes)
        inline.append(len(encode_state(core.asset_state(ASSET))))
        if len(sizes) < WARMUP - 2:
            fed.to(fed.offset + HOP)
    first, *later = [size for size in sizes if size]  # the first window completes later
    assert len(later) > 20 and set(later) == {later[0]}  # one window's segment, each time
    assert later[0] == first + 30  # the same, naming the segment before it (32 hex digits)
    assert max(records[1:]) - min(records[1:]) < 16  # naming the newest segment only
    assert inline[-1] > 10 * inline[0]  # what writing the whole state each time would cost
    assert sum(sizes) < 2 * inline[-1]  # linear: each window written once
    state = whole(core)
    assert state["baselines"][0]["baseline"] is None
    assert state["baselines"][0]["warmup"]["shape"][0] == len(later) + 1
    restored = assemble_states(topic, PartWriter())
    assert restored == {ASSET: state}  # bit for bit: the arrays as base64 of their bytes
    second = make_core(models_root, tmp_path / "b")
    assert second.restore_assets(restored) == []
    # all but the next window's offsets, which the replay from them rebuilds
    assert second.asset_state(ASSET) == core.asset_state(ASSET) | {"window_offsets": []}
    core.close()
    second.close()


def test_a_fit_tombstones_the_warm_up_segments_and_a_restore_resumes_from_a_fresh_one(
    models_root: Path, tmp_path: Path
) -> None:
    core = make_core(models_root, tmp_path / "a")
    fed, writer, topic = Fed(core), PartWriter(), {}
    segments = set()
    fed.to(20 + HOP)
    while core.asset_state(ASSET)["baselines"][0]["baseline"] is None:
        batch, _ = checkpoint(core, writer, topic)
        segments |= {m.key for m in batch.parts}
        fed.to(fed.offset + HOP)
    assert len(segments) >= WARMUP - 2  # one per checkpoint (the fitting window: none)
    batch, tombstones = checkpoint(core, writer, topic)  # the checkpoint of the fit
    (baseline,) = batch.parts
    assert json.loads(baseline.value or b"")["kind"] == "baseline"
    assert {m.key for m in tombstones} == segments and all(m.value is None for m in tombstones)
    assert all(m.partition == TP[1] for m in [*batch.parts, *tombstones])
    live = {k for k, (_, v) in topic.items() if v is not None}
    assert live == {ASSET.encode(), baseline.key}  # what compaction keeps of the warm-up
    fed.to(fed.offset + 4 * HOP)
    batch, tombstones = checkpoint(core, writer, topic)
    assert batch.parts == [] and tombstones == []  # the baseline is written once
    assert assemble_states(topic, PartWriter()) == {ASSET: whole(core)}
    core.close()


def test_after_a_restore_the_next_write_starts_a_fresh_segment_and_drops_the_old_ones(
    models_root: Path, tmp_path: Path
) -> None:
    first = make_core(models_root, tmp_path / "a")
    fed, topic = Fed(first), {}
    writer = PartWriter()
    for stop in (30, 35, 40):
        fed.to(stop)
        checkpoint(first, writer, topic)
    old = {k for k in topic if PART_SEPARATOR in k}
    orphan = ASSET.encode() + PART_SEPARATOR + b"0" * 32  # parts sent, their record never
    topic[orphan] = (TP[1], b"{}")
    second, reader = make_core(models_root, tmp_path / "b"), PartWriter()
    restored = assemble_states(topic, reader)
    assert second.restore_assets(restored) == []
    resumed = Fed(second)
    resumed.offset = min(off for _, _, off in restored[ASSET]["window_offsets"])
    resumed.to(45)
    batch, tombstones = checkpoint(second, reader, topic)
    (fresh,) = [m for m in batch.parts if m.value is not None]
    assert json.loads(fresh.value or b"")["previous"] is None
    dropped = {m.key for m in [*batch.parts, *tombstones] if m.value is None}
    assert dropped == old | {orphan}
    fed.to(45)
    assert assemble_states(topic, PartWriter()) == {ASSET: whole(first)}
    first.close()
    second.close()


def test_a_record_naming_a_missing_part_restores_nothing_for_its_asset_and_says_why(
    models_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    core = make_core(models_root, tmp_path / "a")
    fed, writer, topic = Fed(core), PartWriter(), {}
    for stop in (30, 35):
        fed.to(stop)
        checkpoint(core, writer, topic)
    first_segment = min(k for k in topic if PART_SEPARATOR in k)
    broken = dict(topic)
    del broken[first_segment]
    with caplog.at_level(logging.ERROR, logger="daemon.changelog"):
        assert assemble_states(broken, PartWriter()) == {}
    (message,) = [r.getMessage() for r in caplog.records]
    digest = first_segment.split(PART_SEPARATOR)[1].decode()
    assert ASSET in message and digest in message and "not in the changelog" in message
    assert "starts afresh" in message
    tampered = dict(topic)
    partition, value = topic[first_segment]
    tampered[first_segment] = (partition, (value or b"").replace(b'"previous"', b'"Previous"'))
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="daemon.changelog"):
        assert assemble_states(tampered, PartWriter()) == {}
    assert "do not hash to its key" in caplog.records[0].getMessage()
    core.close()


def test_a_format_1_record_with_its_arrays_inline_still_restores(
    models_root: Path, tmp_path: Path
) -> None:
    core = make_core(models_root, tmp_path / "a")
    Fed(core).to(80)
    state = core.asset_state(ASSET)
    record = {"format": "seqae-asset-state/1", **state}
    topic: Topic = {ASSET.encode(): (TP[1], json.dumps(record).encode())}
    restored = assemble_states(topic, writer := PartWriter())
    assert restored == {ASSET: json.loads(json.dumps(record))}
    second = make_core(models_root, tmp_path / "b")
    assert second.restore_assets(restored) == []
    assert second.asset_state(ASSET) == state | {"window_offsets": []}
    second.mark_changed([ASSET])
    batch = writer.encode(second.changed_states())
    assert json.loads(batch.records[0].value or b"")["format"] == "seqae-asset-state/2"
    assert [json.loads(m.value or b"")["kind"] for m in batch.parts] == ["warmup"]
    core.close()
    second.close()


def test_a_baseline_with_degenerate_channels_survives_the_changelog(tmp_path: Path) -> None:
    """The degenerate mask is kept as channel indices (a bool block was refused on restore,
    so such an asset calibrated again after every rebalance)."""
    import numpy as np

    from daemon.baselines import AssetBaselines
    from daemon.settings import BaselineSettings
    from seqae.calibrate import Baseline

    c = 4
    own = Baseline(
        center=np.arange(c, dtype=np.float32),
        scale=np.ones(c, np.float32),
        err_mean=np.full(c, 0.1),
        err_sq_mean=np.full(c, 0.02),
        precision=np.eye(c),
        threshold=3.5,
        degenerate=np.array([False, True, False, True]),
    )
    baselines = AssetBaselines(BaselineSettings(mode="per_asset"), tmp_path)
    baselines.restore_asset(ASSET, [])
    entry = baselines._entry("pumps", "v1", ASSET)
    entry.baseline = own
    record = json.loads(json.dumps(baselines.asset_state(ASSET)))

    restored = AssetBaselines(BaselineSettings(mode="per_asset"), tmp_path / "other")
    restored.restore_asset(ASSET, record)
    back = restored.baseline("pumps", "v1", ASSET, default=own)
    assert back is not own
    assert back.degenerate.tolist() == [False, True, False, True]
    assert back.to_dict() == own.to_dict()
