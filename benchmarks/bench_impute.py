"""Imputation and denoising against the naive methods, on holes cut from normal data.

For each data set a profile is trained on its first part (normal data); `seqae impute`'s rule
(method per channel and gap length) is chosen on that same training part; holes of 1, 2, 5,
10, 20 and 50 samples are then cut, channel by channel, from the later, held-out part and
filled by forward fill, linear interpolation, the masked reconstruction ("model"), the
reconstruction bridged onto both neighbours ("bridge") and the chosen rule ("impute").
Errors are in units of each channel's standard deviation on the held-out part, averaged over
channels (every channel gets the same number of holes). Data sets: the synthetic pump plant
and SKAB's anomaly-free file (read in place).

Denoising (synthetic plant only): the plant is generated twice from the same random streams,
once with its sensor noise and once without, so the noise-free signal is known; a denoising
profile trained on noisy history denoises noisy held-out data, and its RMSE against the clean
signal is compared with the raw readings' (which is the sensor noise itself). Also at 5x the
plant's noise, where the reconstruction's own error matters less.

    python benchmarks/bench_impute.py [--epochs 15] [--out benchmarks/results/impute.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqae import synth
from seqae.data import Series, read_series
from seqae.extras import (
    GAP_LENGTHS,
    IMPUTE_METHODS,
    choose_rule,
    cut_holes,
    denoise_series,
    fill_gap,
    gap_runs,
    mean_reconstruction,
)
from seqae.train import TrainConfig, fit_profile

ROOT = Path(__file__).resolve().parents[1]
SKAB = ROOT.parent / "shared" / "datasets" / "skab" / "anomaly-free" / "anomaly-free.csv"
WINDOW, HOP = 30, 5


def row_series(values: np.ndarray, channels: list[str], name: str) -> Series:
    return Series(
        np.arange(len(values), dtype=np.int64) * 1_000_000_000, values, channels, None, name
    )


@contextmanager
def plant_noise(factor: float) -> Iterator[None]:
    """The synthetic plant with its sensor noise scaled by `factor` (0: noise-free). The noise
    is drawn either way, so every other random stream, and so the signal, stays the same."""
    saved = dict(synth.NOISE_STD)
    synth.NOISE_STD.update({c: v * factor for c, v in saved.items()})
    try:
        yield
    finally:
        synth.NOISE_STD.update(saved)


def pump(samples: int, seed: int, noise: float = 1.0) -> Series:
    with plant_noise(noise):
        series, _ = synth.generate_asset("pump-1", samples, seed=seed)
    return row_series(series.values, list(series.channels), f"pump-1-seed{seed}")


def train(series: Series, variant: str, epochs: int, seed: int) -> Any:
    fitted = fit_profile(
        [series],
        profile="bench",
        window=WINDOW,
        hop=HOP,
        period_s=1.0,
        model_cfg={"hidden_size": 64, "latent_size": 16, "variant": variant},
        train_cfg=TrainConfig(
            epochs=epochs, seed=seed, device="cpu" if not torch.cuda.is_available() else "auto"
        ),
        progress=False,
    )
    return fitted


def imputation_table(
    fitted: Any, normal: np.ndarray, held_out: np.ndarray, per_channel: int, seed: int
) -> dict[str, Any]:
    scaler = fitted.baseline.scaler
    started = time.perf_counter()
    rule, chosen_on = choose_rule(fitted.detector, normal, scaler, WINDOW, seed=seed)
    choose_s = time.perf_counter() - started
    std = np.nanstd(held_out, axis=0)
    rows: dict[str, Any] = {}
    for length in GAP_LENGTHS:
        holes = cut_holes(held_out, length, per_channel=per_channel, spacing=WINDOW, seed=seed + 1)
        holed = held_out.copy()
        holed[holes] = np.nan
        recon = scaler.inverse(
            mean_reconstruction(
                fitted.detector, scaler.transform(holed), WINDOW, targets=holes.any(axis=1)
            ).astype(np.float32)
        ).astype(np.float64)
        filled = {m: holed.astype(np.float64) for m in (*IMPUTE_METHODS, "impute")}
        for c in range(holed.shape[1]):
            column = holed[:, c].astype(np.float64)
            for start, stop in gap_runs(np.where(holes[:, c], np.nan, 0.0)):
                for m in IMPUTE_METHODS:
                    filled[m][start:stop, c] = fill_gap(column, recon[:, c], start, stop, m)
                filled["impute"][start:stop, c] = filled[rule.method_for(c, stop - start)][
                    start:stop, c
                ]
        row: dict[str, Any] = {"holes_per_channel": (holes.sum(axis=0) // length).tolist()}
        for m, values in filled.items():
            err = (values - held_out) / std
            per_ch_mae = [float(np.abs(err[holes[:, c], c]).mean()) for c in range(len(std))]
            per_ch_rmse = [
                float(np.sqrt((err[holes[:, c], c] ** 2).mean())) for c in range(len(std))
            ]
            row[m] = {
                "mae": float(np.mean(per_ch_mae)),
                "rmse": float(np.mean(per_ch_rmse)),
                "mae_per_channel": per_ch_mae,
                "rmse_per_channel": per_ch_rmse,
            }
        rows[str(length)] = row
    return {
        "rule": {
            str(length): [r[i] for r in rule.methods] for i, length in enumerate(rule.lengths)
        },
        "chosen_on": chosen_on,
        "choose_seconds": round(choose_s, 1),
        "gaps": rows,
    }


def denoising(epochs: int, samples: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for factor in (1.0, 5.0):
        history = pump(samples, seed=0, noise=factor)
        noisy = pump(samples // 2, seed=1, noise=factor)
        clean = pump(samples // 2, seed=1, noise=0.0).values
        fitted = train(history, "denoising", epochs, seed)
        denoised = denoise_series(fitted.detector, noisy, fitted.baseline.scaler, WINDOW).values
        raw_rmse = np.sqrt(((noisy.values - clean) ** 2).mean(axis=0))
        den_rmse = np.sqrt(np.nanmean((denoised - clean) ** 2, axis=0))
        out[f"noise_x{factor:g}"] = {
            "channels": list(noisy.channels),
            "noise_std": [synth.NOISE_STD[c] * factor for c in noisy.channels],
            "raw_rmse": raw_rmse.tolist(),
            "denoised_rmse": den_rmse.tolist(),
            "reduction": (1.0 - den_rmse / raw_rmse).tolist(),
            "total_raw_over_denoised": float(
                (raw_rmse / noisy.values.std(axis=0)).sum()
                / (den_rmse / noisy.values.std(axis=0)).sum()
            ),
        }
    return out


def print_table(name: str, result: dict[str, Any]) -> None:
    methods = (*IMPUTE_METHODS, "impute")
    print(f"\n{name}: MAE / RMSE in channel standard deviations (rule chosen on training data)")
    print("gap  " + "".join(f"{m:>18}" for m in methods))
    for length, row in result["gaps"].items():
        cells = "".join(f"{row[m]['mae']:>9.4f}/{row[m]['rmse']:<8.4f}" for m in methods)
        print(f"{length:>3}  {cells}")
    print("rule (per channel):", json.dumps(result["rule"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--samples", type=int, default=14400, help="synthetic history length")
    ap.add_argument("--holes", type=int, default=24, help="holes per channel and gap length")
    ap.add_argument("--variants", default="plain,denoising")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "impute.json")
    ap.add_argument("--skip-denoise", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)

    sets = {"synthetic": (pump(args.samples, seed=0), pump(args.samples // 2, seed=1).values)}
    if SKAB.exists():
        skab = read_series(SKAB, sep=";")
        cut = int(0.6 * len(skab))
        sets["skab"] = (
            row_series(skab.values[:cut], list(skab.channels), "skab"),
            skab.values[cut:],
        )
    else:
        print(f"SKAB not found at {SKAB}: synthetic plant only")
    report: dict[str, Any] = {"window": WINDOW, "hop": HOP, "epochs": args.epochs, "imputation": {}}
    for variant in args.variants.split(","):
        for name, (normal, held_out) in sets.items():
            fitted = train(normal, variant, args.epochs, args.seed)
            result = imputation_table(fitted, normal.values, held_out, args.holes, args.seed)
            report["imputation"][f"{name}/{variant}"] = result
            print_table(f"{name}, {variant} model", result)
    if not args.skip_denoise:
        report["denoising"] = denoising(args.epochs, args.samples, args.seed)
        for key, d in report["denoising"].items():
            print(f"\ndenoising, plant noise {key}:")
            for ch, raw, den in zip(d["channels"], d["raw_rmse"], d["denoised_rmse"], strict=True):
                print(
                    f"  {ch:<14} RMSE vs clean: raw {raw:.4f}  denoised {den:.4f}  ({1 - den / raw:+.0%})"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
