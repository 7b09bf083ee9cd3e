"""Per-asset sample history kept on the scoring device.

On CUDA, copying whole windows from pageable host memory costs more than the forward pass, so
the engine keeps each asset's recent grid rows in a ring on the device: only rows that are new
since the asset's previous window cross the bus (staged in pinned memory), and windows are
gathered on the device by index. The same classes run on CPU, where they are simply a second
copy of the history (the tests use that).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch


class DeviceHistory:
    """Rings of `depth` rows per asset; row counters are absolute, so a window is named by
    (slot, rows written when its last row was written)."""

    def __init__(
        self,
        n_channels: int,
        window: int,
        device: torch.device | str,
        *,
        capacity: int = 256,
        depth: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.window = window
        self.depth = depth or window
        if self.depth < window:
            raise ValueError(f"depth {self.depth} is shorter than the window {window}")
        self.n_channels = n_channels
        self.device = torch.device(device)
        self.dtype = dtype
        shape = (capacity, self.depth, n_channels)
        self._buf = torch.full(shape, float("nan"), device=self.device, dtype=dtype)
        self._count = np.zeros(capacity, np.int64)  # rows ever written to each ring
        self._slots: dict[str, int] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self._pinned = self.device.type == "cuda"
        self._staging = self._new_staging(1024)
        self._ramp = torch.arange(window, device=self.device)

    def _new_staging(self, rows: int) -> torch.Tensor:
        return torch.empty((rows, self.n_channels), dtype=torch.float32, pin_memory=self._pinned)

    def __len__(self) -> int:
        return len(self._slots)

    def slot(self, asset: str) -> int:
        """The asset's ring, allocated (empty) on first use."""
        found = self._slots.get(asset)
        if found is not None:
            return found
        if not self._free:
            self._grow()
        index = self._free.pop()
        self._slots[asset] = index
        self.reset(index)
        return index

    def _grow(self) -> None:
        old = self._buf.shape[0]
        self._buf = torch.cat([self._buf, torch.full_like(self._buf, float("nan"))])
        self._count = np.concatenate([self._count, np.zeros(old, np.int64)])
        self._free.extend(range(2 * old - 1, old - 1, -1))

    def reset(self, index: int) -> None:
        """Forget a ring's rows (a gap longer than max fill)."""
        self._buf[index] = float("nan")
        self._count[index] = 0

    def release(self, asset: str) -> None:
        index = self._slots.pop(asset, None)
        if index is not None:
            self._free.append(index)

    def counts(self, slots: np.ndarray) -> np.ndarray:
        return self._count[np.asarray(slots, np.int64)].copy()

    def append(self, slots: np.ndarray, rows: np.ndarray) -> None:
        """Write rows [K, C] in arrival order; `slots` [K] names each row's ring."""
        k = len(slots)
        if k == 0:
            return
        slots = np.asarray(slots, np.int64)
        order = np.argsort(slots, kind="stable")
        sorted_slots = slots[order]
        starts = np.flatnonzero(np.r_[True, sorted_slots[1:] != sorted_slots[:-1]])
        counts = np.diff(np.r_[starts, k])
        rank = np.arange(k) - np.repeat(starts, counts)
        position = np.empty(k, np.int64)
        position[order] = (self._count[sorted_slots] + rank) % self.depth
        # Rows a later row of the same append overwrites are dropped: duplicate indices in one
        # device scatter have no defined winner.
        keep = np.empty(k, bool)
        keep[order] = rank >= np.repeat(counts, counts) - self.depth
        self._count[sorted_slots[starts]] += counts
        if not keep.all():
            slots, rows, position = slots[keep], rows[keep], position[keep]
            k = len(slots)
        if k > len(self._staging):
            self._staging = self._new_staging(max(k, 2 * len(self._staging)))
        staged = self._staging[:k]
        staged.numpy()[:] = rows
        values = staged.to(self.device, non_blocking=True).to(self.dtype)
        index_slots = torch.from_numpy(slots).to(self.device, non_blocking=True)
        index_pos = torch.from_numpy(position).to(self.device, non_blocking=True)
        self._buf[index_slots, index_pos] = values

    def gather(self, slots: np.ndarray, ends: np.ndarray | None = None) -> torch.Tensor:
        """Windows [N, W, C] on the device, oldest row first: for each slot, the `window` rows
        up to row count `ends` (default: the newest rows)."""
        slots = np.asarray(slots, np.int64)
        ends = self._count[slots] if ends is None else np.asarray(ends, np.int64)
        if (ends < self._count[slots] - self.depth + self.window).any():
            raise ValueError("a window's rows were already overwritten; gather earlier or deepen")
        slots_t = torch.from_numpy(slots).to(self.device, non_blocking=True)
        start = torch.from_numpy((ends - self.window) % self.depth).to(
            self.device, non_blocking=True
        )
        idx = (start[:, None] + self._ramp) % self.depth
        return self._buf[slots_t[:, None], idx]


class WindowLike(Protocol):
    asset: str
    end_ns: int
    values: np.ndarray  # [W, C] raw, NaN = missing
    gap: bool


class DeviceFeed:
    """Turns the engine's ready windows into device tensors, sending only new rows."""

    def __init__(
        self,
        n_channels: int,
        window: int,
        period_ns: int,
        device: torch.device | str,
        *,
        depth: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.history = DeviceHistory(
            n_channels, window, device, depth=depth or 4 * window, dtype=dtype
        )
        self.window = window
        self.period_ns = period_ns
        self._last_end: dict[str, int] = {}
        self.rows_sent = 0

    def release(self, asset: str) -> None:
        self.history.release(asset)
        self._last_end.pop(asset, None)

    def windows(self, batch: Sequence[WindowLike]) -> torch.Tensor:
        """The batch's windows [N, W, C] on the device, in batch order."""
        h = self.history
        if not batch:
            return torch.empty((0, self.window, h.n_channels), device=h.device, dtype=h.dtype)
        parts: list[torch.Tensor] = []
        pending_slots: list[int] = []
        pending_ends: list[int] = []
        row_slots: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        written: dict[int, int] = {}  # rows each slot will have once the pending rows land
        oldest: dict[int, int] = {}  # the earliest pending window end per slot

        def flush() -> None:
            if rows:
                h.append(np.concatenate(row_slots), np.concatenate(rows))
                rows.clear()
                row_slots.clear()
            if pending_slots:
                parts.append(h.gather(np.array(pending_slots), np.array(pending_ends)))
                pending_slots.clear()
                pending_ends.clear()
            written.clear()
            oldest.clear()

        for w in batch:
            slot = h.slot(w.asset)
            last = self._last_end.get(w.asset)
            steps = (w.end_ns - last) // self.period_ns if last is not None else 0
            if w.gap or last is None or not 0 < steps <= self.window:
                flush()
                h.reset(slot)
                new = w.values
            else:
                new = w.values[-steps:]
            count = written.get(slot, int(h.counts(np.array([slot]))[0]))
            if slot in oldest and count + len(new) - oldest[slot] > h.depth - self.window:
                flush()  # the ring would overwrite a pending window's rows
                count = int(h.counts(np.array([slot]))[0])
            rows.append(new)
            row_slots.append(np.full(len(new), slot, np.int64))
            written[slot] = count + len(new)
            oldest.setdefault(slot, count + len(new))
            pending_slots.append(slot)
            pending_ends.append(count + len(new))
            self._last_end[w.asset] = w.end_ns
            self.rows_sent += len(new)
        flush()
        return parts[0] if len(parts) == 1 else torch.cat(parts)
