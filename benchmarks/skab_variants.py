"""Every autoencoder variant and the PCA baseline through the honest SKAB protocol.

The protocol is benchmarks/skab.py's: one network trained on the first 80% of
``anomaly-free.csv`` and calibrated on the rest (``global``), and the same network with a
per-asset baseline re-fitted on each file's first 400 rows (``global+baseline``, the daemon's
warm-up calibration). The per-file protocol (one model per file) is left out here: it costs 33
trainings per variant and seed and does not describe the daemon. Variant settings are the
library defaults on the textbook architecture (window 10, hidden 32, latent 16), not tuned;
the ``report`` subset leaves out the valve2 tuning files.

Run: ``python benchmarks/skab_variants.py`` (``--help`` for options); prints a markdown table
(mean ± std over seeds) and writes benchmarks/results/skab_variants.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from skab import (  # noqa: E402
    DEFAULT_ROOT,
    RESULTS_DIR,
    DetectorSpec,
    _clean,
    build_table,
    format_table,
    load_skab,
    machine,
    run_protocols,
    subset_names,
)

TEXTBOOK = {"hidden_size": 32, "latent_size": 16}
PROTOCOLS = ("global", "global+baseline")


def variant_specs() -> dict[str, DetectorSpec]:
    def lstm(name: str, **cfg: object) -> DetectorSpec:
        return DetectorSpec(name, "lstm", {**TEXTBOOK, **cfg}, score_kind="mahalanobis")

    return {
        "plain": lstm("plain"),
        "deep": lstm("deep", variant="deep", num_layers=2),
        "denoising": lstm("denoising", variant="denoising"),
        "sparse": lstm("sparse", variant="sparse"),
        "contractive": lstm("contractive", variant="contractive"),
        "variational": lstm("variational", variant="variational"),
        "pca": DetectorSpec("pca", "pca", {}, score_kind="mahalanobis"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    specs = variant_specs()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="the SKAB folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--detectors", nargs="+", default=list(specs), choices=list(specs))
    ap.add_argument("--epochs", type=int, default=None, help="override every spec's epochs")
    ap.add_argument("--files", choices=("all", "tuning"), default="all", help="tuning: valve2 only")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (more can be far slower on a busy machine)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    data = load_skab(args.data)
    names = subset_names(data.files, args.files)
    chosen = [specs[d] for d in args.detectors]
    if args.epochs is not None:
        from dataclasses import replace

        chosen = [replace(s, epochs=args.epochs) for s in chosen]
    runs = run_protocols(chosen, args.seeds, data, PROTOCOLS, names)
    subsets = ("tuning",) if args.files == "tuning" else ("report", "all")
    table = build_table(runs, subsets, concat_vus_subsets=subsets)
    elapsed = time.perf_counter() - started
    for subset in subsets:
        print(f"\n== SKAB {subset}; mean ± std over seeds {args.seeds}")
        print(format_table(table, subset, markdown=True))
    print(f"\nwall time {elapsed:.0f} s, torch threads {torch.get_num_threads()}")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": "python benchmarks/skab_variants.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "wall_seconds": round(elapsed, 1),
        "seeds": list(args.seeds),
        "detectors": {s.name: s.describe() for s in chosen},
        "table": table,
    }
    name = "skab_variants.json" if args.files == "all" else "skab_variants_tuning.json"
    (args.out / name).write_text(json.dumps(_clean(payload), indent=1) + "\n")
    print(f"json: {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
