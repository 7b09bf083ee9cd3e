"""The warm-up stall: a fleet whose assets start together ends its warm-ups in the same hop, and
every asset's baseline fit then runs on the run loop's thread, one after another.

The scoring engine is given `--assets` assets' windows a round at a time (one window per asset
per round, as a fleet in step delivers them; normal readings, no missing samples) and scores
each round; after `warmup_windows` rounds (the shipped default, 64) every asset fits its own
baseline. Timed: each `AssetBaselines._fit` (CPU of the loop's thread and wall time, including
its fsync'd baseline file), and the loop thread's CPU over the round in which the fits ran
against an ordinary round after it; the first fit apart (what it imports the first time shows
there), and the resident memory the fits' round added. The profile is bench_scoring's small
LSTM autoencoder.

`--before ROOT` runs the same, alternating, on the code of another checkout (its root, e.g. a
`git worktree` of an older commit), each in its own process, and prints the ratio.

    python benchmarks/bench_warmup.py
    git worktree add /tmp/before HEAD~1
    python benchmarks/bench_warmup.py --assets 1000 --repeats 3 --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = Path(sys.argv[sys.argv.index("--root") + 1]) if "--root" in sys.argv else HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


def one_run(models_root: Path, assets: int) -> dict[str, Any]:
    """The warm-up of `assets` assets on the code under ROOT (this process)."""
    import numpy as np
    import torch
    from bench_fleet import rss_bytes
    from bench_scoring import START_NS, plant_series

    import daemon.baselines as baselines_module
    from daemon.baselines import AssetBaselines
    from daemon.engine import ProfileRegistry, ScoringEngine
    from daemon.settings import BaselineSettings, EngineSettings
    from daemon.windows import ReadyWindow

    torch.set_num_threads(1)
    settings = BaselineSettings(mode="per_asset")
    state_dir = Path(tempfile.mkdtemp(prefix="warmup-state-", dir=models_root.parent))
    registry = ProfileRegistry(models_root, ["bench"], "cpu", "never")
    served = registry.get("bench")
    geometry = served.geometry
    baselines = AssetBaselines(settings, state_dir)
    engine = ScoringEngine(EngineSettings(max_batch=256, max_wait_ms=0), registry, baselines)

    fits: list[tuple[float, float]] = []
    fit = AssetBaselines._fit

    def timed_fit(self: AssetBaselines, *args: Any, **kwargs: Any) -> None:
        cpu, wall = time.thread_time(), time.perf_counter()
        fit(self, *args, **kwargs)
        fits.append((time.thread_time() - cpu, time.perf_counter() - wall))

    AssetBaselines._fit = timed_fit  # type: ignore[method-assign]
    writes: list[float] = []
    write = baselines_module.write_atomic

    def timed_write(*args: Any, **kwargs: Any) -> None:
        wall = time.perf_counter()
        write(*args, **kwargs)
        writes.append(time.perf_counter() - wall)

    baselines_module.write_atomic = timed_write  # type: ignore[assignment]

    rounds = settings.warmup_windows + 2
    rows = geometry.window + (rounds - 1) * geometry.hop
    kinds = 16  # distinct normal series, shared round robin by the assets
    series = [
        plant_series(f"asset-{k}", rows, geometry.period_ns / 1e9, seed=k) for k in range(kinds)
    ]
    step = geometry.hop * geometry.period_ns
    round_cpu = []
    rss_added = 0.0
    for r in range(rounds):
        rss = rss_bytes()
        cpu = time.thread_time()
        start = r * geometry.hop
        windows = [
            ReadyWindow(
                f"asset-{a}",
                START_NS + (geometry.window - 1) * geometry.period_ns + r * step,
                np.ascontiguousarray(series[a % kinds].values[start : start + geometry.window]),
                False,
                {("sensors", 0): r},
            )
            for a in range(assets)
        ]
        engine.add("bench", windows)
        engine.run(force=True, wait=True)
        round_cpu.append(time.thread_time() - cpu)
        if r == settings.warmup_windows - 1:
            rss_added = (rss_bytes() - rss) / 2**20
    engine.close()
    assert baselines.fitted == assets, (baselines.fitted, assets)
    fit_cpu = [c for c, _ in fits]
    fit_wall = [w for _, w in fits]
    ordinary = statistics.median(round_cpu[1 : settings.warmup_windows - 1])
    return {
        "code": str(Path(baselines_module.__file__).resolve().parent.parent),
        "assets": assets,
        "fits": len(fits),
        "first_fit_ms": 1e3 * fit_wall[0],
        "fits_rss_added_mb": rss_added,
        "fit_cpu_ms": 1e3 * statistics.mean(fit_cpu),
        "fit_wall_ms": 1e3 * statistics.mean(fit_wall),
        "fit_write_ms": 1e3 * statistics.mean(writes) if writes else 0.0,
        "fits_total_s": sum(fit_wall),
        "fit_round_cpu_s": round_cpu[settings.warmup_windows - 1],
        "ordinary_round_cpu_s": ordinary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", type=Path, help="root of a checkout to compare against")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "warmup.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: a run on --root's code
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(Path(args.one), args.assets)))
        return

    from bench_scoring import train_small_profile

    files = Path(tempfile.mkdtemp(prefix="warmup-"))
    train_small_profile(files / "models")
    codes = (
        {"after": HERE.parent} if not args.before else {"before": args.before, "after": HERE.parent}
    )
    results: dict[str, list[dict[str, Any]]] = {code: [] for code in codes}
    for repeat in range(args.repeats):
        for code, root in codes.items():  # alternating: the machine's load hits both alike
            command = [
                sys.executable,
                str(HERE / "bench_warmup.py"),
                "--one",
                str(files / "models"),
                "--assets",
                str(args.assets),
                "--root",
                str(root),
            ]
            r = json.loads(
                subprocess.run(command, check=True, capture_output=True, text=True).stdout
            )
            assert Path(r["code"]) == Path(root).resolve(), (r["code"], root)
            results[code].append(r)
            print(
                f"{repeat + 1}/{args.repeats} {code:>6}: {r['fits']} fits,"
                f" {r['fit_cpu_ms']:.2f} ms CPU / {r['fit_wall_ms']:.2f} ms wall each"
                f" (baseline file {r['fit_write_ms']:.2f} ms), {r['fits_total_s']:.1f} s in all;"
                f" the first {r['first_fit_ms']:.0f} ms; RSS +{r['fits_rss_added_mb']:.0f} MB;"
                f" the fits' round {r['fit_round_cpu_s']:.2f} s CPU,"
                f" an ordinary round {r['ordinary_round_cpu_s']:.3f} s",
                flush=True,
            )
    summary = {
        code: {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "code"}
        for code, runs in results.items()
    }
    if args.before:
        b, a = summary["before"], summary["after"]
        print(
            f"median fit: {b['fit_wall_ms']:.2f} -> {a['fit_wall_ms']:.2f} ms wall"
            f" (x{b['fit_wall_ms'] / a['fit_wall_ms']:.2f}),"
            f" {b['fit_cpu_ms']:.2f} -> {a['fit_cpu_ms']:.2f} ms CPU;"
            f" the fits' round {b['fit_round_cpu_s']:.2f} -> {a['fit_round_cpu_s']:.2f} s CPU"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "machine": platform.node(),
                "command": " ".join(sys.argv),
                "summary": summary,
                "runs": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
