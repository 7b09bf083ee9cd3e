"""Imputation, clean signals, embeddings and generation from a trained autoencoder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from seqae.calibrate import Baseline, CalibrationError, fit_baseline
from seqae.cli import cli
from seqae.data import RobustScaler, Series, make_windows, nan_to_mask
from seqae.extras import (
    CHOICE_MARGIN,
    ImputeRule,
    UnsupportedModelError,
    choose_rule,
    cut_holes,
    denoise_series,
    denoising_note,
    embed_windows,
    fill_gap,
    gap_runs,
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
    rng = np.random.default_rng([seed, 1])
    return (plant_clean(n, seed) + 0.02 * rng.standard_normal((n, 3))).astype(np.float32)


def plant_clean(n: int, seed: int) -> np.ndarray:
    """`plant` without its sensor noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    phase = np.cumsum(rng.uniform(0.25, 0.4, n))
    amp = 1.0 + 0.4 * np.sin(2 * np.pi * t / 700.0 + rng.uniform(0, 6))
    a, b = amp * np.sin(phase), amp * np.cos(phase)
    return np.stack([10.0 + a, 50.0 + 4.0 * b, 3.0 + 0.5 * (a + b)], axis=1).astype(np.float32)


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


def holed_by_length(values: np.ndarray, length: int, seed: int) -> np.ndarray:
    """bool [T, C]: 12 holes of `length` samples per channel, cut where the series is observed."""
    return cut_holes(values, length, per_channel=12, spacing=W, seed=seed)


def naive_fill(holed: np.ndarray, method: str) -> np.ndarray:
    out = holed.astype(np.float64)
    for c in range(holed.shape[1]):
        for start, stop in gap_runs(holed[:, c]):
            out[start:stop, c] = fill_gap(holed[:, c].astype(np.float64), None, start, stop, method)
    return out


@pytest.mark.parametrize("length", [1, 5, 20])
def test_impute_is_no_worse_than_ffill_or_linear_on_each_gap_length(
    imputer: SequenceAutoencoder, length: int
) -> None:
    rule, _ = choose_rule(imputer, TRAIN_RAW, SCALER, W, device="cpu")  # chosen on normal data
    truth = plant(1500, SEED + 1)
    holes = holed_by_length(truth, length, seed=SEED + 2)
    holed = np.where(holes, np.nan, truth)
    result = impute_series(imputer, series_of(holed), SCALER, W, rule=rule, device="cpu")
    assert result.unfilled == 0 and bool((result.filled == holes).all())
    np.testing.assert_array_equal(result.series.values[~holes], truth[~holes])
    assert sum(result.gaps_by_method.values()) == holes.sum() // length

    def mae(filled: np.ndarray) -> float:  # in each channel's scale
        return float(np.abs((filled - truth) / SCALER.scale)[holes].mean())

    ours, ffill, linear = (
        mae(result.series.values),
        mae(naive_fill(holed, "ffill")),
        mae(naive_fill(holed, "linear")),
    )
    print(
        f"gap {length}: impute {ours:.4f}, ffill {ffill:.4f}, linear {linear:.4f}, {result.gaps_by_method}"
    )
    assert ours <= min(ffill, linear)


def test_the_rule_is_chosen_from_the_holes_cut_in_normal_data(
    imputer: SequenceAutoencoder,
) -> None:
    rule, table = choose_rule(imputer, TRAIN_RAW, SCALER, W, lengths=(1, 20), device="cpu")
    assert rule.lengths == (1, 20) and len(rule.methods) == C
    for i, length in enumerate(rule.lengths):
        for c in range(C):
            row = table[str(length)][str(c)]
            naive = min(row["ffill"], row["linear"])
            chosen = rule.methods[c][i]
            assert row["chosen"] == chosen and row["holes"] > 0
            if chosen in ("model", "bridge"):
                assert row[chosen] < (1 - CHOICE_MARGIN) * naive
            else:
                assert row[chosen] == naive
    assert (
        rule.method_for(0, 7) == rule.methods[0][0] and rule.method_for(0, 99) == rule.methods[0][1]
    )


def test_bridge_meets_both_neighbours_and_falls_back_without_a_reconstruction() -> None:
    column = np.array([1.0, 2.0, np.nan, np.nan, np.nan, 6.0, 7.0])
    recon = np.array([0.0, 0.0, 3.0, 3.0, 3.0, 3.0, 0.0])  # offset 2 before, 3 after the gap
    np.testing.assert_allclose(fill_gap(column, recon, 2, 5, "bridge"), [5.25, 5.5, 5.75])
    np.testing.assert_allclose(fill_gap(column, recon, 2, 5, "model"), [3.0, 3.0, 3.0])
    np.testing.assert_allclose(fill_gap(column, None, 2, 5, "bridge"), [3.0, 4.0, 5.0])
    np.testing.assert_allclose(fill_gap(column, None, 2, 5, "ffill"), [2.0, 2.0, 2.0])
    leading = np.array([np.nan, np.nan, 4.0])
    np.testing.assert_allclose(fill_gap(leading, None, 0, 2, "linear"), [4.0, 4.0])
    with pytest.raises(ValueError, match="imputation method"):
        fill_gap(column, None, 2, 5, "spline")


def test_imputation_leaves_unobserved_channels_and_gaps_over_max_gap_missing(
    imputer: SequenceAutoencoder,
) -> None:
    holed = plant(200, 3)
    holed[60:140, 0] = np.nan  # 80 samples of one channel
    holed[10:13, 1] = np.nan
    result = impute_series(imputer, series_of(holed), SCALER, W, max_gap=50, device="cpu")
    values = result.series.values
    assert np.isnan(values[60:140, 0]).all() and not np.isnan(values[10:13, 1]).any()
    assert result.unfilled == 80 == int(np.isnan(values).sum())
    silent = holed.copy()
    silent[:, 2] = np.nan  # a channel never observed: nothing to anchor a fill on
    result = impute_series(
        imputer, series_of(silent), SCALER, W, rule=ImputeRule.everywhere("linear", C)
    )
    assert np.isnan(result.series.values[:, 2]).all()
    with pytest.raises(ValueError, match="max_gap"):
        impute_series(imputer, series_of(holed), SCALER, W, max_gap=0)


def test_denoising_reduces_the_error_against_the_clean_signal() -> None:
    clean_train, clean_test = plant_clean(3000, SEED + 7), plant_clean(1000, SEED + 8)
    rng = np.random.default_rng(SEED + 9)
    noise = 0.15 * SCALER.scale  # white sensor noise, 0.15 robust units per channel
    noisy_train = (clean_train + noise * rng.standard_normal(clean_train.shape)).astype(np.float32)
    noisy_test = (clean_test + noise * rng.standard_normal(clean_test.shape)).astype(np.float32)
    torch.manual_seed(SEED)
    scaled = SCALER.transform(noisy_train)
    model = SequenceAutoencoder(
        ModelConfig(C, W, hidden_size=32, latent_size=8, variant="denoising", noise_std=0.1)
    )
    train_network(
        model,
        make_windows(scaled[:2500], W, 2)[0],
        make_windows(scaled[2500:], W, 4)[0],
        TrainConfig(epochs=15, lr=5e-3, batch_size=64, seed=SEED, device="cpu"),
        progress=False,
    )
    denoised = denoise_series(model, series_of(noisy_test), SCALER, W, device="cpu").values
    assert denoised.shape == noisy_test.shape and not np.isnan(denoised).any()
    raw_err = np.sqrt((((noisy_test - clean_test) / SCALER.scale) ** 2).mean())
    den_err = np.sqrt((((denoised - clean_test) / SCALER.scale) ** 2).mean())
    print(
        f"RMSE against the clean signal (robust units): raw {raw_err:.4f}, denoised {den_err:.4f}"
    )
    assert den_err < 0.8 * raw_err
    assert denoising_note(model) is None and "not a denoising" in str(
        denoising_note(SequenceAutoencoder(ModelConfig(C, W)))
    )


def test_likelihood_score_is_the_vae_nll_and_ranks_faults_above_normal() -> None:
    torch.manual_seed(SEED)
    scaled = SCALER.transform(TRAIN_RAW)
    vae = SequenceAutoencoder(
        ModelConfig(C, W, hidden_size=32, latent_size=8, variant="variational", kl_anneal_epochs=3)
    )
    train_network(
        vae,
        make_windows(scaled[:2500], W, 2)[0],
        make_windows(scaled[2500:], W, 4)[0],
        TrainConfig(epochs=12, lr=5e-3, batch_size=64, seed=SEED, device="cpu"),
        progress=False,
    )
    scorer = Scorer(vae.eval(), device="cpu")
    calib, _ = make_windows(plant(1200, SEED + 3), W, 2)
    base = fit_baseline(scorer, calib, hop=2, score_kind="likelihood", scaler=SCALER)
    normal = plant(600, SEED + 4)
    faulty = normal.copy()
    a, b = normal[:, 0] - 10.0, (normal[:, 1] - 50.0) / 4.0
    faulty[:, 2] = 3.0 + 0.5 * (a - b)  # c follows a and b with the wrong sign on b
    w_normal, _ = make_windows(normal, W, 4)
    w_faulty, _ = make_windows(faulty, W, 4)
    s_normal = scorer.score(w_normal, base).score
    s_faulty = scorer.score(w_faulty, base).score
    print(
        f"likelihood score: normal median {np.median(s_normal):.2f}, fault min {s_faulty.min():.2f}"
    )
    assert np.median(s_faulty) > np.quantile(s_normal, 0.99)
    assert (s_faulty > base.threshold).mean() > 0.9 and (s_normal > base.threshold).mean() < 0.1
    # The score is the model's own reconstruction NLL per time step.
    with torch.inference_mode():
        x, m = nan_to_mask(SCALER.transform(w_normal))
        nll = vae.reconstruction_nll(torch.from_numpy(x), torch.from_numpy(m)).numpy()
    np.testing.assert_allclose(s_normal, nll, rtol=1e-4, atol=1e-4)
    again = Baseline.from_dict(base.to_dict())
    feats = scorer.features(w_normal, SCALER.center, SCALER.scale)
    np.testing.assert_array_equal(again.scores(feats)[0], base.scores(feats)[0])
    with pytest.raises(CalibrationError, match="variational"):
        plain = Scorer(SequenceAutoencoder(ModelConfig(C, W)), device="cpu")
        fit_baseline(plain, calib, hop=2, score_kind="likelihood", scaler=SCALER)


def test_reconstruct_raw_returns_the_newest_samples_in_each_window_baselines_units(
    imputer: SequenceAutoencoder,
) -> None:
    raw = plant(400, 4)
    windows, _ = make_windows(raw, W, 4)
    base = Baseline(
        center=SCALER.center, scale=SCALER.scale, err_mean=np.zeros(C), err_sq_mean=np.ones(C),
        precision=np.eye(C), threshold=1.0,
    )  # fmt: skip
    shifted = replace(base, center=SCALER.center + 5.0)
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
            "--kind",
            "lstm",
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
    assert "gaps filled by method:" in res.output and "chosen per channel" in res.output

    out = tmp_path / "denoised.csv"
    res = runner.invoke(
        cli,
        ["denoise", str(gappy), "--profile", "vae", "--models", str(models), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    denoised = pd.read_csv(out)
    assert len(denoised) == len(holed) and list(denoised.columns) == ["timestamp", "a", "b", "c"]
    assert "not a denoising model" in res.output and not denoised.isna().any().any()

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
