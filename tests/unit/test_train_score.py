"""seqae.train and seqae.score: fit a profile on a synthetic pump, then score faults with it."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from seqae.artifacts import load_profile
from seqae.calibrate import fit_baseline
from seqae.data import DataError, make_windows, regularize
from seqae.score import Scorer, score_series
from seqae.synth import generate_asset
from seqae.train import train_profile

WINDOW, HOP = 10, 2
TINY = {"hidden_size": 8, "latent_size": 4}


@pytest.fixture(scope="module")
def normal_history():  # type: ignore[no-untyped-def]
    series, _ = generate_asset("pump-1", 2400, seed=0)
    return series


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, normal_history) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("models")
    for kind in ("lstm", "pca"):
        train_profile(
            [normal_history],
            models_root=root,
            profile=f"pump-{kind}",
            window=WINDOW,
            hop=HOP,
            kind=kind,  # type: ignore[arg-type]
            epochs=2,
            model_cfg=TINY if kind == "lstm" else None,
            device="cpu",
            progress=False,
        )
    return root


@pytest.mark.parametrize("kind", ["lstm", "pca"])
def test_train_profile_saves_a_calibrated_profile(models: Path, kind: str) -> None:
    lp = load_profile(models, f"pump-{kind}")
    assert lp.version == "v0001" and lp.meta.kind == kind
    assert lp.meta.channels == ["pressure", "flow", "motor_current", "temperature", "vibration"]
    assert (lp.meta.window, lp.meta.hop) == (WINDOW, HOP)
    training = lp.meta.training
    assert training["rows"] == 2400 and training["train_windows"] > 0
    assert training["calib_windows"] > 40
    assert lp.baseline.threshold > 0 and lp.baseline.range_low.shape == (5,)
    assert lp.meta.validation["calibration"]["threshold_windows"] > 10
    if kind == "lstm":
        assert training["epochs_run"] == 2 and lp.meta.config["hidden_size"] == 8


def test_training_refuses_labelled_faults(tmp_path: Path) -> None:
    faulty, _ = generate_asset("pump-2", 1200, seed=0, faults=[("spikes", 500, 600)])
    with pytest.raises(DataError, match="'pump-2' has anomalous labels"):
        train_profile([faulty], models_root=tmp_path, profile="p", window=WINDOW, hop=HOP, epochs=1)


def test_training_refuses_mismatched_channels(tmp_path: Path, normal_history) -> None:  # type: ignore[no-untyped-def]
    other = normal_history.select(["flow", "pressure", "motor_current", "temperature", "vibration"])
    with pytest.raises(DataError, match=r"has channels .*'flow', 'pressure'.* expected"):
        train_profile(
            [normal_history, other],
            models_root=tmp_path,
            profile="p",
            window=WINDOW,
            hop=HOP,
            epochs=1,
        )


@pytest.mark.parametrize("kind", ["lstm", "pca"])
def test_injected_fault_is_found_where_it_is(models: Path, normal_history, kind: str) -> None:  # type: ignore[no-untyped-def]
    lp = load_profile(models, f"pump-{kind}")
    scorer = Scorer(lp, device="cpu")
    # The last stretch of the history (its held-out calibration part) with a fault added.
    test = normal_history.slice(1900)
    values = test.values.copy()
    c = lp.meta.channels.index("vibration")
    values[200:260, c] += 6 * lp.baseline.scale[c]
    test = replace(test, values=values)
    result = score_series(scorer, test, lp.baseline, window=WINDOW, hop=HOP, period_s=1.0)
    b = result.batch
    in_fault = (result.ends >= 200) & (result.ends - WINDOW + 1 < 260)
    print(
        f"{kind}: in fault {b.anomalous[in_fault].mean():.2f}, elsewhere {b.anomalous[~in_fault].mean():.2f}"
    )
    assert b.anomalous[in_fault].mean() > 0.8
    assert b.anomalous[~in_fault].mean() < 0.1
    if kind == "lstm":
        # PCA's residual smears an offset over correlated channels (here onto flow), a known
        # limit of PCA contribution plots; the autoencoder names the faulty channel.
        top = b.contributions[in_fault & b.anomalous].argmax(axis=1)
        assert (top == c).mean() > 0.8


def test_mixed_baselines_equal_separate_scoring(models: Path, normal_history) -> None:  # type: ignore[no-untyped-def]
    lp = load_profile(models, "pump-lstm")
    scorer = Scorer(lp, device="cpu")
    grid = regularize(normal_history, 1.0).values
    own = fit_baseline(scorer, make_windows(grid[:600], WINDOW, HOP)[0], hop=HOP)
    windows, _ = make_windows(grid[600:1000], WINDOW, 7)
    which = np.arange(len(windows)) % 3 == 0
    mixed = scorer.score(windows, [own if w else lp.baseline for w in which])
    alone_own = scorer.score(windows[which], own)
    alone_default = scorer.score(windows[~which], lp.baseline)
    for field in ("score", "threshold", "anomalous", "contributions", "errors", "shifted"):
        got = getattr(mixed, field)
        np.testing.assert_allclose(got[which], getattr(alone_own, field), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[~which], getattr(alone_default, field), rtol=1e-5, atol=1e-6)
    assert own.threshold != lp.baseline.threshold
    with pytest.raises(ValueError, match="3 windows but 2 baselines"):
        scorer.score(windows[:3], [own, own])


def test_score_series_pointwise_alignment(models: Path, normal_history) -> None:  # type: ignore[no-untyped-def]
    lp = load_profile(models, "pump-pca")
    scorer = Scorer(lp, device="cpu")
    result = score_series(
        scorer, normal_history.slice(0, 50), lp.baseline, window=WINDOW, hop=4, period_s=1.0
    )
    assert result.ends.tolist() == list(range(WINDOW - 1, 50, 4))
    point, thr = result.pointwise()
    assert point.shape == thr.shape == (50,)
    s = result.batch.score
    assert (point[: WINDOW - 1] == s[0]).all()  # before the first window: its score
    for i, end in enumerate(result.ends):
        stop = result.ends[i + 1] if i + 1 < len(result.ends) else 50
        assert (point[end:stop] == s[i]).all()


@pytest.mark.parametrize(
    "variant", ["plain", "deep", "denoising", "sparse", "contractive", "variational", "pca"]
)
def test_cpu_features_match_the_eager_model_at_any_batch_size(variant: str) -> None:
    """On CPU the features come from a trace when it reproduces the eager model; a model whose
    trace would freeze the batch size (the VAE's latent samples) stays eager."""
    import torch

    from seqae.model import ModelConfig, SequenceAutoencoder
    from seqae.pca import PCAConfig, PCADetector

    rng = np.random.default_rng(0)
    windows = rng.normal(size=(300, 12, 3)).astype(np.float32)
    windows[rng.random(windows.shape) < 0.05] = np.nan
    if variant == "pca":
        clean = np.nan_to_num(windows)
        detector: torch.nn.Module = PCADetector(PCAConfig(3, 12, n_components=4)).fit(clean)
    else:
        torch.manual_seed(0)
        layers = 2 if variant == "deep" else 1
        cfg = ModelConfig(
            n_channels=3,
            window=12,
            hidden_size=8,
            latent_size=4,
            variant=variant,
            num_layers=layers,
        )
        detector = SequenceAutoencoder(cfg).eval()
    scorer = Scorer(detector, device="cpu", batch_size=128)
    center, scale = np.zeros(3, np.float32), np.ones(3, np.float32)
    got = [scorer.features(windows[:n], center, scale) for n in (300, 1, 77)]
    assert scorer._trace_tried
    eager = Scorer(detector, device="cpu", batch_size=128)
    eager._trace_tried = True  # never trace: the reference
    for n, features in zip((300, 1, 77), got, strict=True):
        np.testing.assert_allclose(
            features, eager.features(windows[:n], center, scale), rtol=1e-5, atol=1e-6
        )
    assert (scorer._traced is not None) == (variant != "variational")


def _no_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record any call of the training loop: the checks below must fail before it."""
    import seqae.train

    calls: list[int] = []
    monkeypatch.setattr(seqae.train, "train_network", lambda *a, **k: calls.append(1))
    return calls


def _fit(series: list, window: int = WINDOW, hop: int = HOP, **cfg: float) -> None:  # type: ignore[type-arg]
    from seqae.train import TrainConfig, fit_profile

    fit_profile(
        series,
        profile="p",
        window=window,
        hop=hop,
        period_s=1.0,
        train_cfg=TrainConfig(device="cpu", epochs=1, **cfg),  # type: ignore[arg-type]
        model_cfg=TINY,
        progress=False,
    )


def test_a_series_too_short_to_calibrate_fails_before_training_with_both_counts(
    monkeypatch: pytest.MonkeyPatch, normal_history
) -> None:  # type: ignore[no-untyped-def]
    from seqae.train import TrainConfig, rows_needed

    calls = _no_training(monkeypatch)
    need = rows_needed(WINDOW, HOP, TrainConfig())
    with pytest.raises(DataError) as err:
        _fit([normal_history.slice(0, need - 1)])
    message = str(err.value)
    assert re.search(rf"\b{need - 1}\b", message) and f"needs at least {need} samples" in message
    assert "window 10, hop 2, calibration fraction 0.2 and validation fraction 0.15" in message
    assert calls == []


def test_short_pieces_whose_calibration_windows_add_up_too_few_fail_before_training(
    monkeypatch: pytest.MonkeyPatch, normal_history
) -> None:  # type: ignore[no-untyped-def]
    """Three pieces each long enough for a window in every part, but whose held-out parts
    hold too few calibration windows together: the daemon's retrain hands such pieces over."""
    calls = _no_training(monkeypatch)
    pieces = [normal_history.slice(i * 100, i * 100 + 80) for i in range(3)]
    for i, piece in enumerate(pieces):
        piece.asset = f"piece-{i}"
    with pytest.raises(DataError, match=r"gives \d+ \+ \d+ windows, 10 are needed") as err:
        _fit(pieces)
    assert "(given: 80, 80, 80)" in str(err.value)
    assert calls == []


@pytest.mark.parametrize(
    ("window", "hop", "cfg", "message"),
    [
        (WINDOW, 0, {}, "hop >= 1, got window=10 hop=0"),
        (1, HOP, {}, "window must be >= 2"),
        (WINDOW, HOP, {"val_fraction": 0.0}, "val_fraction must be between 0 and 1"),
        (WINDOW, HOP, {"calib_fraction": 1.0}, "calib_fraction must be between 0 and 1"),
    ],
)
def test_an_impossible_geometry_is_refused_before_rows_are_counted(
    monkeypatch: pytest.MonkeyPatch,
    normal_history,  # type: ignore[no-untyped-def]
    window: int,
    hop: int,
    cfg: dict,  # type: ignore[type-arg]
    message: str,
) -> None:
    """A zero hop divided by zero while rows were counted, a zero validation fraction never
    stopped counting; both are now an error naming the setting."""
    calls = _no_training(monkeypatch)
    with pytest.raises(DataError, match=message):
        _fit([normal_history], window=window, hop=hop, **cfg)
    assert calls == []


def test_seqae_train_on_a_short_file_says_how_many_rows_and_trains_nothing(
    tmp_path: Path, normal_history
) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd
    from click.testing import CliRunner

    from seqae.cli import cli
    from seqae.train import TrainConfig, rows_needed

    need = rows_needed(30, 5, TrainConfig())  # the command's default window and hop
    short = normal_history.slice(0, need - 1)
    frame = pd.DataFrame(short.values, columns=short.channels)
    frame.insert(0, "timestamp", pd.to_datetime(short.timestamps, utc=True))
    path = tmp_path / "short.csv"
    frame.to_csv(path, index=False)
    models = tmp_path / "models"
    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(path), "--profile", "p", "--models", str(models)])
    assert result.exit_code == 2
    assert re.search(rf"\b{need - 1}\b", result.output)
    assert f"needs at least {need} samples" in result.output
    assert not models.exists()
    result = runner.invoke(
        cli, ["train", str(path), "--profile", "p", "--models", str(models), "--hop", "0"]
    )
    assert result.exit_code == 2 and "hop >= 1, got window=30 hop=0" in result.output
