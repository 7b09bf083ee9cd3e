"""`seqae retrain`: the click command around daemon.retrain.run_retrain."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from daemon.settings import ConfigError, load_settings


@click.command("retrain")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Daemon TOML file (SEQAE_* environment variables override it).",
)
@click.option("--profile", required=True, help="Profile to retrain (a folder under models_root).")
@click.option("--from-files", "from_files", is_flag=True, help="History from the PATHS given.")
@click.option(
    "--from-kafka", "from_kafka", is_flag=True, help="Replay the input topics (the default)."
)
@click.option(
    "--from-influx", "from_influx", is_flag=True, help="A raw-readings measurement in InfluxDB."
)
@click.option("--measurement", default=None, help="--from-influx: the raw-readings measurement.")
@click.option(
    "--since",
    default="7d",
    show_default=True,
    help="Start of the history: RFC 3339, epoch ms, or back from now (24h, 7d). "
    "For Kafka this is the record time.",
)
@click.option(
    "--margin", default="10m", show_default=True, help="Also drop this much around alert spans."
)
@click.option("--ignore-alerts", is_flag=True, help="Do not read seqae_alert (no InfluxDB).")
@click.option(
    "--holdout",
    default=0.2,
    show_default=True,
    help="Newest share of the history kept out of training, to compare the models on.",
)
@click.option("--epochs", default=20, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default=None, help="auto, cpu or cuda (default: engine.device).")
@click.option("--force", is_flag=True, help="Promote the candidate even if the gate refuses it.")
@click.option("--dry-run", is_flag=True, help="Train, compare and report; never promote.")
@click.option("--no-progress", is_flag=True)
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def retrain(
    config_path: Path | None,
    profile: str,
    from_files: bool,
    from_kafka: bool,
    from_influx: bool,
    measurement: str | None,
    since: str,
    margin: str,
    ignore_alerts: bool,
    holdout: float,
    epochs: int,
    seed: int,
    device: str | None,
    force: bool,
    dry_run: bool,
    no_progress: bool,
    paths: tuple[Path, ...],
) -> None:
    """Train a candidate on recent normal history (alert spans left out), run it and the served
    model on the newest held-out data through the daemon's alert rule, and promote it to
    CURRENT only if it raises no more false alerts per day and catches no fewer injected faults.

    The report is printed and saved as models/<profile>/<version>/retrain_report.json.
    """
    from daemon.retrain import RetrainError, RetrainOptions, parse_duration, run_retrain

    chosen = [
        n for n, on in (("files", from_files), ("kafka", from_kafka), ("influx", from_influx)) if on
    ]
    if len(chosen) > 1:
        raise click.UsageError("give one of --from-files, --from-kafka, --from-influx")
    if paths and chosen != ["files"]:
        raise click.UsageError("PATHS are only read with --from-files")
    source = chosen[0] if chosen else "kafka"
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        click.echo(f"error: invalid configuration: {exc}", err=True)
        sys.exit(2)
    try:
        opts = RetrainOptions(
            profile=profile,
            source=source,  # type: ignore[arg-type]
            paths=paths,
            measurement=measurement,
            since=since,
            margin_s=parse_duration(margin, "--margin"),
            holdout=holdout,
            epochs=epochs,
            seed=seed,
            device=device or settings.engine.device,
            force=force,
            dry_run=dry_run,
            progress=not no_progress,
            ignore_alerts=ignore_alerts,
        )
        report = run_retrain(settings, opts, echo=click.echo)
    except RetrainError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo("")
    click.echo(report.table())
    saved = settings.profiles.models_root / profile / report.candidate_version
    click.echo(f"report saved to {saved}/retrain_report.json")
