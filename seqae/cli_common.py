"""What the `seqae` commands share: the models option, one-line user errors, loading.

Importing this module, or any `seqae.cli*` module, costs click and the standard library only:
numpy, pandas, torch and the rest are imported inside the commands that use them, so that
`seqae --help`, `--version`, `models list` and the like start in a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import pandas as pd

    from seqae.artifacts import LoadedProfile
    from seqae.calibrate import Baseline, ThresholdPolicy
    from seqae.data import Series

MODELS_OPTION = click.option(
    "--models",
    "models_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("models"),
    show_default=True,
    envvar=["SEQAE_MODELS", "SEQAE_PROFILES__MODELS_ROOT"],
    help="Folder holding models/<profile>/<version>/.",
)


class UserError(click.ClickException):
    exit_code = 2


def fail(exc: Exception | str) -> UserError:
    return UserError(str(exc))


def threshold_policy(threshold: str, quantile: float, risk: float) -> ThresholdPolicy:
    from seqae.calibrate import ThresholdPolicy

    return ThresholdPolicy(method=threshold, quantile=quantile, pot_risk=risk)  # type: ignore[arg-type]


def read_profile_series(path: Path, lp: LoadedProfile, sep: str | None) -> Series:
    """A file's series with exactly the profile's channels, in the profile's order, sampled at
    the profile's period (a median step that disagrees with it is a DataError naming both)."""
    from seqae.data import check_period, read_series

    series = read_series(path, channels=lp.meta.channels, sep=sep).select(lp.meta.channels)
    check_period(
        series,
        lp.meta.period_s,
        f"the period of {lp.profile}/{lp.version}",
        where=str(path),
    )
    return series


def served_profile(models_root: Path, profile: str, version: str | None) -> LoadedProfile:
    from seqae.artifacts import ArtifactError, load_profile

    try:
        return load_profile(models_root, profile, version)
    except ArtifactError as exc:
        raise fail(exc) from exc


def baseline_for(lp: LoadedProfile, models_root: Path, asset: str | None) -> Baseline:
    """The profile's own baseline without `asset`; with it, the asset's stored baseline, which
    must exist and be fitted for the served version: a wrong asset is an error, not a fallback."""
    if not asset:
        return lp.baseline
    from seqae.artifacts import ArtifactError, baseline_path, load_baseline

    path = baseline_path(models_root, lp.profile, asset)
    if not path.exists():
        folder = path.parent
        stored = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        known = ", ".join(stored) if stored else "none"
        raise fail(
            f"--asset {asset}: no stored baseline for this asset of profile {lp.profile} "
            f"(assets with one: {known}); fit one with `seqae calibrate`"
        )
    try:
        fitted_for = json.loads(path.read_text()).get("model_version")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise fail(f"{path}: unreadable baseline ({exc})") from exc
    if fitted_for != lp.version:
        raise fail(
            f"--asset {asset}: its baseline was fitted for {lp.profile}/{fitted_for}, not for "
            f"the version in use, {lp.profile}/{lp.version}; run `seqae calibrate` again"
        )
    try:
        baseline = load_baseline(models_root, lp.profile, asset, lp.version)
    except ArtifactError as exc:
        raise fail(exc) from exc
    if baseline is None:  # the file changed between the two reads
        raise fail(f"{path}: the baseline changed while it was read; try again")
    return baseline


def write_table(frame: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False)
