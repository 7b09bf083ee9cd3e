"""`AssetWindow.add`, the windowing of one reading, in ns a reading: this checkout against
another (`--before ROOT`), both loaded into one process and run in turn, so the machine's load
hits both alike. A fleet of `--assets` assets sends whole readings of 8 channels in order, one
partition (the run loop's common case); every `--hop`-th reading of an asset completes a window.

    python benchmarks/bench_windows.py --before /tmp/before        # a git worktree of the base
    python benchmarks/bench_windows.py --assets 10000 --rounds 5
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from daemon.codec import Reading  # noqa: E402

CHANNELS = tuple(f"ch{i}" for i in range(8))
START_NS = 1_795_723_200_000 * 1_000_000
PERIOD_S = 0.1


def load_windows(root: Path, name: str) -> ModuleType:
    """`daemon/windows.py` of a checkout as a module of its own name."""
    spec = importlib.util.spec_from_file_location(name, root / "daemon" / "windows.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def one_pass(windows: ModuleType, assets: int, readings: int, hop: int) -> tuple[float, int]:
    """ns per `add` over `readings` readings per asset after a full ring, and windows made."""
    geometry = windows.WindowGeometry.of(CHANNELS, PERIOD_S, 50, hop)
    counters = windows.WindowCounters()
    lateness = 20  # slots: the default max_lateness_s of 2 s at 10 Hz
    rings = [windows.AssetWindow(f"asset-{a}", geometry, 3, lateness) for a in range(assets)]
    tp = ("sensors", 0)
    period_ns = geometry.period_ns
    fill = 50 + lateness + 10
    steps = [
        [
            Reading(
                f"asset-{a}",
                START_NS + k * period_ns,
                {c: float(k + a + j) for j, c in enumerate(CHANNELS)},
            )
            for a in range(assets)
        ]
        for k in range(fill + readings)
    ]
    offset = 0
    for k in range(fill):
        for ring, reading in zip(rings, steps[k], strict=True):
            ring.add(reading, tp, offset, counters)
            offset += 1
    gc.collect()
    made = 0
    started = time.perf_counter()
    for k in range(fill, fill + readings):
        for ring, reading in zip(rings, steps[k], strict=True):
            made += len(ring.add(reading, tp, offset, counters))
            offset += 1
    return (time.perf_counter() - started) / (assets * readings) * 1e9, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="root of a checkout to compare against")
    parser.add_argument("--assets", type=int, default=2500)
    parser.add_argument("--readings", type=int, default=40, help="measured readings per asset")
    parser.add_argument("--hop", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    codes = {"after": load_windows(HERE.parent, "windows_after")}
    if args.before:
        codes = {"before": load_windows(args.before, "windows_before")} | codes
    times: dict[str, list[float]] = {code: [] for code in codes}
    for r in range(args.rounds):
        line = []
        for code, module in codes.items():
            ns, made = one_pass(module, args.assets, args.readings, args.hop)
            times[code].append(ns)
            line.append(f"{code} {ns:6.0f} ns ({made} windows)")
        if args.before:
            line.append(f"after/before {times['after'][-1] / times['before'][-1]:.2f}")
        print(f"round {r + 1}: " + "  ".join(line), flush=True)
    medians = {code: statistics.median(t) for code, t in times.items()}
    summary = "  ".join(f"{code} {ns:.0f} ns" for code, ns in medians.items())
    if args.before:
        summary += f"  after/before {medians['after'] / medians['before']:.2f}"
    print(f"median of {args.rounds} rounds, {args.assets} assets: {summary}")


if __name__ == "__main__":
    main()
