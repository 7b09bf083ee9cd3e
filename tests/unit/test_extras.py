"""Imputation, clean signals, embeddings and generation from a trained autoencoder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from seqae.calibrate import Baseline
from seqae.cli import cli
from seqae.data import RobustScaler, Series, forward_fill, make_windows
from seqae.extras import (
    UnsupportedModelError,
    embed_windows,
    generate_windows,
    impute_series,
    reconstruct_raw,
)
from seqae.model import ModelConfig, SequenceAutoencoder
from seqae.score import Scorer
from seqae.train import TrainConfig, train_network

W, C = 16, 3
SEED = int(os.environ.get("SEQAE_TEST_SEED", "0"))  # vary it to check robustness


def plant(n: int, seed: int) -> np.ndarray:
    """[n, 3] raw readings: two coupled oscillations with drifting amplitude and a mix of both,
    around levels far from zero (raw units, as a scaler sees them)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    phase = np.cumsum(rng.uniform(0.25, 0.4, n))
    amp = 1.0 + 0.4 * np.sin(2 * np.pi * t / 700.0 + rng.uniform(0, 6))
    a, b = amp * np.sin(phase), amp * np.cos(phase)
    x = np.stack([10.0 + a, 50.0 + 4.0 * b, 3.0 + 0.5 * (a + b)], axis=1)
    return (x + 0.02 * rng.standard_normal(x.shape)).astype(np.float32)


TRAIN_RAW = plant(3000, SEED)
SCALER = RobustScaler.fit(TRAIN_RAW)


def series_of(values: np.ndarray) -> Series:
    return Series(np.arange(len(values), dtype=np.int64) * 1_000_000_000, values, ["a", "b", "c"])


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny LSTMs run fastest on one thread; on a busy 2-core machine two threads spin-wait
    each other and run ~40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def imputer() -> SequenceAutoencoder:
    """A denoising model: trained with masked samples, so it has learned to fill them."""
    torch.manual_seed(SEED)
    scaled = SCALER.transform(TRAIN_RAW)
    train, _ = make_windows(scaled[:2500], W, 2)
    val, _ = make_windows(scaled[2500:], W, 4)
    cfg = ModelConfig(
        C, W, hidden_size=32, latent_size=8, variant="denoising", noise_std=0.05, mask_prob=0.3
    )
    model = SequenceAutoencoder(cfg)
    train_network(
        model,
        train,
        val,
        TrainConfig(epochs=15, lr=5e-3, batch_size=64, seed=SEED, device="cpu"),
        progress=False,
    )
    return model.eval()


def with_gaps(values: np.ndarray, seed: int, gap: int = 5, count: int = 60) -> np.ndarray:
    """Sensor dropouts: `count` gaps of `gap` samples, each on one random channel."""
    rng = np.random.default_rng(seed)
    out = values.copy()
    for start in rng.choice(np.arange(W, len(values) - W - gap), count, replace=False):
        out[start : start + gap, rng.integers(C)] = np.nan
    return out


def test_imputation_beats_forward_fill_on_masked_samples(imputer: SequenceAutoencoder) -> None:
    truth = plant(1500, SEED + 1)
    holed = with_gaps(truth, seed=SEED + 2)
    missing = np.isnan(holed)
    result = impute_series(imputer, series_of(holed), SCALER, W, device="cpu")
    assert result.unfilled == 0 and bool((result.filled == missing).all())
    filled = result.series.values
    np.testing.assert_array_equal(filled[~missing], holed[~missing])  # observed cells untouched
    ffill = forward_fill(holed, max_fill=10**6)
    # Errors in each channel's scale, so that one big channel does not dominate.
    err_model = np.abs((filled - truth) / SCALER.scale)[missing]
    err_ffill = np.abs((ffill - truth) / SCALER.scale)[missing]
    print(
        f"mean abs error on masked samples (scaled): model {err_model.mean():.3f}, forward fill {err_ffill.mean():.3f}"
    )
    assert err_model.mean() < 0.7 * err_ffill.mean()


def test_imputation_leaves_cells_without_enough_evidence_missing(
    imputer: SequenceAutoencoder,
) -> None:
    holed = plant(200, 3)
    holed[60:140] = np.nan  # every channel gone for longer than a window
    result = impute_series(imputer, series_of(holed), SCALER, W, device="cpu")
    values = result.series.values
    assert result.unfilled > 0
    assert np.isnan(values[95:105]).all()  # the middle of the outage: no window can vote
    assert not np.isnan(values[60:63]).any()  # its edges are filled from the neighbours
    assert result.unfilled == int(np.isnan(values).sum())


def test_reconstruct_raw_returns_the_newest_samples_in_each_window_baselines_units(
    imputer: SequenceAutoencoder,
) -> None:
    raw = plant(400, 4)
    windows, _ = make_windows(raw, W, 4)
    base = Baseline(
        center=SCALER.center, scale=SCALER.scale, err_mean=np.zeros(C), err_sq_mean=np.ones(C),
        precision=np.eye(C), threshold=1.0,
    )  # fmt: skip
    shifted = Baseline(**{**base.__dict__, "center": SCALER.center + 5.0})
    scorer = Scorer(imputer, device="cpu")
    clean = reconstruct_raw(scorer, windows, base, last=4)
    assert clean.shape == (len(windows), 4, C)
    with torch.inference_mode():
        scaled = torch.from_numpy(SCALER.transform(windows))
        expected = SCALER.inverse(
            imputer.reconstruct(scaled, torch.ones_like(scaled, dtype=torch.bool))[:, -4:].numpy()
        )
    np.testing.assert_allclose(clean, expected, rtol=1e-5, atol=1e-4)
    assert (
        np.abs(clean - windows[:, -4:]).mean()
        < 0.3 * np.abs(windows[:, -4:] - SCALER.center).mean()
    )
    # Per-window baselines: a window scaled around another centre comes back in its own units.
    per_window = reconstruct_raw(scorer, windows + 5.0, [shifted] * len(windows), last=4)
    np.testing.assert_allclose(per_window - 5.0, clean, atol=1e-3)
    with pytest.raises(ValueError, match="last"):
        reconstruct_raw(scorer, windows, base, last=0)


def test_embeddings_are_one_code_per_window_and_separate_operating_modes(
    imputer: SequenceAutoencoder,
) -> None:
    low = plant(600, 5)
    high = low.copy()
    high[:, 0] += 2.0  # another operating point: channel a one robust unit higher
    w_low, _ = make_windows(low, W, 4)
    w_high, _ = make_windows(high, W, 4)
    codes = embed_windows(imputer, np.concatenate([w_low, w_high]), SCALER, device="cpu")
    assert codes.shape == (len(w_low) + len(w_high), 8)
    a, b = codes[: len(w_low)], codes[len(w_low) :]
    between = np.linalg.norm(a.mean(0) - b.mean(0))
    within = np.sqrt(((a - a.mean(0)) ** 2).sum(1).mean())
    assert between > 0.5 * within


def test_generate_refuses_a_model_that_is_not_variational(imputer: SequenceAutoencoder) -> None:
    with pytest.raises(UnsupportedModelError, match="variational"):
        generate_windows(imputer, 10, SCALER)


def test_generate_draws_windows_in_raw_units() -> None:
    torch.manual_seed(0)
    model = SequenceAutoencoder(
        ModelConfig(C, W, hidden_size=8, latent_size=4, variant="variational")
    )
    out = generate_windows(model, 5, SCALER, seed=1, with_noise=True)
    assert out.shape == (5, W, C) and np.isfinite(out).all()
    # An untrained decoder outputs about zero in scaled units: the scaler's centre in raw units.
    assert np.abs(out.mean(axis=(0, 1)) - SCALER.center).max() < 3 * SCALER.scale.max()
    np.testing.assert_array_equal(out, generate_windows(model, 5, SCALER, seed=1, with_noise=True))


def test_cli_train_variant_then_impute_embed_generate(tmp_path: Path) -> None:
    raw = plant(1600, 6)
    frame = pd.DataFrame(raw, columns=["a", "b", "c"])
    frame.insert(0, "timestamp", pd.date_range("2026-01-01", periods=len(raw), freq="1s", tz="UTC"))
    normal = tmp_path / "normal.csv"
    frame.to_csv(normal, index=False)
    holed = frame.copy()
    holed.loc[300:303, "b"] = np.nan
    holed = holed.drop(index=range(500, 503))  # three missing grid slots
    gappy = tmp_path / "gappy.csv"
    holed.to_csv(gappy, index=False)
    models = tmp_path / "models"
    runner = CliRunner()
    common = [
        "--models",
        str(models),
        "--window",
        "16",
        "--hop",
        "4",
        "--epochs",
        "2",
        "--hidden",
        "8",
        "--latent",
        "4",
        "--device",
        "cpu",
    ]

    res = runner.invoke(
        cli,
        [
            "train",
            str(normal),
            "--profile",
            "vae",
            "--variant",
            "variational",
            "--kl-anneal-epochs",
            "1",
            *common,
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli, ["train", str(normal), "--profile", "deep", "--variant", "deep", *common]
    )
    assert res.exit_code == 0, res.output
    deep_meta = (models / "deep" / "v0001" / "model.json").read_text()
    assert '"variant": "deep"' in deep_meta and '"num_layers": 2' in deep_meta

    out = tmp_path / "imputed.csv"
    res = runner.invoke(
        cli,
        [
            "impute",
            str(gappy),
            "--profile",
            "vae",
            "--models",
            str(models),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    imputed = pd.read_csv(out)
    assert len(imputed) == len(frame) and not imputed[["a", "b", "c"]].isna().any().any()
    assert "13 samples imputed" in res.output  # 4 cells of b + 3 slots x 3 channels

    out = tmp_path / "codes.parquet"
    res = runner.invoke(
        cli,
        [
            "embed",
            str(normal),
            "--profile",
            "vae",
            "--models",
            str(models),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    codes = pd.read_parquet(out)
    assert list(codes.columns) == ["window_end", "z0", "z1", "z2", "z3"]
    assert len(codes) == (len(frame) - 16) // 4 + 1

    out = tmp_path / "synthetic.csv"
    res = runner.invoke(
        cli,
        [
            "generate",
            "--profile",
            "vae",
            "--models",
            str(models),
            "--n",
            "7",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    synthetic = pd.read_csv(out)
    assert len(synthetic) == 7 * 16 and list(synthetic.columns) == ["window", "step", "a", "b", "c"]

    res = runner.invoke(
        cli,
        ["generate", "--profile", "deep", "--models", str(models), "--n", "3", "--out", str(out)],
    )
    assert res.exit_code == 2 and "variational" in res.output

    res = runner.invoke(
        cli, ["train", str(normal), "--profile", "x", "--variant", "deep", "--layers", "1", *common]
    )
    assert res.exit_code == 2 and "num_layers" in res.output
