"""Engine, baselines and profile registry against a tiny PCA profile trained here."""

import io
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.baselines import AssetBaselines
from daemon.engine import ProfileRegistry, ScoringEngine
from daemon.settings import BaselineSettings, EngineSettings
from daemon.windows import ReadyWindow
from seqae.calibrate import Baseline
from seqae.data import make_windows
from seqae.synth import generate_asset
from seqae.train import train_profile

S = 1_000_000_000
TP = ("sensors", 0)


def train_pumps(root: Path, asset: str) -> str:
    """Train profile `pumps` (PCA, window 12, hop 4) on one asset's history; its version."""
    history = [generate_asset(asset, 900, seed=0, plant_seed=0)[0]]
    return train_profile(
        history,
        models_root=root,
        profile="pumps",
        window=12,
        hop=4,
        kind="pca",
        epochs=1,
        progress=False,
        device="cpu",
    )


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    train_pumps(root, "pump-1")
    return root


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    series, _ = generate_asset("pump-1", 900, seed=0, plant_seed=0)
    x, _ = make_windows(series.values, 12, 4)
    return x


@pytest.fixture(scope="module")
def known(windows: np.ndarray) -> np.ndarray:
    """Windows inside the input range the model's default baseline was calibrated on."""
    return windows[-40:]


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def ready(asset: str, x: np.ndarray, first_end: int = 0) -> list[ReadyWindow]:
    return [
        ReadyWindow(asset, (first_end + 4 * i) * S, w, False, {TP: 10 + i}) for i, w in enumerate(x)
    ]


def test_batches_close_at_max_batch_or_after_max_wait(
    models_root: Path, windows: np.ndarray, tmp_path: Path
) -> None:
    clock = Clock()
    registry = ProfileRegistry(models_root, ["pumps"], "cpu")
    engine = ScoringEngine(
        EngineSettings(max_batch=4, max_wait_ms=50),
        registry,
        AssetBaselines(BaselineSettings(mode="model"), tmp_path),
        clock=clock,
    )
    engine.add("pumps", ready("p1", windows[:3]))
    assert not engine.due() and engine.run().scored == []
    assert engine.hold() == {TP: 10}
    engine.add("pumps", ready("p2", windows[3:6]))
    assert engine.due()
    out = engine.run(wait=True)
    assert out.batch_sizes == [4] and engine.queued == 2 and out.offsets == {TP: 10}
    clock.now += 0.049
    assert not engine.due()
    clock.now += 0.002
    out = engine.run(wait=True)
    assert out.batch_sizes == [2] and engine.queued == 0 and engine.hold() == {}


def test_batches_in_the_scoring_thread_stay_held_and_come_back_in_order(
    models_root: Path, windows: np.ndarray, tmp_path: Path
) -> None:
    registry = ProfileRegistry(models_root, ["pumps"], "cpu")
    served = registry.get("pumps")
    gate = threading.Event()
    forward = served.features

    def gated(*args: Any) -> Any:
        assert gate.wait(10)
        return forward(*args)

    served.features = gated  # type: ignore[method-assign]
    engine = ScoringEngine(
        EngineSettings(max_batch=2, max_wait_ms=0),
        registry,
        AssetBaselines(BaselineSettings(mode="model"), tmp_path),
    )
    given = ready("p1", windows[:6])
    engine.add("pumps", given)
    out = engine.run()  # three batches handed out, none scored yet
    assert out.scored == [] and engine.queued == 6 and engine.hold() == {TP: 10}
    assert not engine.due()
    gate.set()
    out = engine.run(wait=True)
    assert out.batch_sizes == [2, 2, 2] and engine.queued == 0 and engine.hold() == {}
    assert [w.end_ns for w in out.scored] == [w.end_ns for w in given]
    assert out.offsets == {TP: 10}
    engine.close()


def test_score_points_follow_the_schema(
    models_root: Path, known: np.ndarray, tmp_path: Path
) -> None:
    registry = ProfileRegistry(models_root, ["pumps"], "cpu")
    engine = ScoringEngine(
        EngineSettings(), registry, AssetBaselines(BaselineSettings(mode="model"), tmp_path)
    )
    engine.add("pumps", ready("p1", known[:2], first_end=11))
    out = engine.run(force=True)
    point = out.scored[1].to_point()
    channels = registry.get("pumps").geometry.channels
    assert point.measurement == "seqae_score" and point.time_ns == 15 * S
    assert point.tags == {"asset": "p1", "profile": "pumps", "model_version": "v0001"}
    assert set(point.fields) == {"score", "threshold", "anomalous", "state", "gap"} | {
        f"err_{c}" for c in channels
    }
    assert point.fields["state"] == "ok" and point.fields["gap"] is False


def test_per_asset_warmup_fits_persists_and_restores(
    models_root: Path, windows: np.ndarray, tmp_path: Path
) -> None:
    settings = BaselineSettings(mode="per_asset", warmup_windows=60)
    registry = ProfileRegistry(models_root, ["pumps"], "cpu")
    baselines = AssetBaselines(settings, tmp_path)
    engine = ScoringEngine(EngineSettings(max_batch=16), registry, baselines)
    engine.add("pumps", ready("p1", windows[:80]))
    states = [w.state for w in engine.run(force=True).scored]
    # windows after the fit in the same batch are scored again with the asset's own baseline
    assert states == ["calibrating"] * 60 + ["ok"] * 20
    assert all(not w.anomalous for w in engine.run(force=True).scored)
    # the files are a cache of the changelog's state: written with a checkpoint, not at the fit
    assert not list((tmp_path / "baselines").rglob("*.json"))
    baselines.checkpoint()
    saved = list((tmp_path / "baselines").rglob("*.json"))
    assert [p.name for p in saved] == ["p1.json"]
    assert not list((tmp_path / "warmup").rglob("*.npy"))
    fresh = ScoringEngine(EngineSettings(), registry, AssetBaselines(settings, tmp_path))
    fresh.add("pumps", ready("p1", windows[80:90]))
    assert {w.state for w in fresh.run(force=True).scored} == {"ok"}


def test_warmup_progress_survives_a_restart(
    models_root: Path, windows: np.ndarray, tmp_path: Path
) -> None:
    settings = BaselineSettings(mode="per_asset", warmup_windows=40)
    registry = ProfileRegistry(models_root, ["pumps"], "cpu")
    first = AssetBaselines(settings, tmp_path)
    engine = ScoringEngine(EngineSettings(max_batch=10), registry, first)
    engine.add("pumps", ready("p1", windows[:30]))
    engine.run(force=True)
    first.checkpoint()
    restarted = ScoringEngine(
        EngineSettings(max_batch=10), registry, AssetBaselines(settings, tmp_path)
    )
    restarted.add("pumps", ready("p1", windows[30:50]))
    states = [w.state for w in restarted.run(force=True).scored]
    assert states == ["calibrating"] * 10 + ["ok"] * 10


def counted_forwards(registry: ProfileRegistry, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Windows each call of the profile's `Scorer.features` forwards (the fit's own calls too)."""
    scorer = registry.get("pumps").scorer
    calls: list[int] = []
    forward = scorer.features

    def counted(x: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return forward(x, center, scale)

    monkeypatch.setattr(scorer, "features", counted)
    return calls


def test_the_fit_reuses_the_warmup_windows_features_also_after_a_restore(
    models_root: Path, windows: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seqae.calibrate import fit_asset_baseline

    settings = BaselineSettings(mode="per_asset", warmup_windows=40)
    registry = ProfileRegistry(models_root, ["pumps"], "cpu")
    calls = counted_forwards(registry, monkeypatch)
    baselines = AssetBaselines(settings, tmp_path / "reused")
    engine = ScoringEngine(EngineSettings(max_batch=10), registry, baselines)
    engine.add("pumps", ready("p1", windows[:40]))
    engine.run(force=True)
    assert calls == [10] * 4  # the four batches; the fit forwarded nothing again
    served = registry.get("pumps")
    reused = baselines.baseline("pumps", served.version, "p1", served.loaded.baseline)
    assert reused is not served.loaded.baseline
    fresh = fit_asset_baseline(served.scorer, windows[:40], hop=4)
    for name in ("err_mean", "err_sq_mean", "precision", "range_low", "range_high"):
        np.testing.assert_allclose(getattr(reused, name), getattr(fresh, name), rtol=1e-6)
    assert reused.threshold == pytest.approx(fresh.threshold, rel=1e-6)

    # windows restored from a checkpoint come with their features: the fit is the one the
    # uninterrupted run made, bit for bit (features computed again would differ in their last
    # bits wherever the BLAS rounds a batch of 40 otherwise than four of 10)
    first = AssetBaselines(settings, tmp_path / "restored")
    engine = ScoringEngine(EngineSettings(max_batch=10), registry, first)
    engine.add("pumps", ready("p1", windows[:30]))
    engine.run(force=True)
    first.checkpoint()
    assert list((tmp_path / "restored" / "warmup-errors").rglob("p1.npy"))

    def restart(state_dir: Path) -> tuple[Baseline, list[int]]:
        calls.clear()
        again = AssetBaselines(settings, state_dir)
        engine = ScoringEngine(EngineSettings(max_batch=10), registry, again)
        engine.add("pumps", ready("p1", windows[30:40]))
        assert {w.state for w in engine.run(force=True).scored} == {"calibrating"}
        return again.baseline("pumps", served.version, "p1", served.loaded.baseline), list(calls)

    restored, forwards = restart(tmp_path / "restored")
    assert forwards == [10]
    assert restored.to_dict() == reused.to_dict()
    # an older checkpoint, without the features: the fit forwards all of the windows
    shutil.rmtree(tmp_path / "restored" / "warmup-errors")
    restored, forwards = restart(tmp_path / "restored")
    assert forwards == [10, 40]
    np.testing.assert_allclose(restored.precision, fresh.precision, rtol=1e-6)


def test_shift_is_an_event_not_a_fault(
    models_root: Path, known: np.ndarray, tmp_path: Path
) -> None:
    """Values scaled far off the plant's relations are a fault, not a shift."""
    registry = ProfileRegistry(models_root, ["pumps"], "cpu")
    engine = ScoringEngine(
        EngineSettings(), registry, AssetBaselines(BaselineSettings(mode="model"), tmp_path)
    )
    far = known[:4] * 50.0 + 1000.0
    engine.add("pumps", ready("p1", np.concatenate([known[:2], far, known[2:4]])))
    out = engine.run(force=True)
    assert [w.state for w in out.scored] == ["ok"] * 8
    assert [w.anomalous for w in out.scored] == [False] * 2 + [True] * 4 + [False] * 2
    assert out.shifts == []


def test_a_moved_baseline_scores_the_new_operating_point_as_the_old(
    models_root: Path, known: np.ndarray
) -> None:
    """Moving a baseline's centre by a window's displacement along the envelope is the same as
    moving the window back: what re-baselining after a shift relies on."""
    served = ProfileRegistry(models_root, ["pumps"], "cpu").get("pumps")
    b = served.loaded.baseline
    assert b.env_basis.shape == (1, len(served.geometry.channels))
    step = b.env_basis[0] * b.scale * 3.0  # three robust spreads along the envelope
    moved_windows = known + step
    d = b.displacement(moved_windows)
    np.testing.assert_allclose(d - b.displacement(known), np.broadcast_to(step, d.shape), atol=1e-3)
    moved = b.moved(np.median(d - b.displacement(known), axis=0))
    again = served.scorer.score(moved_windows, moved).score
    np.testing.assert_allclose(again, served.scorer.score(known, b).score, rtol=1e-3, atol=1e-3)


def test_recalibrate_puts_the_asset_back_into_warmup(
    models_root: Path, windows: np.ndarray, tmp_path: Path
) -> None:
    baselines = AssetBaselines(BaselineSettings(mode="per_asset", warmup_windows=30), tmp_path)
    engine = ScoringEngine(
        EngineSettings(max_batch=10), ProfileRegistry(models_root, ["pumps"], "cpu"), baselines
    )
    engine.add("pumps", ready("p1", windows[:40]))
    assert engine.run(force=True).scored[-1].state == "ok"
    assert baselines.recalibrate("p1") == 1
    assert not list((tmp_path / "baselines").rglob("p1.json"))
    engine.add("pumps", ready("p1", windows[40:42], first_end=400))
    assert {w.state for w in engine.run(force=True).scored} == {"calibrating"}


def test_registry_swaps_on_current_and_keeps_serving_when_a_model_is_broken(
    models_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_root, root)
    registry = ProfileRegistry(root, ["pumps"], "cpu")
    assert registry.refresh() == []
    v2 = train_pumps(root, "pump-2")
    assert registry.refresh() == ["pumps"] and registry.get("pumps").version == v2
    broken = root / "pumps" / "v0003"
    shutil.copytree(root / "pumps" / v2, broken)
    (broken / "weights.safetensors").write_bytes(b"not tensors")
    (root / "pumps" / "CURRENT").write_text("v0003\n")
    assert registry.refresh() == [] and registry.get("pumps").version == v2
    assert registry.load_failures == 1


def test_warmup_snapshot_is_kept_until_written(tmp_path: Path, windows: np.ndarray) -> None:
    settings = BaselineSettings(mode="per_asset", warmup_windows=100)
    baselines = AssetBaselines(settings, tmp_path)
    for i in range(3):
        assert (
            baselines.observe(None, "pumps", "v0001", 4, "p1", i * S, windows[i], False)[0]
            == "calibrating"
        )
    # the windows, and no features (none scored them): any left by an earlier warm-up go
    assert [content is not None for _, content in baselines.snapshot().files] == [True, False]
    snap = baselines.snapshot()  # the first one was dropped unwritten: still pending
    assert len(snap.files) == 2
    baselines.saved(snap)
    assert baselines.snapshot().files == []
    restored = AssetBaselines(settings, tmp_path)
    restored.observe(None, "pumps", "v0001", 4, "p1", 3 * S, windows[3], False)
    kept = restored.snapshot().files[0][1]
    assert kept is not None and np.load(io.BytesIO(kept)).shape[0] == 4


def test_a_corrupt_state_file_refuses_the_start_naming_the_file(
    models_root: Path, tmp_path: Path
) -> None:
    from daemon.app import Daemon, StartupError
    from daemon.settings import load_settings

    state = tmp_path / "checkpoint-seqae.json"
    state.write_text('{"format": "seqae-daemon-state/1", "last_ends": {}, "alerts": {"p1": 3}}')
    settings = load_settings(
        None,
        state_dir=tmp_path,
        profiles={"models_root": models_root, "routes": [{"pattern": "*", "profile": "pumps"}]},
    )
    with pytest.raises(StartupError, match=r"checkpoint-seqae\.json"):
        Daemon(settings)


def test_several_profiles_are_served_side_by_side(
    models_root: Path, known: np.ndarray, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "models"
    shutil.copytree(models_root / "pumps", root / "pumps")
    shutil.copytree(models_root / "pumps", root / "fans")
    registry = ProfileRegistry(root, ["pumps", "fans"], "cpu")
    engine = ScoringEngine(
        EngineSettings(max_batch=8),
        registry,
        AssetBaselines(BaselineSettings(mode="model"), tmp_path),
    )
    engine.add("pumps", ready("pump-1", known[:3]))
    engine.add("fans", ready("fan-1", known[3:13]))
    out = engine.run(force=True)
    assert sorted(out.batch_sizes) == [2, 3, 8]
    assert {(w.asset, w.profile) for w in out.scored} == {("pump-1", "pumps"), ("fan-1", "fans")}


def test_device_history_path_scores_like_the_host_path(
    models_root: Path, windows: np.ndarray, tmp_path: Path
) -> None:
    """The CUDA feed (here forced on CPU) sends only new rows yet scores every window the same."""
    results = {}
    for mode in ("never", "always"):
        registry = ProfileRegistry(models_root, ["pumps"], "cpu", device_history=mode)
        engine = ScoringEngine(
            EngineSettings(max_batch=7, device_history=mode),
            registry,
            AssetBaselines(BaselineSettings(mode="model"), tmp_path / mode),
        )
        for asset in ("p1", "p2"):
            engine.add("pumps", ready(asset, windows[:60], first_end=11))
        results[mode] = engine.run(force=True).scored
        feed = registry.get("pumps").feed
        if mode == "always":
            assert feed is not None and feed.rows_sent < 2 * 60 * 12 / 2
    host, device = results["never"], results["always"]
    assert [(w.asset, w.end_ns) for w in host] == [(w.asset, w.end_ns) for w in device]
    np.testing.assert_allclose([w.score for w in device], [w.score for w in host], rtol=1e-4)


def test_clean_points_cover_each_slot_once_when_enabled(
    models_root: Path, known: np.ndarray, tmp_path: Path
) -> None:
    registry = ProfileRegistry(models_root, ["pumps"], "cpu")
    baselines = AssetBaselines(BaselineSettings(mode="model"), tmp_path)
    off = ScoringEngine(EngineSettings(), registry, baselines)
    off.add("pumps", ready("p1", known[:3], first_end=11))
    assert all(w.clean_points() == [] for w in off.run(force=True).scored)

    on = ScoringEngine(EngineSettings(), registry, baselines, write_clean=True)
    on.add("pumps", ready("p1", known[:3], first_end=11))
    points = [p for w in on.run(force=True).scored for p in w.clean_points()]
    channels = registry.get("pumps").geometry.channels
    # hop 4: windows ending at slots 11, 15, 19 write slots 8..19, each once
    assert [p.time_ns for p in points] == [t * S for t in range(8, 20)]
    assert {p.measurement for p in points} == {"seqae_clean"}
    assert all(set(p.fields) == set(channels) for p in points)
    raw = known[2][-4:]  # the reconstruction lies near the observed values of the last slots
    got = np.array([[p.fields[c] for c in channels] for p in points[-4:]])
    scale = np.nanstd(known.reshape(-1, len(channels)), axis=0)
    assert (np.abs(got - raw) < 3 * scale).mean() > 0.9


def test_a_bad_current_is_logged_once_not_at_every_poll(
    models_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import shutil

    root = tmp_path / "models"
    shutil.copytree(models_root, root)
    registry = ProfileRegistry(root, ["pumps"], "cpu")
    (root / "pumps" / "CURRENT").write_text("../../etc\n")  # not a version name
    with caplog.at_level(logging.ERROR, logger="daemon.engine"):
        for _ in range(5):
            assert registry.refresh() == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and registry.load_failures == 5
    assert registry.get("pumps").version == "v0001"  # still served
