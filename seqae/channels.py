"""Degenerate channels: what a channel's training data says about how it may be scaled.

A channel that never moved in training (a flag that never switched, idle telemetry) has no
spread to divide by, and its reconstruction error never varied, so neither its scale nor its
error variance can be estimated. Dividing by a tiny floor turned its first change into scores
of 1e8; a profile of such channels alone set a threshold of exactly 0. Each channel is
classified once, on the rows the scaler is fitted on:

- `constant`: no change beyond float32 rounding of its level;
- `nearly_constant`: noise around a level, a spread below `NEARLY_CONSTANT_NOISE` of it (a
  tenth of the scaler's relative floor, so the floor, not the spread, sets its scale);
- `flag` (at most `MAX_FLAG_LEVELS` distinct values: 0/1 flags, modes, states) or
  `mostly_constant` (more values): half the samples or more at one value (an interquartile
  range of 0) and rare excursions, `RARE_SWING` times the standard deviation or more (a 0/1
  flag on for less than 1 % of the time). A quantised sensor at one level half the time (SKAB's
  Pressure: 5-9 levels, a swing of 5 standard deviations) is an ordinary channel;
- `scale`: an ordinary channel whose spread is `SCALE_RATIO` times (or 1/`SCALE_RATIO`)
  the median of the other channels'. Robust scaling removes the difference, so only the
  report says so.

All but `scale` are *degenerate*: they are scaled by a unit (`degenerate_unit`) that says how
big a change counts, and calibration bounds the weight of their error: one unit of error adds
at most `DEGENERATE_UNIT_SCORE` to the score (`seqae.calibrate.fit_error_stats`). An ordinary
channel keeps the scale it always had.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

ChannelKind = Literal["constant", "flag", "mostly_constant", "nearly_constant", "scale"]
MAX_FLAG_LEVELS = 5
NEARLY_CONSTANT = 1e-3  # the scaler's relative floor: a scale is at least this share of the level
NEARLY_CONSTANT_NOISE = 1e-4  # a spread below this share of the level is noise around it
RARE_SWING = 10.0  # excursions this many standard deviations wide are rare ones
SCALE_RATIO = 1e4
# Changes below this share of a channel's largest magnitude are float32 rounding (2^-20, 8 ulp).
FLOAT_RESOLUTION = 2.0**-20
# A degenerate channel's error never varied in training, so its own variance cannot weigh it:
# an error deviation of one unit (the channel's scale) adds at most this much to the score,
# whatever the number of channels (seqae.calibrate.fit_error_stats). Normal windows' thresholds
# are about 1.5-4, so a flag switching for a whole window shows; scores of 1e8 need a move of
# thousands of units.
DEGENERATE_UNIT_SCORE = 10.0


@dataclass(frozen=True)
class ChannelStats:
    """What the scaler needs of one channel's finite training values."""

    center: float  # median
    spread: float  # IQR / 1.349, or the standard deviation where the IQR is 0
    swing: float  # 0.5-99.5 percentile range, or the full range where that is 0
    levels: int  # distinct values, counted up to MAX_FLAG_LEVELS + 1
    iqr: float  # interquartile range (0: half the samples or more at one value)
    constant: bool


@dataclass(frozen=True)
class ChannelNote:
    """One reported channel: its kind, the scale used and a sentence for the operator."""

    channel: str
    kind: ChannelKind
    scale: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _levels(x: np.ndarray) -> int:
    """Distinct values of `x`, exact up to MAX_FLAG_LEVELS + 1 (a continuous channel stops at
    its first thousand samples instead of sorting all of them)."""
    head = np.unique(x[:1000])
    if len(head) > MAX_FLAG_LEVELS:
        return MAX_FLAG_LEVELS + 1
    return min(len(np.unique(x)), MAX_FLAG_LEVELS + 1)


def channel_stats(x: np.ndarray, center: float, iqr: float, spread: float) -> ChannelStats:
    """Statistics of one channel's values `x` (NaN ignored; at least one must be finite),
    given the median, interquartile range and spread the scaler computed for it."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    low, high = np.percentile(x, [0.5, 99.5])
    full = float(x.max() - x.min())
    swing = float(high - low) if high > low else full
    constant = full <= FLOAT_RESOLUTION * float(np.abs(x).max())
    return ChannelStats(float(center), float(spread), swing, _levels(x), float(iqr), constant)


def classify(s: ChannelStats) -> ChannelKind | None:
    """The channel's degenerate kind, or None for an ordinary channel (`scale` is decided
    against the other channels, in `channel_notes`)."""
    if s.constant:
        return "constant"
    if s.spread < NEARLY_CONSTANT_NOISE * abs(s.center):
        return "nearly_constant"
    if s.iqr == 0 and s.swing >= RARE_SWING * s.spread:
        return "flag" if s.levels <= MAX_FLAG_LEVELS else "mostly_constant"
    return None


def ordinary_scale(s: ChannelStats) -> float:
    """The scale of a channel that moves: its spread, floored at NEARLY_CONSTANT of its level.

    Until issue 10 the floor was 1e-3 * max(|centre|, 1): its absolute part squashed a channel
    measured in small units (a spread of 1e-5 read as 1e-3), so the same signal in other units
    scored differently. The relative part is kept: for |centre| >= 1, or a spread above 1e-3,
    the scale is exactly what it was."""
    return max(s.spread, NEARLY_CONSTANT * abs(s.center))


def degenerate_unit(kind: ChannelKind, s: ChannelStats) -> float:
    """The scale of a degenerate channel: how big a change counts as one unit.

    A flag or a mostly constant channel: its swing in training (a 0/1 flag switching is one
    unit, where its standard deviation made it 10 or more; values among the levels it has shown
    stay within one unit of its centre). A constant channel: its level, or 1 at 0 (a change as
    large as its value, or a 0/1 flag switching on, is one unit; training cannot say more). A
    nearly constant channel: the relative floor it has always had (1e-3 of its level)."""
    if kind == "constant":
        return abs(s.center) if s.center != 0 else 1.0
    if kind in ("flag", "mostly_constant"):
        return max(s.swing, s.spread, NEARLY_CONSTANT * abs(s.center))
    return ordinary_scale(s)


def _detail(kind: ChannelKind, s: ChannelStats, scale: float, ratio: float) -> str:
    counted = f"an error of one unit adds at most {DEGENERATE_UNIT_SCORE:g} to the score"
    if kind == "constant":
        return (
            f"constant in training (at {s.center:.6g}); scaled by {scale:.6g} (a change of "
            f"that size is one unit), {counted}"
        )
    rarely = (
        f"half or more of it at {s.center:.6g}, rare excursions {s.swing / s.spread:.3g} "
        "standard deviations wide"
    )
    if kind == "flag":
        return (
            f"flag-like in training ({s.levels} distinct values, {rarely}); scaled by its "
            f"swing {scale:.6g}, {counted}"
        )
    if kind == "mostly_constant":
        return f"mostly constant in training ({rarely}); scaled by its swing {scale:.6g}, {counted}"
    if kind == "nearly_constant":
        return (
            f"nearly constant in training (spread {s.spread:.3g}, under "
            f"{NEARLY_CONSTANT_NOISE:.0e} of its level {s.center:.6g}); scaled by {scale:.6g}, "
            f"{counted}"
        )
    return (
        f"on another scale: spread {s.spread:.3g} is {ratio:.3g} times the median of the other "
        "channels'; robust scaling divides it out, nothing else changes"
    )


def channel_notes(
    stats: Sequence[ChannelStats],
    kinds: Sequence[ChannelKind | None],
    scales: Sequence[float],
    names: Sequence[str],
) -> list[ChannelNote]:
    """The channels worth reporting, in channel order: degenerate ones, and ordinary ones on a
    scale SCALE_RATIO away from the median of the other ordinary channels'."""
    ordinary = [i for i, k in enumerate(kinds) if k is None]
    notes = []
    for i, (s, kind) in enumerate(zip(stats, kinds, strict=True)):
        ratio = 1.0
        if kind is None:
            others = [stats[j].spread for j in ordinary if j != i]
            if not others:
                continue
            ratio = s.spread / float(np.median(others))
            if 1.0 / SCALE_RATIO < ratio < SCALE_RATIO:
                continue
            kind = "scale"
        notes.append(
            ChannelNote(names[i], kind, float(scales[i]), _detail(kind, s, scales[i], ratio))
        )
    return notes
