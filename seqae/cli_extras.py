"""`seqae impute`, `denoise`, `embed` and `generate`: what a trained model gives for free."""

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

# The names of seqae.extras.IMPUTE_METHODS, here so that --help imports no torch.
IMPUTE_METHOD_NAMES = ("ffill", "linear", "model", "bridge")


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
    "--method",
    type=click.Choice(["auto", *IMPUTE_METHOD_NAMES]),
    default="auto",
    show_default=True,
    help="auto: per channel and gap length, the method that fills holes cut from normal data "
    "best (see --choose-on).",
)
@click.option(
    "--choose-on",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Normal data to choose the methods on (default: the observed samples of DATA).",
)
@click.option("--max-gap", type=int, default=None, help="Leave longer gaps (samples) missing.")
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
    method: str,
    choose_on: Path | None,
    max_gap: int | None,
    min_observed: float,
    sep: str | None,
    device: str,
) -> None:
    """Fill missing samples (empty cells and missing grid slots), gap by gap: forward fill,
    linear interpolation, masked reconstruction, or the reconstruction bridged onto both
    neighbours, whichever fills holes cut from normal data best for that channel and length."""
    import pandas as pd

    from seqae.data import DataError, regularize
    from seqae.extras import ImputeRule, choose_rule, impute_series

    lp = served_profile(models_root, profile, version)
    scaler = baseline_for(lp, models_root, asset).scaler
    try:
        series = read_profile_series(data, lp, sep)
        grid = regularize(series, lp.meta.period_s, 0)
        if method == "auto":
            source = choose_on or data
            normal = (
                grid
                if choose_on is None
                else regularize(read_profile_series(choose_on, lp, sep), lp.meta.period_s, 0)
            )
            rule, _ = choose_rule(
                lp.detector,
                normal.values,
                scaler,
                lp.meta.window,
                min_observed=min_observed,
                device=device,
            )
        else:
            rule = ImputeRule.everywhere(method, len(lp.meta.channels))
        result = impute_series(
            lp.detector,
            grid,
            scaler,
            lp.meta.window,
            rule=rule,
            max_gap=max_gap,
            min_observed=min_observed,
            device=device,
        )
    except (DataError, ValueError) as exc:
        raise fail(exc) from exc
    frame = pd.DataFrame(result.series.values, columns=lp.meta.channels)
    frame.insert(0, "timestamp", pd.to_datetime(result.series.timestamps, utc=True))
    write_table(frame, out)
    used = ", ".join(f"{m} {n}" for m, n in result.gaps_by_method.items()) or "none"
    click.echo(f"gaps filled by method: {used}")
    if method == "auto":
        click.echo(f"methods chosen per channel and gap length on holes cut from {source}")
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
def denoise(
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
    """Write the denoised signal: each sample the mean reconstruction of the windows (one
    ending at every sample) that cover it; a denoising profile's reconstruction is the clean
    signal it was trained to recover."""
    import pandas as pd

    from seqae.data import DataError, regularize
    from seqae.extras import denoise_series, denoising_note

    lp = served_profile(models_root, profile, version)
    scaler = baseline_for(lp, models_root, asset).scaler
    try:
        series = read_profile_series(data, lp, sep)
        grid = regularize(series, lp.meta.period_s, 0)
        clean = denoise_series(
            lp.detector, grid, scaler, lp.meta.window, min_observed=min_observed, device=device
        )
    except (DataError, ValueError) as exc:
        raise fail(exc) from exc
    # One row per original timestamp (grid slots the file did not have are not written).
    period_ns = round(lp.meta.period_s * 1e9)
    rows = series.timestamps // period_ns - grid.timestamps[0] // period_ns
    frame = pd.DataFrame(clean.values[rows], columns=lp.meta.channels)
    frame.insert(0, "timestamp", pd.to_datetime(series.timestamps, utc=True))
    write_table(frame, out)
    note = denoising_note(lp.detector)
    if note:
        click.echo(f"note: {note}")
    missing = int(frame[lp.meta.channels].isna().to_numpy().sum())
    click.echo(f"{len(frame)} rows denoised, {missing} values left missing; wrote {out}")


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
