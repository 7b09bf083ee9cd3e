"""seqae.fused with select="auto": the autoencoder keeps its place only if it generalises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from seqae.artifacts import load_profile, save_model
from seqae.cli import cli
from seqae.data import Series, make_windows, nan_to_mask
from seqae.fused import FusedConfig, FusedDetector, FusedWithT2, build_fused, fused_config
from seqae.score import Scorer
from seqae.synth import generate_asset
from seqae.train import FittedProfile, TrainConfig, fit_profile

WINDOW, HOP = 10, 2
TINY = {"hidden_size": 8, "latent_size": 4}


@pytest.fixture(scope="module")
def history() -> Series:
    return generate_asset("pump-1", 2400, seed=0, plant_seed=0)[0]


def _fit(history: Series, model_cfg: dict[str, Any], **train: Any) -> FittedProfile:
    torch.set_num_threads(1)
    return fit_profile(
        [history],
        profile="pumps",
        window=WINDOW,
        hop=HOP,
        period_s=1.0,
        kind="fused",
        model_cfg=model_cfg,
        train_cfg=TrainConfig(device="cpu", **train),
        progress=False,
    )


@pytest.fixture(scope="module")
def untrained(history: Series) -> FittedProfile:
    """A network that cannot fit: one epoch at a learning rate too small to move it."""
    return _fit(history, {**TINY, "select": "auto"}, epochs=1, lr=1e-7)


@pytest.fixture(scope="module")
def curve() -> Series:
    """Four channels that are functions of one slow variable u (u, u², |u|, u³): a curve that
    one number places, but that a single principal component cannot follow (u² and |u| do
    not correlate with u)."""
    t = np.arange(2400)
    u = np.sin(2 * np.pi * t / 150)[:, None]
    noise = 0.03 * np.random.default_rng(0).standard_normal((len(t), 4))
    values = (np.hstack([u, u**2, np.abs(u), u**3]) + noise).astype(np.float32)
    return Series(t * 1_000_000_000, values, [f"c{j}" for j in range(4)], asset="curve")


@pytest.fixture(scope="module")
def trained(curve: Series) -> FittedProfile:
    """An autoencoder with a code of one number that learns the curve; `use_ae` starts False,
    as in a retrain recipe of a model that had chosen PCA: the training decides again."""
    cfg = {"hidden_size": 16, "latent_size": 1, "select": "auto", "use_ae": False}
    return _fit(curve, cfg, epochs=20, lr=1e-2)


def test_config_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="select: 'sometimes'"):
        FusedConfig(3, WINDOW, select="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="select_ratio: must be > 0"):
        FusedConfig(3, WINDOW, select_ratio=0.0)
    with pytest.raises(ValueError, match="use_pca"):
        FusedConfig(3, WINDOW, use_pca=False, use_ae=False)
    with pytest.raises(ValueError, match="select_ae_alone: must be above select_explained"):
        FusedConfig(3, WINDOW, select_explained=0.5, select_ae_alone=0.5)
    with pytest.raises(ValueError, match="select_by: 'luck'"):
        FusedConfig(3, WINDOW, select_by="luck")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="select_explained: must be below 1"):
        FusedConfig(3, WINDOW, select_explained=1.0)
    cfg = fused_config(3, WINDOW, {"hidden_size": 8, "select": "auto", "select_ratio": 0.5})
    assert cfg.select == "auto" and cfg.select_ratio == 0.5 and cfg.ae == {"hidden_size": 8}
    # A retrain recipe carries the last decision; with select "auto" training decides again.
    again = fused_config(3, WINDOW, {"select": "auto", "use_ae": False, "use_pca": False})
    assert again.use_ae and again.use_pca


def test_a_network_that_cannot_fit_leaves_pca_alone(untrained: FittedProfile) -> None:
    det, meta = untrained.detector, untrained.meta
    selection = meta.training["selection"]
    assert selection["selected"] == "pca" and not det.cfg.use_ae
    assert selection["ae_to_linear_code"] > 2 * det.cfg.select_ratio
    assert selection["ae_held_out_mse"] > selection["linear_code_held_out_mse"] > 0
    assert selection["ae_explained"] < det.cfg.select_explained / 2  # it explains nothing
    c = len(meta.channels)
    assert det.feature_names(meta.channels) == [f"pca:{ch}" for ch in meta.channels] + ["pca:T2"]
    assert len(untrained.baseline.err_mean) == c + 1 == det.n_features
    assert list(det.feature_channels()) == [*range(c), -1]


def test_pca_alone_scores_what_the_pca_inside_scores(
    untrained: FittedProfile, history: Series
) -> None:
    det, b = untrained.detector, untrained.baseline
    windows = make_windows(history.values, WINDOW, HOP)[0][:60]
    feats = Scorer(det, device="cpu").features(windows, b.center, b.scale)
    pca_alone = Scorer(det.pca, device="cpu").features(windows, b.center, b.scale)
    np.testing.assert_allclose(feats, pca_alone, rtol=1e-5, atol=1e-6)
    batch = Scorer(untrained, device="cpu").score(windows, b)
    np.testing.assert_allclose(batch.contributions.sum(axis=1) + batch.latent, batch.score, 1e-4)


def test_an_autoencoder_that_generalises_keeps_its_place(trained: FittedProfile) -> None:
    det, meta = trained.detector, trained.meta
    selection = meta.training["selection"]
    assert selection["selected"] == "ae+pca" and det.cfg.use_ae
    assert selection["ae_to_linear_code"] < 0.5  # well below the best linear code of its size
    assert selection["ae_explained"] > 0.8
    c = len(meta.channels)
    assert len(trained.baseline.err_mean) == 2 * c + 2 == det.n_features
    assert det.feature_names(meta.channels)[c] == "code"


def test_the_decision_follows_the_ratio(trained: FittedProfile, curve: Series) -> None:
    """The same windows, a stricter ratio: the autoencoder loses its place."""
    det = build_fused(FusedConfig.from_dict(trained.detector.cfg.to_dict()))
    det.load_state_dict(trained.detector.state_dict())
    scaled = trained.baseline.scaler.transform(make_windows(curve.values, WINDOW, 5)[0])
    x, mask = nan_to_mask(scaled)
    first = det.select_features(x[:300], x[300:], mask[300:])
    assert det.cfg.use_ae == (first["ae_to_linear_code"] <= det.cfg.select_ratio)
    det.cfg.select_ratio = first["ae_to_linear_code"] * 0.99
    again = det.select_features(x[:300], x[300:], mask[300:])
    assert again["ae_to_linear_code"] == first["ae_to_linear_code"] and not det.cfg.use_ae
    det.cfg.select_by, det.cfg.select_ae_alone = "explained", 1.0  # PCA stays beside it
    for bar, keeps in ((first["ae_explained"] * 0.99, True), (first["ae_explained"] * 1.01, False)):
        det.cfg.select_explained = bar
        assert det.select_features(x[:300], x[300:], mask[300:])["ae_explained"] == pytest.approx(
            first["ae_explained"]
        )
        assert det.cfg.use_ae is keeps
    with pytest.raises(ValueError, match="no held-out windows"):
        det.select_features(x, x[:0], mask[:0])


def test_select_fixed_keeps_the_configured_features(history: Series) -> None:
    fitted = _fit(history, {**TINY, "pca": {"n_components": 1}}, epochs=1, lr=1e-7)
    assert "selection" not in fitted.meta.training and fitted.detector.cfg.use_ae


@pytest.mark.parametrize("which", ["untrained", "trained"])
def test_the_decision_is_saved_and_scores_identically_after_load(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    fitted: FittedProfile = request.getfixturevalue(which)
    series: Series = request.getfixturevalue("history" if which == "untrained" else "curve")
    save_model(tmp_path, "pumps", fitted.detector, fitted.baseline, fitted.meta)
    lp = load_profile(tmp_path, "pumps")
    meta = json.loads((lp.path / "model.json").read_text())
    assert meta["architecture"]["select"] == "auto"
    assert meta["architecture"]["use_ae"] is fitted.detector.cfg.use_ae
    assert (
        meta["training"]["selection"]["selected"] == fitted.meta.training["selection"]["selected"]
    )
    assert (
        isinstance(lp.detector, FusedWithT2)
        and lp.detector.cfg.use_ae == fitted.detector.cfg.use_ae
    )
    windows = make_windows(series.values, WINDOW, HOP)[0]
    before = Scorer(fitted, device="cpu").score(windows, fitted.baseline)
    after = Scorer(lp, device="cpu").score(windows, lp.baseline)
    np.testing.assert_array_equal(after.score, before.score)
    np.testing.assert_array_equal(after.contributions, before.contributions)


def _csv(series: Series, path: Path, rows: int) -> Path:
    lines = ["timestamp," + ",".join(series.channels)]
    stamps = series.timestamps[:rows] // 1_000_000
    for t, row in zip(stamps, series.values[:rows], strict=True):
        lines.append(f"{t}," + ",".join(f"{v:.6g}" for v in row))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_seqae_train_select_auto(history: Series, tmp_path: Path) -> None:
    csv = _csv(history, tmp_path / "pump.csv", 1200)
    base = ["train", str(csv), "--profile", "pumps", "--models", str(tmp_path / "m")]
    tiny = ["--window", "10", "--hop", "2", "--epochs", "1", "--hidden", "8", "--latent", "4"]
    result = CliRunner().invoke(
        cli, [*base, *tiny, "--kind", "fused", "--select", "auto", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    lp = load_profile(tmp_path / "m", "pumps")
    assert lp.meta.config["select"] == "auto" and lp.meta.config["ae"]["hidden_size"] == 8
    assert lp.meta.training["selection"]["selected"] in ("ae+pca", "pca")
    assert "the autoencoder explains" in result.output
    wrong = CliRunner().invoke(cli, [*base, "--kind", "pca", "--select", "auto"])
    assert wrong.exit_code != 0 and "--select auto applies to --kind fused" in wrong.output


def test_a_network_that_explains_nearly_everything_is_scored_alone(
    curve: Series, tmp_path: Path
) -> None:
    """select_by "explained": at or above select_ae_alone PCA's features are dropped, the
    detector is the class a reload builds, and it scores the same after a reload."""
    cfg = {"hidden_size": 16, "latent_size": 1, "select": "auto", "select_by": "explained"}
    fitted = _fit(curve, {**cfg, "select_ae_alone": 0.8}, epochs=20, lr=1e-2)
    det, meta = fitted.detector, fitted.meta
    selection = meta.training["selection"]
    assert selection["ae_explained"] >= 0.8 and selection["selected"] == "ae"
    assert type(det) is FusedDetector and not det.cfg.use_pca and det.cfg.use_ae
    assert det.feature_names(meta.channels) == [f"ae:{c}" for c in meta.channels] + ["code"]
    assert len(fitted.baseline.err_mean) == det.n_features == len(meta.channels) + 1
    save_model(tmp_path, "pumps", det, fitted.baseline, meta)
    lp = load_profile(tmp_path, "pumps")
    assert type(lp.detector) is FusedDetector and not lp.detector.cfg.use_pca
    windows = make_windows(curve.values, WINDOW, HOP)[0]
    before = Scorer(fitted, device="cpu").score(windows, fitted.baseline)
    after = Scorer(lp, device="cpu").score(windows, lp.baseline)
    np.testing.assert_array_equal(after.score, before.score)
    # The same network below the bar keeps PCA beside it.
    both = _fit(curve, {**cfg, "select_ae_alone": 1.0}, epochs=20, lr=1e-2)
    assert both.meta.training["selection"]["selected"] == "ae+pca"
    assert type(both.detector) is FusedWithT2
