import numpy as np
import pytest
import torch

from daemon.device_history import DeviceFeed, DeviceHistory


def expected_window(rows: list[np.ndarray], window: int, channels: int) -> np.ndarray:
    out = np.full((window, channels), np.nan, np.float32)
    tail = np.array(rows[-window:], np.float32).reshape(-1, channels)
    if len(tail):
        out[window - len(tail) :] = tail
    return out


def test_gather_returns_the_last_rows_of_each_asset_oldest_first() -> None:
    rng = np.random.default_rng(0)
    window, channels = 5, 3
    history = DeviceHistory(channels, window, "cpu", capacity=2)  # grows past 2 assets
    seen: dict[str, list[np.ndarray]] = {}
    for _ in range(60):
        k = int(rng.integers(0, 14))  # often more rows for one asset than the window holds
        assets = [f"pump-{int(i)}" for i in rng.integers(0, 4, k)]
        rows = rng.normal(size=(k, channels)).astype(np.float32)
        history.append(np.array([history.slot(a) for a in assets], np.int64), rows)
        for a, r in zip(assets, rows, strict=True):
            seen.setdefault(a, []).append(r)
        names = sorted(seen)
        got = history.gather(np.array([history.slot(a) for a in names])).numpy()
        for i, a in enumerate(names):
            np.testing.assert_allclose(got[i], expected_window(seen[a], window, channels))


def test_reset_and_release_forget_an_asset() -> None:
    history = DeviceHistory(2, 3, "cpu")
    slot = history.slot("a")
    history.append(np.array([slot, slot]), np.ones((2, 2), np.float32))
    history.reset(slot)
    assert torch.isnan(history.gather(np.array([slot]))).all()
    history.release("a")
    assert len(history) == 0
    assert history.slot("b") == slot  # the ring is reused


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_history_matches_cpu() -> None:
    rng = np.random.default_rng(1)
    cpu, gpu = DeviceHistory(4, 8, "cpu"), DeviceHistory(4, 8, "cuda")
    for _ in range(20):
        slots = rng.integers(0, 10, 30)
        rows = rng.normal(size=(30, 4)).astype(np.float32)
        for h in (cpu, gpu):
            h.append(np.array([h.slot(str(s)) for s in slots]), rows)
    names = np.array([cpu.slot(str(s)) for s in range(10)])
    torch.testing.assert_close(gpu.gather(names).cpu(), cpu.gather(names), equal_nan=True)


class Win:
    def __init__(self, asset: str, end_ns: int, values: np.ndarray, gap: bool = False) -> None:
        self.asset, self.end_ns, self.values, self.gap = asset, end_ns, values, gap


def test_feed_sends_only_new_rows_and_returns_each_window() -> None:
    rng = np.random.default_rng(2)
    window, hop, channels = 6, 2, 3
    series = {a: rng.normal(size=(200, channels)).astype(np.float32) for a in ("p1", "p2")}
    feed = DeviceFeed(channels, window, period_ns=1, device="cpu", depth=window + 4)
    batches: list[list[Win]] = [[]]
    for end in range(window - 1, 200, hop):
        for a, values in series.items():
            gap = end == 101  # a gap reset: the whole window is sent again
            batches[-1].append(Win(a, end, values[end - window + 1 : end + 1], gap))
        if len(batches[-1]) >= 14:  # several windows of one asset in a batch forces flushes
            batches.append([])
    assert feed.windows([]).shape == (0, window, channels)
    for batch in [b for b in batches if b]:
        got = feed.windows(batch).numpy()
        np.testing.assert_array_equal(got, np.stack([w.values for w in batch]))
    n_windows = sum(len(b) for b in batches)
    assert feed.rows_sent < n_windows * window / 2  # mostly `hop` rows per window, not `window`
