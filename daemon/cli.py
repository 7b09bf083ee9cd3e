"""Console entry point `seqae`: the library's click group plus daemon, config and replay."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # pydantic costs a tenth of a second: only the commands that read settings pay
    from daemon.settings import DaemonSettings

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Daemon TOML file (SEQAE_* environment variables override it).",
)


def _settings(config_path: Path | None) -> DaemonSettings:
    from daemon.settings import ConfigError, load_settings

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
    # kafka-python logs several lines per reconnect; the daemon's own line reports an outage
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    from daemon.app import StartupError, run_daemon

    try:
        run_daemon(settings)
    except StartupError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.group("config")
def config_group() -> None:
    """Daemon configuration."""


def _deployment_problems(settings: DaemonSettings) -> list[str]:
    """What a valid configuration still needs from the machine: the models folder, a CURRENT
    per routed profile naming a version that exists, readable TLS files. (Secret files are
    read, and checked, when the settings load.) Read directly: no torch import for a check."""
    problems = []
    root = settings.profiles.models_root
    if settings.profiles.routes:
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            problems.append(f"profiles.models_root: {root} {what}")
        else:
            for profile in settings.profiles.profile_names:
                problems += _profile_problems(root, profile)
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(settings.kafka, name)
        if path is not None:
            try:
                path.open("rb").close()
            except OSError as exc:
                problems.append(f"kafka.{name}: cannot read {path}: {exc.strerror}")
    return problems


def _profile_problems(root: Path, profile: str) -> list[str]:
    current = root / profile / "CURRENT"
    where = f"profiles.routes: profile {profile!r}"
    if not current.is_file():
        return [f"{where} has no {current} (train a model or `seqae models promote` one)"]
    try:
        version = current.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{where}: cannot read {current}: {getattr(exc, 'strerror', None) or exc}"]
    if not version:
        return [f"{where}: {current} is empty"]
    if not (root / profile / version).is_dir():
        return [
            f"{where}: {current} names version {version!r}, but {root / profile / version} "
            "does not exist"
        ]
    return []


@config_group.command("check")
@CONFIG_OPTION
def config_check(config_path: Path | None) -> None:
    """Print the effective configuration (secrets masked); exit 2 naming the field if invalid,
    or naming each missing models folder, CURRENT file or unreadable file it refers to."""
    settings = _settings(config_path)
    click.echo(json.dumps(settings.masked(), indent=2, default=str))
    problems = _deployment_problems(settings)
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(2)


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


class DeferredCommand(click.Command):
    """A command known by name and summary whose module is imported only when it is invoked
    (its own --help included): `seqae --help` and the other commands skip that import.

    For commands whose module is slow to import (daemon.retrain_cli pulls in pydantic, 0.2 s);
    tests/unit/test_cli_imports.py checks that `summary` matches the real command's."""

    def __init__(self, name: str, target: str, summary: str) -> None:
        super().__init__(name, help=summary)
        self.target = target

    def load(self) -> click.Command:
        module, attr = self.target.split(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: object,
    ) -> click.Context:
        # The group invokes `context.command`: the real command parses, helps and runs.
        return self.load().make_context(info_name, args, parent=parent, **extra)  # type: ignore[arg-type]


RETRAIN = DeferredCommand(
    "retrain",
    "daemon.retrain_cli:retrain",
    "Train a candidate on recent normal history (alert spans left out), run it and the served "
    "model on the newest held-out data through the daemon's alert rule, and promote it to "
    "CURRENT only if it raises no more false alerts per day and catches no fewer injected faults.",
)


def build_cli() -> click.Group:
    from daemon.backtest_cli import backtest as backtest_command
    from seqae.cli import cli as library_cli

    for command in (daemon_group, config_group, replay):
        library_cli.add_command(command)
    library_cli.add_command(RETRAIN)
    library_cli.add_command(backtest_command)
    return library_cli


def main() -> None:
    build_cli()(prog_name="seqae")


if __name__ == "__main__":
    main()
