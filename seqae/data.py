"""Sensor tables in, regular windows out.

A `Series` is one asset's multivariate history: strictly increasing timestamps, float32 values
with NaN where a sample is missing, and optional point labels. Missing samples stay NaN until
the model input, where `nan_to_mask` turns them into a mask: nothing is silently zero-filled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seqae.channels import (
    ChannelNote,
    channel_notes,
    channel_stats,
    classify,
    degenerate_unit,
    ordinary_scale,
)

if TYPE_CHECKING:  # pandas costs the daemon 75 MB and 1.7 s at start: imported where used
    import pandas as pd

TIMESTAMP_CANDIDATES = ("timestamp", "datetime", "time", "ts", "date")
LABEL_CANDIDATES = ("label", "anomaly")
NON_CHANNEL_COLUMNS = {"changepoint", "fault", "asset"}
PERIOD_TOLERANCE = 0.05  # a given period may differ from the timestamps' median step this much


class DataError(ValueError):
    """Input data that cannot be used, with the file and the reason in the message."""


@dataclass
class Series:
    timestamps: np.ndarray  # int64 epoch ns [T], strictly increasing
    values: np.ndarray  # float32 [T, C], NaN where missing
    channels: list[str]
    labels: np.ndarray | None = None  # int8 [T], 1 = anomalous
    asset: str | None = None

    def __len__(self) -> int:
        return len(self.timestamps)

    def select(self, channels: Sequence[str]) -> Series:
        """The same series with `channels` in that order; a missing channel is a DataError."""
        missing = [c for c in channels if c not in self.channels]
        if missing:
            raise DataError(f"missing channels {missing}; the data has {self.channels}")
        idx = [self.channels.index(c) for c in channels]
        return replace(self, values=self.values[:, idx], channels=list(channels))

    def slice(self, start: int, stop: int | None = None) -> Series:
        labels = None if self.labels is None else self.labels[start:stop]
        return replace(
            self,
            timestamps=self.timestamps[start:stop],
            values=self.values[start:stop],
            labels=labels,
        )


def _read_table(path: Path, sep: str | None) -> pd.DataFrame:
    import pandas as pd

    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=sep, engine="python" if sep is None else "c")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot be read as a table: {exc}") from exc


def _parse_timestamps(column: pd.Series, where: str) -> np.ndarray:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(column):
        # Numbers are epoch milliseconds, as in the daemon's message format.
        ts = pd.to_datetime(column, unit="ms", utc=True, errors="coerce")
    else:
        ts = pd.to_datetime(column, utc=True, errors="coerce", format="mixed")
    if ts.isna().any():
        bad = column[ts.isna()].iloc[0]
        raise DataError(f"{where}: unparseable timestamp {bad!r}")
    return ts.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def frame_to_series(
    frame: pd.DataFrame,
    *,
    where: str = "table",
    channels: Sequence[str] | None = None,
    timestamp_col: str | None = None,
    label_col: str | None = None,
    asset: str | None = None,
    allow_extra: bool = True,
) -> Series:
    """Validate a table and turn it into a Series (see `read_series`)."""
    import pandas as pd

    if frame.empty:
        raise DataError(f"{where}: no rows")
    columns = [str(c) for c in frame.columns]
    frame.columns = pd.Index(columns)
    if timestamp_col is None:
        timestamp_col = next((c for c in columns if c.lower() in TIMESTAMP_CANDIDATES), None)
        if timestamp_col is None:
            raise DataError(f"{where}: no timestamp column (looked for {TIMESTAMP_CANDIDATES})")
    elif timestamp_col not in columns:
        raise DataError(f"{where}: timestamp column {timestamp_col!r} not found in {columns}")
    if label_col is None:
        label_col = next((c for c in columns if c.lower() in LABEL_CANDIDATES), None)
    elif label_col not in columns:
        raise DataError(f"{where}: label column {label_col!r} not found in {columns}")
    present = [
        c
        for c in columns
        if c not in (timestamp_col, label_col) and c.lower() not in NON_CHANNEL_COLUMNS
    ]
    if channels is None:
        channels = present
    else:
        missing = [c for c in channels if c not in present]
        if missing:
            raise DataError(f"{where}: missing channels {missing}; the file has {present}")
        extra = [c for c in present if c not in channels]
        if extra and not allow_extra:
            raise DataError(f"{where}: unexpected extra channels {extra}")
    if not channels:
        raise DataError(f"{where}: no channel columns")
    timestamps = _parse_timestamps(frame[timestamp_col], where)
    diffs = np.diff(timestamps)
    if (diffs == 0).any():
        i = int(np.flatnonzero(diffs == 0)[0]) + 1
        raise DataError(f"{where}: duplicate timestamp at row {i}")
    if (diffs < 0).any():
        i = int(np.flatnonzero(diffs < 0)[0]) + 1
        raise DataError(f"{where}: timestamps go backwards at row {i} (sort the file)")
    try:
        values = frame[list(channels)].apply(pd.to_numeric, errors="raise").to_numpy(np.float64)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{where}: non-numeric value in a channel column: {exc}") from exc
    if np.isinf(values).any():
        r, c = np.argwhere(np.isinf(values))[0]
        raise DataError(f"{where}: infinite value in channel {channels[c]!r} at row {r}")
    if np.isnan(values).all(axis=0).any():
        c = int(np.flatnonzero(np.isnan(values).all(axis=0))[0])
        raise DataError(f"{where}: channel {channels[c]!r} has no finite value")
    labels = None
    if label_col is not None:
        raw = pd.to_numeric(frame[label_col], errors="coerce").fillna(0).to_numpy()
        labels = (raw > 0).astype(np.int8)
    return Series(timestamps, values.astype(np.float32), list(channels), labels, asset)


def read_series(
    path: str | Path,
    *,
    channels: Sequence[str] | None = None,
    timestamp_col: str | None = None,
    label_col: str | None = None,
    sep: str | None = None,
    allow_extra: bool = True,
) -> Series:
    """Read a CSV or Parquet file with a timestamp column, channel columns and an optional label.

    Raises DataError for an empty file, missing channels (or extra ones with allow_extra=False),
    infinite values, unparseable, duplicate or backward timestamps. NaN cells are kept as missing.
    """
    path = Path(path)
    frame = _read_table(path, sep)
    return frame_to_series(
        frame,
        where=str(path),
        channels=channels,
        timestamp_col=timestamp_col,
        label_col=label_col,
        asset=path.stem,
        allow_extra=allow_extra,
    )


def median_step_s(series: Series, where: str = "data") -> float:
    """The median step between consecutive timestamps, in seconds: the series' sampling period,
    robust to gaps and to a few irregular samples."""
    if len(series) < 2:
        raise DataError(f"{where}: {len(series)} row, a sampling period needs two timestamps")
    return float(np.median(np.diff(series.timestamps))) / 1e9


def check_period(
    series: Series,
    period_s: float,
    what: str,
    *,
    where: str = "data",
    tolerance: float = PERIOD_TOLERANCE,
) -> float:
    """Raise DataError naming both values when `period_s` (described by `what`, e.g. "--period
    1 s") differs from the series' median step by more than `tolerance`; returns the step."""
    step = median_step_s(series, where)
    if abs(period_s - step) > tolerance * step:
        raise DataError(
            f"{where}: {what} is {period_s:g} s but the timestamps' median step is {step:g} s "
            f"(more than {tolerance:.0%} apart)"
        )
    return step


def resolve_period(
    series: Sequence[Series],
    period_s: float | None,
    *,
    names: Sequence[str] | None = None,
    tolerance: float = PERIOD_TOLERANCE,
) -> float:
    """The sampling period for `series`: their common median step when `period_s` is None,
    otherwise `period_s` once checked against every series' step. Series whose steps disagree
    with each other by more than `tolerance` are a DataError naming both."""
    if not series:
        raise DataError("no series given")
    labels = (
        list(names)
        if names is not None
        else [s.asset or f"series {i}" for i, s in enumerate(series)]
    )
    if period_s is not None:
        if not (period_s > 0 and np.isfinite(period_s)):
            raise DataError(f"--period must be a positive number of seconds, got {period_s}")
        for s, name in zip(series, labels, strict=True):
            check_period(s, period_s, "--period", where=name, tolerance=tolerance)
        return float(period_s)
    steps = [median_step_s(s, name) for s, name in zip(series, labels, strict=True)]
    first = steps[0]
    for step, name in zip(steps[1:], labels[1:], strict=True):
        if abs(step - first) > tolerance * first:
            raise DataError(
                f"{name}: the timestamps' median step is {step:g} s but {labels[0]}'s is "
                f"{first:g} s; give files of one sampling period, or --period"
            )
    return first


def missing_share(values: np.ndarray) -> float:
    """Share of samples that are missing (NaN) in an array of grid values."""
    return float(np.isnan(values).mean()) if values.size else 1.0


def regularize(series: Series, period_s: float, max_fill: int = 0) -> Series:
    """Place samples on a fixed grid of `period_s`: last value in each slot, forward-filled for
    at most `max_fill` empty slots; longer gaps stay NaN (and so masked)."""
    if period_s <= 0:
        raise DataError(f"period must be positive, got {period_s}")
    period_ns = round(period_s * 1e9)
    slots = series.timestamps // period_ns
    first, last = int(slots[0]), int(slots[-1])
    n = last - first + 1
    grid = np.full((n, series.values.shape[1]), np.nan, dtype=np.float32)
    idx = slots - first
    # Later samples overwrite earlier ones in the same slot: "last value in each slot".
    grid[idx] = series.values
    if max_fill > 0:
        grid = forward_fill(grid, max_fill)
    labels = None
    if series.labels is not None:
        labels = np.zeros(n, dtype=np.int8)
        np.maximum.at(labels, idx, series.labels)
    timestamps = (np.arange(first, last + 1, dtype=np.int64)) * period_ns
    return Series(timestamps, grid, list(series.channels), labels, series.asset)


def forward_fill(values: np.ndarray, max_fill: int) -> np.ndarray:
    """Carry each channel's last observation forward over at most `max_fill` NaN rows."""
    import pandas as pd

    out = values.copy()
    frame = pd.DataFrame(out)
    return frame.ffill(limit=max_fill).to_numpy(dtype=np.float32)


def make_windows(values: np.ndarray, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of `window` rows every `hop` rows: (x [N, W, C] float32, end row index [N])."""
    if window < 2 or hop < 1:
        raise DataError(f"window must be >= 2 and hop >= 1, got window={window} hop={hop}")
    t = len(values)
    if t < window:
        raise DataError(f"{t} samples are fewer than one window of {window}")
    ends = np.arange(window - 1, t, hop, dtype=np.int64)
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)  # [T-W+1, C, W]
    x = view[ends - window + 1].transpose(0, 2, 1)
    return np.ascontiguousarray(x, dtype=np.float32), ends


def window_labels(labels: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A window's label is the label of its last sample: the score is emitted at window end."""
    return labels[ends]


def nan_to_mask(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x with missing samples set to 0, mask True where observed)."""
    mask = ~np.isnan(x)
    return np.where(mask, x, 0.0).astype(np.float32), mask


@dataclass
class RobustScaler:
    """Per-channel median and interquartile range, fitted on training data only.

    Degenerate channels (constant, flag-like, mostly or nearly constant: `seqae.channels`) are
    scaled by a unit instead of a spread they do not have, and marked in `degenerate`, so that
    calibration bounds the weight of their error. Every other channel keeps the scale it always
    had (`channels.ordinary_scale`)."""

    center: np.ndarray
    scale: np.ndarray
    # [C] bool, True for a degenerate channel; empty: none known (a scaler from before issue 10)
    degenerate: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    notes: list[ChannelNote] = field(default_factory=list)  # what `fit` found worth reporting

    @classmethod
    def fit(cls, values: np.ndarray, channels: Sequence[str] | None = None) -> RobustScaler:
        flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
        if not np.isfinite(flat).any(axis=0).all():
            raise DataError("cannot fit a scaler: a channel has no finite value")
        center = np.nanmedian(flat, axis=0)
        q75, q25 = np.nanpercentile(flat, [75, 25], axis=0)
        iqr = (q75 - q25) / 1.349  # IQR of a unit normal, so scale ~ standard deviation
        spread = np.where(iqr > 0, iqr, np.nanstd(flat, axis=0))
        names = list(channels) if channels is not None else [str(i) for i in range(flat.shape[1])]
        stats = [
            channel_stats(flat[:, c], center[c], q75[c] - q25[c], spread[c])
            for c in range(flat.shape[1])
        ]
        kinds = [classify(st) for st in stats]
        scale = np.array(
            [
                ordinary_scale(st) if kind is None else degenerate_unit(kind, st)
                for st, kind in zip(stats, kinds, strict=True)
            ]
        )
        return cls(
            center.astype(np.float32),
            scale.astype(np.float32),
            np.array([kind is not None for kind in kinds], bool),
            channel_notes(stats, kinds, scale.tolist(), names),
        )

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.center) / self.scale).astype(np.float32)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return (values * self.scale + self.center).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"center": self.center.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> RobustScaler:
        return cls(np.asarray(d["center"], np.float32), np.asarray(d["scale"], np.float32))
