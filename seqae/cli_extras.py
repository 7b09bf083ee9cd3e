"""`seqae impute`, `embed` and `generate`: what a trained model gives for free."""

from __future__ import annotations

from pathlib import Path

import click

from seqae.cli_common import (
    MODELS_OPTION,
    baseline_for,
    fail,
    read_profile_series,
    served_profile,
    write_table,
)


@click.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--profile", required=True)
@MODELS_OPTION
@click.option("--version", default=None, help="Default: CURRENT.")
@click.option(
    "--asset", default=None, help="Use this asset's stored baseline (scaler); it must exist."
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV or Parquet."
)
@click.option(
    "--min-observed",
    default=0.5,
    show_default=True,
    help="Least observed share of a window that may vote.",
)
@click.option("--sep", default=None)
@click.option("--device", default="auto", show_default=True)
def impute(
    data: Path,
    profile: str,
    models_root: Path,
    version: str | None,
    asset: str | None,
    out: Path,
    min_observed: float,
    sep: str | None,
    device: str,
) -> None:
    """Fill missing samples (empty cells and missing grid slots) by masked reconstruction."""
    import pandas as pd

    from seqae.data import DataError, regularize
    from seqae.extras import impute_series

    lp = served_profile(models_root, profile, version)
    scaler = baseline_for(lp, models_root, asset).scaler
    try:
        series = read_profile_series(data, lp, sep)
        grid = regularize(series, lp.meta.period_s, 0)
        result = impute_series(
            lp.detector,
            grid,
            scaler,
            lp.meta.window,
            min_observed=min_observed,
            device=device,
        )
    except (DataError, ValueError) as exc:
        raise fail(exc) from exc
    frame = pd.DataFrame(result.series.values, columns=lp.meta.channels)
    frame.insert(0, "timestamp", pd.to_datetime(result.series.timestamps, utc=True))
    write_table(frame, out)
    click.echo(
        f"{int(result.filled.sum())} samples imputed, {result.unfilled} left missing; wrote {out}"
    )


@click.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--profile", required=True)
@MODELS_OPTION
@click.option("--version", default=None, help="Default: CURRENT.")
@click.option(
    "--asset", default=None, help="Use this asset's stored baseline (scaler); it must exist."
)
@click.option("--hop", type=int, default=None, help="Default: the model's hop.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV or Parquet."
)
@click.option("--sep", default=None)
@click.option("--device", default="auto", show_default=True)
def embed(
    data: Path,
    profile: str,
    models_root: Path,
    version: str | None,
    asset: str | None,
    hop: int | None,
    out: Path,
    sep: str | None,
    device: str,
) -> None:
    """Export the latent code of each window (window_end, z0..zK) for projection or clustering."""
    import pandas as pd

    from seqae.data import DataError, make_windows, regularize
    from seqae.extras import embed_windows

    lp = served_profile(models_root, profile, version)
    scaler = baseline_for(lp, models_root, asset).scaler
    try:
        series = read_profile_series(data, lp, sep)
        grid = regularize(series, lp.meta.period_s, 3)
        windows, ends = make_windows(grid.values, lp.meta.window, hop or lp.meta.hop)
        codes = embed_windows(lp.detector, windows, scaler, device=device)
    except (DataError, ValueError) as exc:
        raise fail(exc) from exc
    frame = pd.DataFrame(codes, columns=[f"z{i}" for i in range(codes.shape[1])])
    frame.insert(0, "window_end", pd.to_datetime(grid.timestamps[ends], utc=True))
    write_table(frame, out)
    click.echo(f"{len(frame)} windows, {codes.shape[1]} latent dimensions; wrote {out}")


@click.command()
@click.option("--profile", required=True)
@MODELS_OPTION
@click.option("--version", default=None, help="Default: CURRENT.")
@click.option("--n", "count", default=100, show_default=True, help="Windows to draw.")
@click.option("--seed", default=0, show_default=True)
@click.option("--noise", is_flag=True, help="Add the learned observation noise.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV or Parquet."
)
@click.option("--device", default="auto", show_default=True)
def generate(
    profile: str,
    models_root: Path,
    version: str | None,
    count: int,
    seed: int,
    noise: bool,
    out: Path,
    device: str,
) -> None:
    """Draw synthetic normal windows from a variational profile (one row per window and step)."""
    import numpy as np
    import pandas as pd

    from seqae.extras import generate_windows

    lp = served_profile(models_root, profile, version)
    try:
        windows = generate_windows(
            lp.detector, count, lp.baseline.scaler, seed=seed, with_noise=noise, device=device
        )
    except ValueError as exc:
        raise fail(exc) from exc
    n, w, c = windows.shape
    frame = pd.DataFrame(windows.reshape(n * w, c), columns=lp.meta.channels)
    frame.insert(0, "step", np.tile(np.arange(w), n))
    frame.insert(0, "window", np.repeat(np.arange(n), w))
    write_table(frame, out)
    click.echo(f"{n} windows of {w} samples; wrote {out}")
