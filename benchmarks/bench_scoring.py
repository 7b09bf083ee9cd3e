"""The daemon's scoring path against a plain torch forward of the same model (CPU, one process).

(a) plain: `model(x, mask)` under `torch.inference_mode` on pre-made, pre-scaled tensors, in
    chunks of `--batch` windows;
(b) daemon: a `StreamCore`'s engine given `ReadyWindow`s for many assets, then
    `StreamCore.score(everything=True, wait=True)`: micro-batching, per-asset baselines,
    `Scorer` (scaling, masking, forward, errors, scores, `shifted`), `ScoredWindow`s, the alert
    rule and the InfluxDB points that the streaming core makes of them, and the line protocol
    `encode` of every point;
(c) with `--before DIR`: the same with `DIR/engine.py` and `DIR/alerting.py` in place of
    `daemon/engine.py` and `seqae/alerting.py` (an older version's, e.g. extracted with
    `git archive`), and the per-window loop of `StreamCore._finish` as it was before the alert
    rule ran per batch (`finish_per_window` below), so "before" and "after" run in the same
    process on the same windows.
All score the same windows with the same batch size, alternating, median of the repeats.
Prints windows/s for each and the ratio daemon / plain (target >= 0.8, issue 15).

The profile is a small LSTM autoencoder trained here on a synthetic 8-channel plant (the
product's default detector), saved and served through `ProfileRegistry` like in the daemon.

    python benchmarks/bench_scoring.py
    python benchmarks/bench_scoring.py --assets 1000 --batch 256 --threads 1 --profile
    mkdir -p /tmp/before && git archive HEAD daemon/engine.py seqae/alerting.py \
        | tar -x --strip-components=1 -C /tmp/before
    python benchmarks/bench_scoring.py --before /tmp/before
    python benchmarks/bench_scoring.py --before /tmp/before --serial   # run-loop CPU alone
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from daemon.alerts import AlertBook, alert_point
from daemon.baselines import AssetBaselines
from daemon.core import StreamCore
from daemon.engine import ProfileRegistry
from daemon.lineprotocol import encode
from daemon.settings import AlertSettings, BaselineSettings, DaemonSettings, EngineSettings
from daemon.windows import ReadyWindow
from seqae.data import RobustScaler, Series, nan_to_mask
from seqae.train import train_profile

CHANNELS = [f"ch{i}" for i in range(8)]
START_NS = 1_795_723_200_000_000_000
WARMUP = 24  # windows an asset collects before its own baseline is fitted (the minimum)


def plant_series(asset: str, rows: int, period_s: float, seed: int) -> Series:
    """A periodic 8-channel asset with noise: the normal operation a profile is trained on."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    periods = np.linspace(20, 200, len(CHANNELS))
    phase = rng.uniform(0, 2 * np.pi, len(CHANNELS))
    values = 10 + 3 * np.sin(2 * np.pi * t / periods + phase)
    values += rng.normal(0, 0.2, values.shape)
    stamps = START_NS + np.arange(rows, dtype=np.int64) * round(period_s * 1e9)
    return Series(stamps, values.astype(np.float32), list(CHANNELS), asset=asset)


def plant_value(t: np.ndarray | float, k: int) -> np.ndarray | float:
    """The noiseless value of channel `k` at sample index `t` (for producers)."""
    periods = np.linspace(20, 200, len(CHANNELS))
    return 10 + 3 * np.sin(2 * np.pi * np.asarray(t) / periods[k])  # type: ignore[no-any-return]


def train_small_profile(
    models_root: Path,
    *,
    kind: str = "lstm",
    window: int = 50,
    hop: int = 10,
    period_s: float = 0.1,
    epochs: int = 3,
) -> str:
    """Train and save profile `bench` (hidden 32, latent 8 for the LSTM); returns its version."""
    history = [plant_series(f"asset-{i}", 3000, period_s, seed=i) for i in range(2)]
    return train_profile(
        history,
        models_root=models_root,
        profile="bench",
        window=window,
        hop=hop,
        period_s=period_s,
        kind=kind,  # type: ignore[arg-type]
        epochs=epochs,
        model_cfg={"hidden_size": 32, "latent_size": 8} if kind == "lstm" else None,
        device="cpu",
        progress=False,
    )


def make_windows_for(assets: int, per_asset: int, window: int, seed: int) -> np.ndarray:
    """Raw windows [assets * per_asset, W, C] with ~1 % missing samples."""
    rng = np.random.default_rng(seed)
    rows = window + per_asset - 1
    series = plant_series("x", rows, 0.1, seed).values
    idx = np.arange(window)[None, :] + np.arange(per_asset)[:, None]
    one = series[idx]  # [per_asset, W, C]
    x = np.concatenate([one + rng.normal(0, 0.05, one.shape) for _ in range(assets)])
    x = x.astype(np.float32)
    x[rng.random(x.shape) < 0.01] = np.nan
    return x


def ready_windows(x: np.ndarray, assets: int, hop: int, period_ns: int) -> list[ReadyWindow]:
    per_asset = len(x) // assets
    out = []
    for a in range(assets):
        for j in range(per_asset):
            end = START_NS + (j * hop + hop - 1) * period_ns
            out.append(ReadyWindow(f"asset-{a}", end, x[a * per_asset + j], False, {("t", a): j}))
    # Arrival order: every asset's j-th window before any asset's (j+1)-th, as in a stream.
    order = sorted(range(len(out)), key=lambda i: (i % per_asset, i // per_asset))
    return [out[i] for i in order]


# With --serial: every forward finishes before the first result is taken, so the run loop's
# CPU is measured without the scoring thread beside it (the wall ratio then means nothing).
SERIAL = False


def settle(engine: Any) -> None:
    while SERIAL and engine.busy:
        time.sleep(0.001)


def finish_per_window(engine: Any, windows: list[ReadyWindow], alerts: Any) -> int:
    """The "before": what `StreamCore.score` and its `_finish` did with each batch up to
    session 5 (a point and the alert rule per window), and the sink's `encode`."""
    engine.add("bench", windows)
    lines = []
    engine.hand_out(everything=True)
    settle(engine)
    for out in engine.results(wait=True):  # like the run loop: write one, score the next
        events = []
        for w in out.scored:
            lines.append(encode(w.to_point()))
            if w.state != "calibrating":
                events += alerts.observe(
                    w.asset, w.profile, w.end_ns, w.score, w.threshold, w.contributions, w.channels
                )
        lines += [encode(alert_point(e)) for e in events]
    return len(lines)


def core_path(core: StreamCore, windows: list[ReadyWindow], forward_s: list[float]) -> int:
    """What the streaming core does with windows once they are ready, and the sink's `encode`;
    appends the scoring thread's time in `features` (scaling, forward, errors) to `forward_s`."""
    core.engine.add("bench", windows)
    lines, seconds = 0, 0.0
    core.engine.hand_out(everything=True)
    settle(core.engine)
    for out in core.score(everything=True, wait=True):  # the run loop: write one, score the next
        lines += len([encode(p) for p in out.points])
        seconds += out.seconds
    forward_s.append(seconds)
    return lines


def daemon_settings(models_root: Path, state_dir: Path, args: argparse.Namespace) -> DaemonSettings:
    return DaemonSettings.model_validate(
        {
            "state_dir": str(state_dir),
            "profiles": {
                "models_root": str(models_root),
                "routes": [{"pattern": "*", "profile": "bench"}],
            },
            "baselines": {"mode": args.baselines, "warmup_windows": WARMUP},
            "engine": {"device": "cpu", "max_batch": args.batch, "max_wait_ms": 0},
        }
    )


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def plain_path(model: torch.nn.Module, x: torch.Tensor, m: torch.Tensor, batch: int) -> None:
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            model(x[i : i + batch], m[i : i + batch])


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds): the run loop's own Python, apart from the
    scoring thread's forward and from other jobs on a shared machine."""
    started, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - started, time.thread_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=500)
    parser.add_argument("--per-asset", type=int, default=4, help="windows per asset per run")
    parser.add_argument("--batch", type=int, default=256, help="engine max_batch = plain chunk")
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--hop", type=int, default=10)
    parser.add_argument("--kind", choices=["lstm", "pca"], default="lstm")
    parser.add_argument("--baselines", choices=["per_asset", "model"], default="per_asset")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0: default)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile one daemon run (thread CPU time)"
    )
    parser.add_argument(
        "--before",
        type=Path,
        help="folder with an older engine.py and alerting.py to measure beside the current",
    )
    parser.add_argument(
        "--serial",
        action="store_true",
        help="take results only once every forward is done: the run loop's CPU alone",
    )
    args = parser.parse_args()
    global SERIAL
    SERIAL = args.serial
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        train_small_profile(root, kind=args.kind, window=args.window, hop=args.hop)
        registry = ProfileRegistry(root, ["bench"], "cpu", "never")
        served = registry.get("bench")
        served.scorer.batch_size = args.batch
        default = served.loaded.baseline
        x = make_windows_for(args.assets, args.per_asset, args.window, seed=3)
        windows = ready_windows(x, args.assets, args.hop, served.geometry.period_ns)

        warm = ready_windows(
            make_windows_for(args.assets, WARMUP, args.window, seed=4), args.assets, args.hop, 10**8
        )

        def make_before(engine_module: Any, alerting_module: Any) -> Callable[[], int]:
            baselines = AssetBaselines(
                BaselineSettings(mode=args.baselines, warmup_windows=WARMUP),
                Path(tmp) / "state-before",
            )
            engine = engine_module.ScoringEngine(
                EngineSettings(device="cpu", max_batch=args.batch, max_wait_ms=0),
                registry,
                baselines,
            )
            if args.baselines == "per_asset":
                # Warm every asset up first: the measured runs score with each asset's own
                # baseline.
                finish_per_window(engine, warm, alerting_module.AlertBook(AlertSettings()))
                assert baselines.fitted == args.assets, baselines.fitted
            # A fresh alert book per run: every run replays the same window ends, which a
            # tracker that saw them would skip (creating 1 tracker per asset is in the cost).
            return lambda: finish_per_window(
                engine, windows, alerting_module.AlertBook(AlertSettings())
            )

        features_s: list[float] = []  # the scoring thread's, per daemon run

        def make_core() -> Callable[[], int]:
            core = StreamCore(daemon_settings(root, Path(tmp) / "state", args), registry)
            if args.baselines == "per_asset":
                core_path(core, warm, [])
                assert core.baselines.fitted == args.assets, core.baselines.fitted

            def run() -> int:
                core.alerts = AlertBook(core.settings.alerts)  # fresh, as for the "before"
                return core_path(core, windows, features_s)

            return run

        paths: dict[str, Callable[[], object]] = {}
        if args.before:
            paths["before"] = make_before(
                load_module(args.before / "engine.py", "engine_before"),
                load_module(args.before / "alerting.py", "alerting_before"),
            )
        run_daemon = make_core()
        paths["daemon"] = run_daemon
        # The plain forward gets pre-made model input: scaled windows, zeros where missing.
        x_np, m_np = nan_to_mask(RobustScaler(default.center, default.scale).transform(x))
        xt, mt = torch.from_numpy(x_np), torch.from_numpy(m_np)
        detector = served.scorer.detector

        def run_plain() -> None:
            plain_path(detector, xt, mt, args.batch)

        paths = {"plain": run_plain, **paths}
        times: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, list[float]] = {name: [] for name in paths}
        for fn in paths.values():
            fn()
        for _ in range(args.repeats):
            for name, fn in paths.items():
                wall, thread = timed(fn)
                times[name].append(wall)
                cpu[name].append(thread)
        n = len(windows)
        rate = {name: n / statistics.median(t) for name, t in times.items()}
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs,"
            f" {platform.processor() or platform.machine()}, load average"
            f" {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
        )
        print(
            f"{args.kind} profile: window {args.window}, hop {args.hop}, {len(CHANNELS)} channels;"
            f" {args.assets} assets x {args.per_asset} windows = {n}; batch {args.batch};"
            f" baselines {args.baselines}; median of {args.repeats}"
        )
        print(f"plain torch forward          : {rate['plain']:10.0f} windows/s")
        if "before" in rate:
            print(f"daemon before ({args.before}): {rate['before']:10.0f} windows/s")
        print(f"daemon engine+alerts+points  : {rate['daemon']:10.0f} windows/s")
        for name in [k for k in ("before", "daemon") if k in rate]:
            best = min(times["plain"]) / min(times[name])
            print(
                f"ratio {name}/plain: median {rate[name] / rate['plain']:.2f},"
                f" best {best:.2f}; main-thread CPU"
                f" {statistics.median(cpu[name]) / n * 1e6:.1f} us/window"
                f" (plain {statistics.median(cpu['plain']) / n * 1e6:.1f})"
            )
        print(
            f"daemon's scoring thread in features (scaling, forward, errors):"
            f" {statistics.median(features_s) / n * 1e6:.1f} us/window wall"
            f" (plain forward {statistics.median(times['plain']) / n * 1e6:.1f})"
        )
        if args.profile:
            # this thread's CPU time: wall time would count the waits for the GIL and for
            # the scoring thread into whatever function was running
            prof = cProfile.Profile(time.thread_time)
            prof.runcall(run_daemon)
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
