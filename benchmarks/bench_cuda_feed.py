"""CUDA: the daemon's scoring path, host-to-device feed included, against a plain forward.

For each dtype (fp32, bf16, fp16) and batch size (1 to 65,536 assets), in one process:
  plain   the model's forward on windows already on the device (the ceiling);
  daemon  what the engine does per hop: the `hop` new rows of every asset cross the bus from
          pinned memory into the per-asset DeviceHistory, windows are gathered and scaled on the
          device, the forward runs, per-channel errors come back to the host and are scored
          with the asset's baseline;
  naive   whole windows copied from pageable host memory, then the same forward (what the
          device-side history avoids).
Prints windows/s for each and the ratio daemon/plain. Runs in well under 5 minutes on an H100.

    python benchmarks/bench_cuda_feed.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from daemon.device_history import DeviceHistory
from seqae.calibrate import Baseline
from seqae.model import ModelConfig, SequenceAutoencoder
from seqae.score import Scorer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def unit_baseline(channels: int) -> Baseline:
    return Baseline(
        center=np.zeros(channels, np.float32),
        scale=np.ones(channels, np.float32),
        err_mean=np.full(channels, 0.5),
        err_sq_mean=np.full(channels, 0.3),
        precision=np.eye(channels),
        threshold=10.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--hop", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="small batches only (a CPU smoke run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    w, c, hop = args.window, args.channels, args.hop
    batches = [1, 16, 256, 4096] if args.quick else [1, 16, 256, 4096, 16384, 65536]
    repeats = 3 if args.quick else 10
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}; window {w} x {c} channels, hop {hop}, LSTM hidden {args.hidden}")
    print(
        f"{'dtype':>5} {'batch':>6} {'plain win/s':>12} {'daemon win/s':>13} {'naive win/s':>12} {'daemon/plain':>13}"
    )
    baseline = unit_baseline(c)
    for label, dtype in DTYPES.items():
        if device.type == "cpu" and dtype != torch.float32:
            continue
        model = SequenceAutoencoder(ModelConfig(c, w, hidden_size=args.hidden, latent_size=16))
        scorer = Scorer(model.to(dtype), device=str(device))
        for n in batches:
            t_plain, t_daemon, t_naive = measure(
                scorer, device, dtype, n, w, c, hop, baseline, repeats
            )
            print(
                f"{label:>5} {n:>6} {n / t_plain:>12,.0f} {n / t_daemon:>13,.0f} {n / t_naive:>12,.0f}"
                f" {t_plain / t_daemon:>13.2f}"
            )


def measure(
    scorer: Scorer,
    device: torch.device,
    dtype: torch.dtype,
    n: int,
    w: int,
    c: int,
    hop: int,
    baseline: Baseline,
    repeats: int,
) -> tuple[float, float, float]:
    """Seconds per call of the plain forward, the daemon's path and the naive copy, for n assets."""
    rng = np.random.default_rng(n)
    history = DeviceHistory(c, w, device, capacity=n, dtype=dtype)
    slots = np.array([history.slot(f"asset-{i}") for i in range(n)], np.int64)
    history.append(np.repeat(slots, w), rng.normal(size=(n * w, c)).astype(np.float32))
    new_slots = np.tile(slots, hop)
    new_rows = rng.normal(size=(n * hop, c)).astype(np.float32)
    center = torch.zeros(n, c, device=device)
    scale = torch.ones(n, c, device=device)
    x_dev = torch.randn(n, w, c, device=device, dtype=dtype)
    m_dev = torch.ones(n, w, c, device=device, dtype=torch.bool)
    host_windows = rng.normal(size=(n, w, c)).astype(np.float32)

    def plain() -> None:
        with torch.inference_mode():
            scorer.detector.reconstruct(x_dev, m_dev)

    def daemon_path() -> None:
        history.append(new_slots, new_rows)
        feats = scorer.features_raw(history.gather(slots), center, scale)
        baseline.scores(feats.cpu().numpy())

    def naive() -> None:
        x = torch.from_numpy(host_windows).to(device).to(dtype)
        with torch.inference_mode():
            scorer.detector.reconstruct(x, torch.ones_like(x, dtype=torch.bool))

    return (
        timed(plain, device, repeats),
        timed(daemon_path, device, repeats),
        timed(naive, device, repeats),
    )


if __name__ == "__main__":
    main()
