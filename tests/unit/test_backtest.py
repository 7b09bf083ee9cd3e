"""The backtest: the daemon's streaming core over a history, under the shipped example config."""

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon import engine
from daemon.backtest import backtest, fault_spans, with_profile
from daemon.settings import DaemonSettings, load_settings
from seqae.calibrate import shrinkage_weight
from seqae.synth import generate_asset, generate_plant
from seqae.train import train_profile

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "daemon.example.toml"
HOUR = 3600


def train_pumps(root: Path, pumps: int, hours: int, kind: str, epochs: int = 10) -> Path:
    """Profile `pumps` (window 30, hop 5) on the normal history of a synthetic plant."""
    history = generate_plant(pumps, hours * HOUR, seed=0, with_faults=False)
    train_profile(
        [s for s, _ in history.values()],
        models_root=root,
        profile="pumps",
        window=30,
        hop=5,
        kind=kind,  # type: ignore[arg-type]
        epochs=epochs,
        progress=False,
        device="cpu",
    )
    return root


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PCA T²+Q profile on 3 pumps x 2 h: quick, for the mechanics."""
    return train_pumps(tmp_path_factory.mktemp("models"), 3, 2, "pca")


@pytest.fixture(scope="module")
def lstm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's recipe: an LSTM-AE on 4 pumps x 6 h of normal history, 10 epochs."""
    return train_pumps(tmp_path_factory.mktemp("lstm"), 4, 6, "lstm")


def shipped(models_root: Path) -> DaemonSettings:
    settings = load_settings(EXAMPLE)
    assert settings.baselines.mode == "per_asset"
    profiles = settings.profiles.model_copy(update={"models_root": models_root})
    return settings.model_copy(update={"profiles": profiles})


def test_per_asset_baselines_do_no_worse_than_the_profile_on_healthy_pumps(
    models_root: Path,
) -> None:
    """Eight simulated hours of three healthy pumps under the shipped config: the per-asset
    baselines raise no more alerts than the profile's baseline would (issue 9 asks for none at
    all; not met yet, see benchmarks/RESULTS.md)."""
    plant = [s for s, _ in generate_plant(3, 8 * HOUR, seed=2, with_faults=False).values()]
    settings = shipped(models_root)
    per_asset = backtest(settings, plant).report.total
    model = settings.model_copy(
        update={"baselines": settings.baselines.model_copy(update={"mode": "model"})}
    )
    profile = backtest(model, plant).report.total
    assert per_asset.windows == profile.windows
    # the newest `max_lateness_s` of each stream stays open: at most one window per pump less
    assert 0 <= 3 * len(range(30 - 1, 8 * HOUR - 1, 5)) - per_asset.windows <= 3
    assert per_asset.days == pytest.approx(3 * 8 / 24, rel=1e-3)
    assert per_asset.episodes <= profile.episodes
    assert per_asset.calibrating_s == 3 * 64 * 5  # the warm-up, then the asset's own baseline
    assert profile.calibrating_s == 0


def test_a_rerun_gives_the_same_trace_however_slow_the_scoring_thread(
    models_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backtest's batches do not follow the wall clock: a scoring thread that takes longer
    than `max_wait_ms` a batch leaves every score, state and event as it was."""
    plant = [s for s, _ in generate_plant(2, 2 * HOUR, seed=3, with_faults=True).values()]
    settings = shipped(models_root)
    quick = backtest(settings, plant).traces
    original = engine._timed_features

    def slow(*args: Any) -> Any:
        time.sleep(2 * settings.engine.max_wait_ms / 1000)
        return original(*args)

    monkeypatch.setattr(engine, "_timed_features", slow)
    slowed = backtest(settings, plant).traces
    assert quick.keys() == slowed.keys()
    for asset, trace in quick.items():
        assert trace == slowed[asset], asset
    assert any(t.events for t in quick.values())


def test_healthy_pumps_raise_no_alert_over_eight_hours(lstm_root: Path) -> None:
    plant = generate_plant(4, 8 * HOUR, seed=2, with_faults=False)
    result = backtest(shipped(lstm_root), [s for s, _ in plant.values()])
    total = result.report.total
    assert total.days == pytest.approx(4 * 8 / 24, rel=1e-3)
    assert total.episodes == 0, result.report.table()


def test_setpoint_step_is_shifted_rebaselined_and_raises_no_alert(lstm_root: Path) -> None:
    """Speed x0.8 for two hours, then back: the pump's physics hold throughout. Each step is a
    shift that the baseline follows within half an hour; between and after them the asset is
    ok. (A healthy window scores near its threshold now and then, and one above it that moves
    back is a one-window shift, not an alert: how many of those a model gives differs from one
    machine's floating point to another's, so the test bounds them rather than counting none.)"""
    series, _ = generate_asset(
        "pump-1", 6 * HOUR, seed=4, setpoint_steps=[(2 * HOUR, 0.8), (4 * HOUR, 1.25)]
    )
    result = backtest(shipped(lstm_root), [series])
    trace = result.traces["pump-1"]
    assert result.report.total.episodes == 0, result.report.table()
    assert not any(a for a, st in zip(trace.anomalous, trace.state, strict=True) if st == "shifted")
    start_ns = int(series.timestamps[0])
    at = (np.array(trace.end_ns) - start_ns) / 1e9
    states = np.array(trace.state)
    shifts = [((e.time_ns - start_ns) / 1e9, e.state) for e in trace.shifts]
    for step in (2 * HOUR, 4 * HOUR):
        shifted = at[(states == "shifted") & (at >= step) & (at < step + HOUR / 2)]
        assert len(shifted) and shifted[0] < step + 600, (step, shifts)
        assert any(st == "left" and step < t < step + HOUR / 2 for t, st in shifts), (step, shifts)
        settled = (at >= step + HOUR / 2) & (at < step + 2 * HOUR)
        assert np.mean(states[settled] == "ok") >= 0.95, (step, shifts)


@pytest.mark.parametrize(
    ("kind", "channels"),
    [
        ("bearing_wear", {"vibration"}),
        ("cavitation", {"pressure", "flow", "vibration"}),
        ("valve_blockage", {"pressure", "flow"}),
    ],
)
def test_a_fault_opens_an_alert_naming_its_channels(
    lstm_root: Path, kind: str, channels: set[str]
) -> None:
    """Process faults open an alert inside the fault whose top channels include one the fault
    acts on. (This profile misses the sensor faults, spikes and a stuck sensor, on this pump:
    a detector limit, benchmarks/RESULTS.md.)"""
    series, events = generate_asset("pump-3", 2 * HOUR, seed=7, faults=[(kind, 3000, 4500)])
    result = backtest(shipped(lstm_root), [series])
    fig = result.report.assets[0]
    assert fig.detected == fig.faults == 1, result.report.table()
    assert fig.false_episodes == 0
    opened = [e for e in result.traces["pump-3"].events if e.state == "open"]
    assert opened and events[0].start_ns <= opened[0].time_ns <= events[0].end_ns
    assert channels & set(opened[0].top_channels), opened[0]


def test_backtest_counts_false_alerts_and_recall_from_labels(models_root: Path) -> None:
    series, _ = generate_asset("pump-2", HOUR, seed=5, faults=[("cavitation", 1800, 2400)])
    assert fault_spans(series) == [(int(series.timestamps[1800]), int(series.timestamps[2399]))]
    result = backtest(with_profile(shipped(models_root), "pumps"), [series])
    fig = result.report.assets[0]
    assert fig.detected <= fig.faults == 1
    assert fig.false_episodes <= fig.episodes
    assert fig.normal_days < fig.days
    assert 0.0 <= fig.alerted_normal_share <= 1.0


def test_shrinkage_weight_grows_with_independent_windows() -> None:
    weights = [shrinkage_weight(n, 30, 5, 50.0) for n in (30, 300, 3000)]
    assert weights == sorted(weights) and 0 < weights[0] < 0.1 and weights[-1] > 0.8
    assert shrinkage_weight(30, 30, 5, 0.0) == 1.0


def test_asset_threshold_never_below_its_own_held_out_windows(models_root: Path) -> None:
    from daemon.engine import ProfileRegistry
    from seqae.calibrate import fit_asset_baseline
    from seqae.data import make_windows

    served = ProfileRegistry(models_root, ["pumps"], "cpu").get("pumps")
    series, _ = generate_asset("pump-3", 600, seed=9)
    windows, _ = make_windows(series.values, 30, 5)
    b = fit_asset_baseline(served.scorer, windows, hop=5)
    assert b.threshold >= b.info["held_out_max"]
    assert 0 < b.info["shrinkage_weight"] < 0.5
    assert np.isfinite(b.precision).all()


def test_backtest_command_prints_figures_and_saves_a_plot(
    models_root: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from daemon.cli import build_cli
    from seqae.synth import write_plant

    plant = generate_plant(2, 1800, seed=4, healthy_assets=1, max_faults_per_asset=1)
    write_plant(tmp_path / "live", plant)
    files = [str(p) for p in sorted((tmp_path / "live").glob("pump-*.csv"))]
    out = tmp_path / "bt"
    args = ["backtest", *files, "--config", str(EXAMPLE), "--models-root", str(models_root)]
    result = CliRunner().invoke(build_cli(), [*args, "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "false/day" in result.output and "total" in result.output
    report = json.loads((out / "backtest.json").read_text())
    assert [a["asset"] for a in report["assets"]] == ["pump-1", "pump-2"]
    assert report["total"]["faults"] == sum(len(e) for _, e in plant.values())
    assert (out / "backtest.png").read_bytes()[:4] == b"\x89PNG"
    none = CliRunner().invoke(build_cli(), ["backtest", "--config", str(EXAMPLE)])
    assert none.exit_code == 2 and "give history files" in none.output
