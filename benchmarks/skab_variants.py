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
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from skab import (
    DEFAULT_ROOT,
    RESULTS_DIR,
    DetectorSpec,
    RunResult,
    _clean,
    aggregate,
    load_skab,
    machine,
    references,
    run_protocols,
    summarise,
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


ORDER = ("plain", "pca", "variational", "denoising", "sparse", "deep", "contractive")


def summarise_runs(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Metrics per run on the report subset. The concatenated VUS-PR (TSB-AD, about a minute a
    run here) is computed for the daemon's protocol, global+baseline, only."""
    rows = []
    for run in runs:
        m = summarise(run, "report", concat_vus=run.protocol == "global+baseline", file_vus=False)
        rows.append({"detector": run.detector, "protocol": run.protocol, "seed": run.seed, **m})
    return rows


def markdown(rows: Sequence[dict[str, Any]], refs: dict[str, Any]) -> str:
    """detector x protocol, mean ± std over seeds."""
    cols = (
        ("VUS-PR", "vus_pr", 1.0, 3),
        ("AUC-PR", "auc_pr", 1.0, 3),
        ("F1", "f1", 1.0, 3),
        ("FAR %", "far", 100.0, 1),
        ("MAR %", "mar", 100.0, 1),
        ("event recall", "event_recall", 1.0, 2),
        ("FA/h", "false_alarms_per_hour", 1.0, 1),
        ("train s", "train_seconds", 1.0, 1),
    )
    head = ["detector", "protocol", "seeds", *[c[0] for c in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for proto in PROTOCOLS:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["protocol"] == proto:
                groups.setdefault(r["detector"], []).append(r)
        for det, rs in groups.items():
            cells = []
            for _, key, f, d in cols:
                a = aggregate([r[key] for r in rs])
                cells.append(
                    "-" if a["n"] == 0 else f"{a['mean'] * f:.{d}f} ± {a['std'] * f:.{d}f}"
                )
            lines.append(f"| {det} | {proto} | {len(rs)} | " + " | ".join(cells) + " |")
        for ref, st in refs.get(proto, {}).items():
            cells = [
                "-"
                if key == "train_seconds" or not math.isfinite(st.get(key, math.nan))
                else f"{st[key] * f:.{d}f}"
                for _, key, f, d in cols
            ]
            lines.append(f"| ({ref}) | {proto} | - | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    specs = variant_specs()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="the SKAB folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--detectors", nargs="+", default=list(ORDER), choices=list(specs))
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (more can be far slower on a busy machine)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    data = load_skab(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "skab_variants.jsonl"  # one line per run, written as runs finish
    partial.write_text("")
    rows: list[dict[str, Any]] = []
    refs: dict[str, Any] = {}
    for name in args.detectors:
        runs = run_protocols([specs[name]], args.seeds, data, PROTOCOLS, list(data.files))
        new = summarise_runs(runs)
        rows += new
        for run in runs:
            refs.setdefault(run.protocol, references(run, "report", seed=0))
        with partial.open("a") as f:
            for r in new:
                f.write(json.dumps(_clean(r)) + "\n")
        print(markdown([r for r in rows if r["detector"] == name], {}), flush=True)
    elapsed = time.perf_counter() - started
    print(f"\n== SKAB, 30 non-tuning files; mean ± std over seeds {args.seeds}")
    print(markdown(rows, refs))
    print(f"\nwall time {elapsed:.0f} s, torch threads {torch.get_num_threads()}")
    payload = {
        "command": "python benchmarks/skab_variants.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "wall_seconds": round(elapsed, 1),
        "seeds": list(args.seeds),
        "detectors": {specs[d].name: specs[d].describe() for d in args.detectors},
        "per_seed": rows,
        "references": refs,
    }
    (args.out / "skab_variants.json").write_text(json.dumps(_clean(payload), indent=1) + "\n")
    print(f"json: {args.out / 'skab_variants.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
