"""Per-asset ring buffers on the profile's sampling grid; whole windows come out ready to score.

Slots are absolute: slot k covers [k*period, (k+1)*period) since the epoch, and an asset's window
ends at slot e when (e + phase) % hop == hop - 1, its phase a fixed hash of the asset id. A replay
of the same readings yields the same window ends, and a fleet whose readings arrive in step does
not complete all its windows in the same slot (a burst of scoring and writing once per hop).
A slot becomes final once a reading arrives more than `lateness` slots after it: a reading out of
order by up to `lateness` slots is placed; an older one is dropped, counted, and the asset's next
window carries the count (`late`). Final slots are forward-filled per channel for at most
`max_fill` slots. A run of more than `max_fill` empty slots
resets the asset's window and flags `gap` on its next window.

What a restart needs to rebuild an asset's next window is the offsets its readings span
(`AssetWindow.hold`). The changelog carries them (`WindowStore.progress`), so commits need not
wait for partial windows; an asset whose hold names a partition or an offset that the last
reported one did not is listed by `WindowStore.take_unreported`, in O(1) per reading, so a
checkpoint rewrites only those assets (and the ones whose window completed) instead of
passing over every window.

Memory: a fleet holds one `AssetWindow` per asset (and nothing else per asset in the store), so
what does not differ between assets (the channel index, an all-zero fill count) is shared per
geometry, and what usually has one entry (the partitions an asset's readings come from) is a
tuple rather than a dict or set. A slot read with every channel is final as it was read, so the
forward-filled copy (`_filled`) holds only the other slots and is allocated by an asset's first
one: a fleet sending whole readings holds one ring of values per asset, not two.
"""

from __future__ import annotations

import functools
import math
import operator
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from daemon.codec import Reading
from daemon.settings import WindowSettings

TopicPartitionId = tuple[str, int]
_NO_OFFSET = np.iinfo(np.int64).max
_NOTHING_HELD: Mapping[TopicPartitionId, int] = MappingProxyType({})


@functools.lru_cache(maxsize=4096)
def partition_id(topic: str, partition: int) -> TopicPartitionId:
    """One tuple per partition, shared by every asset that names it (a message's own tuple,
    kept per asset, costs each asset its bytes)."""
    return (topic, partition)


def window_phase(asset: str, hop: int) -> int:
    """The asset's offset of window ends on the grid: stable across processes and restarts."""
    return zlib.crc32(asset.encode("utf-8")) % hop


def is_window_end(slot: int, phase: int, hop: int) -> bool:
    return (slot + phase) % hop == hop - 1


@dataclass(frozen=True, slots=True)
class WindowGeometry:
    """What a profile asks of its windows."""

    channels: tuple[str, ...]
    period_ns: int
    window: int
    hop: int

    @staticmethod
    def of(channels: Iterable[str], period_s: float, window: int, hop: int) -> WindowGeometry:
        period_ns = round(period_s * 1e9)
        if period_ns <= 0 or window < 1 or hop < 1:
            raise ValueError(
                f"bad window geometry: period_s={period_s}, window={window}, hop={hop}"
            )
        return WindowGeometry(tuple(channels), period_ns, window, hop)


@functools.lru_cache(maxsize=64)
def _channel_index(channels: tuple[str, ...]) -> dict[str, int]:
    """Column of each channel: one dict per geometry, shared by its assets (never mutated)."""
    return {name: i for i, name in enumerate(channels)}


@functools.lru_cache(maxsize=64)
def _row_of(channels: tuple[str, ...]) -> Callable[[Mapping[str, float]], Any]:
    """A whole reading's values in column order (one C call; a scalar for one channel, which
    a row assignment broadcasts alike): shared per geometry."""
    return operator.itemgetter(*channels)


@functools.lru_cache(maxsize=64)
def _window_rows(cap: int, window: int) -> tuple[np.ndarray, ...]:
    """Per ring row r, the rows of the window ending at r, oldest first: shared, read-only."""
    rows = []
    for end in range(cap):
        index = np.arange(end - window + 1, end + 1) % cap
        index.flags.writeable = False
        rows.append(index)
    return tuple(rows)


@functools.lru_cache(maxsize=64)
def _no_fill(n_channels: int) -> np.ndarray:
    """The fill count of assets filling no channel: shared, read-only (a fill replaces it)."""
    zeros = np.zeros(n_channels, np.int64)
    zeros.flags.writeable = False
    return zeros


@dataclass(slots=True)
class ReadyWindow:
    asset: str
    end_ns: int  # grid time of the window's last slot
    values: np.ndarray  # float32 [W, C], NaN = missing
    gap: bool  # first window after a gap reset
    offsets: dict[TopicPartitionId, int]  # smallest offset per partition among its readings
    completed_ms: int = 0  # timestamp of the message that completed it (the run loop sets it)
    late: int = 0  # the asset's readings dropped as too late since its previous window


@dataclass(slots=True)
class WindowCounters:
    late_dropped: int = 0
    gap_resets: int = 0
    evicted: int = 0


class AssetWindow:
    """One asset's recent slots: raw readings, forward-filled final values, offsets per slot."""

    __slots__ = (
        "_cap",
        "_complete",
        "_fill_count",
        "_filled",
        "_filling",
        "_final",
        "_gap_hold",
        "_gap_pending",
        "_head",
        "_index",
        "_last_end",
        "_late",
        "_lateness",
        "_max_fill",
        "_per_tp",
        "_phase",
        "_raw",
        "_reported",
        "_row",
        "_run_start",
        "_tps",
        "asset",
        "geometry",
        "last_seen",
        "unreported",
    )

    def __init__(
        self,
        asset: str,
        geometry: WindowGeometry,
        max_fill: int,
        lateness_slots: int,
        resume_after_ns: int | None = None,
    ) -> None:
        self.asset = asset
        self.geometry = geometry
        self.last_seen = 0.0  # when its store last placed a reading (the store's clock)
        self._max_fill = max_fill
        self._lateness = lateness_slots
        c = len(geometry.channels)
        self._index = _channel_index(geometry.channels)
        self._phase = window_phase(asset, geometry.hop)
        self._cap = geometry.window + lateness_slots + max_fill + 2
        self._raw = np.full((self._cap, c), np.nan, np.float32)
        self._row = _row_of(geometry.channels)
        # final values of the rows finalized without every channel (forward-filled); a row
        # with every channel is final as it is in `_raw`. None until the asset has such a row:
        # a fleet sending whole readings never allocates it.
        self._filled: np.ndarray | None = None
        # the partitions its readings came from (also those of readings dropped as too late),
        # and per partition the smallest offset per slot
        self._tps: tuple[TopicPartitionId, ...] = ()
        self._per_tp: tuple[np.ndarray, ...] = ()
        # slots forward-filled in a row, per channel (`_no_fill`, shared, while none is)
        self._fill_count = _no_fill(c)
        self._filling = False  # some channel is being forward-filled (a count above zero)
        self._complete = bytearray(self._cap)  # 1: row written with every channel
        self._head: int | None = None  # newest slot with a reading
        self._run_start = 0  # first slot of the current run (since start or last reset)
        self._final = 0  # slots < _final are final
        self._gap_pending = False
        self._gap_hold: Mapping[TopicPartitionId, int] = _NOTHING_HELD
        self._late = 0  # readings dropped as too late since the last window handed out
        # windows ending at or before this slot were written before a restart
        self._last_end = (
            resume_after_ns // geometry.period_ns if resume_after_ns is not None else -1
        )
        # the hold last reported (`report_hold`), per partition of `_tps` (_NO_OFFSET: none
        # named); `unreported`: the hold may now need a reading it does not cover (a partition
        # it lacks, or an offset below its own)
        self._reported: tuple[int, ...] = ()
        self.unreported = True

    @property
    def partitions(self) -> tuple[TopicPartitionId, ...]:
        """The partitions any of its readings came from."""
        return self._tps

    @property
    def last_end_ns(self) -> int | None:
        return self._last_end * self.geometry.period_ns if self._last_end >= 0 else None

    def add(
        self, reading: Reading, tp: TopicPartitionId, offset: int, counters: WindowCounters
    ) -> list[ReadyWindow]:
        slot = reading.ts_ns // self.geometry.period_ns
        values = reading.values
        if (
            slot - 1 == self._head
            and len(values) == len(self._index)
            and len(self._tps) == 1
            and self._tps[0] == tp
        ):
            return self._add_next(slot, values, offset)
        return self._add_any(slot, values, tp, offset, counters)

    def _add_any(
        self,
        slot: int,
        values: Mapping[str, float],
        tp: TopicPartitionId,
        offset: int,
        counters: WindowCounters,
    ) -> list[ReadyWindow]:
        """`add` of any reading: late, partial, after a gap, from another partition."""
        try:
            i = self._tps.index(tp)
        except ValueError:
            i = self._add_partition(tp)
        whole = len(values) == len(self._index)
        row = slot % self._cap
        next_slot = False  # the slot after the newest, read whole: the common case
        ready: list[ReadyWindow] = []
        if self._head is None:
            self._start_run(slot)
        elif slot > self._head:
            if slot - self._head - 1 > self._max_fill:
                ready = self._finalize_until(self._head + 1)
                self._gap_hold = self._slot_offsets(self._head)
                self._start_run(slot)
                self._gap_pending = True
                counters.gap_resets += 1
            else:
                if whole and slot == self._head + 1:
                    next_slot = True  # `_clear(slot, raw=False)`, its offsets set below
                else:
                    for s in range(self._head + 1, slot + 1):
                        self._clear(s, raw=s != slot or not whole)
                self._head = slot
                ready = self._finalize_until(slot - self._lateness)
        elif slot < self._final or slot < self._run_start:
            counters.late_dropped += 1
            self._late += 1
            return []
        if whole:  # every channel: one row write instead of C
            self._raw[row] = self._row(values)
            self._complete[row] = 1
        else:
            for name, value in values.items():
                self._raw[row, self._index[name]] = value
            self._complete[row] = 0  # `_finalize_until` looks at which are missing
        if next_slot:
            for j, per_slot in enumerate(self._per_tp):
                per_slot[row] = offset if j == i else _NO_OFFSET
        else:
            per_slot = self._per_tp[i]
            if offset < per_slot[row]:
                per_slot[row] = offset
        if not self.unreported:
            # Offsets grow within a partition and a next window's first slot only moves
            # later, so the readings a report named stay the oldest the window needs: a new
            # one at or above the reported offset of its partition is covered by it.
            reported = self._reported
            if i >= len(reported) or offset < reported[i]:
                self.unreported = True
        return ready

    def _add_next(self, slot: int, values: Mapping[str, float], offset: int) -> list[ReadyWindow]:
        """`add` of what nearly every reading is: every channel, in the slot after the newest,
        from the one partition the asset's readings came from. The steps `_add_any` takes for
        it, with `_finalize_until`'s common case (one whole slot made final, nothing being
        forward-filled) inline: about 1.3 us less a reading (RESULTS, issue 15 session 14)."""
        self._head = slot
        cap, final = self._cap, self._final
        stop = slot - self._lateness
        if stop == final + 1 and not self._filling and self._complete[final % cap]:
            self._final = stop
            g = self.geometry
            if (
                (final + self._phase) % g.hop == g.hop - 1
                and final - g.window + 1 >= self._run_start
                and final > self._last_end
            ):
                ready = [self._window_ending(final)]
            else:
                ready = []
        else:
            ready = self._finalize_until(stop)
        row = slot % cap
        self._raw[row] = self._row(values)
        self._complete[row] = 1
        self._per_tp[0][row] = offset
        if not self.unreported:  # as in `_add_any`
            reported = self._reported
            if not reported or offset < reported[0]:
                self.unreported = True
        return ready

    def _add_partition(self, tp: TopicPartitionId) -> int:
        self._tps += (partition_id(*tp),)
        self._per_tp += (np.full(self._cap, _NO_OFFSET, np.int64),)
        return len(self._tps) - 1

    def report_hold(self) -> dict[TopicPartitionId, int]:
        """`hold()`, remembered as the one durable state names (until `unreported` says a
        newer reading needs more)."""
        held = self.hold()
        self._reported = tuple(held.get(tp, _NO_OFFSET) for tp in self._tps)
        self.unreported = False
        return held

    def hold(self) -> dict[TopicPartitionId, int]:
        """Smallest offset per partition that a restart must re-read to rebuild the next window
        (and the gap before it, if one is pending)."""
        if self._head is None:
            return {}
        g = self.geometry
        next_end = self._last_end + g.hop if self._last_end >= 0 else self._final
        next_end = max(next_end, self._final)
        next_end += (g.hop - 1 - (next_end + self._phase) % g.hop) % g.hop
        first = max(next_end - g.window + 1, self._run_start)
        # forward fill into `first` may come from up to max_fill slots before it
        lo = max(first - self._max_fill, self._run_start)
        hi = min(first, self._head)
        start = first
        if lo <= hi and self._complete[hi % self._cap]:
            start = hi  # every channel observed at `hi`: nothing older is needed
        elif lo <= hi:
            rows = [s % self._cap for s in range(lo, hi + 1)]
            observed = ~np.isnan(self._raw[rows])  # [k, C]
            has = observed.any(axis=0)
            if has.any():
                last = len(rows) - 1 - np.argmax(observed[::-1], axis=0)
                start = lo + int(last[has].min())
        held = self._offsets_from(start)
        for tp, off in self._gap_hold.items():
            held[tp] = min(held.get(tp, off), off)
        return held

    def _offsets_from(self, start: int) -> dict[TopicPartitionId, int]:
        assert self._head is not None
        if start > self._head:
            return {}
        a, b = start % self._cap, self._head % self._cap
        held = {}
        for tp, per_slot in zip(self._tps, self._per_tp, strict=True):
            # the ring slots start..head as one or two slices
            low = int(
                per_slot[a : b + 1].min()
                if a <= b
                else min(per_slot[a:].min(), per_slot[: b + 1].min())
            )
            if low != _NO_OFFSET:
                held[tp] = low
        return held

    def _slot_offsets(self, slot: int) -> dict[TopicPartitionId, int]:
        row = slot % self._cap
        return {
            tp: int(per_slot[row])
            for tp, per_slot in zip(self._tps, self._per_tp, strict=True)
            if per_slot[row] != _NO_OFFSET
        }

    def _start_run(self, slot: int) -> None:
        self._raw[:] = np.nan
        for per_slot in self._per_tp:
            per_slot[:] = _NO_OFFSET
        self._fill_count = _no_fill(len(self._index))
        self._filling = False
        self._complete = bytearray(self._cap)
        self._head = slot
        self._run_start = slot
        self._final = slot

    def _clear(self, slot: int, raw: bool = True) -> None:
        """Empty a slot for new readings (`raw=False`: a whole row is about to be written).
        Its filled row needs no clearing: `_finalize_until` writes it before anything reads it
        (and a row written with every channel reads `_raw`)."""
        row = slot % self._cap
        if raw:
            self._raw[row] = np.nan
            self._complete[row] = 0
        for per_slot in self._per_tp:
            per_slot[row] = _NO_OFFSET

    def _finalize_until(self, stop: int) -> list[ReadyWindow]:
        """Make slots [_final, stop) final and return the windows that end among them."""
        ready: list[ReadyWindow] = []
        g = self.geometry
        cap, complete = self._cap, self._complete
        for s in range(self._final, stop):
            row = s % cap
            if complete[row]:  # the common case: final as it is, nothing to fill
                if self._filling:
                    self._fill_count = _no_fill(len(self._index))
                    self._filling = False
            else:
                self._fill_row(s, row)
            if (
                is_window_end(s, self._phase, g.hop)
                and s - g.window + 1 >= self._run_start
                and s > self._last_end
            ):
                ready.append(self._window_ending(s))
        self._final = max(self._final, stop)
        return ready

    def _fill_row(self, s: int, row: int) -> None:
        """The final values of a slot some channel was not read in: forward-filled from the
        slot before for at most `max_fill` slots in a row, NaN beyond."""
        filled = self._filled
        if filled is None:
            filled = self._filled = np.full_like(self._raw, np.nan)
        raw = self._raw[row]
        observed = ~np.isnan(raw)
        if s == self._run_start:
            filled[row] = raw
            counts = np.where(observed, 0, self._fill_count)
        else:
            before = (s - 1) % self._cap
            prev = self._raw[before] if self._complete[before] else filled[before]
            fill = ~observed & (self._fill_count < self._max_fill)
            filled[row] = np.where(observed, raw, np.where(fill, prev, np.nan))
            counts = np.where(observed, 0, self._fill_count + 1)
        self._filling = bool(counts.any())
        self._fill_count = counts if self._filling else _no_fill(len(raw))

    def _window_ending(self, end: int) -> ReadyWindow:
        g = self.geometry
        cap = self._cap
        rows = _window_rows(cap, g.window)[end % cap]
        offsets = {}
        for tp, per_slot in zip(self._tps, self._per_tp, strict=True):
            low = int(np.minimum.reduce(per_slot.take(rows)))
            if low != _NO_OFFSET:
                offsets[tp] = low
        gap, late = self._gap_pending, self._late
        self._gap_pending = False
        self._gap_hold = _NOTHING_HELD
        self._late = 0
        self._last_end = end
        values = self._raw.take(rows, axis=0)
        if self._filled is not None:  # a row some channel was not read in is final there
            whole = np.frombuffer(self._complete, np.uint8).take(rows).astype(bool)
            if not whole.all():
                values[~whole] = self._filled[rows[~whole]]
        return ReadyWindow(self.asset, end * g.period_ns, values, gap, offsets, late=late)


class WindowStore:
    """All assets' windows; bounded by idle eviction."""

    def __init__(
        self, settings: WindowSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._s = settings
        self._clock = clock
        self._assets: dict[str, AssetWindow] = {}
        self.counters = WindowCounters()
        self._resume: dict[str, int] = {}
        self._unreported: set[str] = set()  # see `take_unreported`

    def __len__(self) -> int:
        return len(self._assets)

    def resume_after(self, last_end_ns: dict[str, int]) -> None:
        """Windows ending at or before these times (per asset) were written before a restart."""
        self._resume.update(last_end_ns)

    def add(
        self, reading: Reading, geometry: WindowGeometry, tp: TopicPartitionId, offset: int
    ) -> list[ReadyWindow]:
        window = self._assets.get(reading.asset)
        if window is None or (window.geometry is not geometry and window.geometry != geometry):
            lateness = math.ceil(self._s.max_lateness_s * 1e9 / geometry.period_ns)
            resume = self._resume.get(reading.asset)
            if window is not None:
                resume = window.last_end_ns
            window = AssetWindow(reading.asset, geometry, self._s.max_fill, lateness, resume)
            self._assets[reading.asset] = window
        window.last_seen = self._clock()
        ready = window.add(reading, tp, offset, self.counters)
        if window.unreported:
            self._unreported.add(reading.asset)
        return ready

    def take_unreported(self) -> set[str]:
        """Assets whose next window may need readings that the offsets last reported by
        `progress()` do not cover (then none is, until new readings say so): their durable
        state must be written again before offsets past those readings are committed."""
        assets, self._unreported = self._unreported, set()
        return assets

    def hold(self) -> dict[TopicPartitionId, int]:
        """Smallest offset per partition of every asset's next window: a pass over all of
        them (commits use it only when the changelog does not carry the windows)."""
        held: dict[TopicPartitionId, int] = {}
        for window in self._assets.values():
            for tp, off in window.hold().items():
                held[tp] = min(held.get(tp, off), off)
        return held

    def last_ends(self) -> dict[str, int]:
        """Per asset, the end time of the last window handed out (for a restart to skip)."""
        ends = dict(self._resume)
        for asset, window in self._assets.items():
            end = window.last_end_ns
            if end is not None:
                ends[asset] = end
        return ends

    def progress(self, asset: str) -> tuple[int | None, dict[TopicPartitionId, int]]:
        """The asset's last window end handed out (None: none yet) and the offsets its next
        window spans (smallest per partition: where a restore seeks back to rebuild it)."""
        window = self._assets.get(asset)
        self._unreported.discard(asset)
        if window is None:
            return self._resume.get(asset), {}
        end = window.last_end_ns
        return (end if end is not None else self._resume.get(asset)), window.report_hold()

    def restore_progress(self, asset: str, last_end_ns: int | None) -> None:
        """The asset's windows ending at or before `last_end_ns` were written by a previous
        owner: its window is rebuilt from the readings after them (any window here goes)."""
        self._assets.pop(asset, None)
        self._unreported.discard(asset)
        if last_end_ns is None:
            self._resume.pop(asset, None)
        else:
            self._resume[asset] = last_end_ns

    def drop_partitions(self, partitions: set[TopicPartitionId]) -> list[str]:
        dropped = [a for a, w in self._assets.items() if not partitions.isdisjoint(w.partitions)]
        for asset in dropped:
            self._resume.pop(asset, None)
            self._unreported.discard(asset)
            del self._assets[asset]
        return dropped

    def drop_asset(self, asset: str) -> None:
        self._assets.pop(asset, None)
        self._unreported.discard(asset)

    def evict_idle(self) -> list[str]:
        cutoff = self._clock() - self._s.idle_eviction_s
        idle = [a for a, w in self._assets.items() if w.last_seen < cutoff]
        for asset in idle:
            self._unreported.discard(asset)  # the caller writes their state: no window now
            window = self._assets.pop(asset)
            if window.last_end_ns is not None:
                self._resume[asset] = window.last_end_ns
        self.counters.evicted += len(idle)
        return idle
