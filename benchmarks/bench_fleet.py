"""The streaming core against fleet size: 100 to 100,000 assets at a fixed total message rate.

Each fleet size runs in its own process (resident memory is then the fleet's, not the previous
one's), in three steps:

1. set-up: every asset gets a fitted per-asset baseline: one asset's durable state, as a
   changelog record under each asset's name, decoded and restored (`StreamCore.restore_assets`)
   a thousand at a time as after a rebalance; then one window of readings (`core.add`), so each
   asset holds a full window ring, its baseline, its alert tracker and its caches;
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
up and prints what each asset holds: bytes per asset by the line of the project that allocated
them (the innermost frame in daemon/, seqae/ or benchmarks/, with its source text).
`--memory-only` stops each size after its set-up (resident memory, no measured pass; also
resident memory after glibc's `malloc_trim`, which shows how much is freed but kept).
`--before ROOT` runs every size also on the code of another checkout of the project (ROOT: its
root, e.g. a copy with older files), alternating before and after, and prints both.

    python benchmarks/bench_fleet.py                               # 100 ... 100,000
    python benchmarks/bench_fleet.py --sizes 100 1000 --messages 20000
    python benchmarks/bench_fleet.py --breakdown 2000 --sizes
    python benchmarks/bench_fleet.py --memory-only --sizes 1000 10000 30000 --before /tmp/old
Writes benchmarks/results/fleet.json and fleet.png (`--out`).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import linecache
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


def _code_root() -> Path:
    """The checkout whose code runs: `--root ROOT` of a size's process, else this one."""
    if "--root" in sys.argv:
        return Path(sys.argv[sys.argv.index("--root") + 1]).resolve()
    return HERE.parent


ROOT = _code_root()
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
RESTORE_CHUNK = 1000  # assets decoded and restored at a time (a rebalance reads records so)

START_MS = 1_795_723_200_000  # 2026-11-17: inside the decoder's accepted time range
TP = ("sensors", 0)


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def trimmed_rss_bytes() -> int | None:
    """Resident memory once glibc's malloc has handed its free pages back (`malloc_trim`):
    what is held, less what was freed but kept by the allocator. None without glibc."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim(0)
    return rss_bytes()


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

    from daemon.changelog import PartWriter, decode_state, encode_state
    from daemon.codec import MessageDecoder, Reading
    from daemon.core import StreamCore
    from daemon.engine import ProfileRegistry
    from daemon.lineprotocol import encode

    writer = PartWriter()  # what the changelog sends: the records, and parts not written yet

    torch.set_num_threads(1)
    models_root = Path(args.models_root)
    # one asset's record with its own baseline and no window progress or alert: each asset
    # restores its own copy of it, decoded from bytes as a changelog record is
    template = json.loads(Path(args.template).read_text())
    template.update(asset="asset-0", last_end_ns=None, window_offsets=[], alert=None)
    record = encode_state(template)
    named = b'"asset":"asset-0"'
    assert named in record, "the template's record does not name its asset first"
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
        tracemalloc.start(TRACE_FRAMES)
        traced_before = tracemalloc.take_snapshot()

    # 1. set-up: fitted baselines, then one full window per asset
    started = time.perf_counter()
    for first in range(0, n, RESTORE_CHUNK):
        states = {}
        for a in range(first, min(n, first + RESTORE_CHUNK)):
            key = f"asset-{a}".encode()
            states[key.decode()] = decode_state(key, record.replace(named, b'"asset":"%s"' % key))
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
    _checkpoint(core, writer)  # the set-up's changes: not the measured pass's
    gc.collect()
    rss_setup = rss_bytes()
    breakdown = None
    if trace:
        breakdown = _breakdown(traced_before, tracemalloc.take_snapshot(), n)
        tracemalloc.stop()
    setup = {
        "assets": n,
        "restore_s": restore_s,
        "setup_s": setup_s,
        "rss_before_mb": rss_before / 2**20,
        "rss_setup_mb": rss_setup / 2**20,
        "rss_per_asset_bytes": (rss_setup - rss_before) / n,
        "window_buffer_bytes": _window_buffer_bytes(core, np),
        "breakdown": breakdown,
    }
    if args.memory_only:
        # only here: trimming would change what the measured pass starts from
        trimmed = trimmed_rss_bytes()
        if trimmed is not None:
            setup["rss_trimmed_mb"] = trimmed / 2**20
        core.close()
        return setup

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
    after_pass = _checkpoint(core, writer)
    unchanged = _checkpoint(core, writer)
    core.close()
    return {
        **setup,
        "messages": args.messages,
        "windows": windows,
        "lines": lines,
        "per_message_us": (pass_cpu - score_cpu) / args.messages * 1e6,
        "per_window_us": score_cpu / max(windows, 1) * 1e6,
        "forward_per_window_us": forward_s / max(windows, 1) * 1e6,
        "scoring_thread_per_window_us": (pass_process_cpu - pass_cpu) / max(windows, 1) * 1e6,
        "pass_wall_s": pass_wall,
        "checkpoint": after_pass,
        "checkpoint_unchanged": unchanged,
        "rss_after_mb": rss_after / 2**20,
    }


def _window_buffer_bytes(core: Any, np: Any) -> int:
    """The ring arrays of one asset's window (what "beyond its window buffer" leaves out)."""
    w = next(iter(core.windows._assets.values()))
    w = getattr(w, "window", w)  # an `_Entry` around the window before session 5
    # offsets per slot: a tuple per partition since session 5, a dict of them before
    per_partition = w._per_tp if hasattr(w, "_per_tp") else w._offsets.values()
    arrays = [w._raw, w._filled, *per_partition]
    return int(sum(a.nbytes for a in arrays if isinstance(a, np.ndarray)))


def _checkpoint(core: Any, writer: Any) -> dict[str, Any]:
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
    batch = writer.encode(states)
    writer.acknowledged(batch)
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
        "bytes": batch.part_bytes + batch.record_bytes,
        "partitions_held": len(hold) + len(engine_hold),
    }


TRACE_FRAMES = 12  # deep enough to reach the project's frame under numpy, json and dataclasses
PROJECT_DIRS = ("daemon", "seqae", "benchmarks")


def _project_frame(traceback: Any) -> tuple[str, int]:
    """(path relative to the code root, line) of the innermost frame in the project: the line
    of ours that made the allocation (numpy's np.full is then the window's line that called it)."""
    for frame in reversed(traceback):  # tracemalloc lists the oldest frame first
        path = Path(frame.filename)
        for root in (ROOT, HERE.parent):  # the code measured; this benchmark
            if path.is_relative_to(root) and path.relative_to(root).parts[0] in PROJECT_DIRS:
                return str(path.relative_to(root)), frame.lineno
    innermost = traceback[-1]
    return Path(innermost.filename).name, innermost.lineno


def _breakdown(before: Any, after: Any, n: int) -> dict[str, Any]:
    """What each asset holds: bytes and blocks per asset by the project line that allocated
    them (all lines above 8 bytes an asset), and by file."""
    lines: dict[tuple[str, int], list[float]] = {}
    for sign, snapshot in ((-1, before), (1, after)):
        for stat in snapshot.statistics("traceback"):
            totals = lines.setdefault(_project_frame(stat.traceback), [0.0, 0.0])
            totals[0] += sign * stat.size
            totals[1] += sign * stat.count
    rows: list[dict[str, Any]] = []
    for (where, lineno), (size, count) in sorted(lines.items(), key=lambda kv: -kv[1][0]):
        if size / n < 8:
            continue
        source = ""
        if "/" in where:
            root = HERE.parent if where.startswith("benchmarks/") else ROOT
            source = linecache.getline(str(root / where), lineno).strip()
        rows.append(
            {
                "where": f"{where}:{lineno}",
                "source": source[:90],
                "bytes_per_asset": size / n,
                "blocks_per_asset": count / n,
            }
        )
    files: dict[str, list[float]] = {}
    for row in rows:
        f = files.setdefault(row["where"].rsplit(":", 1)[0], [0.0, 0.0])
        f[0] += row["bytes_per_asset"]
        f[1] += row["blocks_per_asset"]
    return {
        "lineno": rows,
        "filename": [
            {"where": k, "bytes_per_asset": v[0], "blocks_per_asset": v[1]}
            for k, v in sorted(files.items(), key=lambda kv: -kv[1][0])
        ],
        "total_bytes_per_asset": sum(r["bytes_per_asset"] for r in rows),
        "total_blocks_per_asset": sum(r["blocks_per_asset"] for r in rows),
    }


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


def plot_memory(by_code: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Resident memory per added asset against fleet size, one line per code."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for code, results in by_code.items():
        x = [r["assets"] for r in results[1:]]
        ax.plot(x, [r["rss_marginal_per_asset_bytes"] / 1e3 for r in results[1:]], "o-", label=code)
    buffer_kb = next(iter(by_code.values()))[-1]["window_buffer_bytes"] / 1e3
    ax.axhline(buffer_kb + 4.096, ls="--", c="k", label="target: window buffer + 4 KB")
    ax.axhline(buffer_kb, ls=":", c="grey", label="window buffer")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("assets")
    ax.set_title("resident memory per added asset (kB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _run_size(args: argparse.Namespace, n: int, trace: bool, root: Path, files: Path) -> Any:
    """One fleet size in a process of its own, on the code under `root`."""
    cmd = [sys.executable, __file__, "--one", str(n), "--messages", str(args.messages)]
    cmd += ["--warmup", str(args.warmup), "--models-root", str(files / "models")]
    cmd += ["--template", str(files / "template.json"), "--root", str(root)]
    cmd += (["--trace"] if trace else []) + (["--memory-only"] if args.memory_only else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{n} assets failed ({root}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _print_breakdown(code: str, n: int, breakdown: dict[str, Any], buffer_bytes: int) -> None:
    total = breakdown["total_bytes_per_asset"]
    print(
        f"\n{code}: what each asset holds, {n} assets set up (tracemalloc, bytes per asset):"
        f" {total:.0f} B in {breakdown['total_blocks_per_asset']:.1f} blocks, of which the"
        f" window buffer's arrays {buffer_bytes} B"
    )
    for row in breakdown["filename"]:
        print(
            f"  {row['bytes_per_asset']:7.0f} B {row['blocks_per_asset']:5.1f} blk  {row['where']}"
        )
    print("  by line:")
    for row in breakdown["lineno"]:
        print(
            f"  {row['bytes_per_asset']:7.0f} B {row['blocks_per_asset']:5.1f} blk"
            f"  {row['where']:32s} {row['source']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[100, 1000, 10_000, 30_000, 100_000]
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=24, help="warm-up windows of the template")
    parser.add_argument("--breakdown", type=int, default=0, help="trace allocations at N assets")
    parser.add_argument("--memory-only", action="store_true", help="set-up only: memory")
    parser.add_argument("--before", type=Path, help="root of a checkout to compare against")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fleet.json")
    parser.add_argument("--plot-only", action="store_true", help="plot --out's JSON again")
    # internal: one size in this process, on the code under --root
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models-root", help=argparse.SUPPRESS)
    parser.add_argument("--template", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import daemon.windows

        result = one_size(args, args.one, args.trace)
        result["code"] = str(Path(daemon.windows.__file__).resolve().parent.parent)
        print(json.dumps(result))
        return
    if args.plot_only:
        plot(json.loads(args.out.read_text())["results"], args.out.with_suffix(".png"))
        return

    from bench_scoring import train_small_profile

    files = Path(tempfile.mkdtemp(prefix="fleet-"))
    train_small_profile(files / "models")
    state = fitted_state(files / "models", files / "state0", args.warmup)
    (files / "template.json").write_text(json.dumps(state))
    codes = {"after": ROOT} if not args.before else {"before": args.before, "after": ROOT}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    by_code: dict[str, list[dict[str, Any]]] = {code: [] for code in codes}
    runs = [(n, False) for n in args.sizes] + ([(args.breakdown, True)] if args.breakdown else [])
    for n, trace in runs:
        for code, root in codes.items():  # alternating: the machine's load hits both alike
            r = _run_size(args, n, trace, root, files)
            assert Path(r["code"]) == Path(root).resolve(), (r["code"], root)
            if trace:
                _print_breakdown(code, n, r["breakdown"], r["window_buffer_bytes"])
                suffix = ".breakdown.json" if code == "after" else f".breakdown.{code}.json"
                where = args.out.with_suffix(suffix)
                where.write_text(
                    json.dumps({"assets": n, "code": code, **r["breakdown"]}, indent=1)
                )
                continue
            by_code[code].append(r)
            memory = (
                f"RSS {r['rss_before_mb']:.0f} -> {r['rss_setup_mb']:.0f} MB,"
                f" {r['rss_per_asset_bytes']:.0f} B/asset (window buffer"
                f" {r['window_buffer_bytes']} B), restore {r['restore_s']:.1f} s"
            )
            if args.memory_only:
                if "rss_trimmed_mb" in r:
                    memory += f", {r['rss_trimmed_mb']:.0f} MB after malloc_trim"
                print(f"{code:>6} {n:>7} assets: {memory}", flush=True)
                continue
            c, u = r["checkpoint"], r["checkpoint_unchanged"]
            print(
                f"{code:>6} {n:>7} assets: {r['per_message_us']:6.1f} us/msg"
                f"  {r['per_window_us']:6.1f} us/window"
                f" (+{r['scoring_thread_per_window_us']:.1f} scoring thread)"
                f"  checkpoint {c['total_s'] * 1e3:7.1f} ms for {c['changed_assets']} changed,"
                f" {u['total_s'] * 1e3:6.1f} ms unchanged"
                f" (window pass {c['window_hold_pass_s'] * 1e3:.1f} ms); {memory}",
                flush=True,
            )
    if not any(by_code.values()):
        return
    for code, results in by_code.items():
        for prev, r in itertools.pairwise(results):
            # resident memory one more asset adds, between two fleet sizes: the fixed part (the
            # first batches' buffers, allocator arenas) cancels out
            grown = (r["rss_setup_mb"] - prev["rss_setup_mb"]) * 2**20
            r["rss_marginal_per_asset_bytes"] = grown / (r["assets"] - prev["assets"])
            trimmed = ""
            if "rss_trimmed_mb" in r and "rss_trimmed_mb" in prev:
                grown = (r["rss_trimmed_mb"] - prev["rss_trimmed_mb"]) * 2**20
                r["rss_trimmed_marginal_per_asset_bytes"] = grown / (r["assets"] - prev["assets"])
                trimmed = f" ({r['rss_trimmed_marginal_per_asset_bytes']:.0f} B after malloc_trim)"
            print(
                f"  {code}: {prev['assets']} -> {r['assets']} assets:"
                f" {r['rss_marginal_per_asset_bytes']:.0f} B resident per added asset{trimmed}"
            )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "load_average": os.getloadavg(),
        "command": " ".join(sys.argv),
        "codes": {code: str(root) for code, root in codes.items()},
    }
    body: dict[str, Any] = {"meta": meta, "results": by_code["after"]}
    if args.before:
        body["results_before"] = by_code["before"]
    args.out.write_text(json.dumps(body, indent=1))
    if args.memory_only:
        if len(args.sizes) > 1:
            plot_memory(by_code, args.out.with_suffix(".png"))
    else:
        plot(by_code["after"], args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
