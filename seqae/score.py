"""Batched scoring: raw windows in, scores and per-channel contributions out.

Windows of several assets may share one batch, each scaled and scored with its own baseline.
The forward pass runs in chunks under `torch.inference_mode` on CPU or CUDA. On CPU a chunk's
scaling, zero-filling and error features are one TorchScript trace when it reproduces the eager
result: one call that releases the GIL for its whole length, so a scoring thread keeps its speed
beside a busy Python thread (eager, every op waits to take the GIL back).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from seqae.calibrate import Baseline
from seqae.model import channel_errors

if TYPE_CHECKING:  # seqae.data imports pandas: only `score_series` needs it, not the daemon
    from seqae.data import Series


class Detector(Protocol):
    kind: str

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def compact(self) -> None: ...


@dataclass
class ScoreBatch:
    score: np.ndarray  # float32 [N]
    threshold: np.ndarray  # float32 [N]
    anomalous: np.ndarray  # bool [N]
    contributions: np.ndarray  # float32 [N, C]; with `latent`, sums to the score
    errors: np.ndarray  # float32 [N, C] RMS scaled residual per channel
    shifted: np.ndarray  # bool [N]
    latent: np.ndarray  # float32 [N] contribution of the latent feature (PCA T²), else 0


ALL = slice(None)  # the index of every window, for a batch scored with one baseline


def _group(baselines: Sequence[Baseline]) -> tuple[dict[int, Any], dict[int, Baseline]]:
    """Window indices per distinct baseline (by identity), and the baselines themselves."""
    groups: dict[int, Any] = {}
    unique: dict[int, Baseline] = {}
    for i, b in enumerate(baselines):
        groups.setdefault(id(b), []).append(i)
        unique[id(b)] = b
    return groups, unique


# From this many distinct baselines in a batch (one per asset), `finish` scores them all with a
# few stacked array operations instead of a dozen small ones per baseline.
_STACK_FROM = 8


def _stackable(baselines: Iterable[Baseline]) -> bool:
    kinds = {(b.score_kind, len(b.err_mean)) for b in baselines}
    return len(kinds) == 1 and next(iter(kinds))[0] != "likelihood"  # that one scores per baseline


def _finish_stacked(
    feats: np.ndarray,
    groups: dict[int, Any],
    unique: dict[int, Baseline],
    score: np.ndarray,
    threshold: np.ndarray,
    contrib: np.ndarray,
) -> None:
    """`Baseline.scores` and `.threshold` for windows of many baselines at once; the same
    arithmetic per window as the per-baseline path."""
    keys = list(groups)
    which = np.empty(len(feats), np.intp)  # row of each window's baseline in the stacks
    for g, key in enumerate(keys):
        which[groups[key]] = g
    bs = [unique[key] for key in keys]
    first = bs[0]
    n_features = feats.shape[1]
    if first.score_kind == "mse":
        # np.array of same-shaped arrays: np.stack's values at a fraction of its overhead
        sq_mean = np.array([b.err_sq_mean for b in bs])[which]
        c = feats**2 / np.maximum(sq_mean, 1e-12) / n_features
    else:
        u = feats - np.array([b.err_mean for b in bs])[which]
        c = (
            u
            * np.matmul(u[:, None, :], np.array([b.precision for b in bs])[which])[:, 0]
            / n_features
        )
    contrib[:] = c
    score[:] = c.sum(axis=1)
    threshold[:] = np.array([b.threshold for b in bs], np.float32)[which]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(device)


class _ChunkFeatures(torch.nn.Module):
    """Error features [N, F] of one chunk of scaled windows: a module, so a trace keeps the
    detector's weights as parameters."""

    def __init__(self, detector: Any) -> None:
        super().__init__()
        self.detector = detector
        self.has_channel_errors = hasattr(detector, "channel_errors")
        self.has_latent = hasattr(detector, "latent_distance")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.has_channel_errors:  # a detector with its own error (the VAE's expectation)
            err = self.detector.channel_errors(x, mask)
        else:
            err = channel_errors(self.detector.reconstruct(x, mask), x, mask)
        if self.has_latent:
            err = torch.cat([err, self.detector.latent_distance(x, mask)[:, None]], dim=1)
        return err  # type: ignore[no-any-return]


class _WindowFeatures(torch.nn.Module):
    """Error features [N, F] of raw windows [N, W, C] (NaN = missing), scaled by `center` and
    `scale` ([N, C] or [1, C]) and zero-filled where missing in the same graph: traced, a
    scoring thread takes the GIL back once per chunk, not once per numpy and torch call."""

    def __init__(self, chunk: _ChunkFeatures, dtype: torch.dtype) -> None:
        super().__init__()
        self.chunk = chunk
        self.dtype = dtype

    def forward(self, raw: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        scaled = (raw.float() - center[:, None, :]) / scale[:, None, :]
        missing = torch.isnan(scaled)
        x = scaled.masked_fill(missing, 0.0).to(self.dtype)
        return self.chunk(x, ~missing).float().double()  # type: ignore[no-any-return]


def _one_or_more(
    window_features: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    raw: torch.Tensor,
    center: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """`window_features` of a chunk; a chunk of one window goes in twice. BLAS takes a
    matrix-vector path for one row whose float32 sums differ from a batch's in the last bits:
    a window would score otherwise alone (a quiet stream's batch of one, a stale re-score) than
    in a batch, and a replay would depend on the daemon's timing."""
    if len(raw) != 1:
        return window_features(raw, center, scale)
    return window_features(raw.expand(2, -1, -1), center.expand(2, -1), scale.expand(2, -1))[:1]


class Scorer:
    def __init__(self, model: Any, device: str = "auto", batch_size: int | None = None) -> None:
        detector = getattr(model, "detector", model)
        self.default_baseline: Baseline | None = getattr(model, "baseline", None)
        self.device = pick_device(device)
        self.detector: Any = detector.to(self.device).eval()
        self.detector.compact()
        # On CPU an LSTM runs fastest per window on chunks that stay in cache; a GPU wants
        # one large batch.
        self.batch_size = batch_size or (65536 if self.device.type == "cuda" else 256)
        self.has_latent = hasattr(self.detector, "latent_distance")
        first = next(iter(self.detector.parameters()), None)
        self.dtype = first.dtype if first is not None else torch.float32
        self._chunk_features = _ChunkFeatures(self.detector)
        self._window_features = _WindowFeatures(self._chunk_features, self.dtype)
        self._traced: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None
        self._traced = None
        self._trace_tried = self.device.type != "cpu"

    def _trace(self, window: int, channels: int) -> None:
        """Trace `_window_features` and keep it only if it matches eager at other batch sizes
        (a trace freezes Python-level shapes; a model that reads them stays eager)."""
        self._trace_tried = True
        gen = torch.Generator().manual_seed(0)

        def probe(n: int, scalers: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            raw = torch.randn(n, window, channels, generator=gen) * 3 + 1
            raw[torch.rand(n, window, channels, generator=gen) < 0.1] = float("nan")
            center = torch.randn(scalers, channels, generator=gen)
            scale = torch.rand(scalers, channels, generator=gen) + 0.5
            return raw.to(self.device), center.to(self.device), scale.to(self.device)

        try:
            with warnings.catch_warnings():
                # torch.jit.trace is deprecated in favour of torch.compile/export, which need a
                # compiler at run time or run op by op from Python; the check below guards it.
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(self._window_features, probe(7, 7), check_trace=False)
                for n, scalers in ((1, 1), (5, 1), (33, 33)):
                    args = probe(n, scalers)
                    if not torch.allclose(
                        traced(*args), self._window_features(*args), rtol=1e-5, atol=1e-6
                    ):
                        return
        except Exception:  # any failure to trace means: stay eager
            return
        self._traced = traced

    @torch.inference_mode()
    def features_raw(
        self, raw: torch.Tensor, center: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """Error features [N, F] (float64) of raw windows [N, W, C] on the device (NaN =
        missing), scaled by `center` and `scale` of shape [N, C] or [1, C]."""
        if not len(raw):
            n_features = getattr(self.detector, "n_features", raw.shape[-1] + self.has_latent)
            return torch.zeros(0, n_features, dtype=torch.float64, device=raw.device)
        if not self._trace_tried:
            self._trace(raw.shape[1], raw.shape[2])
        window_features = self._traced or self._window_features
        center, scale = center.expand(len(raw), -1), scale.expand(len(raw), -1)  # views
        step = self.batch_size
        parts = [
            _one_or_more(
                window_features, raw[i : i + step], center[i : i + step], scale[i : i + step]
            )
            for i in range(0, len(raw), step)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def features(self, windows: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Error features [N, F] of raw windows [N, W, C] (NaN = missing), scaled by center and
        scale of shape [C] or [N, C]."""
        if windows.dtype != np.float32 or not windows.flags.writeable:
            windows = np.array(windows, np.float32)  # torch.from_numpy wants it writable
        center = np.array(center, np.float32, ndmin=2)
        scale = np.array(scale, np.float32, ndmin=2)
        raw, center_t, scale_t = (torch.from_numpy(a) for a in (windows, center, scale))
        if self.device.type == "cpu":  # each torch call lets another thread take the GIL
            return self.features_raw(raw, center_t, scale_t).numpy()
        to = self.device
        return self.features_raw(raw.to(to), center_t.to(to), scale_t.to(to)).cpu().numpy()

    def score(self, windows: np.ndarray, baselines: Baseline | Sequence[Baseline]) -> ScoreBatch:
        """Score raw windows [N, W, C]; `baselines` is one for all windows or one per window."""
        n = len(windows)
        if isinstance(baselines, Baseline):
            # One baseline for the whole batch: no per-window bookkeeping, no gathers.
            feats = self.features(windows, baselines.center, baselines.scale)
            return self.finish(
                feats, windows, [baselines], {id(baselines): ALL}, {id(baselines): baselines}
            )
        if len(baselines) != n:
            raise ValueError(f"{n} windows but {len(baselines)} baselines")
        groups, unique = _group(baselines)
        center = np.array([b.center for b in baselines], np.float32)  # [N, C]
        scale = np.array([b.scale for b in baselines], np.float32)
        feats = self.features(windows, center, scale)
        return self.finish(feats, windows, baselines, groups, unique)

    def finish(
        self,
        feats: np.ndarray,
        windows: np.ndarray,
        baselines: Sequence[Baseline],
        groups: dict[int, Any] | None = None,
        unique: dict[int, Baseline] | None = None,
    ) -> ScoreBatch:
        """Turn error features into scores with each window's baseline."""
        n, c = windows.shape[0], windows.shape[2]
        if groups is None or unique is None:
            groups, unique = _group(baselines)
        score = np.empty(n, np.float32)
        threshold = np.empty(n, np.float32)
        contrib = np.empty((n, feats.shape[1]), np.float32)
        shifted = np.zeros(n, bool)
        if len(groups) >= _STACK_FROM and _stackable(unique.values()):
            _finish_stacked(feats, groups, unique, score, threshold, contrib)
        else:
            for key, idx in groups.items():
                b = unique[key]
                # A slice (the one-baseline case) selects without copying; a list gathers.
                score[idx], contrib[idx] = b.scores(feats[idx])
                threshold[idx] = b.threshold
        feats = self._operating_shifts(
            feats, windows, groups, unique, score, threshold, contrib, shifted
        )
        fold = getattr(self.detector, "fold_contributions", None)
        if fold is not None:  # several error features per channel (kind "fused")
            per_channel, latent = fold(contrib)
        else:
            per_channel = contrib[:, :c]
            latent = contrib[:, c] if feats.shape[1] > c else np.zeros(n, np.float32)
        return ScoreBatch(
            score=score,
            threshold=threshold,
            anomalous=(score > threshold) & ~shifted,
            contributions=per_channel,
            errors=feats[:, :c].astype(np.float32),
            shifted=shifted,
            latent=latent,
        )

    def _operating_shifts(
        self,
        feats: np.ndarray,
        windows: np.ndarray,
        groups: dict[int, Any],
        unique: dict[int, Baseline],
        score: np.ndarray,
        threshold: np.ndarray,
        contrib: np.ndarray,
        shifted: np.ndarray,
    ) -> np.ndarray:
        """Shift versus fault, for the windows above their threshold: each is moved back along
        its baseline's operating envelope (its channel means less their displacement along the
        envelope's directions) and scored again. Scored normal there, it is an operating-point
        change that keeps the plant's physics: `shifted`, scored as moved. Still above, the
        relations between channels are broken: a fault, whatever range its values are in.
        Returns the features, with the moved windows' features in place of theirs."""
        above = score > threshold
        if not above.any():
            return feats
        feats = feats.copy()
        for key, members in groups.items():
            b = unique[key]
            if b.env_basis.size == 0:
                continue
            idx = np.arange(len(score))[members]
            idx = idx[above[idx]]
            if not len(idx):
                continue
            moved = windows[idx] - b.displacement(windows[idx])[:, None, :]
            again = self.features(moved, b.center, b.scale)
            s2, c2 = b.scores(again)
            keep = s2 <= b.threshold
            if keep.any():
                hit = idx[keep]
                shifted[hit] = True
                score[hit], contrib[hit], feats[hit] = s2[keep], c2[keep], again[keep]
        return feats


@dataclass
class SeriesScores:
    grid: Series  # the series on the model's sampling grid
    ends: np.ndarray  # int64 [N] grid row of each window's last sample
    batch: ScoreBatch

    def pointwise(self) -> tuple[np.ndarray, np.ndarray]:
        """(score [T], threshold [T]) per grid row: each row carries the score of the latest
        window ending at or before it; rows before the first window carry the first score."""
        rows = np.arange(len(self.grid))
        idx = np.clip(np.searchsorted(self.ends, rows, side="right") - 1, 0, None)
        return self.batch.score[idx], self.batch.threshold[idx]


def score_series(
    scorer: Scorer,
    series: Series,
    baseline: Baseline,
    *,
    window: int,
    hop: int,
    period_s: float,
    max_fill: int = 3,
) -> SeriesScores:
    from seqae.data import make_windows, regularize

    grid = regularize(series, period_s, max_fill)
    windows, ends = make_windows(grid.values, window, hop)
    return SeriesScores(grid, ends, scorer.score(windows, baseline))
