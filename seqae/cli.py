"""`seqae` offline commands: synth, train, calibrate, score (and, from their own modules,
evaluate, impute, embed, generate, models).

The console entry point (daemon/cli.py) adds the service commands to this group. Importing
this module costs click only: each command imports what it computes with when it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from seqae import __version__
from seqae.cli_common import (
    MODELS_OPTION,
    baseline_for,
    fail,
    read_profile_series,
    served_profile,
    threshold_policy,
    write_table,
)
from seqae.cli_evaluate import evaluate
from seqae.cli_extras import denoise, embed, generate, impute
from seqae.cli_models import models

# seqae.model.VARIANTS, spelled out so that `--help` need not import torch (a test keeps them equal).
VARIANT_CHOICES = ("plain", "deep", "denoising", "sparse", "contractive", "variational")
PERIOD_HELP = (
    "Sampling period (s) [default: the timestamps' median step; a given value must agree with "
    "it within 5%]."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(version=__version__, prog_name="seqae")
def cli() -> None:
    """Sequence-autoencoder anomaly detection for industrial sensor streams."""


ALERTS_FROM = click.option(
    "--alerts-from",
    "alerts_from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Daemon TOML whose [alerts] rule the expected false alerts are counted under "
    "[default: the shipped rule].",
)


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
@click.option(
    "--difficulty",
    type=click.Choice(["default", "hard"]),
    default="default",
    show_default=True,
    help="hard: wider speed range, resonance, motor and loss curves (nonlinear couplings).",
)
@click.option(
    "--channels",
    "n_channels",
    type=click.IntRange(5, 50),
    default=5,
    show_default=True,
    help="Channels per pump: the five base ones, then derived sensors (line pressures, "
    "bearing and winding temperatures, ...).",
)
@click.option(
    "--fault-kinds",
    default=None,
    help="Comma-separated fault kinds to draw from [default: the five classic kinds; with "
    "--difficulty hard also the slow ones: sensor_drift, noise_growth, stuck_normal, "
    "impeller_wear, efficiency_loss, slow_bearing_wear].",
)
@click.option("--max-faults", default=2, show_default=True, help="Most faults per faulty asset.")
def synth(
    out_dir: Path,
    assets: int,
    samples: int,
    period_s: float,
    seed: int,
    normal: bool,
    healthy: int,
    start: str,
    difficulty: str,
    n_channels: int,
    fault_kinds: str | None,
    max_faults: int,
) -> None:
    """Write a synthetic pump plant (one CSV per asset, plant.csv, faults.json).

    The pumps are the same for every --seed; the seed picks the hours they run through."""
    import pandas as pd

    from seqae.synth import SynthError, generate_plant, write_plant

    try:
        plant = generate_plant(
            assets,
            samples,
            period_s=period_s,
            seed=seed,
            with_faults=not normal,
            healthy_assets=healthy,
            start_ns=pd.Timestamp(start).value,
            difficulty="hard" if difficulty == "hard" else "default",
            n_channels=n_channels,
            fault_kinds=None if fault_kinds is None else fault_kinds.split(","),
            max_faults_per_asset=max_faults,
        )
    except SynthError as exc:
        raise click.BadParameter(str(exc)) from exc
    paths = write_plant(out_dir, plant)
    for asset, (_, faults) in plant.items():
        kinds = ", ".join(f"{f.kind} [{f.start}:{f.end}]" for f in faults) or "healthy"
        click.echo(f"{asset}: {kinds}")
    click.echo(f"wrote {len(paths)} files to {out_dir}")


@cli.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--profile", required=True, help="Model profile name (a family of like assets).")
@MODELS_OPTION
@click.option(
    "--kind",
    type=click.Choice(["auto", "lstm", "pca", "fused"]),
    default="auto",
    show_default=True,
    help="auto: the autoencoder and PCA in one model, whose training decides from held-out "
    "normal windows what it scores: PCA's errors and T² alone when the autoencoder explains "
    "under 40% of their variation, the autoencoder's errors alone from 90%, both between; "
    "lstm: the sequence autoencoder; pca: PCA T²+Q; fused: the autoencoder and PCA, scored by "
    "one Mahalanobis distance over both errors, both T²s and the code's distance (the "
    "autoencoder options apply to the autoencoder of auto and fused).",
)
@click.option(
    "--select",
    type=click.Choice(["fixed", "auto"]),
    default="fixed",
    show_default=True,
    help="fused: auto keeps the autoencoder's features only if its error on held-out normal "
    "windows is at most 1.1x that of a PCA with as many components as its code; otherwise "
    "PCA's alone are scored (--kind auto decides by its own rule).",
)
@click.option("--window", default=30, show_default=True, help="Samples per window.")
@click.option("--hop", default=5, show_default=True, help="Score a window every N samples.")
@click.option("--period", "period_s", type=float, default=None, help=PERIOD_HELP)
@click.option(
    "--calibration-fraction",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Last share of each file held out to calibrate the score and threshold.",
)
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
    type=click.Choice(VARIANT_CHOICES),
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
    type=click.Choice(["mahalanobis", "mse", "likelihood"]),
    default="mahalanobis",
    show_default=True,
    help="likelihood (variational only): the window's negative log-likelihood per time step.",
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
@ALERTS_FROM
def train(
    data: tuple[Path, ...],
    profile: str,
    models_root: Path,
    kind: str,
    select: str,
    window: int,
    hop: int,
    period_s: float | None,
    calibration_fraction: float,
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
    alerts_from: Path | None,
) -> None:
    """Train a profile on files of normal operation, calibrate it on held-out data, save it."""
    from seqae.artifacts import ArtifactError, load_profile
    from seqae.calibrate import CalibrationError
    from seqae.data import DataError, read_series, resolve_period
    from seqae.train import train_profile

    wanted = channels.split(",") if channels else None
    try:
        series = [read_series(p, channels=wanted, sep=sep) for p in data]
        first = series[0].channels
        series = [s.select(first) for s in series]
        period_s = resolve_period(series, period_s, names=[str(p) for p in data])
        model_cfg: dict[str, Any] = {}
        if kind in ("auto", "lstm", "fused"):
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
            raise ValueError(
                f"--variant {variant} applies to --kind auto, lstm or fused, not {kind}"
            )
        if kind == "fused":
            model_cfg["select"] = select
        elif select != "fixed":
            raise ValueError(f"--select {select} applies to --kind fused, not {kind}")
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
            calibration_fraction=calibration_fraction,
            rule=alert_rule(alerts_from),
        )
    except (DataError, CalibrationError, ArtifactError, ValueError) as exc:
        raise fail(exc) from exc
    lp = load_profile(models_root, profile, version)
    info = lp.meta.validation.get("calibration", {})
    click.echo(
        f"saved {profile}/{version} ({lp.meta.kind}, channels {', '.join(lp.meta.channels)}, "
        f"period {lp.meta.period_s:g} s)"
    )
    click.echo(
        f"threshold {lp.baseline.threshold:.4g} ({lp.baseline.score_kind}, {info.get('threshold_method')})"
    )
    click.echo(false_alert_line(info))
    chosen = lp.meta.training.get("selection")
    if chosen is not None:  # a fused detector that decided what it scores
        scored = {"ae": "the autoencoder's errors", "pca": "PCA's Q and T²", "ae+pca": "both"}
        click.echo(
            f"scores {scored[chosen['selected']]}: the autoencoder explains "
            f"{chosen['ae_explained']:.2f} of the held-out windows' variation"
        )
    # constant, flag-like, mostly or nearly constant channels, and ones on another scale
    for note in lp.meta.training.get("degenerate_channels", []):
        click.echo(f"channel {note['channel']!r} ({note['kind']}): {note['detail']}")


def alert_rule(path: Path | None) -> Any:
    """The [alerts] rule of a daemon TOML file, or None for the shipped one."""
    if path is None:
        return None
    from seqae.alerting import Rule

    try:
        return Rule.from_toml(path)
    except (OSError, ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--alerts-from") from exc


def false_alert_line(info: Mapping[str, Any]) -> str:
    """What a baseline's calibration says about false alerts, or why it cannot say."""
    windows = int(info.get("false_alert_windows", 0))
    if "expected_false_alerts_per_day" not in info:
        return (
            f"expected false alerts per day: not measured ({windows} held-out normal windows; "
            "it needs 40, one threshold set on each half and counted on the other)"
        )
    return (
        f"expected false alerts per day: {info['expected_false_alerts_per_day']:.2f} "
        f"({int(info['false_alert_episodes'])} alert episodes under the [alerts] rule in "
        f"{windows} held-out normal windows, {info['false_alert_days']:.3g} days, each half "
        "scored with a threshold set on the other)"
    )


@cli.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--profile", required=True)
@click.option("--asset", required=True, help="Asset whose baseline is re-fitted.")
@MODELS_OPTION
@click.option(
    "--skip",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Leave out the first N rows.",
)
@click.option(
    "--rows", default=0, type=click.IntRange(0), help="Use N rows after --skip (0: all the rest)."
)
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
@ALERTS_FROM
def calibrate(
    data: Path,
    profile: str,
    asset: str,
    models_root: Path,
    skip: int,
    rows: int,
    sep: str | None,
    threshold: str,
    quantile: float,
    risk: float,
    refit_scaler: bool,
    device: str,
    alerts_from: Path | None,
) -> None:
    """Re-fit one asset's baseline (scaler, error statistics, threshold) from its normal data,
    without retraining the network."""
    from seqae import artifacts
    from seqae.calibrate import CalibrationError, fit_asset_baseline
    from seqae.cli_evaluate import calibration_rows_needed
    from seqae.data import DataError, make_windows, regularize
    from seqae.score import Scorer

    lp = served_profile(models_root, profile, None)
    try:
        series = read_profile_series(data, lp, sep)
        if skip >= len(series):
            raise DataError(f"{data}: --skip {skip} leaves nothing of its {len(series)} rows")
        series = series.slice(skip, skip + rows if rows else None)
        grid = regularize(series, lp.meta.period_s, 3)
        need = calibration_rows_needed(lp.meta.window, lp.meta.hop)
        if len(grid) < need:
            raise DataError(
                f"{data}: {len(grid)} rows (after --skip {skip}, --rows {rows}) are too few to "
                f"calibrate on: window {lp.meta.window} and hop {lp.meta.hop} need {need}"
            )
        windows, _ = make_windows(grid.values, lp.meta.window, lp.meta.hop)
        baseline = fit_asset_baseline(
            Scorer(lp, device),
            windows,
            hop=lp.meta.hop,
            refit_scaler=refit_scaler,
            policy=threshold_policy(threshold, quantile, risk),
            period_s=lp.meta.period_s,
            rule=alert_rule(alerts_from),
        )
    except (DataError, CalibrationError, ValueError) as exc:
        raise fail(exc) from exc
    path = artifacts.save_baseline(models_root, profile, asset, baseline, lp.version)
    click.echo(
        f"baseline for {asset} on {profile}/{lp.version}: threshold {baseline.threshold:.4g}; saved {path}"
    )
    click.echo(false_alert_line(baseline.info))


@cli.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--profile", required=True)
@MODELS_OPTION
@click.option("--version", default=None, help="Default: CURRENT.")
@click.option("--asset", default=None, help="Use this asset's stored baseline (it must exist).")
@click.option(
    "--hop",
    type=click.IntRange(1),
    default=None,
    help="Score a window every N samples [default: the model's hop].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="CSV or Parquet file; with several files, a folder that gets <name>.csv per file.",
)
@click.option("--sep", default=None)
@click.option("--device", default="auto", show_default=True)
def score(
    data: tuple[Path, ...],
    profile: str,
    models_root: Path,
    version: str | None,
    asset: str | None,
    hop: int | None,
    out: Path,
    sep: str | None,
    device: str,
) -> None:
    """Score files: one row per window with score, threshold, anomalous and per-channel errors.
    The model is loaded once for all the files."""
    from seqae.score import Scorer

    lp = served_profile(models_root, profile, version)
    baseline = baseline_for(lp, models_root, asset)
    scorer = Scorer(lp, device)
    if len(data) > 1:
        if out.suffix:
            raise click.UsageError(f"--out {out}: with {len(data)} files give a folder")
        out.mkdir(parents=True, exist_ok=True)
    for path in data:
        target = out / f"{path.stem}.csv" if len(data) > 1 else out
        _score_one(path, lp, scorer, baseline, hop, target, sep)


def _score_one(
    data: Path,
    lp: Any,
    scorer: Any,
    baseline: Any,
    hop: int | None,
    out: Path,
    sep: str | None,
) -> None:
    import pandas as pd

    from seqae.data import DataError
    from seqae.score import score_series

    try:
        series = read_profile_series(data, lp, sep)
        result = score_series(
            scorer,
            series,
            baseline,
            window=lp.meta.window,
            hop=hop or lp.meta.hop,
            period_s=lp.meta.period_s,
        )
    except (DataError, ValueError) as exc:
        raise fail(exc) from exc
    b = result.batch
    columns: dict[str, Any] = {
        "window_end": pd.to_datetime(result.grid.timestamps[result.ends], utc=True),
        "score": b.score,
        "threshold": b.threshold,
        "anomalous": b.anomalous,
        "shifted": b.shifted,
    }
    # All columns at once: inserting 2 x 52 channel columns one by one fragments the frame.
    columns.update({f"err_{ch}": b.errors[:, i] for i, ch in enumerate(lp.meta.channels)})
    columns.update(
        {f"contrib_{ch}": b.contributions[:, i] for i, ch in enumerate(lp.meta.channels)}
    )
    frame = pd.DataFrame(columns)
    write_table(frame, out)
    click.echo(f"{data}: {len(frame)} windows, {int(b.anomalous.sum())} anomalous; wrote {out}")


for command in (evaluate, impute, denoise, embed, generate, models):
    cli.add_command(command)


def main() -> None:
    cli()
