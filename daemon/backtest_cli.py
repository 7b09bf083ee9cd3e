"""`seqae backtest`: the daemon's streaming core over history files, with its figures."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("backtest")
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Daemon TOML file whose windows, baselines, alerts and profiles are used.",
)
@click.option("--profile", default=None, help="Route every asset to this profile.")
@click.option(
    "--models-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Overrides profiles.models_root of the config.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/backtest"),
    show_default=True,
    help="Where backtest.json and backtest.png go.",
)
@click.option("--no-progress", is_flag=True)
def backtest(
    paths: tuple[Path, ...],
    config_path: Path | None,
    profile: str | None,
    models_root: Path | None,
    out_dir: Path,
    no_progress: bool,
) -> None:
    """Replay history files through the daemon's own code path, offline: windows, per-asset
    warm-up and baselines, scores, shift states and the configured alert rule. Prints false
    alerts per day (on spans not labelled as faults), event recall and delay (on labelled
    spans), time calibrating and shifted, per asset and in total."""
    from daemon.backtest import BacktestError, history, save, with_profile
    from daemon.backtest import backtest as run
    from daemon.cli import _settings
    from seqae.artifacts import ArtifactError
    from seqae.data import DataError

    settings = with_profile(_settings(config_path), profile)
    if models_root is not None:
        profiles = settings.profiles.model_copy(update={"models_root": models_root})
        settings = settings.model_copy(update={"profiles": profiles})
    try:
        series = history(list(paths), settings, profile)
        result = run(settings, series, progress=not no_progress)
    except (BacktestError, DataError, ArtifactError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(result.report.table())
    for path in save(result, out_dir):
        click.echo(f"saved {path}")
