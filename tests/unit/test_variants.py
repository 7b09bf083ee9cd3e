"""Each autoencoder variant against the plain model on the same data, by its defining property.

The data are windows of three coupled oscillations with random phase, frequency and amplitude
(two intrinsic dimensions plus sensor noise); models are tiny and trained for a few seconds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from seqae.artifacts import build_detector, load_profile, save_model
from seqae.model import (
    ModelConfig,
    SequenceAutoencoder,
    encoder_jacobian_norm,
    gaussian_kl,
    jacobian_frobenius_sq,
)
from seqae.score import Scorer
from seqae.train import TrainConfig, fit_profile, train_network

W, C, LATENT = 16, 3, 8
SEED = int(os.environ.get("SEQAE_TEST_SEED", "0"))  # vary it to check robustness


def oscillations(n: int, seed: int, window: int = W) -> np.ndarray:
    """[n, window, 3]: sin, cos and a mix of both, with shared random phase and amplitude."""
    rng = np.random.default_rng(seed)
    t = np.arange(window)[None, :]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    amp = rng.uniform(0.5, 1.5, (n, 1))
    freq = rng.uniform(0.25, 0.4, (n, 1))
    a, b = amp * np.sin(freq * t + phase), amp * np.cos(freq * t + phase)
    x = np.stack([a, b, 0.5 * (a + b) + 0.3 * amp], axis=-1)
    return (x + 0.02 * rng.standard_normal(x.shape)).astype(np.float32)


TRAIN, VAL, TEST = oscillations(512, SEED), oscillations(128, SEED + 1), oscillations(256, SEED + 2)
X_TEST = torch.from_numpy(TEST)
M_TEST = torch.ones_like(X_TEST, dtype=torch.bool)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny LSTMs run fastest on one thread; on a busy 2-core machine two threads spin-wait
    each other and run ~40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fit(variant: str = "plain", epochs: int = 30, **knobs: object) -> SequenceAutoencoder:
    torch.manual_seed(SEED)
    cfg = ModelConfig(C, W, hidden_size=32, latent_size=LATENT, variant=variant, **knobs)  # type: ignore[arg-type]
    model = SequenceAutoencoder(cfg)
    train_cfg = TrainConfig(
        epochs=epochs, batch_size=64, lr=5e-3, patience=epochs, seed=SEED, device="cpu"
    )
    train_network(model, TRAIN, VAL, train_cfg, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def plain() -> SequenceAutoencoder:
    return fit("plain")


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean().detach())


def hoyer_sparsity(z: torch.Tensor) -> float:
    """Hoyer's measure per code, averaged: 0 for a flat code, 1 for a single active unit. It does
    not change when the code is scaled, so shrinking the code is not counted as sparsity."""
    k = z.shape[1]
    ratio = z.abs().sum(dim=1) / z.pow(2).sum(dim=1).sqrt().clamp_min(1e-12)
    return float(((math.sqrt(k) - ratio) / (math.sqrt(k) - 1)).mean())


def test_deep_stacks_layers_on_both_sides_and_trains(plain: SequenceAutoencoder) -> None:
    deep = fit("deep", num_layers=2)
    assert deep.encoder.lstm.num_layers == 2 and deep.decoder.lstm.num_layers == 2
    assert plain.encoder.lstm.num_layers == 1
    n_params = sum(p.numel() for p in deep.parameters())
    assert n_params > 1.5 * sum(p.numel() for p in plain.parameters())
    with torch.no_grad():
        err = mse(deep.reconstruct(X_TEST, M_TEST), X_TEST)
    assert err < 0.2 * float(X_TEST.var())  # it learned the windows, not just their mean
    with pytest.raises(ValueError, match="num_layers"):
        ModelConfig(C, W, variant="deep", num_layers=1)


def test_denoising_reconstructs_clean_signal_from_noisy_input_better(
    plain: SequenceAutoencoder,
) -> None:
    noise = 0.8  # heavy sensor noise, where a bottleneck alone does not clean the signal
    denoising = fit("denoising", epochs=45, noise_std=noise, mask_prob=0.2)
    noisy = X_TEST + noise * torch.randn(X_TEST.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        plain_err = mse(plain.reconstruct(noisy, M_TEST), X_TEST)
        denoise_err = mse(denoising.reconstruct(noisy, M_TEST), X_TEST)
    print(f"noisy -> clean MSE: plain {plain_err:.4f}, denoising {denoise_err:.4f}")
    assert denoise_err < 0.8 * plain_err


def test_sparse_latent_codes_are_sparser(plain: SequenceAutoencoder) -> None:
    sparse = fit("sparse", sparsity="l1", sparsity_weight=0.05)
    with torch.no_grad():
        h_plain = hoyer_sparsity(plain.encode(X_TEST, M_TEST))
        h_sparse = hoyer_sparsity(sparse.encode(X_TEST, M_TEST))
        err = mse(sparse.reconstruct(X_TEST, M_TEST), X_TEST)
    print(f"Hoyer sparsity: plain {h_plain:.3f}, sparse {h_sparse:.3f}")
    assert h_sparse > 1.3 * h_plain
    assert err < 0.2 * float(X_TEST.var())


def test_kl_sparsity_pulls_mean_activation_to_target() -> None:
    sparse = fit("sparse", epochs=20, sparsity="kl", sparsity_weight=0.1, sparsity_target=0.05)
    with torch.no_grad():
        z = sparse.encode(X_TEST, M_TEST)
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0  # a sigmoid code
    assert float(z.mean()) < 0.25  # an unpenalised sigmoid code sits near 0.5


def test_contractive_encoder_has_smaller_jacobian_norm(plain: SequenceAutoencoder) -> None:
    contractive = fit("contractive", epochs=20, contractive_weight=0.05)
    j_plain = float(encoder_jacobian_norm(plain, X_TEST, M_TEST).mean())
    j_contractive = float(encoder_jacobian_norm(contractive, X_TEST, M_TEST).mean())
    print(f"||dz/dx||_F: plain {j_plain:.3f}, contractive {j_contractive:.3f}")
    assert j_contractive < 0.5 * j_plain


def test_random_projection_estimate_is_unbiased_for_the_jacobian_norm(
    plain: SequenceAutoencoder,
) -> None:
    torch.manual_seed(3)
    x = X_TEST[:32].clone().requires_grad_(True)
    z = plain.encode(x, M_TEST[:32])
    exact = jacobian_frobenius_sq(z, x, None)
    estimate = jacobian_frobenius_sq(z, x, 400)
    rel = float(((estimate - exact).abs() / exact).mean())
    assert rel < 0.2  # 400 projections: relative error ~ sqrt(2/400) per window


@pytest.fixture(scope="module")
def vae() -> SequenceAutoencoder:
    return fit("variational", epochs=40, kl_anneal_epochs=5)


def test_vae_kl_term_stays_bounded(vae: SequenceAutoencoder) -> None:
    unregularised = fit("variational", epochs=40, kl_anneal_epochs=5, kl_weight=0.0)
    with torch.no_grad():
        kl = float(gaussian_kl(*vae.encoder.posterior(X_TEST, M_TEST)).mean())
        kl_free = float(gaussian_kl(*unregularised.encoder.posterior(X_TEST, M_TEST)).mean())
    print(f"KL per window (nats): beta=1 {kl:.2f}, beta=0 {kl_free:.2f}")
    assert math.isfinite(kl) and 0.5 < kl < 2.0 * LATENT  # informative, yet bounded
    assert kl < 0.5 * kl_free


def sample_discrepancy(samples: torch.Tensor, data: torch.Tensor) -> float:
    """Per-channel |mean gap| / data std + |log std ratio|, averaged over channels."""
    d_mean, d_std = data.mean(dim=(0, 1)), data.std(dim=(0, 1))
    s_mean, s_std = samples.mean(dim=(0, 1)), samples.std(dim=(0, 1))
    return float(((s_mean - d_mean).abs() / d_std + (s_std / d_std).log().abs()).mean())


def test_vae_samples_match_training_statistics(
    vae: SequenceAutoencoder, plain: SequenceAutoencoder
) -> None:
    z = torch.randn(2000, LATENT, generator=torch.Generator().manual_seed(11))
    data = torch.from_numpy(TRAIN)
    with torch.no_grad():
        vae_samples, plain_samples = vae.decode(z), plain.decode(z)
    d_vae, d_plain = sample_discrepancy(vae_samples, data), sample_discrepancy(plain_samples, data)
    print(f"sample discrepancy: vae {d_vae:.3f}, plain {d_plain:.3f}")
    ratio = vae_samples.std(dim=(0, 1)) / data.std(dim=(0, 1))
    gap = (vae_samples.mean(dim=(0, 1)) - data.mean(dim=(0, 1))).abs() / data.std(dim=(0, 1))
    assert bool((ratio > 0.75).all() and (ratio < 1.25).all()), ratio
    assert bool((gap < 0.15).all()), gap
    assert d_vae < d_plain


def test_vae_score_is_deterministic_and_independent_of_the_batch(vae: SequenceAutoencoder) -> None:
    with torch.inference_mode():
        whole = vae.channel_errors(X_TEST, M_TEST)
        again = vae.channel_errors(X_TEST, M_TEST)
        reversed_batch = vae.channel_errors(X_TEST.flip(0), M_TEST).flip(0)
        recon = vae.channel_errors(X_TEST, M_TEST)
    torch.testing.assert_close(whole, again)
    torch.testing.assert_close(whole, reversed_batch, rtol=1e-4, atol=1e-5)
    assert whole.shape == (len(X_TEST), C) and bool((recon > 0).all())
    # An anomalous window (a channel stuck at a wrong level) has a larger expected error.
    broken = X_TEST.clone()
    broken[:, :, 2] = 3.0
    with torch.inference_mode():
        assert float(vae.channel_errors(broken, M_TEST)[:, 2].mean()) > 3 * float(
            whole[:, 2].mean()
        )


def test_old_model_configs_still_load_as_plain() -> None:
    old = {"n_channels": 3, "window": 16, "hidden_size": 8, "latent_size": 4, "num_layers": 1,
           "bidirectional": False, "dropout": 0.0}  # fmt: skip
    model = build_detector("lstm", old)
    assert model.cfg.variant == "plain"
    with pytest.raises(ValueError, match="variant"):
        ModelConfig(3, 16, variant="wavelet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask_prob"):
        ModelConfig(3, 16, variant="denoising", mask_prob=1.5)


@pytest.mark.parametrize("variant", ["deep", "denoising", "sparse", "contractive", "variational"])
def test_every_variant_trains_saves_and_loads_through_one_model_file(
    variant: str, tmp_path: Path
) -> None:
    from seqae.data import Series

    values = np.concatenate(list(oscillations(60, 5, window=20)))  # [1200, 3]
    series = Series(np.arange(len(values), dtype=np.int64) * 1_000_000_000, values, ["a", "b", "c"])
    cfg = {"hidden_size": 8, "latent_size": 4, "variant": variant}
    if variant == "deep":
        cfg["num_layers"] = 2
    fitted = fit_profile(
        [series], profile="p", window=W, hop=4, period_s=1.0, model_cfg=cfg,
        train_cfg=TrainConfig(epochs=2, device="cpu"), progress=False,
    )  # fmt: skip
    version = save_model(tmp_path, "p", fitted.detector, fitted.baseline, fitted.meta)
    loaded = load_profile(tmp_path, "p", version)
    assert loaded.detector.cfg.variant == variant
    windows = np.stack([values[i : i + W] for i in range(0, 200, 10)])
    before = Scorer(fitted.detector, device="cpu").score(windows, fitted.baseline).score
    after = Scorer(loaded.detector, device="cpu").score(windows, loaded.baseline).score
    np.testing.assert_allclose(before, after, rtol=1e-5)
