"""The daemon's scoring path against a plain torch forward of the same model (CPU, one process).

(a) plain: `model(x, mask)` under `torch.inference_mode` on pre-made, pre-scaled tensors, in
    chunks of `--batch` windows;
(b) daemon: `ScoringEngine.add` of `ReadyWindow`s for many assets, then `run(force=True)`:
    micro-batching, per-asset baselines, `Scorer` (scaling, masking, forward, errors, scores,
    `shifted`), `ScoredWindow`s, and the InfluxDB points (`to_point` + line protocol `encode`)
    that the run loop makes of them.
Both score the same windows with the same batch size, alternating, median of the repeats.
Prints windows/s for each and the ratio daemon / plain (target >= 1.0).

The profile is a small LSTM autoencoder trained here on a synthetic 8-channel plant (the
product's default detector), saved and served through `ProfileRegistry` like in the daemon.

    python benchmarks/bench_scoring.py
    python benchmarks/bench_scoring.py --assets 1000 --batch 256 --threads 1 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from daemon.baselines import AssetBaselines
from daemon.engine import ProfileRegistry, ScoringEngine
from daemon.lineprotocol import encode
from daemon.settings import BaselineSettings, EngineSettings
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


def daemon_path(engine: ScoringEngine, windows: list[ReadyWindow]) -> int:
    engine.add("bench", windows)
    lines = []
    engine.hand_out(everything=True)
    for out in engine.results(wait=True):  # like the run loop: write one, score the next
        lines += [encode(w.to_point()) for w in out.scored]
    return len(lines)


def plain_path(model: torch.nn.Module, x: torch.Tensor, m: torch.Tensor, batch: int) -> None:
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            model(x[i : i + batch], m[i : i + batch])


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


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
    parser.add_argument("--profile", action="store_true", help="cProfile one daemon run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        train_small_profile(root, kind=args.kind, window=args.window, hop=args.hop)
        registry = ProfileRegistry(root, ["bench"], "cpu", "never")
        served = registry.get("bench")
        served.scorer.batch_size = args.batch
        default = served.loaded.baseline
        baselines = AssetBaselines(
            BaselineSettings(mode=args.baselines, warmup_windows=WARMUP), Path(tmp) / "state"
        )
        engine = ScoringEngine(
            EngineSettings(device="cpu", max_batch=args.batch, max_wait_ms=0), registry, baselines
        )
        x = make_windows_for(args.assets, args.per_asset, args.window, seed=3)
        windows = ready_windows(x, args.assets, args.hop, served.geometry.period_ns)
        if args.baselines == "per_asset":
            # Warm every asset up first: the measured runs score with each asset's own baseline.
            warm = make_windows_for(args.assets, WARMUP, args.window, seed=4)
            daemon_path(engine, ready_windows(warm, args.assets, args.hop, 10**8))
            assert baselines.fitted == args.assets, baselines.fitted
        # The plain forward gets pre-made model input: scaled windows, zeros where missing.
        x_np, m_np = nan_to_mask(RobustScaler(default.center, default.scale).transform(x))
        xt, mt = torch.from_numpy(x_np), torch.from_numpy(m_np)
        detector = served.scorer.detector

        def run_daemon() -> int:
            return daemon_path(engine, windows)

        def run_plain() -> None:
            plain_path(detector, xt, mt, args.batch)

        run_plain()
        run_daemon()
        t_plain, t_daemon = [], []
        for _ in range(args.repeats):
            t_plain.append(timed(run_plain))
            t_daemon.append(timed(run_daemon))
        n = len(windows)
        plain, ours = n / statistics.median(t_plain), n / statistics.median(t_daemon)
        best = min(t_plain) / min(t_daemon)
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs,"
            f" {platform.processor() or platform.machine()}"
        )
        print(
            f"{args.kind} profile: window {args.window}, hop {args.hop}, {len(CHANNELS)} channels;"
            f" {args.assets} assets x {args.per_asset} windows = {n}; batch {args.batch};"
            f" baselines {args.baselines}; median of {args.repeats}"
        )
        print(f"plain torch forward        : {plain:10.0f} windows/s")
        print(f"daemon engine + points     : {ours:10.0f} windows/s")
        print(f"ratio daemon/plain (median): {ours / plain:10.2f}")
        print(f"ratio daemon/plain (best)  : {best:10.2f}")
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(run_daemon)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
