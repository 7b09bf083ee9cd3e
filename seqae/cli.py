"""`seqae` offline commands: synth, train, calibrate, score, evaluate (and, from their own
modules, impute, embed, generate, models).

The console entry point (daemon/cli.py) adds the service commands to this group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

from seqae import artifacts
from seqae.artifacts import ArtifactError, load_profile
from seqae.calibrate import Baseline, CalibrationError, fit_asset_baseline
from seqae.cli_common import (
    MODELS_OPTION,
    baseline_for,
    fail,
    read_profile_series,
    served_profile,
    threshold_policy,
    write_table,
)
from seqae.cli_extras import embed, generate, impute
from seqae.cli_models import models
from seqae.data import DataError, Series, make_windows, read_series, regularize
from seqae.model import VARIANTS
from seqae.score import Scorer, score_series


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="seqae")
def cli() -> None:
    """Sequence-autoencoder anomaly detection for industrial sensor streams."""


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--assets", default=3, show_default=True, help="Number of pumps.")
@click.option("--samples", default=7200, show_default=True, help="Samples per asset.")
@click.option("--period", "period_s", default=1.0, show_default=True, help="Sampling period (s).")
@click.option("--seed", default=0, show_default=True)
@click.option("--normal", is_flag=True, help="Normal operation only (training history).")
@click.option("--healthy", default=1, show_default=True, help="Assets without faults.")
@click.option(
    "--start", default="2026-01-01T00:00:00Z", show_default=True, help="First timestamp (RFC 3339)."
)
def synth(
    out_dir: Path,
    assets: int,
    samples: int,
    period_s: float,
    seed: int,
    normal: bool,
    healthy: int,
    start: str,
) -> None:
    """Write a synthetic pump plant (one CSV per asset, plant.csv, faults.json).

    The pumps are the same for every --seed; the seed picks the hours they run through."""
    from seqae.synth import generate_plant, write_plant

    plant = generate_plant(
        assets,
        samples,
        period_s=period_s,
        seed=seed,
        with_faults=not normal,
        healthy_assets=healthy,
        start_ns=pd.Timestamp(start).value,
    )
    paths = write_plant(out_dir, plant)
    for asset, (_, faults) in plant.items():
        kinds = ", ".join(f"{f.kind} [{f.start}:{f.end}]" for f in faults) or "healthy"
        click.echo(f"{asset}: {kinds}")
    click.echo(f"wrote {len(paths)} files to {out_dir}")


@cli.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--profile", required=True, help="Model profile name (a family of like assets).")
@MODELS_OPTION
@click.option("--kind", type=click.Choice(["lstm", "pca"]), default="lstm", show_default=True)
@click.option("--window", default=30, show_default=True, help="Samples per window.")
@click.option("--hop", default=5, show_default=True, help="Score a window every N samples.")
@click.option("--period", "period_s", default=1.0, show_default=True, help="Sampling period (s).")
@click.option("--channels", default=None, help="Comma-separated channels (default: all).")
@click.option("--sep", default=None, help="CSV separator (default: sniffed).")
@click.option("--epochs", default=40, show_default=True)
@click.option("--hidden", "hidden_size", default=64, show_default=True)
@click.option("--latent", "latent_size", default=16, show_default=True)
@click.option(
    "--layers",
    "num_layers",
    type=int,
    default=None,
    help="LSTM layers per side [default: 1; deep: 2].",
)
@click.option(
    "--variant",
    type=click.Choice(list(VARIANTS)),
    default="plain",
    show_default=True,
    help="Autoencoder variant (lstm only).",
)
@click.option(
    "--noise-std", type=float, default=None, help="denoising: input noise (scaled units)."
)
@click.option("--mask-prob", type=float, default=None, help="denoising: share of samples hidden.")
@click.option(
    "--sparsity", type=click.Choice(["l1", "kl"]), default=None, help="sparse: penalty kind."
)
@click.option("--sparsity-weight", type=float, default=None, help="sparse: penalty weight.")
@click.option("--contractive-weight", type=float, default=None, help="contractive: penalty weight.")
@click.option(
    "--contractive-projections", type=int, default=None, help="contractive: projections per step."
)
@click.option("--kl-weight", type=float, default=None, help="variational: KL weight (beta).")
@click.option("--kl-anneal-epochs", type=int, default=None, help="variational: KL warm-up epochs.")
@click.option(
    "--vae-samples", type=int, default=None, help="variational: latent samples when scoring."
)
@click.option("--bidirectional", is_flag=True, help="Bidirectional encoder.")
@click.option("--dropout", default=0.0, show_default=True)
@click.option(
    "--score",
    "score_kind",
    type=click.Choice(["mahalanobis", "mse"]),
    default="mahalanobis",
    show_default=True,
)
@click.option(
    "--threshold", type=click.Choice(["quantile", "pot"]), default="quantile", show_default=True
)
@click.option("--quantile", default=0.995, show_default=True)
@click.option(
    "--risk", default=1e-3, show_default=True, help="POT: exceedance probability per window."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-promote", is_flag=True, help="Save without making it CURRENT.")
def train(
    data: tuple[Path, ...],
    profile: str,
    models_root: Path,
    kind: str,
    window: int,
    hop: int,
    period_s: float,
    channels: str | None,
    sep: str | None,
    epochs: int,
    hidden_size: int,
    latent_size: int,
    num_layers: int | None,
    variant: str,
    noise_std: float | None,
    mask_prob: float | None,
    sparsity: str | None,
    sparsity_weight: float | None,
    contractive_weight: float | None,
    contractive_projections: int | None,
    kl_weight: float | None,
    kl_anneal_epochs: int | None,
    vae_samples: int | None,
    bidirectional: bool,
    dropout: float,
    score_kind: str,
    threshold: str,
    quantile: float,
    risk: float,
    device: str,
    seed: int,
    no_promote: bool,
) -> None:
    """Train a profile on files of normal operation, calibrate it on held-out data, save it."""
    from seqae.train import train_profile

    wanted = channels.split(",") if channels else None
    try:
        series = [read_series(p, channels=wanted, sep=sep) for p in data]
        first = series[0].channels
        series = [s.select(first) for s in series]
        model_cfg: dict[str, Any] = {}
        if kind == "lstm":
            variant_knobs = {
                "noise_std": noise_std,
                "mask_prob": mask_prob,
                "sparsity": sparsity,
                "sparsity_weight": sparsity_weight,
                "contractive_weight": contractive_weight,
                "contractive_projections": contractive_projections,
                "kl_weight": kl_weight,
                "kl_anneal_epochs": kl_anneal_epochs,
                "vae_samples": vae_samples,
            }
            model_cfg = {
                "hidden_size": hidden_size,
                "latent_size": latent_size,
                "num_layers": num_layers or (2 if variant == "deep" else 1),
                "bidirectional": bidirectional,
                "dropout": dropout,
                "variant": variant,
                **{k: v for k, v in variant_knobs.items() if v is not None},
            }
        elif variant != "plain":
            raise ValueError(f"--variant {variant} applies to --kind lstm, not {kind}")
        version = train_profile(
            series,
            models_root=models_root,
            profile=profile,
            window=window,
            hop=hop,
            period_s=period_s,
            kind=kind,  # type: ignore[arg-type]
            epochs=epochs,
            seed=seed,
            model_cfg=model_cfg,
            score_kind=score_kind,  # type: ignore[arg-type]
            policy=threshold_policy(threshold, quantile, risk),
            device=device,
            promote_now=not no_promote,
        )
    except (DataError, CalibrationError, ArtifactError, ValueError) as exc:
        raise fail(exc) from exc
    lp = load_profile(models_root, profile, version)
    info = lp.meta.validation.get("calibration", {})
    click.echo(
        f"saved {profile}/{version} ({lp.meta.kind}, channels {', '.join(lp.meta.channels)})"
    )
    click.echo(
        f"threshold {lp.baseline.threshold:.4g} ({lp.baseline.score_kind}, {info.get('threshold_method')})"
    )
    if "expected_alarm_windows_per_day" in info:
        click.echo(
            f"expected alarmed windows per day on normal data: {info['expected_alarm_windows_per_day']:.2f}"
        )


@cli.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--profile", required=True)
@click.option("--asset", required=True, help="Asset whose baseline is re-fitted.")
@MODELS_OPTION
@click.option("--rows", default=0, help="Use the first N rows only (0: all).")
@click.option("--sep", default=None)
@click.option(
    "--threshold", type=click.Choice(["quantile", "pot"]), default="quantile", show_default=True
)
@click.option("--quantile", default=0.995, show_default=True)
@click.option("--risk", default=1e-3, show_default=True)
@click.option(
    "--refit-scaler", is_flag=True, help="Also refit the scaler (default: keep the training one)."
)
@click.option("--device", default="auto", show_default=True)
def calibrate(
    data: Path,
    profile: str,
    asset: str,
    models_root: Path,
    rows: int,
    sep: str | None,
    threshold: str,
    quantile: float,
    risk: float,
    refit_scaler: bool,
    device: str,
) -> None:
    """Re-fit one asset's baseline (scaler, error statistics, threshold) from its normal data,
    without retraining the network."""
    lp = served_profile(models_root, profile, None)
    try:
        series = read_profile_series(data, lp, sep)
        if rows:
            series = series.slice(0, rows)
        grid = regularize(series, lp.meta.period_s, 3)
        windows, _ = make_windows(grid.values, lp.meta.window, lp.meta.hop)
        baseline = fit_asset_baseline(
            Scorer(lp, device),
            windows,
            hop=lp.meta.hop,
            refit_scaler=refit_scaler,
            policy=threshold_policy(threshold, quantile, risk),
            period_s=lp.meta.period_s,
        )
    except (DataError, CalibrationError, ValueError) as exc:
        raise fail(exc) from exc
    path = artifacts.save_baseline(models_root, profile, asset, baseline, lp.version)
    click.echo(
        f"baseline for {asset} on {profile}/{lp.version}: threshold {baseline.threshold:.4g}; saved {path}"
    )


@cli.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--profile", required=True)
@MODELS_OPTION
@click.option("--version", default=None, help="Default: CURRENT.")
@click.option("--asset", default=None, help="Use this asset's stored baseline if there is one.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV or Parquet."
)
@click.option("--sep", default=None)
@click.option("--device", default="auto", show_default=True)
def score(
    data: Path,
    profile: str,
    models_root: Path,
    version: str | None,
    asset: str | None,
    out: Path,
    sep: str | None,
    device: str,
) -> None:
    """Score a file: one row per window with score, threshold, anomalous and per-channel errors."""
    lp = served_profile(models_root, profile, version)
    try:
        series = read_profile_series(data, lp, sep)
        result = score_series(
            Scorer(lp, device),
            series,
            baseline_for(lp, models_root, asset),
            window=lp.meta.window,
            hop=lp.meta.hop,
            period_s=lp.meta.period_s,
        )
    except (DataError, ValueError) as exc:
        raise fail(exc) from exc
    b = result.batch
    frame = pd.DataFrame(
        {
            "window_end": pd.to_datetime(result.grid.timestamps[result.ends], utc=True),
            "score": b.score,
            "threshold": b.threshold,
            "anomalous": b.anomalous,
            "shifted": b.shifted,
        }
    )
    for i, ch in enumerate(lp.meta.channels):
        frame[f"err_{ch}"] = b.errors[:, i]
    for i, ch in enumerate(lp.meta.channels):
        frame[f"contrib_{ch}"] = b.contributions[:, i]
    write_table(frame, out)
    click.echo(f"{len(frame)} windows, {int(b.anomalous.sum())} anomalous; wrote {out}")


@cli.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--profile", required=True)
@MODELS_OPTION
@click.option("--version", default=None)
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
    help="Re-fit a per-file baseline on its first N rows (scored after them).",
)
@click.option("--sep", default=None)
@click.option("--device", default="auto", show_default=True)
def evaluate(
    data: tuple[Path, ...],
    profile: str,
    models_root: Path,
    version: str | None,
    out_dir: Path,
    baseline_rows: int,
    sep: str | None,
    device: str,
) -> None:
    """Evaluate a profile on labelled files: VUS-PR, AUC-PR, F1/FAR/MAR, events, delays, plots."""
    from tqdm.auto import tqdm

    from seqae.evaluate import evaluate_scores, plot_series

    lp = served_profile(models_root, profile, version)
    scorer = Scorer(lp, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels_all, scores_all, alarms_all = [], [], []
    per_file: dict[str, Any] = {}
    for path in tqdm(data, desc="evaluate", unit="file"):
        try:
            series = read_profile_series(path, lp, sep)
            if series.labels is None:
                raise DataError(f"{path}: no label column to evaluate against")
            baseline = lp.baseline
            if baseline_rows:
                baseline = refit_on_head(scorer, lp, series, baseline_rows)
                series = series.slice(baseline_rows)
            result = score_series(
                scorer, series, baseline, window=lp.meta.window, hop=1, period_s=lp.meta.period_s
            )
        except (DataError, CalibrationError, ValueError) as exc:
            raise fail(exc) from exc
        point_score, point_thr = result.pointwise()
        labels = (
            result.grid.labels if result.grid.labels is not None else np.zeros(len(point_score))
        )
        report = evaluate_scores(labels, point_score / point_thr, 1.0, lp.meta.period_s)
        per_file[str(path)] = report.to_dict()
        labels_all.append(labels)
        scores_all.append(point_score / point_thr)
        alarms_all.append(point_score > point_thr)
        plot_series(
            out_dir / f"{path.parent.name}_{path.stem}.png",
            result.grid.timestamps,
            result.grid.values,
            lp.meta.channels,
            point_score,
            float(np.median(point_thr)),
            labels,
            title=f"{path.name}  VUS-PR {report.vus_pr:.3f}  F1 {report.f1:.3f}",
        )
    total = evaluate_scores(
        np.concatenate(labels_all), np.concatenate(scores_all), 1.0, lp.meta.period_s
    )
    summary = {
        "profile": profile,
        "version": lp.version,
        "overall": total.to_dict(),
        "files": per_file,
    }
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2))
    t = total
    click.echo(
        f"VUS-PR {t.vus_pr:.3f}  AUC-PR {t.auc_pr:.3f}  F1 {t.f1:.3f}  FAR {100 * t.far:.1f}%  "
        f"MAR {100 * t.mar:.1f}%  event recall {t.event_recall:.2f}  "
        f"median delay {t.median_detection_delay_s:.0f}s  false alarms/h {t.false_alarms_per_hour:.2f}"
    )
    click.echo(f"report and plots in {out_dir}")


def refit_on_head(scorer: Scorer, lp: Any, series: Series, rows: int) -> Baseline:
    """A per-asset baseline fitted on the first `rows` rows of a series (its normal head)."""
    head = regularize(series.slice(0, rows), lp.meta.period_s, 3)
    windows, _ = make_windows(head.values, lp.meta.window, 1)
    return fit_asset_baseline(scorer, windows, hop=1, period_s=lp.meta.period_s)


def main() -> None:
    cli()


for command in (impute, embed, generate, models):
    cli.add_command(command)
