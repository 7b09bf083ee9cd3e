"""From per-channel reconstruction errors to a calibrated score and threshold.

Held-out normal windows are split in time: the error statistics (mean, Ledoit-Wolf shrinkage
covariance) are fitted on the first part, the threshold is set on the scores of the second.
Overlapping windows are not independent samples, so fitting both on the same windows would set
the threshold far too low. A `Baseline` bundles everything one asset needs: its scaler, its
error statistics, its threshold and the input range it has seen.

A fleet holds one fitted `Baseline` per asset. The arrays that are the profile's rather than
the asset's (`PROFILE_WIDE`: the training scaler, the operating envelope, ...) are shared by
every baseline that holds the same values (`shared_array`), and so are empty arrays; `info`
is packed into one array of numbers (seqae.packed_info).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from seqae.channels import DEGENERATE_UNIT_SCORE, FLOAT_RESOLUTION
from seqae.data import RobustScaler
from seqae.packed_info import pack_info

if TYPE_CHECKING:
    from seqae.alerting import AlertRule
    from seqae.score import Scorer

ScoreKind = Literal["mse", "mahalanobis", "likelihood"]
SCORE_KINDS: tuple[str, ...] = ("mse", "mahalanobis", "likelihood")
ThresholdMethod = Literal["quantile", "pot"]
OPERATING_DIMS = 1  # directions of the operating envelope: the plant's main knob (load, speed)
MIN_CALIBRATION_WINDOWS = 20
# An error feature varying less than this (a standard deviation of 1e-6 scaled units) has no
# spread to weigh it by: it is weighed as a degenerate channel's is.
NO_ERROR_SPREAD = 1e-12
# A threshold sits at least this far above the median held-out score: scores with no spread
# (a profile whose channels never moved) cannot set a threshold their own rounding crosses.
MIN_THRESHOLD_MARGIN = 1e-3


# The arrays an asset's baseline keeps from its profile's (fit_asset_baseline keeps the training
# scaler and the envelope unless it refits the scaler; the decoder's variance and the degenerate
# channels are the model's): equal in every fitted baseline of the profile, so shared.
PROFILE_WIDE = ("center", "scale", "env_mean", "env_basis", "obs_log_var", "degenerate")
# Distinct values shared at most (a fleet whose scalers were refitted per asset has one each:
# past this many, a new value is kept by its baseline alone instead of costing a table entry).
MAX_SHARED_ARRAYS = 4096
_shared: weakref.WeakValueDictionary[tuple[str, tuple[int, ...], bytes], np.ndarray] = (
    weakref.WeakValueDictionary()
)


def shared_array(values: np.ndarray) -> np.ndarray:
    """A read-only array equal to `values` (dtype, shape and bytes), the same object for every
    caller while one of them holds it."""
    key = (values.dtype.str, values.shape, values.tobytes())
    found = _shared.get(key)
    if found is None:
        if len(_shared) >= MAX_SHARED_ARRAYS:
            return values
        found = np.array(values)
        found.flags.writeable = False
        _shared[key] = found
    return found


def _empty(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return shared_array(np.zeros(shape, dtype))


class CalibrationError(ValueError):
    pass


@dataclass
class ThresholdPolicy:
    method: ThresholdMethod = "quantile"
    quantile: float = 0.995
    pot_risk: float = 1e-3  # target exceedance probability per window (POT)
    pot_initial_quantile: float = 0.95
    margin: float = 1.0  # multiplies the fitted threshold


@dataclass(slots=True)  # one per asset: no per-instance __dict__
class Baseline:
    center: np.ndarray  # [C] scaler
    scale: np.ndarray  # [C]
    err_mean: np.ndarray  # [F] mean error feature
    err_sq_mean: np.ndarray  # [F] mean squared error feature (window-MSE score)
    precision: np.ndarray  # [F, F] inverse shrinkage covariance (Mahalanobis score)
    threshold: float
    score_kind: ScoreKind = "mahalanobis"
    # the input range its normal data covered (0.5 and 99.5 percentiles), for reports
    range_low: np.ndarray = field(default_factory=lambda: _empty((0,), np.float32))  # [C]
    range_high: np.ndarray = field(default_factory=lambda: _empty((0,), np.float32))  # [C]
    # Operating envelope: mean [C] and principal directions [K, C] of normal windows' channel
    # means in scaled units; moving a window along them is a change of operating point.
    env_mean: np.ndarray = field(default_factory=lambda: _empty((0,), np.float32))
    env_basis: np.ndarray = field(default_factory=lambda: _empty((0, 0), np.float32))
    info: Mapping[str, Any] = field(default_factory=dict)  # a `PackedInfo` once shared
    # "likelihood" only: the variational decoder's per-channel log-variance [C] (scaled units)
    obs_log_var: np.ndarray = field(default_factory=lambda: _empty((0,), np.float64))
    # [C] True for a channel the scaler found degenerate (seqae.channels); empty: none
    degenerate: np.ndarray = field(default_factory=lambda: _empty((0,), bool))

    def displacement(self, windows: np.ndarray) -> np.ndarray:
        """[N, C] raw-unit move of each window's channel means along the operating envelope,
        away from the envelope's mean (zeros without an envelope)."""
        n, c = windows.shape[0], windows.shape[2]
        if self.env_basis.size == 0 or self.env_basis.shape[1] != c:
            return np.zeros((n, c), np.float32)
        means = channel_means(windows)
        z = np.nan_to_num((means - self.center) / self.scale - self.env_mean)
        along = (z @ self.env_basis.T) @ self.env_basis
        return np.asarray(along * self.scale, np.float32)

    def out_of_range(self, windows: np.ndarray) -> np.ndarray:
        """[N, C] True where a degenerate channel (constant, flag-like, mostly or nearly
        constant in training) takes a value in the window outside the range its normal data
        covered: a change the score may weigh lightly (one unit adds at most
        DEGENERATE_UNIT_SCORE), shown whatever its size. False for every other channel."""
        n, c = windows.shape[0], windows.shape[2]
        out = np.zeros((n, c), bool)
        if not self.degenerate.any() or self.range_low.shape != (c,):
            return out
        idx = np.flatnonzero(self.degenerate)
        low, high = self.range_low[idx], self.range_high[idx]
        # float32 rounding of the level is not a change
        tol = FLOAT_RESOLUTION * np.maximum(np.abs(low), np.abs(high))
        part = windows[:, :, idx]
        with np.errstate(invalid="ignore"):  # NaN (missing) compares False: not out of range
            beyond = (part < low - tol) | (part > high + tol)
        out[:, idx] = beyond.any(axis=1)
        return out

    def moved(self, displacement: np.ndarray) -> Baseline:
        """This baseline with its scaler centre moved by `displacement` [C] (raw units): the
        same asset at another operating point."""
        return replace(
            self,
            center=np.asarray(self.center + displacement, np.float32),
            info={**self.info, "moved_by": np.asarray(displacement).tolist()},
        )

    def share_profile_wide(self) -> Baseline:
        """Hold the `PROFILE_WIDE` arrays as shared read-only copies (same values), and `info`
        packed (`pack_info`): a fleet's baselines then hold one copy of what is their
        profile's, and few bytes of their own. Returns itself."""
        for name in PROFILE_WIDE:
            setattr(self, name, shared_array(getattr(self, name)))
        self.info = pack_info(self.info)
        return self

    @property
    def scaler(self) -> RobustScaler:
        return RobustScaler(self.center, self.scale, self.degenerate)

    def scores(self, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score [N], contribution per feature [N, F]); contributions sum to the score."""
        n_features = errors.shape[1]
        if self.score_kind == "likelihood":
            return likelihood_scores(errors, self.obs_log_var)
        if self.score_kind == "mse":
            contrib = errors**2 / np.maximum(self.err_sq_mean, 1e-12) / n_features
        else:
            u = errors - self.err_mean
            contrib = u * (u @ self.precision) / n_features
        return contrib.sum(axis=1), contrib

    def to_dict(self) -> dict[str, Any]:
        return {
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "err_mean": self.err_mean.tolist(),
            "err_sq_mean": self.err_sq_mean.tolist(),
            "precision": self.precision.tolist(),
            "threshold": float(self.threshold),
            "score_kind": self.score_kind,
            "range_low": self.range_low.tolist(),
            "range_high": self.range_high.tolist(),
            "env_mean": self.env_mean.tolist(),
            "env_basis": self.env_basis.tolist(),
            "info": dict(self.info),
            **({"obs_log_var": self.obs_log_var.tolist()} if self.obs_log_var.size else {}),
            # written only when there is one, so a profile without keeps its model.json
            **(
                {"degenerate": np.flatnonzero(self.degenerate).tolist()}
                if self.degenerate.any()
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Baseline:
        try:
            b = cls(
                center=np.asarray(d["center"], np.float32),
                scale=np.asarray(d["scale"], np.float32),
                err_mean=np.asarray(d["err_mean"], np.float64),
                err_sq_mean=np.asarray(d["err_sq_mean"], np.float64),
                precision=np.asarray(d["precision"], np.float64),
                threshold=float(d["threshold"]),
                score_kind=d.get("score_kind", "mahalanobis"),
                range_low=np.asarray(d.get("range_low", []), np.float32),
                range_high=np.asarray(d.get("range_high", []), np.float32),
                env_mean=np.asarray(d.get("env_mean", []), np.float32),
                env_basis=np.asarray(d.get("env_basis", []), np.float32).reshape(
                    -1, len(d.get("env_mean", []))
                )
                if d.get("env_mean")
                else np.zeros((0, 0), np.float32),
                info=dict(d.get("info", {})),
                obs_log_var=np.asarray(d.get("obs_log_var", []), np.float64),
            )
            b.degenerate = _channel_mask(d.get("degenerate", []), len(b.center))
            b.share_profile_wide()
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CalibrationError(f"baseline is malformed: {exc!r}") from exc
        f = len(b.err_mean)
        if b.precision.shape != (f, f) or b.center.shape != b.scale.shape:
            raise CalibrationError("baseline arrays have inconsistent shapes")
        if b.score_kind not in SCORE_KINDS:
            raise CalibrationError(f"unknown score kind {b.score_kind!r}")
        if b.score_kind == "likelihood" and b.obs_log_var.shape != b.err_mean.shape:
            raise CalibrationError("score kind 'likelihood' needs obs_log_var, one per channel")
        return b


def _channel_mask(indices: Sequence[int], n_channels: int) -> np.ndarray:
    """[C] bool mask from channel indices (empty without any)."""
    if not len(indices):
        return np.zeros(0, bool)
    index = np.asarray(indices, np.int64)
    if index.min() < 0 or index.max() >= n_channels:
        raise ValueError(f"degenerate channel indices {list(indices)} outside 0..{n_channels - 1}")
    mask = np.zeros(n_channels, bool)
    mask[np.asarray(indices, np.int64)] = True
    return mask


def likelihood_scores(errors: np.ndarray, log_var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score [N], per-channel contribution [N, C]) for the "likelihood" kind: the Gaussian
    negative log-likelihood per time step of the window (nats) under the decoder's
    N(reconstruction, exp(log_var[c])), from the RMS errors [N, C] (for a VAE, expected over
    its latent samples). Mirrors `SequenceAutoencoder.reconstruction_nll`."""
    contrib = 0.5 * (errors**2 / np.exp(log_var) + log_var + np.log(2 * np.pi))
    return contrib.sum(axis=1), contrib


def decoder_log_var(detector: Any) -> np.ndarray:
    """The per-channel log-variance of a variational detector's likelihood, clamped as its
    training loss clamps it."""
    from seqae.model import LOG_VAR_MAX, LOG_VAR_MIN

    detector = getattr(detector, "detector", detector)
    log_var = getattr(detector, "out_log_var", None)
    if log_var is None or getattr(getattr(detector, "cfg", None), "variant", None) != "variational":
        raise CalibrationError(
            "score kind 'likelihood' needs a variational model (train with --variant variational)"
        )
    return np.clip(
        log_var.detach().float().cpu().numpy().astype(np.float64), LOG_VAR_MIN, LOG_VAR_MAX
    )


def channel_means(windows: np.ndarray) -> np.ndarray:
    """[N, C] mean of each window's observed samples per channel (NaN where none is)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a channel never observed: NaN
        return np.asarray(np.nanmean(windows, axis=1))


def fit_envelope(
    windows: np.ndarray | Sequence[np.ndarray],
    center: np.ndarray,
    scale: np.ndarray,
    dims: int = OPERATING_DIMS,
) -> tuple[np.ndarray, np.ndarray]:
    """(mean [C], basis [K, C]): the principal directions along which normal windows' channel
    means move, in scaled units. Along them the channels move together as the plant does when
    its operating point changes; a move across them breaks the relations between channels.

    Given one array of windows per asset, the directions come from each asset's moves about its
    own mean (the plant's knob), not from the differences between assets."""
    groups = [windows] if isinstance(windows, np.ndarray) else list(windows)
    zs = [(channel_means(g) - center) / scale for g in groups if len(g)]
    zs = [z[np.isfinite(z).all(axis=1)] for z in zs]
    zs = [z for z in zs if len(z)]
    if sum(len(z) for z in zs) < 2 or dims < 1:
        return np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
    mean = np.concatenate(zs).mean(axis=0)
    moves = np.concatenate([z - z.mean(axis=0) for z in zs])
    _, _, vt = np.linalg.svd(moves, full_matrices=False)
    return mean.astype(np.float32), vt[: min(dims, len(vt))].astype(np.float32)


def input_range(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel 0.5 and 99.5 percentiles of normal rows [..., C]: the range a baseline knows."""
    flat = rows.reshape(-1, rows.shape[-1])
    if not np.isnan(flat).any():  # the common case: one call for every column
        both = np.percentile(flat, [0.5, 99.5], axis=0)
        return both[0].astype(np.float32), both[1].astype(np.float32)
    # What np.nanpercentile(flat, q, axis=0) computes, column by column: its own loop over
    # the columns (apply_along_axis) cost half of an asset's baseline fit.
    bounds = np.full((2, flat.shape[1]), np.nan)
    for c in range(flat.shape[1]):
        column = flat[:, c]
        known = column[~np.isnan(column)]
        if len(known):
            bounds[:, c] = np.percentile(known, [0.5, 99.5])
    return bounds[0].astype(np.float32), bounds[1].astype(np.float32)


def pot_threshold(scores: np.ndarray, risk: float, initial_quantile: float = 0.95) -> float:
    """Peaks over threshold: fit a generalised Pareto tail above an initial quantile and return
    the level exceeded with probability `risk` (SPOT, Siffer et al. 2017)."""
    from scipy import stats

    t0 = float(np.quantile(scores, initial_quantile))
    peaks = scores[scores > t0] - t0
    if len(peaks) < 10:
        return (
            float(np.quantile(scores, 1.0 - risk))
            if risk > 1.0 / len(scores)
            else float(scores.max())
        )
    shape, _, scale = stats.genpareto.fit(peaks, floc=0.0)
    tail = len(peaks) / len(scores)
    ratio = risk / tail
    if abs(shape) < 1e-6:
        return t0 - scale * float(np.log(ratio))
    return t0 + scale / shape * (ratio ** (-shape) - 1.0)


def set_threshold(scores: np.ndarray, policy: ThresholdPolicy) -> float:
    """The threshold `policy` sets on held-out normal scores: finite, at least
    MIN_THRESHOLD_MARGIN above their median, and never exactly 0. Non-finite scores are a
    CalibrationError: they would make any threshold meaningless."""
    scores = np.asarray(scores, np.float64)
    if scores.size == 0:
        raise CalibrationError("no held-out scores to set a threshold on")
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise CalibrationError(f"{bad} of {scores.size} held-out scores are not finite")
    if policy.method == "pot":
        level = pot_threshold(scores, policy.pot_risk, policy.pot_initial_quantile)
        if not np.isfinite(level):  # a degenerate tail fit: the highest normal score instead
            level = float(scores.max())
    else:
        level = float(np.quantile(scores, policy.quantile))
    level = max(float(level * policy.margin), float(np.median(scores)) + MIN_THRESHOLD_MARGIN)
    if not np.isfinite(level):
        raise CalibrationError(f"threshold {level} is not finite (margin {policy.margin})")
    # Only a likelihood (a log-density, which may be negative) can land on 0, and then by
    # accident; 0 must never be a threshold, since an idle channel's score is exactly 0.
    return level if level != 0.0 else MIN_THRESHOLD_MARGIN


def ledoit_wolf_covariance(x: np.ndarray) -> np.ndarray:
    """The Ledoit-Wolf shrunk covariance of samples [N, F], as sklearn.covariance.LedoitWolf
    computes it (equal to rounding, tests/unit/test_calibrate.py). The estimator's input
    validation cost 1.6 ms of each asset's baseline fit, against 0.04 ms for the sums below,
    and a fleet that starts together fits every asset's baseline in the same minute."""
    n, f = x.shape
    x = x - x.mean(axis=0)
    if f == 1:
        return np.atleast_2d((x**2).mean())
    emp = x.T @ x / n
    mu = float(np.trace(emp)) / f
    x2 = x**2
    delta_ = float((emp**2).sum())
    beta = (float((x2.T @ x2).sum()) / n - delta_) / (f * n)
    delta = (delta_ - 2.0 * mu * float(np.trace(emp)) + f * mu**2) / f
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    cov = (1.0 - shrinkage) * emp
    cov.flat[:: f + 1] += shrinkage * mu
    return np.asarray(cov)


def fit_error_stats(
    errors: np.ndarray, degenerate: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, mean of squares, Ledoit-Wolf precision) of error features [N, F].

    Features marked in `degenerate` [F] (the errors of channels that did not vary in training,
    seqae.channels), and features whose error does not vary at all here (variance at most
    NO_ERROR_SPREAD: PCA's T² on windows without variance), are left out of the Ledoit-Wolf fit,
    get no covariance with the others, and a bounded weight: a deviation of u units adds at most
    DEGENERATE_UNIT_SCORE * u**2 to the score (Mahalanobis and mse alike), where their own
    near-zero variance made it 1e8. Without such features the result is what it always was."""

    def shrunk(e: np.ndarray) -> np.ndarray:
        cov = ledoit_wolf_covariance(e)
        # A feature with no spread (a stuck sensor) would make the covariance singular.
        cov += np.eye(e.shape[1]) * max(1e-9, 1e-6 * float(np.trace(cov)) / e.shape[1])
        return np.asarray(cov)

    mean = errors.mean(axis=0)
    sq_mean = (errors**2).mean(axis=0)
    weak = errors.var(axis=0) <= NO_ERROR_SPREAD
    if degenerate is not None and len(degenerate):
        weak[: len(degenerate)] |= np.asarray(degenerate, bool)
    if not weak.any():
        return mean, sq_mean, np.linalg.inv(shrunk(errors))
    ok = ~weak
    precision = np.zeros((len(mean), len(mean)))
    if ok.any():
        precision[np.ix_(ok, ok)] = np.linalg.inv(shrunk(errors[:, ok]))
    # contribution = u * (u @ P) / F, so P_jj = F * bound gives at most bound * u**2
    least_var = 1.0 / (len(mean) * DEGENERATE_UNIT_SCORE)
    idx = np.flatnonzero(weak)
    precision[idx, idx] = 1.0 / np.maximum(errors[:, weak].var(axis=0), least_var)
    sq_mean = sq_mean.copy()
    sq_mean[weak] = np.maximum(sq_mean[weak], least_var)
    return mean, sq_mean, precision


def degenerate_features(detector: Any, degenerate: np.ndarray, n_features: int) -> np.ndarray:
    """[F] True for the error features of degenerate channels [C]. Features are one per channel
    (then a window-wide one, PCA's T²), or, for a detector with `feature_channels()` (the fused
    kind: autoencoder and PCA errors per channel), as it maps them."""
    weak = np.zeros(n_features, bool)
    if not degenerate.any():
        return weak
    channels_of = getattr(getattr(detector, "detector", detector), "feature_channels", None)
    if callable(channels_of):
        which = np.asarray(channels_of())
    else:  # one feature per channel, then window-wide ones (PCA's T²)
        c = len(degenerate)
        which = np.r_[np.arange(min(c, n_features)), np.full(max(n_features - c, 0), -1)]
    if len(which) != n_features:
        raise CalibrationError(
            f"the detector names the channels of {len(which)} error features, but there are "
            f"{n_features}"
        )
    known = which >= 0
    weak[known] = degenerate[which[known]]
    return weak


def bound_log_var(log_var: np.ndarray, degenerate: np.ndarray) -> np.ndarray:
    """The "likelihood" kind's per-channel log-variance with the same bound for degenerate
    channels: 0.5 * err**2 / exp(log_var) adds at most DEGENERATE_UNIT_SCORE * err**2."""
    if not degenerate.any() or len(degenerate) != len(log_var):
        return log_var
    floor = float(np.log(0.5 / DEGENERATE_UNIT_SCORE))
    return np.where(degenerate, np.maximum(log_var, floor), log_var)


def split_for_calibration(n: int, gap: int) -> tuple[slice, slice]:
    """First half for statistics, second half for the threshold, `gap` windows apart so that
    no sample is shared between the halves."""
    if n - gap < MIN_CALIBRATION_WINDOWS:
        raise CalibrationError(
            f"{n} calibration windows are too few (need {MIN_CALIBRATION_WINDOWS + gap})"
        )
    half = (n - gap) // 2
    return slice(0, half), slice(half + gap, n)


def fit_baseline(
    scorer: Scorer,
    windows: np.ndarray,
    *,
    hop: int,
    score_kind: ScoreKind = "mahalanobis",
    policy: ThresholdPolicy | None = None,
    scaler: RobustScaler | None = None,
    period_s: float | None = None,
    split: int | None = None,
    known_range: tuple[np.ndarray, np.ndarray] | None = None,
    rule: AlertRule | None = None,
    envelope: Sequence[np.ndarray] | None = None,
    errors: np.ndarray | None = None,
) -> Baseline:
    """Fit an asset's baseline from its own normal windows [N, W, C] in raw units, in time order.

    The scaler is refitted on these windows unless one is given (the training scaler, for the
    model's default baseline); the network is untouched. `split` is where the statistics
    part ends and the threshold part begins, when the caller has already separated them;
    `known_range` the normal input range when it was seen on more data than these windows;
    `envelope` the normal windows of each asset to fit the operating envelope on (default:
    these windows); `errors` the windows' error features under `scaler`, if already computed.
    """
    policy = policy or ThresholdPolicy()
    if windows.ndim != 3 or len(windows) == 0:
        raise CalibrationError("calibration needs a non-empty [N, W, C] array of windows")
    if split is None:
        gap = -(-windows.shape[1] // hop) - 1
        stats_part, thr_part = split_for_calibration(len(windows), gap=gap)
    else:
        if min(split, len(windows) - split) < MIN_CALIBRATION_WINDOWS // 2:
            raise CalibrationError(f"{len(windows)} calibration windows are too few")
        stats_part, thr_part = slice(0, split), slice(split, len(windows))
    if scaler is None:
        scaler = RobustScaler.fit(windows)
    if errors is None:
        errors = scorer.features(windows, scaler.center, scaler.scale)
    weak = degenerate_features(scorer.detector, scaler.degenerate, errors.shape[1])
    mean, sq_mean, precision = fit_error_stats(errors[stats_part], weak)
    low, high = known_range if known_range else input_range(windows)
    baseline = Baseline(
        center=scaler.center,
        scale=scaler.scale,
        err_mean=mean,
        err_sq_mean=sq_mean,
        precision=precision,
        threshold=0.0,
        score_kind=score_kind,
        range_low=low,
        range_high=high,
        degenerate=scaler.degenerate,
    )
    if score_kind == "likelihood":
        baseline.obs_log_var = bound_log_var(decoder_log_var(scorer.detector), scaler.degenerate)
    baseline.env_mean, baseline.env_basis = fit_envelope(
        windows if envelope is None else envelope, scaler.center, scaler.scale
    )
    held_out, _ = baseline.scores(errors[thr_part])
    baseline.threshold = set_threshold(held_out, policy)
    exceed = float((held_out > baseline.threshold).mean())
    info: dict[str, Any] = {
        "windows": len(windows),
        "stats_windows": stats_part.stop - stats_part.start,
        "threshold_windows": len(held_out),
        "threshold_method": policy.method,
        "quantile": policy.quantile,
        "pot_risk": policy.pot_risk,
        "held_out_exceedance": exceed,
    }
    if period_s:
        info.update(expected_false_alerts(held_out, policy, period_s * hop, rule))
    baseline.info = info
    return baseline


def expected_false_alerts(
    held_out: np.ndarray, policy: ThresholdPolicy, step_s: float, rule: AlertRule | None = None
) -> dict[str, float]:
    """False alerts per day to expect, measured on normal windows that did not set the
    threshold: a threshold set on each half of `held_out` (scores in time order, `step_s`
    apart) is run through the alert rule on the other half; episodes over both halves' days.
    With fewer than 2 x MIN_CALIBRATION_WINDOWS windows there is nothing to say."""
    from seqae.alerting import Rule, alert_episodes

    chosen: AlertRule = rule or Rule()
    half = len(held_out) // 2
    if half < MIN_CALIBRATION_WINDOWS:
        return {"false_alert_windows": float(len(held_out))}
    first, second = held_out[:half], held_out[half:]
    episodes = 0
    for fit_on, run_on in ((first, second), (second, first)):
        level = set_threshold(fit_on, policy)
        episodes += alert_episodes(run_on, np.full(len(run_on), level), step_s, chosen)
    days = len(held_out) * step_s / 86400.0
    return {
        "expected_false_alerts_per_day": episodes / days,
        "false_alert_episodes": float(episodes),
        "false_alert_windows": float(len(held_out)),
        "false_alert_days": days,
    }


PRIOR_WINDOWS = 50.0  # independent windows that weigh as much as the profile's statistics


def shrinkage_weight(n_windows: int, window: int, hop: int, prior_windows: float) -> float:
    """Weight of an asset's own error statistics against the profile's: its independent
    (non-overlapping) windows against `prior_windows`, n / (n + prior)."""
    independent = n_windows * min(hop, window) / window
    return independent / (independent + prior_windows) if prior_windows > 0 else 1.0


def fit_asset_baseline(
    scorer: Scorer,
    windows: np.ndarray,
    *,
    hop: int,
    refit_scaler: bool = False,
    policy: ThresholdPolicy | None = None,
    period_s: float | None = None,
    prior_windows: float = PRIOR_WINDOWS,
    rule: AlertRule | None = None,
    errors: np.ndarray | None = None,
) -> Baseline:
    """An asset's own baseline from its normal windows [N, W, C], shrunk towards the profile's.
    `errors`: the windows' error features under the profile's scaler, where already computed
    (used only when that scaler is kept).

    By default the training scaler is kept and only the error statistics, the threshold and the
    known input range are refitted: on SKAB's tuning files (valve2) this lifted VUS-PR from 0.68
    (scaler refitted on the asset's span) to 0.85, since a short span under-states the spread.

    A warm-up of a few minutes holds few independent windows and one operating point, so its
    own statistics are used only as far as it supports them: error mean, covariance and
    threshold are blends `w * own + (1 - w) * profile`, `w = shrinkage_weight(...)`. The
    threshold is never below the highest score of the asset's own held-out windows (normal by
    assumption: a threshold they exceed is contradicted by the asset itself), nor, where the
    profile's statistics are kept, lower than the profile's would be on the same windows.
    """
    default = scorer.default_baseline
    keep = default is not None and not refit_scaler
    if windows.ndim != 3 or len(windows) == 0:
        raise CalibrationError("calibration needs a non-empty [N, W, C] array of windows")
    scaler = default.scaler if keep and default is not None else RobustScaler.fit(windows)
    if errors is None or not keep or len(errors) != len(windows):
        errors = scorer.features(windows, scaler.center, scaler.scale)  # once, for both fits
    # a warm-up sees one operating point: the blend below keeps the profile's envelope, so
    # its own (an SVD, a third of the fit) is not fitted where it would be dropped
    profile_envelope = (
        keep
        and default is not None
        and default.env_basis.size > 0
        and len(default.err_mean) == errors.shape[1]
    )
    own = fit_baseline(
        scorer,
        windows,
        hop=hop,
        score_kind=default.score_kind if default is not None else "mahalanobis",
        policy=policy,
        scaler=scaler,
        period_s=period_s,
        rule=rule,
        envelope=[] if profile_envelope else None,
        errors=errors,
    )
    if default is None or len(default.err_mean) != len(own.err_mean):
        return own
    weight = shrinkage_weight(int(own.info["stats_windows"]), windows.shape[1], hop, prior_windows)
    cov = weight * np.linalg.inv(own.precision) + (1 - weight) * np.linalg.inv(default.precision)
    cov = (cov + cov.T) / 2
    blended = Baseline(
        center=own.center,
        scale=own.scale,
        err_mean=weight * own.err_mean + (1 - weight) * default.err_mean,
        err_sq_mean=weight * own.err_sq_mean + (1 - weight) * default.err_sq_mean,
        precision=np.linalg.inv(cov),
        threshold=0.0,
        score_kind=own.score_kind,
        range_low=np.minimum(own.range_low, default.range_low)
        if default.range_low.size == own.range_low.size
        else own.range_low,
        range_high=np.maximum(own.range_high, default.range_high)
        if default.range_high.size == own.range_high.size
        else own.range_high,
        env_mean=default.env_mean if profile_envelope else own.env_mean,
        env_basis=default.env_basis if profile_envelope else own.env_basis,
        obs_log_var=own.obs_log_var,
        degenerate=own.degenerate,
    )
    gap = -(-windows.shape[1] // hop) - 1
    _, thr_part = split_for_calibration(len(windows), gap=gap)
    held_out, _ = blended.scores(errors[thr_part])  # blended keeps own's scaler
    own_level = set_threshold(held_out, policy or ThresholdPolicy())
    level = weight * own_level + (1 - weight) * default.threshold
    floor = float(held_out.max())
    blended.threshold = max(level, floor)
    info: dict[str, Any] = {
        **own.info,
        "shrinkage_weight": weight,
        "prior_windows": prior_windows,
        "own_threshold": own_level,
        "profile_threshold": float(default.threshold),
        "held_out_max": floor,
        "held_out_exceedance": float((held_out > blended.threshold).mean()),
    }
    if period_s:
        info.update(
            expected_false_alerts(held_out, policy or ThresholdPolicy(), period_s * hop, rule)
        )
    blended.info = info
    return blended.share_profile_wide()
