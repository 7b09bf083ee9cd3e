"""What the `seqae` commands share: the models option, one-line user errors, loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pandas as pd

from seqae.artifacts import ArtifactError, load_baseline, load_profile
from seqae.calibrate import Baseline, ThresholdPolicy
from seqae.data import Series, read_series

MODELS_OPTION = click.option(
    "--models",
    "models_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("models"),
    show_default=True,
    envvar="SEQAE_MODELS",
    help="Folder holding models/<profile>/<version>/.",
)


class UserError(click.ClickException):
    exit_code = 2


def fail(exc: Exception) -> UserError:
    return UserError(str(exc))


def threshold_policy(threshold: str, quantile: float, risk: float) -> ThresholdPolicy:
    return ThresholdPolicy(method=threshold, quantile=quantile, pot_risk=risk)  # type: ignore[arg-type]


def read_profile_series(path: Path, lp: Any, sep: str | None) -> Series:
    """A file's series with exactly the profile's channels, in the profile's order."""
    return read_series(path, channels=lp.meta.channels, sep=sep).select(lp.meta.channels)


def served_profile(models_root: Path, profile: str, version: str | None) -> Any:
    try:
        return load_profile(models_root, profile, version)
    except ArtifactError as exc:
        raise fail(exc) from exc


def baseline_for(lp: Any, models_root: Path, asset: str | None) -> Baseline:
    if asset:
        stored = load_baseline(models_root, lp.profile, asset, lp.version)
        if stored is not None:
            return stored
    return lp.baseline


def write_table(frame: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False)
