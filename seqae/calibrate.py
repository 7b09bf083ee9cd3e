"""From per-channel reconstruction errors to a calibrated score and threshold.

Held-out normal windows are split in time: the error statistics (mean, Ledoit-Wolf shrinkage
covariance) are fitted on the first part, the threshold is set on the scores of the second.
Overlapping windows are not independent samples, so fitting both on the same windows would set
the threshold far too low. A `Baseline` bundles everything one asset needs: its scaler, its
error statistics, its threshold and the input range it has seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import stats
from sklearn.covariance import LedoitWolf

from seqae.data import RobustScaler

if TYPE_CHECKING:
    from seqae.score import Scorer

ScoreKind = Literal["mse", "mahalanobis"]
ThresholdMethod = Literal["quantile", "pot"]
SHIFT_MARGIN = 3.0  # robust spreads beyond the seen input range before a sample counts as new
SHIFT_FRACTION = 0.5  # share of a window's samples outside the range that makes it "shifted"
MIN_CALIBRATION_WINDOWS = 20


class CalibrationError(ValueError):
    pass


@dataclass
class ThresholdPolicy:
    method: ThresholdMethod = "quantile"
    quantile: float = 0.995
    pot_risk: float = 1e-3  # target exceedance probability per window (POT)
    pot_initial_quantile: float = 0.95
    margin: float = 1.0  # multiplies the fitted threshold


@dataclass
class Baseline:
    center: np.ndarray  # [C] scaler
    scale: np.ndarray  # [C]
    err_mean: np.ndarray  # [F] mean error feature
    err_sq_mean: np.ndarray  # [F] mean squared error feature (window-MSE score)
    precision: np.ndarray  # [F, F] inverse shrinkage covariance (Mahalanobis score)
    threshold: float
    score_kind: ScoreKind = "mahalanobis"
    range_low: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [C]
    range_high: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [C]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def scaler(self) -> RobustScaler:
        return RobustScaler(self.center, self.scale)

    def scores(self, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score [N], contribution per feature [N, F]); contributions sum to the score."""
        n_features = errors.shape[1]
        if self.score_kind == "mse":
            contrib = errors**2 / np.maximum(self.err_sq_mean, 1e-12) / n_features
        else:
            u = errors - self.err_mean
            contrib = u * (u @ self.precision) / n_features
        return contrib.sum(axis=1), contrib

    def shifted(self, windows: np.ndarray) -> np.ndarray:
        """True for windows whose inputs leave the range this baseline was fitted on."""
        if self.range_low.size == 0:
            return np.zeros(len(windows), dtype=bool)
        slack = SHIFT_MARGIN * self.scale
        with np.errstate(invalid="ignore"):
            outside = (windows < self.range_low - slack) | (windows > self.range_high + slack)
        observed = np.maximum((~np.isnan(windows)).sum(axis=1), 1)
        share = outside.sum(axis=1) / observed  # [N, C]
        return np.asarray((share > SHIFT_FRACTION).any(axis=1))

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
            "info": self.info,
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
                info=dict(d.get("info", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"baseline is malformed: {exc!r}") from exc
        f = len(b.err_mean)
        if b.precision.shape != (f, f) or b.center.shape != b.scale.shape:
            raise CalibrationError("baseline arrays have inconsistent shapes")
        if b.score_kind not in ("mse", "mahalanobis"):
            raise CalibrationError(f"unknown score kind {b.score_kind!r}")
        return b


def input_range(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel 0.5 and 99.5 percentiles of normal rows [..., C]: the range a baseline knows."""
    flat = rows.reshape(-1, rows.shape[-1])
    low, high = np.nanpercentile(flat, [0.5, 99.5], axis=0)
    return low.astype(np.float32), high.astype(np.float32)


def pot_threshold(scores: np.ndarray, risk: float, initial_quantile: float = 0.95) -> float:
    """Peaks over threshold: fit a generalised Pareto tail above an initial quantile and return
    the level exceeded with probability `risk` (SPOT, Siffer et al. 2017)."""
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
    if policy.method == "pot":
        level = pot_threshold(scores, policy.pot_risk, policy.pot_initial_quantile)
    else:
        level = float(np.quantile(scores, policy.quantile))
    return float(level * policy.margin)


def fit_error_stats(
    errors: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, mean of squares, Ledoit-Wolf precision) of error features [N, F]."""
    mean = errors.mean(axis=0)
    sq_mean = (errors**2).mean(axis=0)
    cov = LedoitWolf().fit(errors).covariance_
    # A feature with no spread (a stuck sensor) would make the covariance singular.
    cov += np.eye(len(mean)) * max(1e-9, 1e-6 * float(np.trace(cov)) / len(mean))
    return mean, sq_mean, np.linalg.inv(cov)


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
) -> Baseline:
    """Fit an asset's baseline from its own normal windows [N, W, C] in raw units, in time order.

    The scaler is refitted on these windows unless one is given (the training scaler, for the
    model's default baseline); the network is untouched. `split` is where the statistics
    part ends and the threshold part begins, when the caller has already separated them;
    `known_range` the normal input range when it was seen on more data than these windows.
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
    errors = scorer.features(windows, scaler.center, scaler.scale)
    mean, sq_mean, precision = fit_error_stats(errors[stats_part])
    flat = windows.reshape(-1, windows.shape[-1])
    baseline = Baseline(
        center=scaler.center,
        scale=scaler.scale,
        err_mean=mean,
        err_sq_mean=sq_mean,
        precision=precision,
        threshold=0.0,
        score_kind=score_kind,
        range_low=known_range[0] if known_range else input_range(flat)[0],
        range_high=known_range[1] if known_range else input_range(flat)[1],
    )
    held_out, _ = baseline.scores(errors[thr_part])
    baseline.threshold = set_threshold(held_out, policy)
    exceed = float((held_out > baseline.threshold).mean())
    baseline.info = {
        "windows": len(windows),
        "stats_windows": stats_part.stop - stats_part.start,
        "threshold_windows": len(held_out),
        "threshold_method": policy.method,
        "quantile": policy.quantile,
        "pot_risk": policy.pot_risk,
        "held_out_exceedance": exceed,
    }
    if period_s:
        windows_per_day = 86400.0 / (period_s * hop)
        expected = max(
            exceed, 1.0 - policy.quantile if policy.method == "quantile" else policy.pot_risk
        )
        baseline.info["expected_alarm_windows_per_day"] = expected * windows_per_day
    return baseline


def fit_asset_baseline(
    scorer: Scorer,
    windows: np.ndarray,
    *,
    hop: int,
    refit_scaler: bool = False,
    policy: ThresholdPolicy | None = None,
    period_s: float | None = None,
) -> Baseline:
    """An asset's own baseline from its normal windows, beside the model's default one.

    By default the training scaler is kept and only the error statistics, the threshold and the
    known input range are refitted: on SKAB's tuning files (valve2) this lifted VUS-PR from 0.68
    (scaler refitted on the asset's span) to 0.85, since a short span under-states the spread.
    """
    default = scorer.default_baseline
    keep = default is not None and not refit_scaler
    return fit_baseline(
        scorer,
        windows,
        hop=hop,
        score_kind=default.score_kind if default is not None else "mahalanobis",
        policy=policy,
        scaler=default.scaler if keep and default is not None else None,
        period_s=period_s,
    )
