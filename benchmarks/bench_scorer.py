"""Batched scorer against a plain torch forward of the same model, in the same process (CPU).

(a) plain: `model(x, mask)` under `torch.inference_mode` on pre-made, pre-scaled tensors;
(b) scorer: `Scorer.score(windows_raw, baseline)` end to end: scaling, masking, forward,
    per-channel errors, Mahalanobis scores and contributions, threshold, `shifted`.
Both walk the same windows in calls of `batch` windows (the daemon's micro-batches). The runs
alternate and the median of the repeats is reported, so load from other processes hits both.
Prints windows/s for each (median) and the ratio scorer / plain (>= 1.0: the scorer is not
slower), also from the fastest run of each, which shared machines disturb least.

    python benchmarks/bench_scorer.py
    python benchmarks/bench_scorer.py --windows 4096 --batches 32,256,1024,4096 --repeats 9 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from seqae.calibrate import Baseline, fit_baseline
from seqae.data import RobustScaler, make_windows, nan_to_mask
from seqae.model import ModelConfig, SequenceAutoencoder
from seqae.score import Scorer


def plant(rows: int, channels: int, seed: int) -> np.ndarray:
    """Periodic channels with noise and ~1 % missing samples, raw units [rows, C]."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    periods = rng.uniform(20, 200, channels)
    values = 10 + 3 * np.sin(2 * np.pi * t / periods) + rng.normal(0, 0.2, (rows, channels))
    values[rng.random(values.shape) < 0.01] = np.nan
    return values.astype(np.float32)


def build(
    window: int, channels: int, hidden: int, latent: int
) -> tuple[SequenceAutoencoder, Baseline]:
    torch.manual_seed(0)
    model = SequenceAutoencoder(
        ModelConfig(channels, window, hidden_size=hidden, latent_size=latent)
    )
    model.eval()
    calib, _ = make_windows(plant(3000, channels, seed=1), window, 5)
    baseline = fit_baseline(Scorer(model, device="cpu"), calib, hop=5)
    return model, baseline


def plain_forward(model: SequenceAutoencoder, x: torch.Tensor, m: torch.Tensor, batch: int) -> None:
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            model(x[i : i + batch], m[i : i + batch])


def scorer_score(scorer: Scorer, windows: np.ndarray, baseline: Baseline, batch: int) -> None:
    for i in range(0, len(windows), batch):
        scorer.score(windows[i : i + batch], baseline)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2048)
    parser.add_argument("--batches", default="32,256,2048")
    parser.add_argument("--window", type=int, default=30)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, baseline = build(args.window, args.channels, args.hidden, args.latent)
    scorer = Scorer(model, device="cpu")
    windows, _ = make_windows(
        plant(args.windows + args.window, args.channels, seed=2), args.window, 1
    )
    windows = windows[: args.windows]
    # The plain forward gets what the scorer builds itself: scaled windows, zeros where missing.
    x_np, m_np = nan_to_mask(RobustScaler(baseline.center, baseline.scale).transform(windows))
    x, m = torch.from_numpy(x_np), torch.from_numpy(m_np)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    )
    print(
        f"model: window {args.window}, {args.channels} channels, hidden {args.hidden}, latent {args.latent}; "
        f"{len(windows)} windows; median of {args.repeats} runs"
    )
    print(f"{'batch':>6} {'plain win/s':>12} {'scorer win/s':>13} {'ratio':>6} {'best ratio':>11}")
    for batch in (int(b) for b in args.batches.split(",")):
        scorer.batch_size = batch
        plain = partial(plain_forward, model, x, m, batch)
        scored = partial(scorer_score, scorer, windows, baseline, batch)
        plain()  # warm-up: allocator, weight layout
        scored()
        t_plain, t_scorer = [], []
        for _ in range(args.repeats):
            t_plain.append(timed(plain))
            t_scorer.append(timed(scored))
        rate_plain = len(windows) / statistics.median(t_plain)
        rate_scorer = len(windows) / statistics.median(t_scorer)
        best = min(t_plain) / min(t_scorer)  # least disturbed run of each, for a loaded machine
        print(
            f"{batch:>6} {rate_plain:>12.0f} {rate_scorer:>13.0f} {rate_scorer / rate_plain:>6.2f}"
            f" {best:>11.2f}"
        )


if __name__ == "__main__":
    main()
