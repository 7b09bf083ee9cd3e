"""Start-up time of `seqae` commands against `python -c pass`, measured in the same run.

Each command runs in a fresh process, as a user or a protocol script calls it. The runs of all
commands alternate (round-robin), so load from other processes hits each of them alike; the
median wall time of the runs is reported with its ratio to the bare interpreter, and the peak
resident memory of the command's process.

Light commands (no model): --version, --help, config check, models list, models show, and a
command's --help. Model commands load a (tiny PCA) profile: `score` reads a file and scores it.

    python benchmarks/bench_startup.py
    python benchmarks/bench_startup.py --runs 9 --json benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS: list[tuple[str, list[str]]] = [
    ("--version", ["--version"]),
    ("--help", ["--help"]),
    ("config check", ["config", "check"]),
    ("models list", ["models", "list"]),
    ("models show p", ["models", "show", "p"]),
    ("train --help", ["train", "--help"]),
    ("score (tiny pca)", ["score", "{data}", "--profile", "p", "--out", "{out}"]),
]


def seqae_argv() -> list[str]:
    """The console script beside this interpreter (what users run), else `python -m daemon.cli`."""
    script = Path(sys.executable).parent / "seqae"
    return [str(script)] if script.exists() else [sys.executable, "-m", "daemon.cli"]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err.strip()}")
    return wall, usage.ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux


def make_store(folder: Path, env: dict[str, str]) -> Path:
    """A tiny synthetic history and a PCA profile `p` trained on it; returns the data file."""
    cmd = seqae_argv()
    steps = [
        ["synth", str(folder / "data"), "--assets", "1", "--samples", "600", "--normal"],
        ["train", str(folder / "data" / "pump-1.csv"), "--profile", "p", "--kind", "pca"],
    ]
    steps[1] += ["--window", "10", "--hop", "2"]
    for step in steps:
        subprocess.run(cmd + step, env=env, check=True, capture_output=True)
    return folder / "data" / "pump-1.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="Runs per command (median reported).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="seqae-startup-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "SEQAE_MODELS": str(folder / "models")}
        data = make_store(folder, env)
        cases = {"python -c pass": [sys.executable, "-c", "pass"]}
        for name, argv in COMMANDS:
            filled = [a.format(data=data, out=folder / "scores.csv") for a in argv]
            cases[name] = seqae_argv() + filled
        walls: dict[str, list[float]] = {name: [] for name in cases}
        peaks: dict[str, list[float]] = {name: [] for name in cases}
        for argv in cases.values():  # one warm-up run each: the page cache, not the code
            timed(argv, env)
        for _ in range(args.runs):
            for name, argv in cases.items():
                wall, peak = timed(argv, env)
                walls[name].append(wall)
                peaks[name].append(peak)

    base = statistics.median(walls["python -c pass"])
    print(f"{platform.node()}  {platform.python_version()}  {os.cpu_count()} cpus  ", end="")
    print(f"load {os.getloadavg()[0]:.2f}  runs {args.runs}")
    print(f"{'command':<20} {'median s':>9} {'min s':>7} {'x python':>9} {'peak MB':>8}")
    rows = []
    for name in cases:
        med, low = statistics.median(walls[name]), min(walls[name])
        peak = statistics.median(peaks[name])
        print(f"{name:<20} {med:>9.3f} {low:>7.3f} {med / base:>9.1f} {peak:>8.0f}")
        rows.append(
            {"command": name, "median_s": med, "min_s": low, "ratio": med / base, "peak_mb": peak}
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
