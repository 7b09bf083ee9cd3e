"""How good is a score: threshold-free and alarm metrics, trivial references, plots (`seqae evaluate`).

All functions take per-sample arrays: ``labels`` (0/1, 1 = anomalous), ``score`` (finite floats)
and ``alarms`` (bool), of one length. Alarms at a threshold are ``score > threshold``.

Rules for undefined values: `vus_pr`, `auc_pr` and `event_recall` raise `EvaluationError` when
the labels hold no anomaly (and the first two when they hold nothing else); ratios inside
`point_metrics` and the rates in `EvalReport` are NaN when their denominator is zero,
`EvalReport.to_dict` writes NaN as ``None`` (JSON ``null``), and `EvalReport.summary_lines`
says why a metric is undefined instead of printing ``nan``.

VUS-PR and AUC-PR come from the TSB-AD package (``TSB_AD.evaluation.basic_metrics``, which
needs only numpy and scikit-learn).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_VUS_WINDOW = 100  # TSB-AD's default sliding window for VUS
VUS_THRESHOLDS = 250  # TSB-AD's default number of thresholds


class EvaluationError(ValueError):
    """Inputs a metric cannot be computed on; the message names the argument and the reason."""


def _as_labels(labels: Any, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise EvaluationError(f"{name}: expected a non-empty 1-D array, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise EvaluationError(f"{name}: expected 0/1 values, got dtype {arr.dtype}")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise EvaluationError(
            f"{name}: values must be 0 or 1, found {arr[i].item()!r} at index {i}"
        )
    return arr.astype(bool)


def _as_score(score: Any, n: int, name: str = "score") -> np.ndarray:
    arr = np.asarray(score, dtype=np.float64)
    if arr.ndim != 1 or len(arr) != n:
        raise EvaluationError(f"{name}: expected shape ({n},) like labels, got {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise EvaluationError(
            f"{name}: {int(bad.sum())} non-finite values (first at index {i}); "
            "fill unscored samples (e.g. with the minimum score) before evaluating"
        )
    return arr


def _as_alarms(alarms: Any, n: int) -> np.ndarray:
    arr = _as_labels(alarms, "alarms")
    if len(arr) != n:
        raise EvaluationError(f"alarms: expected length {n} like labels, got {len(arr)}")
    return arr


def _require_both_classes(y: np.ndarray, metric: str) -> None:
    if not y.any():
        raise EvaluationError(f"labels: no anomalous samples, {metric} is undefined")
    if y.all():
        raise EvaluationError(f"labels: no normal samples, {metric} is undefined")


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


# --- threshold-free -------------------------------------------------------------------------


def auc_pr(labels: Any, score: Any) -> float:
    """Area under the precision-recall curve (average precision), as TSB-AD computes it."""
    from TSB_AD.evaluation.basic_metrics import basic_metricor

    y = _as_labels(labels)
    s = _as_score(score, len(y))
    _require_both_classes(y, "AUC-PR")
    return float(basic_metricor().metric_PR(y.astype(int), s))


def vus_pr(labels: Any, score: Any, *, window: int = DEFAULT_VUS_WINDOW) -> float:
    """Volume under the range-PR surface over buffer sizes 0..`window` (TSB-AD, Paparrizos 2022)."""
    from TSB_AD.evaluation.basic_metrics import generate_curve

    y = _as_labels(labels)
    s = _as_score(score, len(y))
    _require_both_classes(y, "VUS-PR")
    if window < 0:
        raise EvaluationError(f"window: must be >= 0, got {window}")
    result = generate_curve(y.astype(int), s, window, "opt", VUS_THRESHOLDS)
    return float(result[-1])


# --- at an alarm vector ---------------------------------------------------------------------


def events(labels: Any) -> list[tuple[int, int]]:
    """Runs of 1 in `labels` as (start, end) sample ranges, end exclusive."""
    y = _as_labels(labels)
    return _runs(y)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def point_metrics(labels: Any, alarms: Any) -> dict[str, float]:
    """Point-wise counts and SKAB's F1 = TP/(TP+(FP+FN)/2), FAR = FP/(FP+TN), MAR = FN/(FN+TP)."""
    y = _as_labels(labels)
    a = _as_alarms(alarms, len(y))
    tp = int(np.sum(y & a))
    fp = int(np.sum(~y & a))
    fn = int(np.sum(y & ~a))
    tn = int(np.sum(~y & ~a))
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(tp, tp + (fp + fn) / 2),
        "far": _ratio(fp, fp + tn),
        "mar": _ratio(fn, fn + tp),
    }


def event_recall(labels: Any, alarms: Any) -> float:
    """Fraction of labelled events with at least one alarm inside them."""
    y = _as_labels(labels)
    a = _as_alarms(alarms, len(y))
    evs = _runs(y)
    if not evs:
        raise EvaluationError("labels: no anomalous events, event recall is undefined")
    return sum(bool(a[s:e].any()) for s, e in evs) / len(evs)


def detection_delays(labels: Any, alarms: Any, period_s: float) -> list[float]:
    """Seconds from each detected event's start to its first alarm; missed events are left out."""
    _check_period(period_s)
    y = _as_labels(labels)
    a = _as_alarms(alarms, len(y))
    delays = []
    for s, e in _runs(y):
        hits = np.flatnonzero(a[s:e])
        if hits.size:
            delays.append(float(hits[0]) * period_s)
    return delays


def median_detection_delay(labels: Any, alarms: Any, period_s: float) -> float:
    """Median of `detection_delays`; NaN when no event is detected."""
    delays = detection_delays(labels, alarms, period_s)
    return float(np.median(delays)) if delays else math.nan


def false_alarm_episodes(labels: Any, alarms: Any) -> list[tuple[int, int]]:
    """Runs of consecutive alarms that touch no labelled sample.

    A run that overlaps an event, including its tail after the event ends, is a detection,
    not a false alarm.
    """
    y = _as_labels(labels)
    a = _as_alarms(alarms, len(y))
    return [(s, e) for s, e in _runs(a) if not y[s:e].any()]


def false_alarms_per_hour(labels: Any, alarms: Any, period_s: float) -> float:
    """False-alarm episodes per hour of normal (unlabelled) time; NaN when there is none."""
    _check_period(period_s)
    y = _as_labels(labels)
    normal_hours = float(np.sum(~y)) * period_s / 3600.0
    return _ratio(len(false_alarm_episodes(y, alarms)), normal_hours)


def _check_period(period_s: float) -> None:
    if not (period_s > 0 and math.isfinite(period_s)):
        raise EvaluationError(f"period_s: must be a positive number, got {period_s}")


# --- report ---------------------------------------------------------------------------------


# The metrics `seqae evaluate` prints: field name -> (label, format of a defined value).
SUMMARY_METRICS: dict[str, tuple[str, str]] = {
    "vus_pr": ("VUS-PR", "{:.3f}"),
    "auc_pr": ("AUC-PR", "{:.3f}"),
    "f1": ("F1", "{:.3f}"),
    "far": ("FAR", "{:.1%}"),
    "mar": ("MAR", "{:.1%}"),
    "event_recall": ("event recall", "{:.2f}"),
    "median_detection_delay_s": ("median delay", "{:.0f}s"),
    "false_alarms_per_hour": ("false alarms/h", "{:.2f}"),
}


@dataclass
class EvalReport:
    """Every metric of one score against one label vector, at one threshold."""

    n_samples: int
    n_anomalous: int
    positive_rate: float
    threshold: float
    period_s: float
    vus_pr: float  # NaN when labels lack a class
    auc_pr: float
    vus_window: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    f1: float
    far: float
    mar: float
    n_events: int
    n_events_detected: int
    event_recall: float
    median_detection_delay_s: float
    false_alarm_episodes: int
    false_alarms_per_hour: float
    normal_hours: float
    detection_delays_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; NaN becomes None."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return {k: clean(v) for k, v in asdict(self).items()}

    def why_undefined(self, metric: str) -> str | None:
        """Why `metric` (a field name) has no value here, or None when it has one."""
        value = getattr(self, metric)
        if not (isinstance(value, float) and math.isnan(value)):
            return None
        no_anomaly, no_normal = self.n_anomalous == 0, self.n_anomalous == self.n_samples
        if metric == "median_detection_delay_s" and not no_anomaly:
            return "no labelled anomaly was detected"
        if metric == "f1" and no_anomaly:
            return "no labelled anomaly and no alarm"
        if metric == "precision":
            return "no alarm"
        if no_anomaly and metric in (
            "vus_pr",
            "auc_pr",
            "recall",
            "mar",
            "event_recall",
            "median_detection_delay_s",
        ):
            return "no labelled anomaly"
        if no_normal and metric in ("vus_pr", "auc_pr", "far", "false_alarms_per_hour"):
            return "no normal (unlabelled) sample"
        return "its denominator is zero"

    def describe(self, metric: str) -> str:
        """ "VUS-PR 0.812", or "VUS-PR undefined (no labelled anomaly)": never a bare nan."""
        label, fmt = SUMMARY_METRICS[metric]
        reason = self.why_undefined(metric)
        if reason is not None:
            return f"{label} undefined ({reason})"
        return f"{label} {fmt.format(getattr(self, metric))}"

    def summary_lines(self) -> list[str]:
        """The headline metrics on one line; each group of undefined ones on a line saying why."""
        defined: list[str] = []
        undefined: dict[str, list[str]] = {}
        for metric, (label, fmt) in SUMMARY_METRICS.items():
            reason = self.why_undefined(metric)
            if reason is None:
                defined.append(f"{label} {fmt.format(getattr(self, metric))}")
            else:
                undefined.setdefault(reason, []).append(label)
        lines = ["  ".join(defined)] if defined else []
        for reason, labels in undefined.items():
            lines.append(f"{', '.join(labels)} undefined: {reason}")
        return lines

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


def evaluate_scores(
    labels: Any,
    score: Any,
    threshold: float,
    period_s: float,
    *,
    vus_window: int = DEFAULT_VUS_WINDOW,
) -> EvalReport:
    """All metrics of `score` against `labels`, alarms where ``score > threshold``."""
    _check_period(period_s)
    y = _as_labels(labels)
    s = _as_score(score, len(y))
    if not math.isfinite(threshold):
        raise EvaluationError(f"threshold: must be finite, got {threshold}")
    alarms = s > threshold
    both = bool(y.any() and not y.all())
    pm = point_metrics(y, alarms)
    evs = _runs(y)
    delays = detection_delays(y, alarms, period_s)
    normal_hours = float(np.sum(~y)) * period_s / 3600.0
    episodes = len(false_alarm_episodes(y, alarms))
    return EvalReport(
        n_samples=len(y),
        n_anomalous=int(y.sum()),
        positive_rate=float(y.mean()),
        threshold=float(threshold),
        period_s=float(period_s),
        vus_pr=vus_pr(y, s, window=vus_window) if both else math.nan,
        auc_pr=auc_pr(y, s) if both else math.nan,
        vus_window=vus_window,
        tp=int(pm["tp"]),
        fp=int(pm["fp"]),
        fn=int(pm["fn"]),
        tn=int(pm["tn"]),
        precision=pm["precision"],
        recall=pm["recall"],
        f1=pm["f1"],
        far=pm["far"],
        mar=pm["mar"],
        n_events=len(evs),
        n_events_detected=len(delays),
        event_recall=_ratio(len(delays), len(evs)),
        median_detection_delay_s=float(np.median(delays)) if delays else math.nan,
        false_alarm_episodes=episodes,
        false_alarms_per_hour=_ratio(episodes, normal_hours),
        normal_hours=normal_hours,
        detection_delays_s=delays,
    )


def always_alarm_reference(
    labels: Any, period_s: float = 1.0, *, vus_window: int = DEFAULT_VUS_WINDOW
) -> EvalReport:
    """The detector that always alarms: a constant score above its threshold."""
    y = _as_labels(labels)
    return evaluate_scores(y, np.ones(len(y)), 0.0, period_s, vus_window=vus_window)


def random_score_reference(
    labels: Any, seed: int, period_s: float = 1.0, *, vus_window: int = DEFAULT_VUS_WINDOW
) -> EvalReport:
    """Uniform random scores, thresholded so the alarm rate equals the positive rate."""
    y = _as_labels(labels)
    score = np.random.default_rng(seed).random(len(y))
    return evaluate_scores(y, score, float(1.0 - y.mean()), period_s, vus_window=vus_window)


# --- plots ----------------------------------------------------------------------------------

MAX_PANELS = 8  # above this many channels, draw them stacked and normalised in one panel


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_series(
    path: str | Path,
    timestamps: Any,
    values: Any,
    channels: Sequence[str],
    score: Any,
    threshold: float | Any,
    labels: Any = None,
    title: str = "",
) -> Path:
    """One PNG: a panel per channel and the score with its threshold below.

    Labelled segments are shaded in every panel; alarms (score > threshold) are marked as red
    ticks on the score panel and a red rug under each channel. `score` may hold NaN where no
    window was scored; `threshold` is a number or one value per sample.
    """
    ts = np.asarray(timestamps)
    vals = np.asarray(values, dtype=np.float64)
    n = len(ts)
    if ts.ndim != 1 or n == 0:
        raise EvaluationError(f"timestamps: expected a non-empty 1-D array, got shape {ts.shape}")
    if vals.ndim != 2 or vals.shape != (n, len(channels)):
        raise EvaluationError(
            f"values: expected shape ({n}, {len(channels)}) for {len(channels)} channels, "
            f"got {vals.shape}"
        )
    sc = np.asarray(score, dtype=np.float64)
    if sc.shape != (n,):
        raise EvaluationError(f"score: expected shape ({n},), got {sc.shape}")
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (n,))
    y = _as_labels(labels) if labels is not None else np.zeros(n, dtype=bool)
    if len(y) != n:
        raise EvaluationError(f"labels: expected length {n}, got {len(y)}")
    x = ts.astype("datetime64[ns]") if np.issubdtype(ts.dtype, np.integer) else ts
    with np.errstate(invalid="ignore"):
        alarms = sc > thr
    plt = _pyplot()

    stacked = len(channels) > MAX_PANELS
    n_panels = 2 if stacked else len(channels) + 1
    heights = [4.0, 1.5] if stacked else [1.0] * len(channels) + [1.5]
    fig, axes = plt.subplots(
        n_panels,
        1,
        sharex=True,
        figsize=(13, 1.6 * sum(heights) + 0.8),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    axes = axes[:, 0]
    segments = _runs(y)
    alarm_x = x[alarms]

    if stacked:
        ax = axes[0]
        for i in range(len(channels)):
            col = vals[:, i]
            lo, hi = np.nanmin(col), np.nanmax(col)
            norm = (col - lo) / (hi - lo) if hi > lo else col * 0.0
            ax.plot(x, norm * 0.8 + i, lw=0.6)
        ax.set_yticks(np.arange(len(channels)) + 0.4, list(channels), fontsize=7)
        ax.set_ylabel("channels (min-max)")
    else:
        for i, name in enumerate(channels):
            ax = axes[i]
            ax.plot(x, vals[:, i], lw=0.7, color="tab:blue")
            ax.set_ylabel(name, fontsize=8)
            if alarm_x.size:
                ax.plot(
                    alarm_x,
                    np.full(alarm_x.size, np.nanmin(vals[:, i])),
                    "|",
                    color="tab:red",
                    ms=4,
                    alpha=0.5,
                )
    sax = axes[-1]
    sax.plot(x, sc, lw=0.7, color="black", label="score")
    sax.plot(x, thr, lw=1.0, ls="--", color="tab:orange", label="threshold")
    if alarm_x.size:
        sax.plot(alarm_x, sc[alarms], "|", color="tab:red", ms=6, label="alarm")
    sax.set_ylabel("score", fontsize=8)
    if np.nanmin(sc) > 0 and np.nanmax(sc) > 100 * max(np.nanmin(sc), 1e-12):
        sax.set_yscale("log")  # fault scores dwarf normal ones; a log axis keeps both readable
    sax.legend(loc="upper left", fontsize=7, ncol=3)
    for ax in axes:
        for s, e in segments:
            ax.axvspan(x[s], x[min(e, n - 1)], color="tab:red", alpha=0.15, lw=0)
        ax.grid(alpha=0.3)
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_summary(path: str | Path, rows: Sequence[Mapping[str, Any]], title: str = "") -> Path:
    """Grouped bar chart: one group per metric, one bar per detector, error bars from ``std``.

    Each row needs ``detector``, ``metric`` and ``mean``; ``std`` is optional.
    """
    if not rows:
        raise EvaluationError("rows: nothing to plot")
    for i, row in enumerate(rows):
        for key in ("detector", "metric", "mean"):
            if key not in row:
                raise EvaluationError(f"rows[{i}]: missing key {key!r}")
        if not math.isfinite(float(row["mean"])):
            raise EvaluationError(f"rows[{i}]: mean must be finite, got {row['mean']!r}")
    detectors = list(dict.fromkeys(str(r["detector"]) for r in rows))
    metrics = list(dict.fromkeys(str(r["metric"]) for r in rows))
    table = {(str(r["detector"]), str(r["metric"])): r for r in rows}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(metrics) * len(detectors) + 2), 4))
    width = 0.8 / len(detectors)
    for j, det in enumerate(detectors):
        xs, means, errs = [], [], []
        for k, met in enumerate(metrics):
            entry = table.get((det, met))
            if entry is None:
                continue
            xs.append(k + (j - (len(detectors) - 1) / 2) * width)
            means.append(float(entry["mean"]))
            errs.append(float(entry.get("std", 0.0) or 0.0))
        bars = ax.bar(xs, means, width, yerr=errs, capsize=3, label=det)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("value")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
