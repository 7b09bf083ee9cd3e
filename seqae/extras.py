"""What a trained autoencoder gives beyond the anomaly score, in raw units.

- `impute_series`: fill missing samples gap by gap, each by the method an `ImputeRule` gives for
  its channel and length: forward fill, linear interpolation, the masked reconstruction, or the
  reconstruction bridged onto the observations on both sides of the gap. `choose_rule` picks
  the methods on normal data by cutting holes where it is observed.
- `denoise_series`: the mean reconstruction of every sample over the windows that cover it.
- `reconstruct_raw`: the reconstructed ("clean") values of scored windows, for `seqae_clean`.
- `embed_windows`: the latent code per window, for dimensionality reduction and clustering.
- `generate_windows`: synthetic normal windows drawn from a variational model's prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from seqae.calibrate import Baseline
from seqae.data import DataError, RobustScaler, Series, nan_to_mask
from seqae.score import Scorer, pick_device


class UnsupportedModelError(ValueError):
    """The model cannot do what was asked (e.g. generate from a non-variational profile)."""


IMPUTE_METHODS: tuple[str, ...] = ("ffill", "linear", "model", "bridge")
GAP_LENGTHS: tuple[int, ...] = (1, 2, 5, 10, 20, 50)  # the lengths a rule is chosen at
CHOICE_MARGIN = 0.1  # a model method must beat the better of ffill and linear by 10 % MAE


@dataclass(frozen=True)
class ImputeRule:
    """The method per channel and gap length: `methods[c][i]` fills gaps of channel c whose
    length is at least `lengths[i]` and below `lengths[i + 1]`."""

    lengths: tuple[int, ...]
    methods: tuple[tuple[str, ...], ...]  # [C][len(lengths)]

    @classmethod
    def everywhere(cls, method: str, n_channels: int) -> ImputeRule:
        return cls((1,), tuple((method,) for _ in range(n_channels)))

    def method_for(self, channel: int, length: int) -> str:
        i = max(int(np.searchsorted(self.lengths, length, side="right")) - 1, 0)
        return self.methods[channel][i]

    def needs_model(self) -> bool:
        return any(m in ("model", "bridge") for row in self.methods for m in row)


@dataclass
class Imputation:
    series: Series  # missing samples filled
    filled: np.ndarray  # bool [T, C] cells that were missing and are now filled
    unfilled: int  # missing cells left NaN: a channel never observed, or a gap over max_gap
    gaps_by_method: dict[str, int] = field(default_factory=dict)  # gaps filled per method


def gap_runs(column: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of NaN in a 1-D array."""
    missing = np.isnan(column).astype(np.int8)
    edges = np.diff(np.concatenate([[0], missing, [0]]))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )


def _prepare(detector: Any, device: str) -> tuple[Any, torch.device]:
    dev = pick_device(device)
    detector = getattr(detector, "detector", detector).to(dev).eval()
    detector.compact()
    return detector, dev


def mean_reconstruction(
    detector: Any,
    scaled: np.ndarray,
    window: int,
    *,
    hop: int = 1,
    targets: np.ndarray | None = None,
    min_observed: float = 0.5,
    device: str = "auto",
    batch_size: int = 4096,
) -> np.ndarray:
    """[T, C] mean reconstruction (scaled units) of every cell over the windows that cover it,
    from the observed samples only (NaN = missing); NaN where no window votes. Windows with less
    than `min_observed` of their samples observed do not vote; with `targets` (bool [T]), only
    windows that cover a target row are run."""
    if not 0.0 < min_observed <= 1.0:
        raise ValueError(f"min_observed must be in (0, 1], got {min_observed}")
    t = len(scaled)
    total = np.zeros(scaled.shape, np.float64)
    votes = np.zeros(scaled.shape, np.int64)
    if t < window:
        return np.full(scaled.shape, np.nan)
    ends = np.arange(window - 1, t, hop, dtype=np.int64)
    if ends[-1] != t - 1:  # the last rows get a window of their own
        ends = np.append(ends, t - 1)
    if targets is not None:
        hits = np.concatenate([[0], np.cumsum(targets)])
        ends = ends[hits[ends + 1] - hits[ends + 1 - window] > 0]
    observed = np.concatenate([[0], np.cumsum((~np.isnan(scaled)).sum(axis=1))])
    share = (observed[ends + 1] - observed[ends + 1 - window]) / (window * scaled.shape[1])
    ends = ends[share >= min_observed]
    if len(ends):
        detector, dev = _prepare(detector, device)
        offsets = np.arange(window) - (window - 1)
        with torch.inference_mode():
            for i in range(0, len(ends), batch_size):
                rows = ends[i : i + batch_size, None] + offsets  # [B, W]
                x_np, m_np = nan_to_mask(scaled[rows])
                x = torch.from_numpy(x_np).to(dev)
                m = torch.from_numpy(m_np).to(dev)
                recon = detector.reconstruct(x, m).float().cpu().numpy()  # [B, W, C]
                np.add.at(total, rows, recon)
                np.add.at(votes, rows, 1)
    with np.errstate(invalid="ignore"):
        return np.where(votes > 0, total / np.maximum(votes, 1), np.nan)


def fill_gap(
    column: np.ndarray, recon: np.ndarray | None, start: int, stop: int, method: str
) -> np.ndarray:
    """Values for the gap column[start:stop] by `method` (raw units; `recon` is the model's
    mean reconstruction of the column in raw units, needed by "model" and "bridge").

    - ffill:  the last observation before the gap (the next one for a leading gap).
    - linear: the straight line between the observations on both sides.
    - model:  the masked reconstruction.
    - bridge: the reconstruction corrected by a ramp from its offset to the observation before
              the gap to its offset to the one after, so it meets both neighbours.
    A model method without a reconstruction there falls back to linear."""
    left = column[start - 1] if start > 0 else np.nan
    right = column[stop] if stop < len(column) else np.nan
    if np.isnan(left) and np.isnan(right):
        return np.full(stop - start, np.nan)
    if method == "ffill":
        return np.full(stop - start, left if not np.isnan(left) else right)
    steps = np.arange(1, stop - start + 1) / (stop - start + 1)  # position inside the gap
    if method in ("model", "bridge") and recon is not None:
        inside = recon[start:stop]
        if not np.isnan(inside).any():
            if method == "model":
                return inside
            off_left = left - recon[start - 1] if start > 0 else np.nan
            off_right = right - recon[stop] if stop < len(column) else np.nan
            if np.isnan(off_left) and np.isnan(off_right):
                return inside
            off_left = off_right if np.isnan(off_left) else off_left
            off_right = off_left if np.isnan(off_right) else off_right
            return inside + off_left + (off_right - off_left) * steps
    elif method not in IMPUTE_METHODS:
        raise ValueError(f"imputation method {method!r}: must be one of {list(IMPUTE_METHODS)}")
    left = right if np.isnan(left) else left
    right = left if np.isnan(right) else right
    return left + (right - left) * steps


def impute_series(
    detector: Any,
    series: Series,
    scaler: RobustScaler,
    window: int,
    *,
    rule: ImputeRule | None = None,
    max_gap: int | None = None,
    hop: int = 1,
    min_observed: float = 0.5,
    device: str = "auto",
    batch_size: int = 4096,
) -> Imputation:
    """Fill the NaN cells of a series on the model's sampling grid, gap by gap (a gap is a run
    of missing samples of one channel), each by the method `rule` gives for its channel and
    length (default: the model-guided bridge everywhere). Observed cells are never changed;
    gaps longer than `max_gap`, and channels never observed, stay missing."""
    values = series.values
    if values.shape[1] != len(scaler.center):
        raise DataError(
            f"series {series.asset!r} has {values.shape[1]} channels, the model {len(scaler.center)}"
        )
    if max_gap is not None and max_gap < 1:
        raise ValueError(f"max_gap must be >= 1, got {max_gap}")
    rule = rule or ImputeRule.everywhere("bridge", values.shape[1])
    if len(rule.methods) != values.shape[1]:
        raise ValueError(f"rule has {len(rule.methods)} channels, the series {values.shape[1]}")
    missing = np.isnan(values)
    recon = None
    if missing.any() and rule.needs_model():
        scaled = mean_reconstruction(
            detector,
            scaler.transform(values),
            window,
            hop=hop,
            targets=missing.any(axis=1),
            min_observed=min_observed,
            device=device,
            batch_size=batch_size,
        )
        recon = scaler.inverse(scaled.astype(np.float32))
    out = values.astype(np.float64)
    counts = dict.fromkeys(IMPUTE_METHODS, 0)
    for c in range(values.shape[1]):
        column = values[:, c].astype(np.float64)
        for start, stop in gap_runs(column):
            if max_gap is not None and stop - start > max_gap:
                continue
            method = rule.method_for(c, stop - start)
            out[start:stop, c] = fill_gap(
                column, None if recon is None else recon[:, c], start, stop, method
            )
            if not np.isnan(out[start:stop, c]).any():
                counts[method] += 1
    fill = missing & ~np.isnan(out)
    return Imputation(
        series=replace(series, values=out.astype(np.float32)),
        filled=fill,
        unfilled=int((missing & ~fill).sum()),
        gaps_by_method={k: v for k, v in counts.items() if v},
    )


def cut_holes(
    values: np.ndarray,
    length: int,
    *,
    per_channel: int,
    spacing: int,
    seed: int = 0,
) -> np.ndarray:
    """bool [T, C]: holes of `length` samples cut where `values` is observed, with the sample
    before and after each hole observed too, at least `spacing` samples apart, each on one
    channel, up to `per_channel` per channel (channels dealt round-robin over the slots)."""
    t, c = values.shape
    holes = np.zeros((t, c), bool)
    observed = ~np.isnan(values)
    rng = np.random.default_rng([seed, length])
    starts = np.arange(1, t - length - 1, spacing + length)
    starts = starts[rng.permutation(len(starts))]
    taken = np.zeros(c, np.int64)
    k = int(rng.integers(c))
    for start in starts:
        for _ in range(c):
            ch, k = k % c, k + 1
            if taken[ch] < per_channel and observed[start - 1 : start + length + 1, ch].all():
                holes[start : start + length, ch] = True
                taken[ch] += 1
                break
        if (taken >= per_channel).all():
            break
    return holes


def method_errors(
    detector: Any,
    truth: np.ndarray,
    holes: np.ndarray,
    scaler: RobustScaler,
    window: int,
    *,
    methods: Sequence[str] = IMPUTE_METHODS,
    min_observed: float = 0.5,
    device: str = "auto",
) -> dict[str, np.ndarray]:
    """Absolute error [H] of each method on each hole cell (truth cut at `holes`), in raw
    units, cells in channel-major order (so `holes.T` selects them)."""
    holed = truth.copy()
    holed[holes] = np.nan
    recon = None
    if any(m in ("model", "bridge") for m in methods):
        scaled = mean_reconstruction(
            detector,
            scaler.transform(holed),
            window,
            targets=np.asarray(holes.any(axis=1)),
            min_observed=min_observed,
            device=device,
        )
        recon = scaler.inverse(scaled.astype(np.float32)).astype(np.float64)
    errors: dict[str, np.ndarray] = {}
    for method in methods:
        filled = holed.astype(np.float64)
        for c in range(holed.shape[1]):
            column = holed[:, c].astype(np.float64)
            for start, stop in gap_runs(np.where(holes[:, c], np.nan, 0.0)):
                filled[start:stop, c] = fill_gap(
                    column, None if recon is None else recon[:, c], start, stop, method
                )
        errors[method] = np.abs(filled - truth).T[holes.T]
    return errors


def choose_rule(
    detector: Any,
    normal: np.ndarray,
    scaler: RobustScaler,
    window: int,
    *,
    lengths: Sequence[int] = GAP_LENGTHS,
    per_channel: int = 32,
    margin: float = CHOICE_MARGIN,
    seed: int = 0,
    min_observed: float = 0.5,
    device: str = "auto",
) -> tuple[ImputeRule, dict[str, Any]]:
    """Choose the method per channel and gap length on normal data [T, C] (raw units, NaN =
    missing): holes of each length are cut where it is observed and filled by every method.
    The better of ffill and linear is kept unless a model method's MAE is lower by `margin`.
    Returns the rule and the MAE per length, channel and method it was chosen on."""
    c = normal.shape[1]
    chosen: list[list[str]] = [[] for _ in range(c)]
    table: dict[str, Any] = {}
    for length in lengths:
        holes = cut_holes(normal, length, per_channel=per_channel, spacing=window, seed=seed)
        counts = holes.sum(axis=0)
        errors = method_errors(
            detector, normal, holes, scaler, window, min_observed=min_observed, device=device
        )
        bounds = np.concatenate([[0], np.cumsum(counts)])
        table[str(length)] = {}
        for ch in range(c):
            mae = {m: float(e[bounds[ch] : bounds[ch + 1]].mean()) for m, e in errors.items()}
            if counts[ch] == 0:
                best = "linear"
            else:
                best = min(("linear", "ffill"), key=lambda m: mae[m])  # linear on a tie
                model_best = min(("bridge", "model"), key=lambda m: mae[m])
                if mae[model_best] < (1.0 - margin) * mae[best]:
                    best = model_best
            chosen[ch].append(best)
            table[str(length)][str(ch)] = {
                **mae,
                "holes": int(counts[ch]) // length,
                "chosen": best,
            }
    return ImputeRule(tuple(lengths), tuple(tuple(m) for m in chosen)), table


def denoise_series(
    detector: Any,
    series: Series,
    scaler: RobustScaler,
    window: int,
    *,
    min_observed: float = 0.5,
    device: str = "auto",
    batch_size: int = 4096,
) -> Series:
    """The denoised series: each sample the mean reconstruction of the windows (one ending at
    every sample) that cover it, in raw units; NaN where no window votes."""
    values = series.values
    if values.shape[1] != len(scaler.center):
        raise DataError(
            f"series {series.asset!r} has {values.shape[1]} channels, the model {len(scaler.center)}"
        )
    if len(values) < window:
        raise DataError(f"{len(values)} samples are fewer than one window of {window}")
    scaled = mean_reconstruction(
        detector,
        scaler.transform(values),
        window,
        min_observed=min_observed,
        device=device,
        batch_size=batch_size,
    )
    return replace(series, values=scaler.inverse(scaled.astype(np.float32)), labels=None)


def denoising_note(detector: Any) -> str | None:
    """None for a denoising model; otherwise what its reconstruction is instead."""
    detector = getattr(detector, "detector", detector)
    variant = getattr(getattr(detector, "cfg", None), "variant", None)
    if variant == "denoising":
        return None
    return (
        f"this profile is not a denoising model ({variant or detector.kind}): the output is its "
        "plain reconstruction; train one with --variant denoising for a model taught to remove noise"
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
