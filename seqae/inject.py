"""Faults injected into normal data, to measure what a detector catches.

A fault acts on one channel of a ``[T, C]`` array of raw readings over the rows
``[start, end)``. Its size is in units of the channel's robust spread (``scale[c]``, the scaler
scale of a baseline), so one size means as much on every channel and every plant. `inject`
returns a new array and the labelled span; no other row and no other channel changes.

Kinds, and what ``size`` means for each:

- ``spike``: one sample at a seeded row of the span moves by ``size`` spreads; the labelled span
  is that one row.
- ``drift``: a ramp added from 0 at ``start`` to ``size`` spreads at ``end - 1``.
- ``stuck``: the channel holds its reading at ``start`` (the last finite one before it, if that
  one is missing), offset by ``size`` spreads: 0 is a sensor frozen at its true value.
- ``noise``: Gaussian noise of standard deviation ``size`` spreads added to every sample.
- ``decouple``: the channel is replaced by its own readings from another stretch of the same
  length (seeded, not overlapping the span), offset by ``size`` spreads: the channel's values
  stay its own, the relation to the other channels is broken.

Each call draws from ``numpy.random.default_rng(seed)``: the same arguments give the same fault.

>>> values = np.zeros((10, 2), np.float32)
>>> out, span = inject(values, "drift", start=2, end=6, channel=1, size=3.0,
...                    scale=np.array([1.0, 0.5]), seed=0)
>>> np.abs(out[:, 1]).round(2).tolist()
[0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 0.0, 0.0, 0.0, 0.0]
>>> (span.start, span.end, bool((out[:, 0] == 0).all()))
(2, 6, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

FAULT_KINDS: tuple[str, ...] = ("spike", "drift", "stuck", "noise", "decouple")
# Sizes in robust spreads: from about what a careful eye sees to an obvious fault.
DEFAULT_SIZES: Mapping[str, tuple[float, ...]] = {
    "spike": (3.0, 6.0, 12.0),
    "drift": (2.0, 4.0, 8.0),
    "stuck": (0.0, 2.0, 4.0),
    "noise": (0.5, 1.0, 2.0),
    "decouple": (0.0, 2.0, 4.0),
}


class InjectError(ValueError):
    """A fault that cannot be injected; the message names the argument."""


@dataclass(frozen=True)
class InjectedFault:
    """Where a fault was put: rows ``[start, end)`` of ``channel``."""

    kind: str
    size: float
    channel: int
    start: int
    end: int


def inject(
    values: np.ndarray,
    kind: str,
    *,
    start: int,
    end: int,
    channel: int,
    size: float,
    scale: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, InjectedFault]:
    """A copy of ``values`` [T, C] with one fault of ``kind`` in rows [start, end) of ``channel``,
    and the labelled span."""
    values = np.asarray(values)
    scale = np.asarray(scale, np.float64)
    _check(values, kind, start, end, channel, size, scale)
    rng = np.random.default_rng(seed)
    out = values.copy()
    col = out[:, channel]  # a view: writing it writes `out`
    length = end - start
    sign = float(rng.choice([-1.0, 1.0]))
    amount = sign * size * float(scale[channel])
    if kind == "spike":
        row = start + int(rng.integers(length))
        col[row] += amount
        return out, InjectedFault(kind, size, channel, row, row + 1)
    if kind == "drift":
        col[start:end] += amount * np.linspace(0.0, 1.0, length) if length > 1 else amount
    elif kind == "stuck":
        col[start:end] = _reading_at(col, start) + amount
    elif kind == "noise":
        col[start:end] += rng.normal(0.0, size * float(scale[channel]), length)
    else:  # decouple
        source = _other_stretch(len(col), start, end, rng)
        col[start:end] = values[source : source + length, channel] + amount
    return out, InjectedFault(kind, size, channel, start, end)


def _check(
    values: np.ndarray,
    kind: str,
    start: int,
    end: int,
    channel: int,
    size: float,
    scale: np.ndarray,
) -> None:
    if values.ndim != 2:
        raise InjectError(f"values: expected a [T, C] array, got shape {values.shape}")
    t, c = values.shape
    if kind not in FAULT_KINDS:
        raise InjectError(f"kind: unknown fault kind {kind!r}; known: {FAULT_KINDS}")
    if not 0 <= start < end <= t:
        raise InjectError(f"start, end: need 0 <= start < end <= {t}, got {start}, {end}")
    if not 0 <= channel < c:
        raise InjectError(f"channel: need 0 <= channel < {c}, got {channel}")
    if not (np.isfinite(size) and size >= 0):
        raise InjectError(f"size: must be a finite number >= 0, got {size}")
    if scale.shape != (c,) or not (np.isfinite(scale).all() and (scale > 0).all()):
        raise InjectError(f"scale: need {c} finite positive spreads, got {scale.tolist()}")
    if kind == "decouple" and max(start, t - end) < end - start:
        raise InjectError(
            f"decouple: rows [{start}, {end}) leave no other stretch of {end - start} rows "
            f"in {t} to take the channel's readings from"
        )


def _reading_at(col: np.ndarray, row: int) -> float:
    """The last finite reading at or before `row`, else the first one after it."""
    before = np.flatnonzero(np.isfinite(col[: row + 1]))
    if len(before):
        return float(col[before[-1]])
    after = np.flatnonzero(np.isfinite(col[row:]))
    return float(col[row + after[0]]) if len(after) else float("nan")


def _other_stretch(t: int, start: int, end: int, rng: np.random.Generator) -> int:
    """A seeded start row of a stretch of end - start rows that does not overlap [start, end)."""
    length = end - start
    choices = [*range(0, start - length + 1), *range(end, t - length + 1)]
    return int(choices[int(rng.integers(len(choices)))])


@dataclass(frozen=True)
class PlannedFault:
    """One fault of a plan: which piece, where, which channel, and its own seed."""

    piece: int
    kind: str
    size: float
    start: int
    end: int
    channel: int
    seed: int


def plan_faults(
    starts: Sequence[range],
    *,
    span: int,
    n_channels: int,
    seed: int,
    repeats: int = 4,
    sizes: Mapping[str, Sequence[float]] = DEFAULT_SIZES,
) -> list[PlannedFault]:
    """``repeats`` faults of every kind at every size, each at a seeded piece, start row (from
    ``starts[piece]``, the rows where a span of ``span`` rows may begin) and channel. A piece is
    drawn in proportion to how many start rows it offers."""
    weights = np.array([len(r) for r in starts], np.float64)
    if weights.sum() <= 0:
        raise InjectError("starts: no piece has room for a fault span")
    rng = np.random.default_rng(seed)
    plan = []
    for kind in FAULT_KINDS:
        for size in sizes[kind]:
            for _ in range(repeats):
                piece = int(rng.choice(len(starts), p=weights / weights.sum()))
                start = int(starts[piece][int(rng.integers(len(starts[piece])))])
                channel = int(rng.integers(n_channels))
                fault_seed = int(rng.integers(2**31))
                plan.append(
                    PlannedFault(piece, kind, float(size), start, start + span, channel, fault_seed)
                )
    return plan
