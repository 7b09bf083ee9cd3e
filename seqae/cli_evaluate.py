"""`seqae evaluate`: a profile against labelled files, with a report, plots and no bare `nan`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from seqae.cli_common import MODELS_OPTION, baseline_for, fail, read_profile_series, served_profile

if TYPE_CHECKING:
    from seqae.artifacts import LoadedProfile
    from seqae.calibrate import Baseline
    from seqae.data import Series
    from seqae.score import Scorer


def calibration_rows_needed(window: int, hop: int) -> int:
    """The fewest rows from which an asset baseline can be fitted at this window and hop: the
    statistics and threshold parts need their windows, and a window's length between them."""
    from seqae.calibrate import MIN_CALIBRATION_WINDOWS

    gap = -(-window // hop) - 1
    return (MIN_CALIBRATION_WINDOWS + gap - 1) * hop + window


@click.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--profile", required=True)
@MODELS_OPTION
@click.option("--version", default=None, help="Default: CURRENT.")
@click.option(
    "--asset",
    default=None,
    help="Score every file with this asset's stored baseline (see `seqae calibrate`).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/evaluate"),
    show_default=True,
)
@click.option(
    "--baseline-rows",
    default=0,
    type=click.IntRange(0),
    help="Re-fit a per-file baseline on its first N rows (scored after them).",
)
@click.option("--sep", default=None)
@click.option("--device", default="auto", show_default=True)
def evaluate(
    data: tuple[Path, ...],
    profile: str,
    models_root: Path,
    version: str | None,
    asset: str | None,
    out_dir: Path,
    baseline_rows: int,
    sep: str | None,
    device: str,
) -> None:
    """Evaluate a profile on labelled files: VUS-PR, AUC-PR, F1/FAR/MAR, events, delays, plots.

    Scores are taken at every sample (hop 1). Metrics that a file's labels leave undefined (no
    labelled anomaly, no normal sample) are named with the reason, and null in report.json."""
    import numpy as np
    from tqdm.auto import tqdm

    from seqae.calibrate import CalibrationError
    from seqae.data import DataError
    from seqae.evaluate import EvaluationError, evaluate_scores, plot_series
    from seqae.score import Scorer, score_series

    if asset and baseline_rows:
        raise click.UsageError("--asset and --baseline-rows exclude each other: pick one baseline")
    lp = served_profile(models_root, profile, version)
    stored = baseline_for(lp, models_root, asset)
    scorer = Scorer(lp, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels_all, scores_all = [], []
    per_file: dict[str, Any] = {}
    for path in tqdm(data, desc="evaluate", unit="file", disable=len(data) == 1):
        try:
            series = read_profile_series(path, lp, sep)
            if series.labels is None:
                raise DataError(f"{path}: no label column to evaluate against")
            baseline = stored
            if baseline_rows:
                baseline = refit_on_head(scorer, lp, series, baseline_rows, path)
                series = series.slice(baseline_rows)
            result = score_series(
                scorer, series, baseline, window=lp.meta.window, hop=1, period_s=lp.meta.period_s
            )
            point_score, point_thr = result.pointwise()
            if not (point_thr > 0).all():
                raise DataError(
                    f"{path}: the baseline's threshold is {float(point_thr.min()):g}; scores "
                    "relative to it are undefined (recalibrate the profile or the asset)"
                )
            labels = (
                result.grid.labels
                if result.grid.labels is not None
                else np.zeros(len(point_score), np.int8)
            )
            relative = point_score / point_thr
            report = evaluate_scores(labels, relative, 1.0, lp.meta.period_s)
        except (DataError, CalibrationError, EvaluationError, ValueError) as exc:
            raise fail(exc) from exc
        per_file[str(path)] = report.to_dict()
        labels_all.append(labels)
        scores_all.append(relative)
        plot_series(
            out_dir / f"{path.parent.name}_{path.stem}.png",
            result.grid.timestamps,
            result.grid.values,
            lp.meta.channels,
            point_score,
            float(np.median(point_thr)),
            labels,
            title=f"{path.name}  {report.describe('vus_pr')}  {report.describe('f1')}",
        )
    total = evaluate_scores(
        np.concatenate(labels_all), np.concatenate(scores_all), 1.0, lp.meta.period_s
    )
    summary = {
        "profile": profile,
        "version": lp.version,
        "baseline": f"asset {asset}"
        if asset
        else ("per-file head" if baseline_rows else "profile"),
        "overall": total.to_dict(),
        "files": per_file,
    }
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2))
    for line in total.summary_lines():
        click.echo(line)
    click.echo(f"report and plots in {out_dir}")


def refit_on_head(
    scorer: Scorer, lp: LoadedProfile, series: Series, rows: int, where: Path
) -> Baseline:
    """A per-asset baseline fitted on the first `rows` rows of a series (its normal head)."""
    from seqae.calibrate import fit_asset_baseline
    from seqae.data import DataError, make_windows, regularize

    head = regularize(series.slice(0, rows), lp.meta.period_s, 3)
    need = calibration_rows_needed(lp.meta.window, 1)
    if len(head) < need:
        raise DataError(
            f"{where}: --baseline-rows {rows} gives {len(head)} rows to fit a baseline on; "
            f"window {lp.meta.window} at hop 1 needs {need}"
        )
    if len(series) <= rows:
        raise DataError(f"{where}: --baseline-rows {rows} leaves none of its {len(series)} rows")
    windows, _ = make_windows(head.values, lp.meta.window, 1)
    return fit_asset_baseline(scorer, windows, hop=1, period_s=lp.meta.period_s)
