"""Console entry point `seqae`: the library's click group plus daemon, config and replay."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from daemon.settings import ConfigError, DaemonSettings, load_settings

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Daemon TOML file (SEQAE_* environment variables override it).",
)


def _settings(config_path: Path | None) -> DaemonSettings:
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        click.echo(f"error: invalid configuration: {exc}", err=True)
        sys.exit(2)


@click.group("daemon")
def daemon_group() -> None:
    """The monitoring service."""


@daemon_group.command("run")
@CONFIG_OPTION
def daemon_run(config_path: Path | None) -> None:
    """Consume Kafka, score windows, write scores and alerts to InfluxDB until SIGTERM."""
    settings = _settings(config_path)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from daemon.app import StartupError, run_daemon

    try:
        run_daemon(settings)
    except StartupError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.group("config")
def config_group() -> None:
    """Daemon configuration."""


@config_group.command("check")
@CONFIG_OPTION
def config_check(config_path: Path | None) -> None:
    """Print the effective configuration (secrets masked); exit 2 naming the field if invalid."""
    settings = _settings(config_path)
    click.echo(json.dumps(settings.masked(), indent=2, default=str))


@click.command("replay")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--topic", required=True, help="Kafka topic to write to.")
@click.option("--bootstrap", default="127.0.0.1:9092", show_default=True)
@click.option(
    "--rate", type=float, default=None, help="Messages per second (default: as fast as possible)."
)
@click.option("--asset-col", default="asset", show_default=True)
@click.option("--timestamp-col", default="timestamp", show_default=True)
@click.option(
    "--asset", default=None, help="Asset id for a per-asset file without an asset column."
)
@click.option(
    "--channels", default=None, help="Comma-separated channel columns (default: numeric)."
)
@click.option(
    "--exclude", default="", help="Comma-separated numeric columns to leave out (labels)."
)
@click.option("--no-progress", is_flag=True)
def replay(
    path: Path,
    topic: str,
    bootstrap: str,
    rate: float | None,
    asset_col: str,
    timestamp_col: str,
    asset: str | None,
    channels: str | None,
    exclude: str,
    no_progress: bool,
) -> None:
    """Send the rows of a CSV or Parquet file as wide messages keyed by asset."""
    from daemon.replay import ReplayError, replay_file

    try:
        sent = replay_file(
            path,
            topic,
            bootstrap.split(","),
            rate=rate,
            asset_col=asset_col,
            timestamp_col=timestamp_col,
            asset=asset,
            channels=channels.split(",") if channels else None,
            exclude=[c for c in exclude.split(",") if c],
            progress=not no_progress,
        )
    except ReplayError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"sent {sent} messages to {topic}")


def build_cli() -> click.Group:
    from daemon.retrain_cli import retrain as retrain_command
    from seqae.cli import cli as library_cli

    for command in (daemon_group, config_group, replay):
        library_cli.add_command(command)
    library_cli.add_command(retrain_command)
    return library_cli


def main() -> None:
    build_cli()(prog_name="seqae")


if __name__ == "__main__":
    main()
