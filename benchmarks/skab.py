"""The honest SKAB benchmark: global and per-file protocols, settings tuned on valve2 only.

Protocols (every test row is a row after a file's first 400, so all three share one test set):
- ``global``: one network trained on the first 80% of ``anomaly-free.csv``, its baseline
  (scaler, error statistics, threshold) calibrated on the last 20%; scored on every file.
- ``global+baseline``: the same network, with a per-asset baseline re-fitted on each file's
  first 400 rows (the daemon's warm-up calibration); no retraining.
- ``per-file``: the public leaderboard protocol, one model per file trained on its first
  400 rows; calibration also comes from those rows (the test rows are off limits).

SKAB rows are irregular (about 1.05 s apart, gaps up to 33 s) and SKAB scores per row, so a
file's rows are used as they come: timestamps are replaced by the row index at 1 s, and delays
and alarm rates are in rows (about seconds). ``other/2.csv`` holds anomalies in its first 400
rows: it is excluded from the per-file protocol and flagged in the global ones. ``valve2/*``
is the only tuning set; the "report" subset is the other 30 files.

Run: ``python benchmarks/skab.py`` (``--help`` for options). Import ``run_protocols`` with
your own ``DetectorSpec`` list to add model variants.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from seqae.calibrate import Baseline, ScoreKind, ThresholdPolicy, fit_baseline, set_threshold
from seqae.data import RobustScaler, Series, make_windows, read_series
from seqae.evaluate import (
    always_alarm_reference,
    evaluate_scores,
    plot_series,
    plot_summary,
    random_score_reference,
    vus_pr,
)
from seqae.score import Scorer
from seqae.train import DetectorKind, FittedProfile, TrainConfig, fit_profile

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "skab"
RESULTS_DIR = REPO / "benchmarks" / "results"
HEAD_ROWS = 400  # SKAB's training span per file
CONTAMINATED = ("other/2",)  # anomalous rows inside the first 400
TUNING_GROUP = "valve2"
PERIOD_S = 1.0  # one row
Protocol = Literal["global", "global+baseline", "per-file"]
PROTOCOLS: tuple[Protocol, ...] = ("global", "global+baseline", "per-file")
SUBSETS = ("all", "report", "tuning")


class BenchmarkError(ValueError):
    """A benchmark input that cannot be used; the message names the file or setting."""


@dataclass(frozen=True)
class DetectorSpec:
    """One detector variant: what to fit, how to score and where to put the threshold."""

    name: str
    kind: DetectorKind = "lstm"
    model_cfg: dict[str, Any] = field(default_factory=dict)
    window: int = 10
    score_kind: ScoreKind = "mahalanobis"
    policy: ThresholdPolicy = field(default_factory=ThresholdPolicy)
    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    smooth: int = 1  # causal moving average of the score over this many rows (1: none)
    stats_fraction: float = 0.5  # share of a calibration span that fits the error statistics
    per_file_calib_rows: int = 100  # per-file protocol: the last rows of the 400 calibrate
    baseline_scaler: Literal["refit", "center", "train"] = "refit"  # per-asset baselines
    log_errors: bool = False  # score log(error) features (closer to Gaussian for Mahalanobis)
    weight_decay: float = 0.0  # AdamW weight decay of the network

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["policy"] = asdict(self.policy)
        return d


@dataclass
class SkabData:
    normal: Series  # anomaly-free.csv
    files: dict[str, Series]  # "valve1/0" -> labelled series


@dataclass
class FileScores:
    """Test-row results of one file: labels, raw score and the per-file threshold."""

    name: str
    labels: np.ndarray  # int8 [T_test]
    score: np.ndarray  # float64 [T_test]
    threshold: float

    @property
    def normalised(self) -> np.ndarray:
        """score / threshold, so that files are comparable and alarms are > 1."""
        return self.score / self.threshold


@dataclass
class RunResult:
    detector: str
    protocol: Protocol
    seed: int
    train_seconds: float
    files: list[FileScores]
    # training data -> the feature set a fused detector with select "auto" kept ("ae+pca", "pca")
    selections: dict[str, str] = field(default_factory=dict)


def selected_as(fitted: FittedProfile, data_name: str) -> dict[str, str]:
    """{data_name: the feature set kept} for a detector that selected one, else {}."""
    chosen = fitted.meta.training.get("selection")
    return {} if chosen is None else {data_name: chosen["selected"]}


# --- data -----------------------------------------------------------------------------------


def row_indexed(series: Series) -> Series:
    """The same rows with timestamps 0, 1, 2, ... s: SKAB is evaluated per row."""
    return replace(series, timestamps=np.arange(len(series), dtype=np.int64) * 1_000_000_000)


def load_skab(root: Path = DEFAULT_ROOT) -> SkabData:
    """anomaly-free.csv and the 34 labelled files, read in place."""
    root = Path(root)
    normal_path = root / "anomaly-free" / "anomaly-free.csv"
    if not normal_path.exists():
        raise BenchmarkError(f"{normal_path}: not found; pass --data with the SKAB folder")
    normal = row_indexed(read_series(normal_path, sep=";"))
    files: dict[str, Series] = {}
    for group in ("valve1", "valve2", "other"):
        paths = sorted((root / group).glob("*.csv"), key=lambda p: int(p.stem))
        if not paths:
            raise BenchmarkError(f"{root / group}: no CSV files")
        for path in paths:
            s = read_series(path, sep=";").select(normal.channels)
            if s.labels is None:
                raise BenchmarkError(f"{path}: no 'anomaly' label column")
            if len(s) <= HEAD_ROWS + 50:
                raise BenchmarkError(f"{path}: {len(s)} rows leave no test part after {HEAD_ROWS}")
            files[f"{group}/{path.stem}"] = row_indexed(s)
    return SkabData(normal, files)


def subset_names(names: Iterable[str], subset: str) -> list[str]:
    names = list(names)
    if subset == "all":
        return names
    if subset == "tuning":
        return [n for n in names if n.startswith(TUNING_GROUP + "/")]
    if subset == "report":
        return [n for n in names if not n.startswith(TUNING_GROUP + "/")]
    raise BenchmarkError(f"unknown subset {subset!r}; expected one of {SUBSETS}")


# --- calibration and scoring ----------------------------------------------------------------


def causal_mean(score: np.ndarray, k: int) -> np.ndarray:
    """Mean of the last `k` values at each position (fewer at the start)."""
    if k <= 1:
        return score
    c = np.cumsum(np.concatenate(([0.0], score)))
    idx = np.arange(1, len(score) + 1)
    lo = np.maximum(idx - k, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def calibrate(
    scorer: Scorer,
    rows: np.ndarray,
    spec: DetectorSpec,
    scaler: RobustScaler | None = None,
) -> Baseline:
    """A baseline from normal rows [T, C] in time order: statistics on the first part, the
    threshold on the rest (windows of the two parts share no sample). The scaler is re-fitted
    on these rows unless one is given."""
    k = int(len(rows) * spec.stats_fraction)
    stats_w, _ = make_windows(rows[:k], spec.window, 1)
    thr_w, _ = make_windows(rows[k:], spec.window, 1)
    baseline = fit_baseline(
        scorer,
        np.concatenate([stats_w, thr_w]),
        hop=1,
        score_kind=spec.score_kind,
        policy=spec.policy,
        scaler=scaler,
        period_s=PERIOD_S,
        split=len(stats_w),
    )
    if spec.smooth > 1:
        # The threshold must be set on scores smoothed the way test scores are.
        held_out = scorer.score(thr_w, baseline).score.astype(np.float64)
        baseline.threshold = set_threshold(causal_mean(held_out, spec.smooth), spec.policy)
    return baseline


class LogErrorScorer(Scorer):
    """A Scorer whose error features are log(error + 1e-3): calibration and scoring both see
    them, since fit_baseline and score go through `features`."""

    def features(self, windows: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return np.log(super().features(windows, center, scale) + 1e-3)


def make_scorer(detector: Any, spec: DetectorSpec) -> Scorer:
    return (LogErrorScorer if spec.log_errors else Scorer)(detector, device="cpu")


def asset_scaler(
    rows: np.ndarray, trained: RobustScaler, spec: DetectorSpec
) -> RobustScaler | None:
    """The scaler of a per-asset baseline: re-fitted on the asset's rows (None: fit_baseline
    does it), re-centred only (the training spread kept), or the training scaler."""
    if spec.baseline_scaler == "refit":
        return None
    if spec.baseline_scaler == "center":
        return RobustScaler(RobustScaler.fit(rows).center, trained.scale)
    return trained


def score_test_rows(
    scorer: Scorer, series: Series, baseline: Baseline, spec: DetectorSpec, name: str
) -> FileScores:
    """Score every window of the file (hop 1) and keep the rows after the head."""
    windows, ends = make_windows(series.values, spec.window, 1)
    raw = scorer.score(windows, baseline).score.astype(np.float64)
    score = causal_mean(raw, spec.smooth)
    keep = ends >= HEAD_ROWS
    if series.labels is None:
        raise BenchmarkError(f"{name}: no labels to evaluate against")
    if not baseline.threshold > 0:
        raise BenchmarkError(f"{name}: threshold {baseline.threshold} is not positive")
    return FileScores(name, series.labels[ends[keep]], score[keep], float(baseline.threshold))


def train_config(spec: DetectorSpec, seed: int, calib_fraction: float) -> TrainConfig:
    return TrainConfig(
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        seed=seed,
        device="cpu",
        calib_fraction=calib_fraction,
    )


NetworkCache = dict[tuple[Any, ...], tuple[FittedProfile, float]]


def fit_detector(
    spec: DetectorSpec,
    normal: Series,
    seed: int,
    calib_fraction: float,
    cache: NetworkCache | None = None,
    key: str = "",
) -> tuple[FittedProfile, float]:
    """A profile fitted on the first (1 - calib_fraction) of `normal`, and its seconds.

    Specs that differ only in scoring share one network through `cache` (keyed by `key`,
    the training data's name, and every setting that changes the network)."""
    ident = (
        key,
        spec.kind,
        json.dumps(spec.model_cfg, sort_keys=True),
        spec.window,
        spec.epochs,
        spec.batch_size,
        spec.lr,
        spec.weight_decay,
        seed if spec.kind != "pca" else 0,  # PCA has no randomness
        calib_fraction,
    )
    if cache is not None and ident in cache:
        return cache[ident]
    started = time.perf_counter()
    fitted = fit_profile(
        [normal],
        profile=spec.name,
        window=spec.window,
        hop=1,
        period_s=PERIOD_S,
        kind=spec.kind,
        model_cfg=dict(spec.model_cfg),
        train_cfg=train_config(spec, seed, calib_fraction),
        score_kind=spec.score_kind,
        policy=spec.policy,
        progress=False,
    )
    result = (fitted, time.perf_counter() - started)
    if cache is not None:
        cache[ident] = result
    return result


# --- protocols ------------------------------------------------------------------------------


def run_global(
    spec: DetectorSpec,
    seed: int,
    data: SkabData,
    names: Sequence[str],
    cache: NetworkCache | None = None,
) -> tuple[RunResult, RunResult]:
    """(global, global+baseline) results of one network trained on anomaly-free.csv."""
    calib_fraction = 0.2
    fitted, seconds = fit_detector(spec, data.normal, seed, calib_fraction, cache, "anomaly-free")
    scorer = make_scorer(fitted.detector, spec)
    held_out = data.normal.values[int(len(data.normal) * (1.0 - calib_fraction)) :]
    # The training scaler, statistics and threshold from the held-out 20% (as fit_profile does,
    # with a gap between the statistics and threshold windows and the spec's smoothing).
    default = calibrate(scorer, held_out, spec, fitted.baseline.scaler)
    plain, refit = [], []
    for name in names:
        s = data.files[name]
        plain.append(score_test_rows(scorer, s, default, spec, name))
        head = s.values[:HEAD_ROWS]
        own = calibrate(scorer, head, spec, asset_scaler(head, fitted.baseline.scaler, spec))
        refit.append(score_test_rows(scorer, s, own, spec, name))
    chosen = selected_as(fitted, "anomaly-free")
    return (
        RunResult(spec.name, "global", seed, seconds, plain, chosen),
        RunResult(spec.name, "global+baseline", seed, seconds, refit, chosen),
    )


def run_per_file(
    spec: DetectorSpec,
    seed: int,
    data: SkabData,
    names: Sequence[str],
    cache: NetworkCache | None = None,
) -> RunResult:
    """One model per file, trained and calibrated on its first 400 rows only."""
    results, seconds = [], 0.0
    chosen: dict[str, str] = {}
    calib_fraction = spec.per_file_calib_rows / HEAD_ROWS
    for name in names:
        if name in CONTAMINATED:
            continue
        s = data.files[name]
        head = s.slice(0, HEAD_ROWS)  # fit_profile refuses a head with labelled anomalies
        fitted, t = fit_detector(spec, head, seed, calib_fraction, cache, name)
        seconds += t
        chosen.update(selected_as(fitted, name))
        scorer = make_scorer(fitted.detector, spec)
        calib_rows = head.values[HEAD_ROWS - spec.per_file_calib_rows :]
        baseline = calibrate(scorer, calib_rows, spec, fitted.baseline.scaler)
        results.append(score_test_rows(scorer, s, baseline, spec, name))
    return RunResult(spec.name, "per-file", seed, seconds, results, chosen)


def run_protocols(
    specs: Sequence[DetectorSpec],
    seeds: Sequence[int],
    data: SkabData,
    protocols: Sequence[Protocol] = PROTOCOLS,
    names: Sequence[str] | None = None,
    progress: bool = True,
) -> list[RunResult]:
    """Every spec x seed x protocol; `names` restricts the files (default: all 34)."""
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise BenchmarkError(f"unknown protocols {sorted(unknown)}; expected {PROTOCOLS}")
    names = list(data.files) if names is None else list(names)
    # PCA is deterministic: one seed says all there is.
    jobs = [(spec, seed) for spec in specs for seed in (seeds if spec.kind != "pca" else seeds[:1])]
    out: list[RunResult] = []
    cache: NetworkCache = {}
    bar = tqdm(jobs, desc="skab", unit="run", disable=not progress)
    for spec, seed in bar:
        bar.set_postfix(detector=spec.name, seed=seed)
        if "global" in protocols or "global+baseline" in protocols:
            plain, refit = run_global(spec, seed, data, names, cache)
            out += [r for r in (plain, refit) if r.protocol in protocols]
        if "per-file" in protocols:
            out.append(run_per_file(spec, seed, data, names, cache))
    return out


# --- metrics --------------------------------------------------------------------------------


def _concat(files: Sequence[FileScores]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.concatenate([f.labels for f in files]),
        np.concatenate([f.normalised for f in files]),
    )


def file_vus_pr(f: FileScores, cache: dict[tuple[int, str], float]) -> float:
    key = (id(f), f.name)
    if key not in cache:
        cache[key] = vus_pr(f.labels, f.score)
    return cache[key]


def summarise(
    run: RunResult,
    subset: str,
    *,
    concat_vus: bool = True,
    file_vus: bool = True,
    vus_cache: dict[tuple[int, str], float] | None = None,
) -> dict[str, float]:
    """SKAB metrics of one run over one subset of files: point-wise over the concatenated test
    rows at the per-file thresholds, threshold-free on score / threshold."""
    files = [
        f for f in run.files if f.name in set(subset_names([g.name for g in run.files], subset))
    ]
    if not files:
        raise BenchmarkError(f"{run.detector}/{run.protocol}: no files in subset {subset!r}")
    labels, score = _concat(files)
    # vus_window=0 keeps the call cheap when the concatenated VUS-PR is not asked for.
    report = evaluate_scores(labels, score, 1.0, PERIOD_S, vus_window=100 if concat_vus else 0)
    cache = {} if vus_cache is None else vus_cache
    return {
        "vus_pr": report.vus_pr if concat_vus else math.nan,
        "auc_pr": report.auc_pr,
        "vus_pr_file_mean": (
            float(np.mean([file_vus_pr(f, cache) for f in files])) if file_vus else math.nan
        ),
        "f1": report.f1,
        "far": report.far,
        "mar": report.mar,
        "event_recall": report.event_recall,
        "median_delay_s": report.median_detection_delay_s,
        "false_alarms_per_hour": report.false_alarms_per_hour,
        "alarm_rate": float(np.mean(score > 1.0)),
        "oracle_f1_far10": oracle_f1(labels, score),
        "files": len(files),
        "rows": len(labels),
        "train_seconds": run.train_seconds,
    }


def oracle_f1(labels: np.ndarray, score: np.ndarray, max_far: float = 0.1) -> float:
    """The best point-wise F1 over every threshold whose false-alarm rate is at most `max_far`:
    a diagnostic of the ranking (the bar's "F1 at FAR <= 10%"), never used to set a threshold."""
    y = np.asarray(labels, bool)
    order = np.argsort(-np.asarray(score, np.float64), kind="stable")
    tp = np.cumsum(y[order])  # alarms on the top k+1 rows
    fp = np.cumsum(~y[order])
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ok = fp / n_neg <= max_far
    f1 = 2 * tp / (tp + fp + n_pos)
    return float(f1[ok].max()) if ok.any() else 0.0


def references(run: RunResult, subset: str, seed: int) -> dict[str, dict[str, float]]:
    """Always-alarm and random-score references on the same test rows as `run`."""
    names = set(subset_names([f.name for f in run.files], subset))
    labels, _ = _concat([f for f in run.files if f.name in names])
    out = {}
    for ref, rep in (
        ("always-alarm", always_alarm_reference(labels, PERIOD_S)),
        ("random", random_score_reference(labels, seed, PERIOD_S)),
    ):
        out[ref] = {
            "vus_pr": rep.vus_pr,
            "auc_pr": rep.auc_pr,
            "f1": rep.f1,
            "far": rep.far,
            "mar": rep.mar,
            "event_recall": rep.event_recall,
            "false_alarms_per_hour": rep.false_alarms_per_hour,
        }
    return out


def aggregate(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "n": int(arr.size),
    }


_METRIC_JOB: tuple[Any, ...] = ()


def _metric_task(task: tuple[str, int, int]) -> Any:
    """One metric job in a forked worker, reading the runs from _METRIC_JOB."""
    kind, a, b = task
    runs, subsets, concat = _METRIC_JOB[:3]
    if kind == "file":
        f = runs[a].files[b]
        return vus_pr(f.labels, f.score)
    cache = _METRIC_JOB[3]
    subset = subsets[a]
    with_file_vus = all((id(f), f.name) in cache for f in runs[b].files)
    return summarise(
        runs[b], subset, concat_vus=subset in concat, file_vus=with_file_vus, vus_cache=cache
    )


def build_table(
    runs: Sequence[RunResult],
    subsets: Sequence[str] = ("report", "all"),
    *,
    concat_vus_subsets: Sequence[str] = ("report", "all"),
    file_vus_seeds: Sequence[int] | None = None,
    progress: bool = True,
    workers: int = 2,
) -> dict[str, Any]:
    """{subset: {"detectors": {detector: {protocol: {metric: {mean, std, n}}}}, "references":
    {protocol: {reference: {metric: value}}}, "per_seed": [...]}}. The per-file mean VUS-PR
    (about 1.5 s a file) is computed for `file_vus_seeds` only (None: every seed)."""
    table: dict[str, Any] = {}
    with_file_vus = [file_vus_seeds is None or r.seed in file_vus_seeds for r in runs]
    file_tasks = [
        ("file", ri, fi)
        for ri, r in enumerate(runs)
        if with_file_vus[ri]
        for fi in range(len(r.files))
    ]
    sum_tasks = [("sum", si, ri) for si in range(len(subsets)) for ri in range(len(runs))]
    global _METRIC_JOB
    _METRIC_JOB = (runs, subsets, concat_vus_subsets)
    cache: dict[tuple[int, str], float] = {}
    per_seed: dict[str, list[dict[str, Any]]] = {s: [] for s in subsets}
    # The TSB-AD VUS loop is pure Python: forked workers share the runs without copying them
    # and send back only floats.
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(max(1, workers)) as pool:
        it = pool.imap(_metric_task, file_tasks, chunksize=4)
        for (_, ri, fi), value in tqdm(
            zip(file_tasks, it, strict=True),
            total=len(file_tasks),
            desc="per-file VUS",
            disable=not progress,
        ):
            f = runs[ri].files[fi]
            cache[(id(f), f.name)] = value
        _METRIC_JOB = (runs, subsets, concat_vus_subsets, cache)
    with ctx.Pool(max(1, workers)) as pool:
        it = pool.imap(_metric_task, sum_tasks)
        for (_, si, ri), m in tqdm(
            zip(sum_tasks, it, strict=True),
            total=len(sum_tasks),
            desc="metrics",
            disable=not progress,
        ):
            run = runs[ri]
            if not with_file_vus[ri]:
                m["vus_pr_file_mean"] = math.nan
            per_seed[subsets[si]].append(
                {"detector": run.detector, "protocol": run.protocol, "seed": run.seed, **m}
            )
    for subset in subsets:
        detectors: dict[str, Any] = {}
        for row in per_seed[subset]:
            detectors.setdefault(row["detector"], {}).setdefault(row["protocol"], []).append(row)
        agg = {
            det: {
                proto: {
                    k: aggregate([r[k] for r in rows])
                    for k in rows[0]
                    if k not in ("detector", "protocol", "seed")
                }
                for proto, rows in protos.items()
            }
            for det, protos in detectors.items()
        }
        refs: dict[str, Any] = {}
        for run in runs:
            if run.protocol not in refs:
                refs[run.protocol] = references(run, subset, seed=0)
        table[subset] = {"detectors": agg, "references": refs, "per_seed": per_seed[subset]}
    return table


# --- output ---------------------------------------------------------------------------------

COLUMNS = (
    ("VUS-PR", "vus_pr", 1.0, 3),
    ("VUS/file", "vus_pr_file_mean", 1.0, 3),
    ("AUC-PR", "auc_pr", 1.0, 3),
    ("F1", "f1", 1.0, 3),
    ("F1@10", "oracle_f1_far10", 1.0, 3),
    ("FAR%", "far", 100.0, 1),
    ("MAR%", "mar", 100.0, 1),
    ("ev.rec", "event_recall", 1.0, 2),
    ("delay", "median_delay_s", 1.0, 0),
    ("FA/h", "false_alarms_per_hour", 1.0, 1),
    ("train s", "train_seconds", 1.0, 1),
)


def _cell(stat: dict[str, float] | float | None, factor: float, digits: int) -> str:
    if isinstance(stat, dict):
        mean, std = stat["mean"], stat["std"]
        if not math.isfinite(mean):
            return "-"
        if stat.get("n", 0) == 1:  # one seed (deterministic PCA, per-file VUS): no spread
            return f"{mean * factor:.{digits}f}"
        return f"{mean * factor:.{digits}f}±{std * factor:.{digits}f}"
    if stat is None or not math.isfinite(stat):
        return "-"
    return f"{stat * factor:.{digits}f}"


def format_table(table: dict[str, Any], subset: str, markdown: bool = False) -> str:
    """Detector x protocol rows (mean ± std over seeds), references after each protocol."""
    part = table[subset]
    head = ["detector", "protocol", *[c[0] for c in COLUMNS]]
    rows: list[list[str]] = []
    protocols = [p for p in PROTOCOLS if p in part["references"]]
    for proto in protocols:
        for det, protos in part["detectors"].items():
            if proto in protos:
                stats = protos[proto]
                rows.append([det, proto, *[_cell(stats.get(k), f, d) for _, k, f, d in COLUMNS]])
        for ref, stats in part["references"][proto].items():
            rows.append([f"({ref})", proto, *[_cell(stats.get(k), f, d) for _, k, f, d in COLUMNS]])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [head, *rows])


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def plot_results(
    table: dict[str, Any],
    runs: Sequence[RunResult],
    data: SkabData,
    out_dir: Path,
    example_detector: str = "lstm-tuned",
    prefix: str = "skab",
) -> list[Path]:
    """Per protocol, bars of VUS-PR and F1 (mean ± std over seeds) for every detector and the
    references on the report set; and one file's score / threshold for `example_detector`'s
    global+baseline run (the first detector's when it is absent)."""
    part = table["report"]
    paths = []
    for proto in PROTOCOLS:
        rows = []
        for det, protos in part["detectors"].items():
            for label, key in (("VUS-PR", "vus_pr"), ("F1", "f1")):
                stat = protos.get(proto, {}).get(key)
                if stat and _finite(stat["mean"]):
                    rows.append(
                        {
                            "detector": det,
                            "metric": label,
                            "mean": stat["mean"],
                            "std": stat["std"] or 0.0,
                        }
                    )
        for ref, stats in part["references"].get(proto, {}).items():
            for label, key in (("VUS-PR", "vus_pr"), ("F1", "f1")):
                if _finite(stats.get(key)):
                    rows.append({"detector": ref, "metric": label, "mean": stats[key], "std": 0.0})
        if rows:
            title = f"SKAB {proto}, 30 non-tuning files, mean ± std over seeds"
            paths.append(
                plot_summary(out_dir / f"{prefix}_{proto.replace('+', '_')}.png", rows, title=title)
            )
    candidates = [r for r in runs if r.protocol == "global+baseline"]
    example = next((r for r in candidates if r.detector == example_detector), None)
    example = example or (candidates[0] if candidates else None)
    if example is not None:
        f = next((f for f in example.files if f.name == "valve1/1"), example.files[0])
        s = data.files[f.name]
        rows_idx = np.arange(HEAD_ROWS, len(s))
        paths.append(
            plot_series(
                out_dir / f"{prefix}_example.png",
                s.timestamps[rows_idx],
                s.values[rows_idx],
                s.channels,
                f.normalised,
                1.0,
                f.labels,
                title=f"{f.name}: {example.detector}, global network + per-asset baseline "
                f"(seed {example.seed}), score / threshold",
            )
        )
    return paths


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    import torch

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
    }


# --- the detectors of issue 2 --------------------------------------------------------------


def default_specs() -> dict[str, DetectorSpec]:
    """The named detectors the script runs; settings chosen on valve2 only (see RESULTS.md)."""
    textbook = {"hidden_size": 32, "latent_size": 16}
    # Chosen on valve2 only (RESULTS.md lists every attempt): window 20, latent 8, per-asset
    # baselines keep the training scaler and re-fit error statistics (70% of the span) and
    # threshold (30%, quantile 0.995 x 5).
    tuned: dict[str, Any] = {
        "window": 20,
        "score_kind": "mahalanobis",
        "policy": ThresholdPolicy(quantile=0.995, margin=5.0),
        "stats_fraction": 0.7,
        "baseline_scaler": "train",
    }
    return {
        "lstm-mse": DetectorSpec("lstm-mse", "lstm", textbook, score_kind="mse"),
        "lstm-maha": DetectorSpec("lstm-maha", "lstm", textbook, score_kind="mahalanobis"),
        "lstm-tuned": DetectorSpec(
            "lstm-tuned", "lstm", {"hidden_size": 32, "latent_size": 8}, **tuned
        ),
        "pca": DetectorSpec("pca", "pca", {}, score_kind="mahalanobis"),
        "pca-tuned": DetectorSpec("pca-tuned", "pca", {}, **tuned),
        # Issue 10, chosen on valve2 only (`f-margin3` in issue10_specs): LSTM-AE errors, the
        # code's distance, PCA Q and T² in one Mahalanobis score; lstm-tuned's network and
        # scoring, threshold margin 3.
        "fused": DetectorSpec(
            "fused",
            "fused",
            {"ae": {"hidden_size": 32, "latent_size": 8}},
            **{**tuned, "policy": ThresholdPolicy(quantile=0.995, margin=3.0)},
        ),
    }


# --- the attempts of issue 10 (valve2 only) ------------------------------------------------


def issue10_specs() -> dict[str, DetectorSpec]:
    """What was tried for issue 10 on valve2 (RESULTS.md "Detector quality on SKAB"). Each
    changes one thing from `f-tuned`: the fused detector (LSTM-AE + latent code + PCA) with
    `lstm-tuned`'s network and scoring settings."""
    net = {"hidden_size": 32, "latent_size": 8}
    tuned: dict[str, Any] = {
        "window": 20,
        "score_kind": "mahalanobis",
        "policy": ThresholdPolicy(quantile=0.995, margin=5.0),
        "stats_fraction": 0.7,
        "baseline_scaler": "train",
    }
    m3: dict[str, Any] = {"policy": ThresholdPolicy(quantile=0.995, margin=3.0)}

    def fused(name: str, cfg: dict[str, Any] | None = None, **kw: Any) -> DetectorSpec:
        settings = {**tuned, **kw}
        return DetectorSpec(name, "fused", {"ae": dict(net), **(cfg or {})}, **settings)

    return {
        "lstm+code": fused("lstm+code", {"use_pca": False}),
        "ae+pca": fused("ae+pca", {"code_distance": False}),
        "f-tuned": fused("f-tuned"),
        "f-w10": fused("f-w10", window=10),
        "f-latent16": fused("f-latent16", {"ae": {"hidden_size": 32, "latent_size": 16}}),
        "f-refit": fused("f-refit", baseline_scaler="refit"),
        "f-stats50": fused("f-stats50", stats_fraction=0.5),
        "f-margin1": fused("f-margin1", policy=ThresholdPolicy(quantile=0.995)),
        "f-margin3": fused("f-margin3", policy=ThresholdPolicy(quantile=0.995, margin=3.0)),
        "f-wd": fused("f-wd", weight_decay=1e-3),
        "f-noise": fused(
            "f-noise", {"ae": {**net, "variant": "denoising", "noise_std": 0.1, "mask_prob": 0.0}}
        ),
        "f-30ep": fused("f-30ep", epochs=30),
        "f-margin3-b16": fused("f-margin3-b16", batch_size=16, **m3),
        "f-margin3-b16-30ep": fused("f-margin3-b16-30ep", batch_size=16, epochs=30, **m3),
        "f-margin3-aetotal": fused("f-margin3-aetotal", {"ae_total": True}, **m3),
        "f-margin3-nocode-aetotal": fused(
            "f-margin3-nocode-aetotal", {"ae_total": True, "code_distance": False}, **m3
        ),
        "f-margin3-w10": fused("f-margin3-w10", window=10, **m3),
        "f-margin3-calib150": fused("f-margin3-calib150", per_file_calib_rows=150, **m3),
        "pca-train": DetectorSpec("pca-train", "pca", {}, **tuned),
        # Session 5: label-free selection. `f-margin3` whose training keeps the autoencoder's
        # features only if its error on the held-out calibration windows is at most 1.1x that
        # of a PCA with as many components as its code (`FusedConfig.select`); PCA's features
        # alone otherwise.
        "f-auto": fused("f-auto", {"select": "auto"}, **m3),
        # The same, keeping the autoencoder when it explains at least 40 % of the held-out
        # windows' variation about the mean training window (select_by "explained").
        "f-auto-r2": fused(
            "f-auto-r2",
            {"select": "auto", "select_by": "explained", "select_ae_alone": 1.0},
            **m3,
        ),
        # Session 8: ... and PCA's features dropped when the network explains at least 90 %.
        "f-auto-r3": fused("f-auto-r3", {"select": "auto", "select_by": "explained"}, **m3),
        # ... without the code's distance (on the plant's normal tuning day it put windows above
        # the threshold; on valve2 it added nothing: `ae+pca` against `f-tuned`).
        "f-auto-r4": fused(
            "f-auto-r4",
            {"select": "auto", "select_by": "explained", "code_distance": False},
            **m3,
        ),
        # Session 15: the quantile the threshold is set at. ~100 held-out windows per asset make
        # the 0.995 quantile their maximum; a central quantile is a steadier per-asset scale,
        # which the concatenated (score / threshold) metrics and the FAR depend on.
        **{
            f"f-auto-q{round(q * 100)}": fused(
                f"f-auto-q{round(q * 100)}",
                {"select": "auto", "select_by": "explained", "code_distance": False},
                policy=ThresholdPolicy(quantile=q, margin=3.0),
            )
            for q in (0.99, 0.95, 0.9, 0.75, 0.5)
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    specs = {**default_specs(), **issue10_specs()}
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="the SKAB folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--detectors",
        nargs="+",
        default=list(default_specs()),
        choices=list(specs),
        help="default: the named detectors (issue 10's valve2 attempts only when named)",
    )
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    ap.add_argument("--files", choices=("all", "tuning"), default="all", help="tuning: valve2 only")
    ap.add_argument(
        "--no-concat-vus", action="store_true", help="skip the slow concatenated VUS-PR"
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for skab.json and plots")
    ap.add_argument(
        "--tag", default="", help="write skab_<tag>.json and skab_<tag>_*.png (default: skab.json)"
    )
    ap.add_argument(
        "--subsets",
        nargs="+",
        choices=("report", "all"),
        default=["report", "all"],
        help="file subsets to tabulate when --files all",
    )
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (more is far slower on a busy machine)",
    )
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    data = load_skab(args.data)
    names = subset_names(data.files, args.files)
    chosen = [specs[d] for d in args.detectors]
    runs = run_protocols(chosen, args.seeds, data, args.protocols, names)
    subsets = ("tuning",) if args.files == "tuning" else (*args.subsets, "tuning")
    concat: tuple[str, ...] = tuple(args.subsets) if args.files == "all" else ("tuning",)
    if args.no_concat_vus:
        concat = ()
    table = build_table(runs, subsets, concat_vus_subsets=concat, file_vus_seeds=args.seeds[:1])
    elapsed = time.perf_counter() - started
    for subset in subsets:
        n = {"report": "30 non-tuning files", "all": "all 34 files", "tuning": "valve2 (tuning)"}[
            subset
        ]
        print(
            f"\n== SKAB, {n} (per-file protocol without other/2); mean ± std over seeds {args.seeds}"
        )
        print(format_table(table, subset))
    for run in runs:
        flagged = next((f for f in run.files if f.name in CONTAMINATED), None)
        if flagged is not None and run.seed == args.seeds[0]:
            pm = evaluate_scores(flagged.labels, flagged.normalised, 1.0, PERIOD_S, vus_window=0)
            print(
                f"flagged {flagged.name} ({run.detector}, {run.protocol}, seed {run.seed}): "
                f"F1 {pm.f1:.3f} FAR {100 * pm.far:.1f}% MAR {100 * pm.mar:.1f}%"
            )
    selections = {
        f"{r.detector} {r.protocol} seed {r.seed}": r.selections for r in runs if r.selections
    }
    for key, kept in selections.items():
        counts = {v: list(kept.values()).count(v) for v in sorted(set(kept.values()))}
        print(f"selected ({key}): {counts}")
    print(f"\nwall time {elapsed:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": "python benchmarks/skab.py "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "wall_seconds": round(elapsed, 1),
        "seeds": list(args.seeds),
        "detectors": {s.name: s.describe() for s in chosen},
        "excluded_from_per_file": list(CONTAMINATED),
        "tuning_files": subset_names(data.files, "tuning"),
        "selections": selections,
        "table": table,
    }
    stem = f"skab_{args.tag}" if args.tag else "skab"
    json_name = f"{stem}.json" if args.files == "all" else f"{stem}_tuning.json"
    (args.out / json_name).write_text(json.dumps(_clean(payload), indent=1) + "\n")
    if not args.no_plots and args.files == "all":
        for p in plot_results(table, runs, data, args.out, prefix=stem):
            print(f"plot: {p}")
    print(f"json: {args.out / json_name}")
    return 0


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if not math.isfinite(v) else round(v, 6)
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        return _clean(v.item())
    return v


if __name__ == "__main__":
    raise SystemExit(main())
