"""seqae.fused: the LSTM-AE + PCA detector, trained, saved, reloaded and served by the daemon."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from daemon.baselines import AssetBaselines
from daemon.engine import ProfileRegistry, ScoringEngine
from daemon.settings import BaselineSettings, EngineSettings
from daemon.windows import ReadyWindow
from seqae.artifacts import build_detector, load_profile, save_model
from seqae.cli import cli
from seqae.data import make_windows, nan_to_mask
from seqae.fused import FusedConfig, FusedDetector, FusedWithT2, build_fused, fused_config
from seqae.score import Scorer
from seqae.synth import generate_asset
from seqae.train import FittedProfile, TrainConfig, fit_profile

WINDOW, HOP = 10, 2
TINY = {"hidden_size": 8, "latent_size": 4}
S = 1_000_000_000
TP = ("sensors", 0)


@pytest.fixture(scope="module")
def history():  # type: ignore[no-untyped-def]
    return generate_asset("pump-1", 2400, seed=0, plant_seed=0)[0]


@pytest.fixture(scope="module")
def fitted(history) -> FittedProfile:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return fit_profile(
        [history],
        profile="pumps",
        window=WINDOW,
        hop=HOP,
        period_s=1.0,
        kind="fused",
        model_cfg=dict(TINY),
        train_cfg=TrainConfig(epochs=2, device="cpu"),
        progress=False,
    )


@pytest.fixture(scope="module")
def saved(fitted: FittedProfile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_model(root, "pumps", fitted.detector, fitted.baseline, fitted.meta)
    return root


@pytest.fixture(scope="module")
def windows(history) -> np.ndarray:  # type: ignore[no-untyped-def]
    return make_windows(history.values, WINDOW, HOP)[0]


def test_config_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        FusedConfig(3, WINDOW, ae={"hidden_size": 0})
    with pytest.raises(ValueError, match="variational"):
        FusedConfig(3, WINDOW, ae={"variant": "variational"})
    with pytest.raises(ValueError, match="pca: unknown keys \\['components'\\]"):
        FusedConfig(3, WINDOW, pca={"components": 2})
    with pytest.raises(ValueError, match="set once"):
        FusedConfig(3, WINDOW, ae={"window": 5})
    with pytest.raises(ValueError, match="unknown fused config keys \\['extra'\\]"):
        FusedConfig.from_dict({"n_channels": 3, "window": WINDOW, "extra": 1})


def test_cli_style_options_go_to_the_autoencoder() -> None:
    cfg = fused_config(3, WINDOW, {"hidden_size": 8, "latent_size": 4, "code_distance": False})
    assert cfg.ae == {"hidden_size": 8, "latent_size": 4} and not cfg.code_distance
    assert fused_config(3, WINDOW, {"ae": {"latent_size": 2}}).ae == {"latent_size": 2}
    assert type(build_fused(cfg)) is FusedWithT2
    assert type(build_fused(fused_config(3, WINDOW, {"use_pca": False}))) is FusedDetector


def test_a_saved_config_is_a_recipe_for_retraining(fitted: FittedProfile) -> None:
    """daemon.retrain passes the served config, less n_channels and window, back to
    fit_profile: the same detector comes out (PCA keeps its fitted component count)."""
    saved_cfg = fitted.detector.cfg.to_dict()
    recipe = {k: v for k, v in saved_cfg.items() if k not in ("n_channels", "window")}
    again = fused_config(saved_cfg["n_channels"], saved_cfg["window"], recipe)
    assert again.to_dict() == saved_cfg


def test_features_are_ae_errors_code_pca_q_and_t2(fitted: FittedProfile) -> None:
    det = fitted.detector
    channels = fitted.meta.channels
    c = len(channels)
    assert fitted.meta.kind == "fused" and isinstance(det, FusedWithT2)
    names = det.feature_names(channels)
    assert names[0] == f"ae:{channels[0]}" and names[c] == "code" and names[-1] == "pca:T2"
    assert len(names) == 2 * c + 2 == len(fitted.baseline.err_mean)
    assert fitted.meta.training["n_components"] == det.pca.cfg.n_components >= 1
    assert fitted.meta.training["epochs_run"] == 2


def test_features_match_the_two_models_they_fuse(
    fitted: FittedProfile, windows: np.ndarray
) -> None:
    det = fitted.detector
    b = fitted.baseline
    c = len(fitted.meta.channels)
    feats = Scorer(det, device="cpu").features(windows[:50], b.center, b.scale)
    ae_alone = Scorer(det.ae, device="cpu").features(windows[:50], b.center, b.scale)
    pca_alone = Scorer(det.pca, device="cpu").features(windows[:50], b.center, b.scale)
    np.testing.assert_allclose(feats[:, :c], ae_alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats[:, c + 1 :], pca_alone, rtol=1e-5, atol=1e-6)


def test_contributions_fold_into_channels_and_latent(
    fitted: FittedProfile, windows: np.ndarray
) -> None:
    det, b = fitted.detector, fitted.baseline
    faulty = windows[-40:].copy()
    faulty[:, :, 1] *= 0.5  # flow
    feats = Scorer(det, device="cpu").features(faulty, b.center, b.scale)
    assert feats.shape[1] == det.n_features
    score, contrib = b.scores(feats)
    per_channel, latent = det.fold_contributions(contrib)
    assert per_channel.shape == (40, len(fitted.meta.channels)) and latent.shape == (40,)
    np.testing.assert_allclose(per_channel.sum(axis=1) + latent, score, rtol=1e-4, atol=1e-4)
    assert np.bincount(per_channel.argmax(axis=1)).argmax() == 1  # the broken channel leads


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"use_pca": False}, [0, 1, 2, -1]),
        ({"ae_total": True}, [-1, -1, 0, 1, 2, -1]),
        ({"ae_total": True, "code_distance": False}, [-1, 0, 1, 2, -1]),
    ],
)
def test_other_feature_sets_keep_one_layout(options: dict[str, bool], expected: list[int]) -> None:
    torch.manual_seed(0)
    det = build_fused(fused_config(3, WINDOW, {**TINY, **options}))
    x = torch.randn(6, WINDOW, 3)
    mask = torch.ones_like(x, dtype=torch.bool)
    det.fit_linear(x.numpy(), mask.numpy())
    feats = Scorer(det, device="cpu").features(x.numpy(), np.zeros(3), np.ones(3))
    assert feats.shape == (6, det.n_features) and list(det.feature_channels()) == expected
    assert Scorer(det, device="cpu").has_latent == options.get("use_pca", True)
    per_channel, whole = det.fold_contributions(np.ones((6, det.n_features)))
    assert per_channel.sum() + whole.sum() == 6 * det.n_features


def test_code_distance_is_whitened_on_training_codes(
    fitted: FittedProfile,
    history,  # type: ignore[no-untyped-def]
) -> None:
    det = fitted.detector
    x, mask = nan_to_mask(
        fitted.baseline.scaler.transform(make_windows(history.values, WINDOW, 1)[0])
    )
    with torch.no_grad():
        d = det.code_distance(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
        far = det.code_distance(torch.from_numpy(x + 5.0), torch.from_numpy(mask)).numpy()
    # Training codes whitened: mean squared distance about 1 (a little less: shrinkage, and
    # these windows include the held-out tail).
    assert 0.5 < float(np.mean(d**2)) < 1.5
    assert float(np.median(far)) > 3 * float(np.median(d))


def test_save_and_load_round_trip_scores_identically(
    fitted: FittedProfile, saved: Path, windows: np.ndarray
) -> None:
    lp = load_profile(saved, "pumps")
    meta = json.loads((lp.path / "model.json").read_text())
    assert meta["kind"] == "fused" and meta["architecture"]["ae"] == TINY
    assert meta["architecture"]["pca"]["n_components"] == fitted.detector.pca.cfg.n_components
    assert sorted(p.name for p in lp.path.iterdir()) == ["model.json", "weights.safetensors"]
    tensors = load_file(str(lp.path / "weights.safetensors"))
    assert {"code_mean", "code_whiten", "pca.components", "ae.decoder.to_output.weight"} <= set(
        tensors
    )
    before = Scorer(fitted, device="cpu").score(windows, fitted.baseline)
    after = Scorer(lp, device="cpu").score(windows, lp.baseline)
    np.testing.assert_array_equal(after.score, before.score)
    np.testing.assert_array_equal(after.anomalous, before.anomalous)
    assert after.contributions.shape == (len(windows), len(lp.meta.channels))
    rebuilt = build_detector("fused", meta["architecture"])
    assert isinstance(rebuilt, FusedWithT2)


def test_a_fault_scores_above_normal(fitted: FittedProfile, windows: np.ndarray) -> None:
    scorer = Scorer(fitted, device="cpu")
    normal = scorer.score(windows[-100:], fitted.baseline)
    faulty = windows[-100:].copy()
    faulty[:, :, 1] *= 0.5  # flow halves at the same pressure and current: a broken relation
    broken = scorer.score(faulty, fitted.baseline)
    assert np.median(broken.score) > 5 * np.median(normal.score)
    assert broken.anomalous.mean() > 0.9 and normal.anomalous.mean() < 0.2


def _ready(asset: str, x: np.ndarray) -> list[ReadyWindow]:
    return [ReadyWindow(asset, (9 + HOP * i) * S, w, False, {TP: 10 + i}) for i, w in enumerate(x)]


def test_the_daemon_serves_a_fused_profile(
    saved: Path, windows: np.ndarray, tmp_path: Path
) -> None:
    registry = ProfileRegistry(saved, ["pumps"], "cpu")
    served = registry.get("pumps")
    assert served.loaded.meta.kind == "fused"
    engine = ScoringEngine(
        EngineSettings(), registry, AssetBaselines(BaselineSettings(mode="model"), tmp_path)
    )
    x = windows[-30:]
    engine.add("pumps", _ready("p1", x))
    out = engine.run(force=True, wait=True)
    expected = Scorer(served.loaded, device="cpu").score(x, served.loaded.baseline).score
    np.testing.assert_allclose([w.score for w in out.scored], expected, rtol=1e-5)
    point = out.scored[0].to_point()
    assert {f"err_{c}" for c in served.geometry.channels} <= set(point.fields)
    engine.close()


def test_seqae_train_kind_fused(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    csv = tmp_path / "pump.csv"
    lines = ["timestamp," + ",".join(history.channels)]
    for t, row in zip(history.timestamps[:1200] // 1_000_000, history.values[:1200], strict=True):
        lines.append(f"{t}," + ",".join(f"{v:.6g}" for v in row))
    csv.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            str(csv),
            "--profile",
            "pumps",
            "--models",
            str(tmp_path / "m"),
            "--kind",
            "fused",
            "--window",
            "10",
            "--hop",
            "2",
            "--epochs",
            "1",
            "--hidden",
            "8",
            "--latent",
            "4",
            "--device",
            "cpu",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    lp = load_profile(tmp_path / "m", "pumps")
    assert lp.meta.kind == "fused" and lp.meta.config["ae"]["hidden_size"] == 8
    assert len(lp.baseline.err_mean) == 2 * len(lp.meta.channels) + 2


def test_the_scorer_folds_contributions_into_channels_that_sum_to_the_score(
    fitted: FittedProfile, windows: np.ndarray
) -> None:
    scorer = Scorer(fitted, device="cpu")
    batch = scorer.score(windows[-50:], fitted.baseline)
    assert batch.contributions.shape == (50, len(fitted.meta.channels))
    total = batch.contributions.sum(axis=1) + batch.latent
    np.testing.assert_allclose(total, batch.score, rtol=1e-4, atol=1e-5)
    empty = scorer.score(windows[:0], fitted.baseline)
    assert len(empty.score) == 0 and empty.contributions.shape == (0, len(fitted.meta.channels))
