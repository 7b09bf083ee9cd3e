"""The streaming core against fleet size: 100 to 100,000 assets at a fixed total message rate.

Each fleet size runs in its own process (resident memory is then the fleet's, not the previous
one's), in three steps:

1. set-up: every asset gets a fitted per-asset baseline restored from one asset's durable state
   (`StreamCore.restore_assets`, as after a rebalance), and one window of readings (`core.add`),
   so each asset holds a full window ring, its baseline, its alert tracker and its caches;
2. measured pass: the same number of messages whatever the fleet size (`--messages`, round robin
   over the assets, each asset's readings one sampling period apart: the fleet shares a fixed
   total message rate), as the run loop handles them: pre-encoded JSON bytes through the
   daemon's `MessageDecoder`, `StreamCore.add`, `score` when a batch is due, and the sink's
   line-protocol `encode` of every point. Kafka and InfluxDB are not measured (bench_ingest.py,
   bench_load.py do);
3. checkpoint passes, as `Daemon._advance_checkpoint` makes them with the windows in the
   changelog (`kafka.seek_back_on_assign`): the engine's hold, warm-up snapshot, changed assets'
   durable states, each encoded as the changelog writes it (the pass over every window that a
   commit makes without it, `WindowStore.hold`, is timed apart). Once after the measured pass, and once more right after with nothing changed (work
   that does not follow the changed assets shows there).

Per-message CPU is the run loop thread's CPU outside scoring per message; per-window CPU is its
CPU in `score` and `encode` per scored window; the scoring thread's CPU (the process's less the
run loop's) per window is given apart. Memory per asset is the resident memory the set-up added,
divided by the assets (so it holds a full window ring, fitted baselines and caches each).
With `--breakdown N` a further process traces allocations (tracemalloc) while N assets are set
up and prints bytes per asset by the line that allocated them.

    python benchmarks/bench_fleet.py                               # 100 ... 100,000
    python benchmarks/bench_fleet.py --sizes 100 1000 --messages 20000
    python benchmarks/bench_fleet.py --breakdown 2000 --sizes
Writes benchmarks/results/fleet.json and fleet.png.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

START_MS = 1_795_723_200_000  # 2026-11-17: inside the decoder's accepted time range
TP = ("sensors", 0)


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def settings_for(models_root: Path, state_dir: Path, warmup: int) -> Any:
    from daemon.settings import DaemonSettings

    return DaemonSettings.model_validate(
        {
            "state_dir": str(state_dir),
            "profiles": {
                "models_root": str(models_root),
                "routes": [{"pattern": "asset-*", "profile": "bench"}],
            },
            "baselines": {"mode": "per_asset", "warmup_windows": warmup},
            "engine": {"device": "cpu", "max_batch": 256, "max_wait_ms": 50},
            # 2 slots of lateness: the set-up fills each ring in window + 3 readings
            "windows": {"idle_eviction_s": 3600, "max_lateness_s": 0.2},
        }
    )


_VALUES: dict[tuple[int, int], list[float]] = {}


def value_of(asset: int, k: int, channels: int) -> list[float]:
    """A smooth periodic reading with one of 16 phases: normal operation."""
    import math

    key = (asset % 16, k)
    if key not in _VALUES:
        _VALUES[key] = [
            10 + 3 * math.sin(2 * math.pi * k / (20 + 25 * c) + key[0] * 0.37)
            for c in range(channels)
        ]
    return _VALUES[key]


def fitted_state(models_root: Path, state_dir: Path, warmup: int) -> dict[str, Any]:
    """One asset's durable state after its warm-up (its own baseline fitted)."""
    from daemon.codec import Reading
    from daemon.core import StreamCore
    from daemon.engine import ProfileRegistry

    core = StreamCore(
        settings_for(models_root, state_dir, warmup),
        ProfileRegistry(models_root, ["bench"], "cpu", "never"),
    )
    geometry = core.profiles.get("bench").geometry
    channels = geometry.channels
    period_ms = geometry.period_ns // 1_000_000
    for k in range(geometry.window + (warmup + 2) * geometry.hop):
        values = dict(zip(channels, value_of(0, k, len(channels)), strict=True))
        core.add(Reading("asset-0", (START_MS + k * period_ms) * 1_000_000, values), TP, k)
        list(core.score(everything=True, wait=True))
    assert core.baselines.fitted == 1, "the template asset did not fit its baseline"
    state = core.asset_state("asset-0")
    core.close()
    return state


def one_size(args: argparse.Namespace, n: int, trace: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    from daemon.changelog import encode_state
    from daemon.codec import MessageDecoder, Reading
    from daemon.core import StreamCore
    from daemon.engine import ProfileRegistry
    from daemon.lineprotocol import encode

    torch.set_num_threads(1)
    models_root = Path(args.models_root)
    template = json.loads(Path(args.template).read_text())
    state_dir = Path(tempfile.mkdtemp(prefix="fleet-state-"))
    settings = settings_for(models_root, state_dir, args.warmup)
    registry = ProfileRegistry(models_root, ["bench"], "cpu", "never")
    core = StreamCore(settings, registry)
    geometry = registry.get("bench").geometry
    channels = geometry.channels
    period_ms = geometry.period_ns // 1_000_000
    decoder = MessageDecoder(settings.input, lambda asset: channels)
    gc.collect()
    rss_before = rss_bytes()
    if trace:
        tracemalloc.start(1)
        traced_before = tracemalloc.take_snapshot()

    # 1. set-up: fitted baselines, then one full window per asset
    states = {}
    for a in range(n):
        # its own baseline; no window progress or alert of the template asset's
        s = {**template, "asset": f"asset-{a}", "last_end_ns": None, "window_offsets": []}
        s["alert"] = None
        states[s["asset"]] = s
    started = time.perf_counter()
    failed = core.restore_assets(states)
    assert not failed, failed[:3]
    restore_s = time.perf_counter() - started
    del states
    offset = 0
    started = time.perf_counter()
    fill = geometry.window + 3  # full and final up to the newest slot but the lateness
    for k in range(fill):
        for a in range(n):
            values = dict(zip(channels, value_of(a, k, len(channels)), strict=True))
            core.add(
                Reading(f"asset-{a}", (START_MS + k * period_ms) * 1_000_000, values), TP, offset
            )
            offset += 1
            if core.due():
                list(core.score())
        list(core.score(everything=True, wait=True))
    step = [fill] * n  # each asset's next sample index
    setup_s = time.perf_counter() - started
    list(core.score(everything=True, wait=True))
    _checkpoint(core, encode_state)  # the set-up's changes: not the measured pass's
    gc.collect()
    rss_setup = rss_bytes()
    breakdown = None
    if trace:
        breakdown = _breakdown(traced_before, tracemalloc.take_snapshot(), n)
        tracemalloc.stop()

    # 2. measured pass: the same messages whatever n, pre-encoded as a producer sends them
    messages = []
    for i in range(args.messages):
        a = i % n
        k = step[a]
        step[a] += 1
        values = dict(zip(channels, value_of(a, k, len(channels)), strict=True))
        body = {"asset": f"asset-{a}", "ts": START_MS + k * period_ms, "values": values}
        messages.append(json.dumps(body).encode())
    windows = lines = 0
    forward_s = 0.0
    score_cpu = 0.0
    gc.collect()
    cpu0, wall0, process0 = time.thread_time(), time.perf_counter(), time.process_time()

    def take(everything: bool, wait: bool) -> None:
        nonlocal windows, lines, forward_s, score_cpu
        t = time.thread_time()
        for out in core.score(everything, wait):
            windows += len(out.scored)
            forward_s += out.seconds
            lines += len([encode(p) for p in out.points])
        score_cpu += time.thread_time() - t

    for value in messages:
        reading = decoder.decode(value)
        core.add(reading, TP, offset, 0)
        offset += 1
        if core.due():
            take(False, False)
    take(True, True)
    pass_cpu = time.thread_time() - cpu0
    pass_wall = time.perf_counter() - wall0
    pass_process_cpu = time.process_time() - process0
    del messages
    gc.collect()
    rss_after = rss_bytes()

    # 3. checkpoint passes: after the pass, then with nothing changed since
    after_pass = _checkpoint(core, encode_state)
    unchanged = _checkpoint(core, encode_state)
    core.close()
    return {
        "assets": n,
        "messages": args.messages,
        "windows": windows,
        "lines": lines,
        "per_message_us": (pass_cpu - score_cpu) / args.messages * 1e6,
        "per_window_us": score_cpu / max(windows, 1) * 1e6,
        "forward_per_window_us": forward_s / max(windows, 1) * 1e6,
        "scoring_thread_per_window_us": (pass_process_cpu - pass_cpu) / max(windows, 1) * 1e6,
        "pass_wall_s": pass_wall,
        "restore_s": restore_s,
        "setup_s": setup_s,
        "checkpoint": after_pass,
        "checkpoint_unchanged": unchanged,
        "rss_before_mb": rss_before / 2**20,
        "rss_setup_mb": rss_setup / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "rss_per_asset_bytes": (rss_setup - rss_before) / n,
        "window_buffer_bytes": _window_buffer_bytes(core, np),
        "breakdown": breakdown,
    }


def _window_buffer_bytes(core: Any, np: Any) -> int:
    """The ring arrays of one asset's window (what "beyond its window buffer" leaves out)."""
    w = next(iter(core.windows._assets.values())).window
    arrays = [w._raw, w._filled, *w._offsets.values()]
    return int(sum(a.nbytes for a in arrays if isinstance(a, np.ndarray)))


def _checkpoint(core: Any, encode_state: Any) -> dict[str, Any]:
    """What `Daemon._advance_checkpoint` does besides I/O, each part timed in CPU seconds of
    this thread (wall time on a shared machine measures the other jobs)."""
    t0 = time.thread_time()
    # the pass over every window that a commit makes when the changelog does not carry the
    # windows' offsets (kafka.seek_back_on_assign off); timed apart, not in the total
    hold = core.windows.hold()
    window_pass_s = time.thread_time() - t0
    t0 = time.thread_time()
    engine_hold = core.engine.hold()
    t1 = time.thread_time()
    snapshot = core.baseline_snapshot()
    t2 = time.thread_time()
    core.mark_changed(core.windows.take_unreported())
    states = core.changed_states()
    t3 = time.thread_time()
    encoded = [encode_state(s) for s in states.values()]
    t4 = time.thread_time()
    core.baselines.saved(snapshot)
    return {
        "changed_assets": len(states),
        "window_hold_pass_s": window_pass_s,
        "hold_s": t1 - t0,
        "snapshot_s": t2 - t1,
        "states_s": t3 - t2,
        "encode_s": t4 - t3,
        "total_s": t4 - t0,
        "bytes": sum(len(e) for e in encoded),
        "partitions_held": len(hold) + len(engine_hold),
    }


def _breakdown(before: Any, after: Any, n: int) -> dict[str, list[dict[str, Any]]]:
    """Bytes per asset by allocating line (the top 25) and by file (all)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for key in ("lineno", "filename"):
        rows = []
        for s in after.compare_to(before, key)[:25]:
            if s.size_diff <= 0:
                continue
            frame = s.traceback[0]
            where = Path(frame.filename).name + (f":{frame.lineno}" if key == "lineno" else "")
            rows.append(
                {
                    "where": where,
                    "bytes_per_asset": s.size_diff / n,
                    "blocks_per_asset": s.count_diff / n,
                }
            )
        out[key] = rows
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["assets"] for r in results]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    per_changed = [
        r["checkpoint"]["total_s"] / max(r["checkpoint"]["changed_assets"], 1) * 1e6
        for r in results
    ]
    panels = [
        ("per-message CPU, run loop (us)", n, [r["per_message_us"] for r in results]),
        ("per-window CPU, run loop (us)", n, [r["per_window_us"] for r in results]),
        ("checkpoint CPU per changed asset (us)", n, per_changed),
        (
            "resident memory per added asset (kB)",
            n[1:],
            [r["rss_marginal_per_asset_bytes"] / 1e3 for r in results[1:]],
        ),
    ]
    for ax, (title, x, values) in zip(axes.flat, panels, strict=True):
        ax.plot(x, values, "o-")
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("assets")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    buffer_kb = results[-1]["window_buffer_bytes"] / 1e3
    axes.flat[3].axhline(buffer_kb + 4.096, ls="--", c="k", label="target: window buffer + 4 KB")
    axes.flat[3].axhline(buffer_kb, ls=":", c="grey", label="window buffer")
    axes.flat[3].legend(fontsize=8)
    unchanged = [r["checkpoint_unchanged"]["total_s"] * 1e3 for r in results]
    twin = axes.flat[2].twinx()
    twin.plot(n, unchanged, "s--", c="tab:orange", label="checkpoint, nothing changed (ms)")
    twin.set_ylim(bottom=0, top=max(1.0, max(unchanged) * 2))
    twin.legend(fontsize=8, loc="lower right")
    fig.suptitle("StreamCore against fleet size (fixed total message rate)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[100, 1000, 10_000, 30_000, 100_000]
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=24, help="warm-up windows of the template")
    parser.add_argument("--breakdown", type=int, default=0, help="trace allocations at N assets")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fleet.json")
    parser.add_argument("--plot-only", action="store_true", help="plot --out's JSON again")
    # internal: one size in this process
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models-root", help=argparse.SUPPRESS)
    parser.add_argument("--template", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args, args.one, args.trace)))
        return
    if args.plot_only:
        plot(json.loads(args.out.read_text())["results"], args.out.with_suffix(".png"))
        return

    from bench_scoring import train_small_profile

    tmp = Path(tempfile.mkdtemp(prefix="fleet-"))
    models_root = tmp / "models"
    train_small_profile(models_root)
    template = tmp / "template.json"
    template.write_text(json.dumps(fitted_state(models_root, tmp / "state0", args.warmup)))
    results = []
    runs = [(n, False) for n in args.sizes] + ([(args.breakdown, True)] if args.breakdown else [])
    for n, trace in runs:
        cmd = [sys.executable, __file__, "--one", str(n), "--messages", str(args.messages)]
        cmd += ["--warmup", str(args.warmup), "--models-root", str(models_root)]
        cmd += ["--template", str(template)] + (["--trace"] if trace else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{n} assets failed:\n{done.stderr[-3000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        if trace:
            print(f"\nallocations while {n} assets were set up, per asset (tracemalloc):")
            for row in r["breakdown"]["filename"] + r["breakdown"]["lineno"]:
                print(
                    f"  {row['bytes_per_asset']:9.0f} B  {row['blocks_per_asset']:6.1f} blocks"
                    f"  {row['where']}"
                )
            where = args.out.with_suffix(".breakdown.json")
            where.write_text(json.dumps({"assets": n, **r["breakdown"]}, indent=1))
            continue
        results.append(r)
        c, u = r["checkpoint"], r["checkpoint_unchanged"]
        print(
            f"{n:>7} assets: {r['per_message_us']:6.1f} us/msg  {r['per_window_us']:6.1f} us/window"
            f" (+{r['scoring_thread_per_window_us']:.1f} scoring thread)  checkpoint {c['total_s'] * 1e3:7.1f} ms"
            f" for {c['changed_assets']} changed, {u['total_s'] * 1e3:6.1f} ms unchanged"
            f" (window pass {c['window_hold_pass_s'] * 1e3:.1f} ms);"
            f" RSS {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB,"
            f" {r['rss_per_asset_bytes']:.0f} B/asset (window buffer {r['window_buffer_bytes']} B)",
            flush=True,
        )
    if not results:
        return
    for prev, r in itertools.pairwise(results):
        # resident memory one more asset adds, between two fleet sizes: the fixed part (the
        # first batches' buffers, allocator arenas) cancels out
        grown = (r["rss_setup_mb"] - prev["rss_setup_mb"]) * 2**20
        r["rss_marginal_per_asset_bytes"] = grown / (r["assets"] - prev["assets"])
        print(
            f"  {prev['assets']} -> {r['assets']} assets: {r['rss_marginal_per_asset_bytes']:.0f}"
            " B resident per added asset"
        )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "load_average": os.getloadavg(),
        "command": " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
