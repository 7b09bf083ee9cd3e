"""Alarm figures of the shipped example config, through `seqae backtest`'s code path.

    python benchmarks/backtest_alarms.py plant   # the synthetic pump plant (issue 9)
    python benchmarks/backtest_alarms.py skab    # SKAB, every file one asset with its own warm-up

Each history goes through `daemon.backtest.backtest` (the daemon's streaming core) under
`configs/daemon.example.toml`, and under variants of its `[baselines]` section, all in one run so
the rows compare. Figures: alert episodes, false alerts per day (spans not labelled), faults
found (labelled spans overlapped by an alert), median delay, time calibrating and shifted.

Plant: a profile is trained with the demo's recipe (4 pumps x 6 h normal history, seed 0,
LSTM-AE window 30, hop 5, 10 epochs); `live` is the demo's live hour (seed 1, 5 faults),
`healthy` 4 pumps x 8 h (seed 2), `faulty` 6 pumps x 6 h with up to 3 faults each (seed 3),
`steps` 4 healthy pumps x 6 h (seed 4) whose speed setpoint steps for two hours (x0.8, x0.82,
x1.2, x0.78): an operating-point change, never labelled.

SKAB: a profile is trained on the first 80% of `anomaly-free.csv` (window 20, hop 1, 15 epochs);
each test file is replayed as one asset, rows at 1 s (SKAB's rows are about 1 s apart with
gaps, and SKAB labels rows); `valve2/` is the tuning group, the other files the report group.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.backtest import AssetFigures, backtest, plot, with_profile  # noqa: E402
from daemon.settings import DaemonSettings, load_settings  # noqa: E402
from seqae.data import Series, read_series  # noqa: E402
from seqae.synth import generate_asset, generate_plant  # noqa: E402
from seqae.train import train_profile  # noqa: E402

EXAMPLE = REPO / "configs" / "daemon.example.toml"
SKAB = REPO.parent / "shared" / "datasets" / "skab"
HOUR = 3600
START = 1_767_225_600_000_000_000
VARIANTS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "prior_windows=0": {"prior_windows": 0.0},
    "prior_windows=200": {"prior_windows": 200.0},
    "mode=model": {"mode": "model"},
}


def settings_for(models_root: Path, profile: str, **baselines: Any) -> DaemonSettings:
    s = load_settings(EXAMPLE)
    s = with_profile(s, profile)
    profiles = s.profiles.model_copy(update={"models_root": models_root})
    return s.model_copy(
        update={"profiles": profiles, "baselines": s.baselines.model_copy(update=baselines)}
    )


def plant_sets() -> dict[str, list[Series]]:
    def hours(n: float) -> int:
        return int(n * HOUR)

    live = generate_plant(4, hours(1), seed=1, start_ns=START + 6 * HOUR * 10**9)
    healthy = generate_plant(4, hours(8), seed=2, with_faults=False)
    faulty = generate_plant(6, hours(6), seed=3, healthy_assets=1, max_faults_per_asset=3)
    steps = [
        generate_asset(
            f"pump-{i + 1}", hours(6), seed=4, setpoint_steps=[(at, f), (at + hours(2), 1 / f)]
        )[0]
        for i, (at, f) in enumerate([(7200, 0.8), (9000, 0.82), (10800, 1.2), (5400, 0.78)])
    ]
    return {
        "live": [s for s, _ in live.values()],
        "healthy": [s for s, _ in healthy.values()],
        "faulty": [s for s, _ in faulty.values()],
        "steps": steps,
    }


def train_plant(root: Path) -> None:
    history = generate_plant(4, 6 * HOUR, seed=0, with_faults=False)
    train_profile(
        [s for s, _ in history.values()],
        models_root=root,
        profile="pumps",
        window=30,
        hop=5,
        epochs=10,
        device="cpu",
        progress=False,
    )


def skab_files() -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {"tuning": [], "report": []}
    for folder in ("valve1", "valve2", "other"):
        for path in sorted((SKAB / folder).glob("*.csv"), key=lambda p: int(p.stem)):
            groups["tuning" if folder == "valve2" else "report"].append(path)
    return groups


def at_one_hertz(series: Series, asset: str) -> Series:
    stamps = START + np.arange(len(series), dtype=np.int64) * 10**9
    return replace(series, timestamps=stamps, asset=asset)


def train_skab(root: Path) -> list[str]:
    free = read_series(SKAB / "anomaly-free" / "anomaly-free.csv", sep=";")
    free = at_one_hertz(free, "anomaly-free")
    train_profile(
        [free.slice(0, int(0.8 * len(free)))],
        models_root=root,
        profile="skab",
        window=20,
        hop=1,
        epochs=15,
        device="cpu",
        progress=False,
    )
    return free.channels


def skab_sets(channels: list[str]) -> dict[str, list[Series]]:
    out: dict[str, list[Series]] = {}
    for group, paths in skab_files().items():
        out[group] = [
            at_one_hertz(
                read_series(p, sep=";", channels=channels, label_col="anomaly"),
                f"{p.parent.name}-{p.stem}",
            )
            for p in paths
        ]
    return out


def row(name: str, variant: str, t: AssetFigures) -> dict[str, Any]:
    return {"set": name, "variant": variant, **asdict(t)}


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'set':<8} {'variant':<18} {'episodes':>8} {'false/day':>9} {'normal %':>8} "
        f"{'faults':>9} "
        f"{'delay s':>8} {'calib. s':>9} {'shifted s':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        found = f"{r['detected']}/{r['faults']}" if r["faults"] else "-"
        delay = "-" if r["median_delay_s"] is None else f"{r['median_delay_s']:.0f}"
        print(
            f"{r['set']:<8} {r['variant']:<18} {r['episodes']:>8} "
            f"{r['false_alerts_per_day']:>9.2f} {100 * r['alerted_normal_share']:>8.1f} "
            f"{found:>9} {delay:>8} "
            f"{r['calibrating_s']:>9.0f} {r['shifted_s']:>9.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=("plant", "skab"))
    parser.add_argument("--models", type=Path, default=None, help="reuse a trained profile")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.models or Path(tmp)
        if args.dataset == "plant":
            profile = "pumps"
            if args.models is None:
                train_plant(root)
            sets = plant_sets()
        else:
            profile = "skab"
            channels = train_skab(root) if args.models is None else None
            if channels is None:
                meta = json.loads(next((root / "skab").glob("v*/model.json")).read_text())
                channels = meta["channels"]
            sets = skab_sets(channels)
        rows = []
        for variant, overrides in VARIANTS.items():
            settings = settings_for(root, profile, **overrides)
            for name, series in sets.items():
                result = backtest(settings, series, progress=False)
                rows.append(row(name, variant, result.report.total))
                if variant == "shipped":
                    args.out.mkdir(parents=True, exist_ok=True)
                    plot(result, args.out / f"backtest_{args.dataset}_{name}.png")
                print(f"  {variant} {name}: done", file=sys.stderr, flush=True)
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"backtest_{args.dataset}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
