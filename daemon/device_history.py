"""Per-asset sample history kept on the scoring device.

On CUDA, copying whole windows from pageable host memory costs more than the forward pass, so
the engine keeps each asset's last `window` grid rows in a ring on the device: only the new rows
cross the bus (staged in pinned memory), and windows are gathered on the device by index.
The same class runs on CPU, where it is simply a second copy of the history.
"""

from __future__ import annotations

import numpy as np
import torch

from seqae.score import Scorer


class DeviceHistory:
    def __init__(
        self,
        n_channels: int,
        window: int,
        device: torch.device | str,
        *,
        capacity: int = 256,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.window = window
        self.n_channels = n_channels
        self.device = torch.device(device)
        self.dtype = dtype
        self._buf = torch.full(
            (capacity, window, n_channels), float("nan"), device=self.device, dtype=dtype
        )
        self._pos = np.zeros(capacity, np.int64)  # next write position of each slot's ring
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
        extra = torch.full_like(self._buf, float("nan"))
        self._buf = torch.cat([self._buf, extra])
        self._pos = np.concatenate([self._pos, np.zeros(old, np.int64)])
        self._free.extend(range(2 * old - 1, old - 1, -1))

    def reset(self, index: int) -> None:
        """Forget a ring's rows (a gap longer than max fill)."""
        self._buf[index] = float("nan")
        self._pos[index] = 0

    def release(self, asset: str) -> None:
        index = self._slots.pop(asset, None)
        if index is not None:
            self._free.append(index)

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
        position[order] = (self._pos[sorted_slots] + rank) % self.window
        # Rows a later row of the same append overwrites are dropped: duplicate indices in one
        # device scatter have no defined winner.
        keep = np.empty(k, bool)
        keep[order] = rank >= np.repeat(counts, counts) - self.window
        unique = sorted_slots[starts]
        self._pos[unique] = (self._pos[unique] + counts) % self.window
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

    def gather(self, slots: np.ndarray) -> torch.Tensor:
        """The last `window` rows of each named ring, oldest first: [N, W, C] on the device."""
        slots_t = torch.from_numpy(np.asarray(slots, np.int64)).to(self.device, non_blocking=True)
        start = torch.from_numpy(self._pos[np.asarray(slots, np.int64)]).to(
            self.device, non_blocking=True
        )
        idx = (start[:, None] + self._ramp) % self.window
        return self._buf[slots_t[:, None], idx]


def device_features(
    scorer: Scorer,
    history: DeviceHistory,
    slots: np.ndarray,
    center: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Error features [N, F] of the windows in `slots`, gathered, scaled and scored on the
    device; `center` and `scale` [N, C] are each window's baseline scaler, already there."""
    raw = history.gather(slots).float()
    scaled = (raw - center[:, None, :]) / scale[:, None, :]
    mask = ~torch.isnan(scaled)
    x = torch.where(mask, scaled, torch.zeros((), device=scaled.device)).to(scorer.dtype)
    return scorer.features_scaled(x, mask)
