"""The per-batch bookkeeping of the scoring path against the window-by-window code it replaces:
`AssetBaselines.observe_batch` / `baselines_for` against `changed_since` + `observe` /
`baseline`, `AlertBook.observe_scored` against `observe`, and `float_texts` against `repr`."""

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.alerts import AlertBook
from daemon.backtest import readings
from daemon.baselines import AssetBaselines, ScoreState, ShiftEvent
from daemon.core import StreamCore
from daemon.engine import ProfileRegistry, ScoredWindow
from daemon.lineprotocol import encode, float_texts
from daemon.settings import AlertSettings, DaemonSettings
from seqae.calibrate import Baseline
from seqae.synth import generate_asset
from seqae.train import train_profile

S = 1_000_000_000
TP = ("sensors", 0)
FAULTY = {"pump-2": ("bearing_wear", 450, 700), "pump-5": ("cavitation", 500, 650)}


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    history = [generate_asset(f"pump-{i}", 1500, seed=0, plant_seed=0)[0] for i in (1, 2)]
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


def replay(models_root: Path, state_dir: Path) -> tuple[list[tuple[Any, ...]], StreamCore]:
    """Ten pumps (two with faults) through a core, scored every 700 readings: each scored
    window's asset, end, state, score, threshold and line, shift events and alert events."""
    settings = DaemonSettings.model_validate(
        {
            "state_dir": str(state_dir),
            "profiles": {
                "models_root": str(models_root),
                "routes": [{"pattern": "pump-*", "profile": "pumps"}],
            },
            "baselines": {"mode": "per_asset", "warmup_windows": 30},
            "alerts": {"min_duration_s": 10, "clear_duration_s": 10, "update_every_s": 20},
            "engine": {"device": "cpu", "max_batch": 256, "max_wait_ms": 0},
        }
    )
    core = StreamCore(settings, ProfileRegistry(models_root, ["pumps"], "cpu", "never"))
    series = []
    for i in range(1, 11):
        fault = FAULTY.get(f"pump-{i}")
        one, _ = generate_asset(
            f"pump-{i}", 900, seed=i, plant_seed=0, faults=[fault] if fault else []
        )
        series.append(one)
    seen: list[tuple[Any, ...]] = []

    def take() -> None:
        for out in core.score(everything=True, wait=True):
            for w in out.scored:
                seen.append((w.asset, w.end_ns, w.state, w.score, w.threshold, w.line))
            seen.extend(("shift", s) for s in out.shifts)
            seen.extend(("alert", e) for e in out.events)
            seen.extend(("point", encode(p)) for p in out.points)

    for offset, reading in enumerate(readings(series)):
        core.add(reading, TP, offset)
        if offset % 700 == 699:
            take()
    take()
    core.close()
    return seen, core


def per_window_observe_batch(
    self: AssetBaselines,
    scorer: Any,
    profile: str,
    version: str,
    hop: int,
    windows: Sequence[tuple[str, int, np.ndarray]],
    shifted: Sequence[bool],
    used: Sequence[Baseline],
    default: Baseline,
    errors: np.ndarray | None = None,
) -> tuple[list[tuple[ScoreState, ShiftEvent | None] | None], list[int]]:
    """What the engine did before `observe_batch`: `changed_since`, then `observe` (with the
    features of warm-up windows scored under the profile's baseline, as the engine gives)."""
    states: list[tuple[ScoreState, ShiftEvent | None] | None] = [None] * len(windows)
    stale = []
    for i, (asset, time_ns, values) in enumerate(windows):
        if self.changed_since(profile, version, asset, used[i], default):
            stale.append(i)
            continue
        row = errors[i] if errors is not None and used[i] is default else None
        states[i] = self.observe(
            scorer, profile, version, hop, asset, time_ns, values, shifted[i], row
        )
    return states, stale


def per_window_baselines_for(
    self: AssetBaselines, profile: str, version: str, assets: Sequence[str], default: Baseline
) -> list[Baseline]:
    return [self.baseline(profile, version, asset, default) for asset in assets]


def test_batched_baselines_give_the_states_of_the_per_window_path(
    models_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batched, core = replay(models_root, tmp_path / "batched")
    with monkeypatch.context() as m:
        m.setattr(AssetBaselines, "observe_batch", per_window_observe_batch)
        m.setattr(AssetBaselines, "baselines_for", per_window_baselines_for)
        reference, ref_core = replay(models_root, tmp_path / "reference")

    states = {entry[2] for entry in batched if len(entry) > 2}
    assert states == {"calibrating", "ok", "shifted"}  # every path of `observe_batch` ran
    assert any(entry[0] == "shift" for entry in batched)
    assert any(entry[0] == "alert" for entry in batched)
    assert batched == reference
    pumps = [f"pump-{i}" for i in range(1, 11)]
    assert [core.baselines.asset_state(a) for a in pumps] == [
        ref_core.baselines.asset_state(a) for a in pumps
    ]


def scored(asset: str, end_s: int, score: float, threshold: float, state: str) -> ScoredWindow:
    rng = np.random.default_rng(end_s)
    return ScoredWindow(
        asset=asset,
        profile="pumps",
        version="v1",
        channels=("a", "b", "c"),
        end_ns=end_s * S,
        score=score,
        threshold=threshold,
        anomalous=score > threshold,
        state=state,  # type: ignore[arg-type]
        gap=False,
        errors=np.zeros(3, np.float32),
        contributions=rng.random(3).astype(np.float32),
    )


def test_alerts_per_batch_are_the_alerts_window_by_window() -> None:
    rng = np.random.default_rng(7)
    settings = AlertSettings(min_duration_s=2, clear_duration_s=2, update_every_s=3)
    windows = []
    for t in range(400):
        for asset in ("p1", "p2", "p3"):
            ratio = float(
                rng.choice([0.3, 0.9, 1.0, 1.4, 2.5, np.nan], p=[0.5, 0.1, 0.1, 0.2, 0.05, 0.05])
            )
            threshold = float(
                rng.choice(
                    [2.0, 2.0, 2.0, 0.0, -1.0, np.nan], p=[0.9, 0.03, 0.02, 0.03, 0.01, 0.01]
                )
            )
            state = "calibrating" if rng.random() < 0.05 else "ok"
            end = t - 3 if rng.random() < 0.03 else t  # now and then a window seen before
            windows.append(scored(asset, end, ratio * 2.0, threshold, state))
    batched, reference = AlertBook(settings), AlertBook(settings)
    events, expected = [], []
    for start in range(0, len(windows), 50):
        batch = windows[start : start + 50]
        events += batched.observe_scored(batch)
        for w in batch:
            if w.state != "calibrating":
                expected += reference.observe(
                    w.asset, w.profile, w.end_ns, w.score, w.threshold, w.contributions, w.channels
                )
        assert batched.to_dict() == reference.to_dict()
    assert {e.state for e in expected} == {"open", "update", "closed"}
    assert events == expected
    assert batched.observe_scored([]) == []


def test_float_texts_are_python_reprs() -> None:
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    with np.errstate(invalid="ignore"):  # NaNs with payloads among them
        wide = bits.view(np.float32).astype(np.float64)  # every magnitude, NaN and inf
    usual = rng.lognormal(0, 3, 200_000).astype(np.float32).astype(np.float64)
    edges = np.array(
        [0.0, -0.0, 1.0, -2.5, 1e-4, 9.99e-5, 1e15, 1e16, 123456789.0, 1e-7, 3e20, np.inf, -np.inf]
    )
    for values in (wide, usual, edges, rng.random((7, 10)).astype(np.float32)):
        assert float_texts(values) == [repr(v) for v in values.ravel().tolist()]
    assert float_texts(np.zeros(0)) == []


def test_a_run_loop_point_is_the_point_of_its_window() -> None:
    from daemon.engine import ScoreLines

    w = scored("pump-7", 5, 0.75, 2.0, "ok")
    assert w.point() == w.to_point()  # no line: the point itself
    lines = ScoreLines("pumps", "v1", w.channels)
    w.line = lines.line(
        w.asset, w.end_ns, w.score, w.threshold, w.anomalous, w.state, w.gap, w.late, [0.0] * 3
    )
    point, full = w.point(), w.to_point()
    assert type(point) is not type(full)  # built lazily
    assert encode(point) == w.line == encode(dataclasses.replace(full, line=None))
    assert point == full and full == point and point.fields == full.fields
    assert point.tags == {"asset": "pump-7", "profile": "pumps", "model_version": "v1"}
    assert point != scored("pump-8", 5, 0.75, 2.0, "ok").to_point()


def test_batch_lines_with_odd_asset_ids_are_the_generic_encoding() -> None:
    from daemon.engine import ScoreLines
    from daemon.lineprotocol import plain_tag_values
    from daemon.windows import ReadyWindow

    assert plain_tag_values(["pump-1", "a.b_c:d"]) and plain_tag_values([])
    for odd in (["ok", "pump 7"], ["a,b"], ["x=y"], [""], ["end\\"], ["line\nbreak"]):
        assert not plain_tag_values(odd)
    channels = ("a b", "c,d")
    lines = ScoreLines("pumps", "v=1", channels)
    rng = np.random.default_rng(1)
    for assets in (["pump-1", "pump-2"], ["pump 7,=x", "pump-1", "", "bad\\", "cr\r"]):
        batch = [
            ReadyWindow(a, (i + 1) * S, np.zeros((4, 2), np.float32), i % 2 == 0, {}, late=i % 3)
            for i, a in enumerate(assets)
        ]
        numbers = rng.lognormal(0, 4, (len(batch), 4)).astype(np.float32)
        numbers[-1, 0] = 1e-7  # an exponent: `repr`'s text
        anomalous = [i % 2 == 1 for i in range(len(batch))]
        states = (["ok", "shifted"] * len(batch))[: len(batch)]
        got = lines.lines(batch, numbers, anomalous, states, [True] * len(batch))
        for w, row, line, alarm, state in zip(
            batch, numbers.tolist(), got, anomalous, states, strict=True
        ):
            window = ScoredWindow(
                asset=w.asset,
                profile="pumps",
                version="v=1",
                channels=channels,
                end_ns=w.end_ns,
                score=row[0],
                threshold=row[1],
                anomalous=alarm,
                state=state,  # type: ignore[arg-type]
                gap=w.gap,
                late=w.late,
                errors=np.array(row[2:], np.float32),
                contributions=np.zeros(2, np.float32),
            )
            if w.asset in ("", "bad\\", "cr\r"):  # not a tag: no line, refused point by point
                assert line is None
                continue
            assert line == encode(window.to_point())
