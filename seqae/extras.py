"""What a trained autoencoder gives beyond the anomaly score, in raw units.

- `impute_series`: fill missing samples by masked reconstruction (the mask input tells the
  encoder which samples are missing; every window that covers a missing sample votes).
- `reconstruct_raw`: the reconstructed ("clean") values of scored windows, for `seqae_clean`.
- `embed_windows`: the latent code per window, for dimensionality reduction and clustering.
- `generate_windows`: synthetic normal windows drawn from a variational model's prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from seqae.calibrate import Baseline
from seqae.data import DataError, RobustScaler, Series, make_windows, nan_to_mask
from seqae.score import Scorer, pick_device


class UnsupportedModelError(ValueError):
    """The model cannot do what was asked (e.g. generate from a non-variational profile)."""


@dataclass
class Imputation:
    series: Series  # missing samples filled where a window could vote
    filled: np.ndarray  # bool [T, C] cells that were missing and are now filled
    unfilled: int  # missing cells left NaN: no window around them had enough observations


def _prepare(detector: Any, device: str) -> tuple[Any, torch.device]:
    dev = pick_device(device)
    detector = getattr(detector, "detector", detector).to(dev).eval()
    detector.compact()
    return detector, dev


def impute_series(
    detector: Any,
    series: Series,
    scaler: RobustScaler,
    window: int,
    *,
    hop: int = 1,
    min_observed: float = 0.5,
    device: str = "auto",
    batch_size: int = 4096,
) -> Imputation:
    """Fill the NaN cells of a series on the model's sampling grid.

    Each window with at least `min_observed` of its samples observed is reconstructed from its
    observed samples; a missing cell takes the mean of the reconstructions of the windows that
    cover it. Observed cells are never changed.
    """
    if not 0.0 < min_observed <= 1.0:
        raise ValueError(f"min_observed must be in (0, 1], got {min_observed}")
    values = series.values
    if values.shape[1] != len(scaler.center):
        raise DataError(
            f"series {series.asset!r} has {values.shape[1]} channels, the model {len(scaler.center)}"
        )
    missing = np.isnan(values)
    total = np.zeros(values.shape, np.float64)
    votes = np.zeros(values.shape, np.int64)
    if missing.any():
        scaled = scaler.transform(values)
        windows, ends = make_windows(scaled, window, hop)
        if ends[-1] != len(values) - 1:  # the last rows get a window of their own
            windows = np.concatenate([windows, scaled[None, -window:]])
            ends = np.append(ends, len(values) - 1)
        x_all, m_all = nan_to_mask(windows)
        usable = m_all.mean(axis=(1, 2)) >= min_observed
        x_all, m_all, ends = x_all[usable], m_all[usable], ends[usable]
        detector, dev = _prepare(detector, device)
        offsets = np.arange(window) - (window - 1)
        with torch.inference_mode():
            for i in range(0, len(x_all), batch_size):
                x = torch.from_numpy(x_all[i : i + batch_size]).to(dev)
                m = torch.from_numpy(m_all[i : i + batch_size]).to(dev)
                recon = detector.reconstruct(x, m).float().cpu().numpy()  # [B, W, C]
                rows = ends[i : i + batch_size, None] + offsets  # [B, W]
                np.add.at(total, rows, recon)
                np.add.at(votes, rows, 1)
    fill = missing & (votes > 0)
    mean_scaled = total / np.maximum(votes, 1)
    filled_values = np.where(fill, scaler.inverse(mean_scaled.astype(np.float32)), values)
    return Imputation(
        series=replace(series, values=filled_values.astype(np.float32)),
        filled=fill,
        unfilled=int((missing & ~fill).sum()),
    )


def _per_window(
    baselines: Baseline | Sequence[Baseline], n: int, c: int
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(baselines, Baseline):
        return baselines.center[None, None, :], baselines.scale[None, None, :]
    if len(baselines) != n:
        raise ValueError(f"{n} windows but {len(baselines)} baselines")
    center = np.stack([b.center for b in baselines]).reshape(n, 1, c)
    scale = np.stack([b.scale for b in baselines]).reshape(n, 1, c)
    return center, scale


def reconstruct_raw(
    scorer: Scorer,
    windows: np.ndarray,
    baselines: Baseline | Sequence[Baseline],
    last: int | None = None,
) -> np.ndarray:
    """Reconstructions [N, last, C] in raw units of raw windows [N, W, C] (NaN = missing), each
    scaled with its own baseline; `last` keeps only the newest samples (the daemon writes the
    last `hop` samples of each window, so every sample is written once)."""
    n, w, c = windows.shape
    last = w if last is None else last
    if not 1 <= last <= w:
        raise ValueError(f"last must be in [1, {w}], got {last}")
    center, scale = _per_window(baselines, n, c)
    x_np, m_np = nan_to_mask((windows - center) / scale)
    out = np.empty((n, last, c), np.float32)
    with torch.inference_mode():
        for i in range(0, n, scorer.batch_size):
            x = torch.from_numpy(x_np[i : i + scorer.batch_size]).to(scorer.device)
            m = torch.from_numpy(m_np[i : i + scorer.batch_size]).to(scorer.device)
            recon = scorer.detector.reconstruct(x, m)[:, w - last :].float().cpu().numpy()
            out[i : i + len(recon)] = recon
    return (out * scale + center).astype(np.float32)


def embed_windows(
    detector: Any,
    windows: np.ndarray,
    scaler: RobustScaler,
    *,
    device: str = "auto",
    batch_size: int = 8192,
) -> np.ndarray:
    """The latent code [N, latent] of raw windows [N, W, C] (the posterior mean for a VAE, the
    principal-component scores for PCA)."""
    detector, dev = _prepare(detector, device)
    x_np, m_np = nan_to_mask(scaler.transform(windows))
    parts = []
    with torch.inference_mode():
        for i in range(0, len(x_np), batch_size):
            x = torch.from_numpy(x_np[i : i + batch_size]).to(dev)
            m = torch.from_numpy(m_np[i : i + batch_size]).to(dev)
            parts.append(detector.encode(x, m).float().cpu().numpy())
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(parts)


def generate_windows(
    detector: Any,
    n: int,
    scaler: RobustScaler,
    *,
    seed: int = 0,
    with_noise: bool = False,
    device: str = "auto",
) -> np.ndarray:
    """n synthetic normal windows [n, W, C] in raw units from a variational model: z ~ N(0, I)
    decoded; `with_noise` adds the learned per-channel observation noise."""
    detector = getattr(detector, "detector", detector)
    variant = getattr(getattr(detector, "cfg", None), "variant", None)
    if variant != "variational":
        raise UnsupportedModelError(
            f"generate needs a 'variational' model; this one is {variant or detector.kind!r} "
            "(train one with --variant variational)"
        )
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    detector, dev = _prepare(detector, device)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, detector.cfg.latent_size, generator=gen)
    with torch.inference_mode():
        x = detector.decode(z.to(dev)).float().cpu()
        if with_noise:
            std = (0.5 * detector.out_log_var.float().cpu()).exp()
            x = x + std * torch.randn(x.shape, generator=gen)
    return scaler.inverse(x.numpy())
