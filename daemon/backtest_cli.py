"""`seqae backtest`: the daemon's streaming core over history files, with its figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from daemon.settings import DaemonSettings
    from seqae.data import Series


@click.command("backtest")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
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
@click.option(
    "--from-kafka", "from_kafka", is_flag=True, help="Replay the config's input topics instead."
)
@click.option(
    "--from-influx",
    "measurement",
    default=None,
    help="Read this raw-readings measurement (tag asset, a field per channel) instead.",
)
@click.option(
    "--since",
    default="7d",
    show_default=True,
    help="With --from-kafka/--from-influx: how far back.",
)
@click.option("--no-progress", is_flag=True)
def backtest(
    paths: tuple[Path, ...],
    config_path: Path | None,
    profile: str | None,
    models_root: Path | None,
    out_dir: Path,
    from_kafka: bool,
    measurement: str | None,
    since: str,
    no_progress: bool,
) -> None:
    """Replay history files through the daemon's own code path, offline: windows, per-asset
    warm-up and baselines, scores, shift states and the configured alert rule. Prints false
    alerts per day (on spans not labelled as faults), event recall and delay (on labelled
    spans), time calibrating and shifted, per asset and in total. The history is the files
    given, or what `seqae retrain` reads: the input topics (--from-kafka) or a raw-readings
    measurement (--from-influx), with no labels."""
    from daemon.backtest import BacktestError, history, save, with_profile
    from daemon.backtest import backtest as run
    from daemon.cli import _settings
    from daemon.retrain import RetrainError
    from seqae.artifacts import ArtifactError
    from seqae.data import DataError

    settings = with_profile(_settings(config_path), profile)
    if models_root is not None:
        profiles = settings.profiles.model_copy(update={"models_root": models_root})
        settings = settings.model_copy(update={"profiles": profiles})
    sources = sum([bool(paths), from_kafka, measurement is not None])
    if sources != 1:
        raise click.UsageError("give history files, or one of --from-kafka, --from-influx")
    try:
        if paths:
            series = history(list(paths), settings, profile)
        else:
            series = _recent(settings, profile, from_kafka, measurement, since, not no_progress)
        result = run(settings, series, progress=not no_progress)
    except (BacktestError, DataError, ArtifactError, OSError, RetrainError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(result.report.table())
    for path in save(result, out_dir):
        click.echo(f"saved {path}")


def _recent(
    settings: DaemonSettings,
    profile: str | None,
    from_kafka: bool,
    measurement: str | None,
    since: str,
    progress: bool,
) -> list[Series]:
    """Recent history of every routed profile (or `profile`), as `seqae retrain` reads it."""
    import time

    from daemon.backtest import served_meta
    from daemon.retrain import history_from_influx, history_from_kafka, parse_since

    since_ns = parse_since(since, time.time_ns())
    out: list[Series] = []
    for name in [profile] if profile else settings.profiles.profile_names:
        channels = served_meta(settings, name)["channels"]
        if from_kafka:
            out += history_from_kafka(settings, name, channels, since_ns, progress=progress)[0]
        else:
            assert measurement is not None
            out += history_from_influx(settings, name, channels, measurement, since_ns)
    return out
