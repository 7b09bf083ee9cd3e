"""What slows the scoring thread's forward when the run loop is busy (issue 15, item 3).

The product's LSTM autoencoder (window 50, 8 channels, hidden 32, code 8; one torch thread) is
timed on chunks of 256 windows, alone and, alternating in the same invocation, beside:
- a busy Python thread in this process (it holds the GIL between the forward's torch calls),
  eager and traced, at the default switch interval (5 ms) and at the daemon's 0.1 ms;
- a busy second process (no GIL shared: only the cores, caches and memory).
Prints µs a window (median of the rounds) and each ratio against the forward alone.

    python benchmarks/bench_contention.py
    python benchmarks/bench_contention.py --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable

import torch
from bench_scoring import plain_path

from seqae.model import ModelConfig, SequenceAutoencoder

CHUNK = 256


def forward_us(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> float:
    """µs a window of `x`, in chunks as bench_scoring's plain forward."""
    started = time.perf_counter()
    plain_path(model, x, mask, CHUNK)
    return (time.perf_counter() - started) / len(x) * 1e6


class BusyThread:
    """A Python loop in this process, for as long as the `with` lasts."""

    def __enter__(self) -> BusyThread:
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        return self

    def _spin(self) -> None:
        seen: dict[int, int] = {}
        n = 0
        while not self._stop:
            n += 1
            seen[n % 64] = n

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()


class BusyProcess:
    """A Python loop in another process: the other core is as busy, the GIL is not shared."""

    def __enter__(self) -> BusyProcess:
        self._proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.kill()
        self._proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SequenceAutoencoder(
        ModelConfig(n_channels=8, window=50, hidden_size=32, latent_size=8)
    ).eval()
    x = torch.randn(8 * CHUNK, 50, 8)
    mask = torch.rand(8 * CHUNK, 50, 8) > 0.01
    x = x.masked_fill(~mask, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
        traced = torch.jit.trace(model, (x[:CHUNK], mask[:CHUNK]), check_trace=False)
    default_interval = sys.getswitchinterval()

    def beside(
        busy: type[BusyThread] | type[BusyProcess], fn: torch.nn.Module, interval: float
    ) -> Callable[[], float]:
        def run() -> float:
            sys.setswitchinterval(interval)
            try:
                with busy():
                    return forward_us(fn, x, mask)
            finally:
                sys.setswitchinterval(default_interval)

        return run

    cases: dict[str, Callable[[], float]] = {
        "alone, eager": lambda: forward_us(model, x, mask),
        "alone, traced": lambda: forward_us(traced, x, mask),
        "busy thread, eager, 5 ms": beside(BusyThread, model, default_interval),
        "busy thread, eager, 0.1 ms": beside(BusyThread, model, 1e-4),
        "busy thread, traced, 5 ms": beside(BusyThread, traced, default_interval),
        "busy thread, traced, 0.1 ms": beside(BusyThread, traced, 1e-4),
        "busy process, traced": beside(BusyProcess, traced, default_interval),
    }
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            times[name].append(fn())
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"torch {torch.__version__}, 1 thread, median of {args.rounds} rounds, chunk {CHUNK}")
    for name, us in med.items():
        alone = med["alone, traced" if "traced" in name else "alone, eager"]
        print(f"{name:30s} {us:7.1f} us/window   x{us / alone:5.2f} of alone")


if __name__ == "__main__":
    main()
