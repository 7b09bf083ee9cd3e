"""Detector quality on the harder synthetic plant (issue 10): every fault kind, through the daemon.

    python benchmarks/plant_detectors.py                          # lstm, pca; 8 channels; seed 0
    python benchmarks/plant_detectors.py --kinds lstm,pca,fused --seeds 0,1,2 --channels 50

Per seed, one plant of `--pumps` hard pumps (`seqae.synth`, ``difficulty="hard"``, its pumps drawn
by the seed) gives three histories:

- train: `--train-hours` of normal operation per pump. Each detector kind is fitted on it with
  `seqae.train.fit_profile(kind=...)` (which holds out its last 20 % to calibrate the deployed
  threshold) and saved as profile `pumps`.
- tuning: `--tune-hours` more of normal operation per pump, another day. The only place the
  matched operating points are chosen (below).
- test: `--hours` per pump for every fault kind in `seqae.synth.ALL_FAULT_KINDS` (each pump one
  fault of that kind, starting 25-40 % into its history, as asset ``<pump>.<kind>``), each beside
  its healthy twin (``<pump>.<kind>.twin``: the same pump and hours without the fault, equal to
  the faulty stream up to the fault's start). The slow kinds run to the end of the history, the
  classic ones 20-40 minutes. Never used to choose anything.

Each history starts at 06:00 of a day of its own, so the daily cycle of ambient temperature and
speed keeps tuning and test inside the hours of the day that training covered (keep `--hours`
and `--tune-hours` at most `--train-hours`, or train on 24 hours).

Every history goes through `daemon.backtest.backtest`, the daemon's own streaming core under
`configs/daemon.example.toml` (per-asset warm-up and baselines, shift states, the shipped alert
rule). A fault counts as detected when the daemon raises an alert inside the fault's span (or
within one window after it) at a time its healthy twin is not in alert: the twin's data, and so
its scores, equal the faulty stream's up to the fault's start, so an alert both are in is one
that normal operation raises anyway (at a few false alarms a day an hours-long fault would otherwise
catch some by chance; the twin's own alerts in the span are reported as "chance"). The delay runs
from the fault's first sample to that alert's `open` event; a false alarm is an alert episode
that overlaps no fault, counted per day of unlabelled time.

Operating points: each detector's deployed threshold (the daemon's alerts as they are), and a
matched false-alarm rate per `--far` share (default 1 % and 0.1 %): the score/threshold ratio
that share of the tuning history's scored windows reach. The alert rule is replayed on the same
scored windows with its enter and exit levels times that ratio (the scores do not depend on the
alert rule; a replay at ratio 1 is checked to give the daemon's own events, and says so). Output:
a table per fault kind and operating point, `results/plant_detectors.json` and `.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.backtest import (  # noqa: E402
    AssetTrace,
    Backtest,
    Episode,
    asset_figures,
    backtest,
    fault_spans,
    with_profile,
)
from daemon.settings import DaemonSettings, load_settings  # noqa: E402
from seqae.alerting import AlertTracker  # noqa: E402
from seqae.artifacts import save_model  # noqa: E402
from seqae.data import Series  # noqa: E402
from seqae.synth import (  # noqa: E402
    ALL_FAULT_KINDS,
    DEFAULT_START_NS,
    SLOW_FAULT_KINDS,
    generate_asset,
)
from seqae.train import TrainConfig, fit_profile  # noqa: E402

EXAMPLE = REPO / "configs" / "daemon.example.toml"
HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS
START_HOUR = 6  # every history starts at 06:00 (of its own day)
PROFILE = "pumps"


@dataclass(frozen=True)
class Setup:
    pumps: int
    channels: int
    period_s: float
    train_hours: float
    tune_hours: float
    hours: float
    window: int
    hop: int
    epochs: int
    far: tuple[float, ...]  # matched shares of tuning windows


def log(msg: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:7.1f} s] {msg}", file=sys.stderr, flush=True)


# -- the plant -----------------------------------------------------------------------------------


def _pump(name: str, n: int, setup: Setup, seed: int, plant_seed: int, **kw: Any) -> Series:
    series, _ = generate_asset(
        name,
        n,
        period_s=setup.period_s,
        seed=seed,
        plant_seed=plant_seed,
        difficulty="hard",
        n_channels=setup.channels,
        **kw,
    )
    return series


def _days(hours: float) -> int:
    return max(1, math.ceil(hours / 24))


def histories(setup: Setup, seed: int) -> dict[str, list[Series]]:
    """train, tuning and test series of one seed's plant (see the module docstring)."""
    per_hour = round(3600 / setup.period_s)
    pumps = [f"pump-{i + 1}" for i in range(setup.pumps)]
    base = 1000 * seed
    # Each history starts at 06:00 of a day of its own: the plant's daily cycle (ambient, speed)
    # then puts tuning and test inside the hours of the day training saw, as long as they are
    # no longer. (Trained on 00:00-08:00, the 08:00-16:00 tuning hours ran 5 °C warmer than
    # any training sample: a test of extrapolation, not of fault detection.)
    train_ns = DEFAULT_START_NS + START_HOUR * HOUR_NS
    tune_ns = train_ns + _days(setup.train_hours) * DAY_NS
    test_ns = tune_ns + _days(setup.tune_hours) * DAY_NS
    n_train, n_tune = round(setup.train_hours * per_hour), round(setup.tune_hours * per_hour)
    n_test = round(setup.hours * per_hour)
    out: dict[str, list[Series]] = {
        "train": [_pump(p, n_train, setup, base + 1, seed, start_ns=train_ns) for p in pumps],
        "tuning": [_pump(p, n_tune, setup, base + 2, seed, start_ns=tune_ns) for p in pumps],
        "test": [],
    }
    for k, kind in enumerate(ALL_FAULT_KINDS):
        for j, p in enumerate(pumps):
            rng = np.random.default_rng([seed, k, j, 17])
            start = int(rng.uniform(0.25, 0.40) * n_test)
            length = n_test - start
            if kind not in SLOW_FAULT_KINDS:
                length = int(rng.uniform(20, 40) * 60 / setup.period_s)
            fault = (kind, start, min(n_test, start + length))
            faulty = _pump(p, n_test, setup, base + 10 + k, seed, start_ns=test_ns, faults=[fault])
            twin = _pump(p, n_test, setup, base + 10 + k, seed, start_ns=test_ns)
            out["test"].append(replace(faulty, asset=f"{p}.{kind}"))
            # The healthy twin carries the fault's labels: an alert of its own in that span is a
            # detection by chance, and its time outside the span counts as normal time.
            out["test"].append(replace(twin, asset=f"{p}.{kind}.twin", labels=faulty.labels))
    return out


# -- detectors through the daemon ------------------------------------------------------------------


def settings_for(models_root: Path) -> DaemonSettings:
    s = with_profile(load_settings(EXAMPLE), PROFILE)
    profiles = s.profiles.model_copy(update={"models_root": models_root})
    engine = s.engine.model_copy(update={"device": "cpu"})
    return s.model_copy(update={"profiles": profiles, "engine": engine})


# Named detectors beyond the library's kinds: (kind, model options).
NAMED_DETECTORS: dict[str, tuple[str, dict[str, Any]]] = {
    "fused-auto": ("fused", {"select": "auto"}),  # the autoencoder kept only if it generalises
    "fused-auto-r2": (
        "fused",
        {"select": "auto", "select_by": "explained", "select_ae_alone": 1.0},
    ),
    # Session 8: the same rule, PCA's features dropped when the network explains >= 90 %.
    "fused-auto-r3": ("fused", {"select": "auto", "select_by": "explained"}),
    # ... without the code's distance.
    "fused-auto-r4": (
        "fused",
        {"select": "auto", "select_by": "explained", "code_distance": False},
    ),
}


def train(kind: str, series: list[Series], setup: Setup, seed: int, root: Path) -> dict[str, Any]:
    cfg = TrainConfig(epochs=setup.epochs, seed=seed, device="cpu")
    started = time.perf_counter()
    library_kind, model_cfg = NAMED_DETECTORS.get(kind, (kind, {}))
    fitted = fit_profile(
        series,
        profile=PROFILE,
        window=setup.window,
        hop=setup.hop,
        period_s=setup.period_s,
        kind=library_kind,  # type: ignore[arg-type]  # any kind the library knows is passed through
        model_cfg=dict(model_cfg),
        train_cfg=cfg,
        progress=False,
    )
    seconds = time.perf_counter() - started
    save_model(root, PROFILE, fitted.detector, fitted.baseline, fitted.meta)
    info = {"train_seconds": round(seconds, 2), "threshold": float(fitted.baseline.threshold)}
    if "selection" in fitted.meta.training:
        info["selection"] = fitted.meta.training["selection"]
    return info


def replay(trace: AssetTrace, rule: Any, scale: float) -> list[Any]:
    """The alert rule's events on a trace's scored windows with enter and exit levels times
    `scale`; `calibrating` windows are skipped, as the core skips them."""
    levels = {"enter_level": rule.enter_level * scale, "exit_level": rule.exit_level * scale}
    scaled = rule.model_copy(update=levels)
    tracker = AlertTracker(trace.events[0].asset if trace.events else "", trace.profile)
    none, events = np.zeros(1), []
    for end, score, thr, state in zip(
        trace.end_ns, trace.score, trace.threshold, trace.state, strict=True
    ):
        if state != "calibrating":
            events += tracker.observe(scaled, end, score, thr, none, ("",))
    return events


def check_replay(result: Backtest, rule: Any) -> bool:
    """A replay at ratio 1 gives the daemon's own alert events (state, time, id)."""
    for trace in result.traces.values():
        mine = [(e.state, e.time_ns, e.alert_id) for e in replay(trace, rule, 1.0)]
        theirs = [(e.state, e.time_ns, e.alert_id) for e in trace.events]
        if mine != theirs:
            return False
    return True


def ratios(result: Backtest) -> np.ndarray:
    """score / threshold of every scored window that is not `calibrating`."""
    out = []
    for t in result.traces.values():
        keep = np.asarray(t.state) != "calibrating"
        out.append(np.asarray(t.score, np.float64)[keep] / np.asarray(t.threshold)[keep])
    return np.concatenate(out) if out else np.zeros(0)


def _episode(ep: Episode) -> dict[str, int]:
    return {"opened_ns": ep.opened_ns, "raised_ns": ep.raised_ns, "closed_ns": ep.closed_ns}


def figures(result: Backtest, rule: Any, setup: Setup, scale: float) -> list[dict[str, Any]]:
    """Per asset, with the alert rule's levels times `scale` (1: the daemon's own alerts): false
    alarms and normal days; for a faulty asset, whether the fault was detected and when.

    Detected: an alert raised inside the fault's reach (its span plus one window) at a time the
    healthy twin is not in alert. The twin's data, and so its scores and alerts, equal the faulty
    stream's up to the fault's start: an alert both are in is one normal operation raises
    anyway."""
    span_ns, hop_s = setup.window * round(setup.period_s * 1e9), setup.hop * setup.period_s
    found: dict[str, list[Episode]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for asset, series in result.series.items():
        trace = result.traces.get(asset, AssetTrace())
        if scale != 1.0:
            trace = replace(trace, events=replay(trace, rule, scale))
        fig, found[asset] = asset_figures(asset, series, trace, span_ns, hop_s)
        parts = asset.split(".")
        rows[asset] = {
            "asset": asset,
            "kind": parts[1] if len(parts) > 1 else "normal",
            "twin": len(parts) > 2,
            "in_span": bool(fig.detected),  # any alert in the reach, the backtest's own count
            "false_episodes": fig.false_episodes,
            "normal_days": fig.normal_days,
            "alerted_normal_share": fig.alerted_normal_share,
            "episodes": [_episode(ep) for ep in found[asset]],
        }
    for asset, row in rows.items():
        if row["twin"] or row["kind"] == "normal":
            continue
        (lo, hi), *_ = fault_spans(result.series[asset])
        row["fault_ns"] = [lo, hi]
        twin = found.get(f"{asset}.twin", [])
        caused = [
            ep.raised_ns
            for ep in found[asset]
            if lo <= ep.raised_ns <= hi + span_ns
            and not any(t.opened_ns <= ep.raised_ns <= t.closed_ns for t in twin)
        ]
        row["detected"] = bool(caused)
        row["delay_s"] = (min(caused) - lo) / 1e9 if caused else None
    return list(rows.values())


def _false_per_day(rows: list[dict[str, Any]]) -> float:
    days = sum(r["normal_days"] for r in rows)
    return sum(r["false_episodes"] for r in rows) / days if days > 0 else 0.0


def point_names(setup: Setup) -> list[str]:
    return ["deployed", *(f"far={f:g}" for f in setup.far)]


def run_kind(
    kind: str, sets: dict[str, list[Series]], setup: Setup, seed: int, started: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="plant-detectors-") as tmp:
        root = Path(tmp)
        info = train(kind, sets["train"], setup, seed, root)
        chosen = f", kept {info['selection']['selected']}" if "selection" in info else ""
        log(f"seed {seed} {kind}: trained in {info['train_seconds']:.1f} s{chosen}", started)
        settings = settings_for(root)
        rule = settings.alerts
        t0 = time.perf_counter()
        tuning = backtest(settings, sets["tuning"])
        r = ratios(tuning)
        levels = {"deployed": 1.0}
        levels.update({f"far={f:g}": float(np.quantile(r, 1.0 - f)) for f in setup.far})
        log(
            f"seed {seed} {kind}: tuning history scored, {len(r)} windows, "
            f"{100 * float(np.mean(r > 1.0)):.2f} % above the deployed threshold, matched levels "
            + ", ".join(f"{k}: {v:.3g} x threshold" for k, v in levels.items() if k != "deployed"),
            started,
        )
        t1 = time.perf_counter()
        test = backtest(settings, sets["test"])
        rows_s = sum(len(s) for s in sets["test"]) / max(time.perf_counter() - t1, 1e-9)
        replay_ok = check_replay(test, rule)
        log(
            f"seed {seed} {kind}: test streams through the daemon core "
            f"({rows_s:,.0f} rows/s), replay check {'identical' if replay_ok else 'DIFFERS'}",
            started,
        )
        return {
            "kind": kind,
            "seed": seed,
            **info,
            "score_seconds": round(time.perf_counter() - t0, 1),
            "tuning_windows": len(r),
            "tuning_share_above_deployed": float(np.mean(r > 1.0)),
            "levels": levels,
            "replay_identical": replay_ok,
            "tuning_false_per_day": {
                name: _false_per_day(figures(tuning, rule, setup, lv))
                for name, lv in levels.items()
            },
            "points": {name: figures(test, rule, setup, lv) for name, lv in levels.items()},
        }


# -- the summary -------------------------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]], kinds: list[str], setup: Setup) -> dict[str, Any]:
    """Per detector and operating point, per fault kind: detected/total, median delay, and how
    often the healthy twin alerted in the same span (chance); false alarms per day on the twins
    and on all unlabelled test time."""
    out: dict[str, Any] = {}
    for det in kinds:
        mine = [r for r in runs if r["kind"] == det]
        out[det] = {}
        for point in point_names(setup):
            rows = [row for r in mine for row in r["points"][point]]
            per_kind: dict[str, Any] = {}
            for fault in ALL_FAULT_KINDS:
                hits = [row for row in rows if row["kind"] == fault and not row["twin"]]
                twins = [row for row in rows if row["kind"] == fault and row["twin"]]
                delays = [row["delay_s"] for row in hits if row["detected"]]
                per_kind[fault] = {
                    "detected": sum(row["detected"] for row in hits),
                    "total": len(hits),
                    "median_delay_s": float(np.median(delays)) if delays else None,
                    "any_alert_in_span": sum(row["in_span"] for row in hits),
                    "twin_alert_in_span": sum(row["in_span"] for row in twins),
                }
            twins = [row for row in rows if row["twin"]]
            out[det][point] = {
                "level": float(np.mean([r["levels"][point] for r in mine])),
                "faults": per_kind,
                "false_per_day_twins": _false_per_day(twins),
                "false_per_day_all": _false_per_day(rows),
                "false_per_day_tuning": float(
                    np.mean([r["tuning_false_per_day"][point] for r in mine])
                ),
                "alerted_share_twins": float(
                    np.mean([row["alerted_normal_share"] for row in twins])
                ),
            }
    return out


def _delay(d: float | None) -> str:
    return "-" if d is None else f"{d / 60:.0f} min"


def table(summary: dict[str, Any], kinds: list[str], setup: Setup) -> str:
    lines = []
    pad = f" {'':>8} {'':>7}"
    for point in point_names(setup):
        title = (
            "at each detector's deployed threshold"
            if point == "deployed"
            else f"at a matched false-alarm rate: {point} of the tuning history's windows"
        )
        head = f"{'fault kind':<18}" + "".join(
            f" {k + ' found':>11} {'delay':>8} {'chance':>7}" for k in kinds
        )
        lines += ["", f"## {title}", head, "-" * len(head)]
        for fault in ALL_FAULT_KINDS:
            cells = ""
            for k in kinds:
                f = summary[k][point]["faults"][fault]
                cells += f" {str(f['detected']) + '/' + str(f['total']):>11} "
                cells += f"{_delay(f['median_delay_s']):>8} {f['twin_alert_in_span']:>7}"
            lines.append(f"{fault:<18}{cells}")
        for label, key in (
            ("false/day twins", "false_per_day_twins"),
            ("false/day tuning", "false_per_day_tuning"),
            ("level x thr", "level"),
        ):
            lines.append(
                f"{label:<18}" + "".join(f" {summary[k][point][key]:>11.3g}{pad}" for k in kinds)
            )
        total = "".join(
            f" {sum(f['detected'] for f in summary[k][point]['faults'].values()):>11d}{pad}"
            for k in kinds
        )
        lines.append(f"{'faults found':<18}{total}")
    return "\n".join(lines)


def plot(summary: dict[str, Any], kinds: list[str], setup: Setup, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faults = list(ALL_FAULT_KINDS)
    points = point_names(setup)
    x = np.arange(len(faults))
    width = 0.8 / len(kinds)
    fig, axes = plt.subplots(2, len(points), figsize=(6.5 * len(points), 8), squeeze=False)
    for col, point in enumerate(points):
        for i, k in enumerate(kinds):
            s = summary[k][point]
            total = [max(s["faults"][f]["total"], 1) for f in faults]
            share = [s["faults"][f]["detected"] / n for f, n in zip(faults, total, strict=True)]
            chance = [
                s["faults"][f]["twin_alert_in_span"] / n for f, n in zip(faults, total, strict=True)
            ]
            delay = [s["faults"][f]["median_delay_s"] for f in faults]
            label = f"{k} ({s['false_per_day_twins']:.2f} false/day)"
            axes[0, col].bar(x + i * width, share, width, label=label)
            axes[0, col].scatter(
                x + i * width,
                chance,
                marker="_",
                s=160,
                color="black",
                linewidths=2,
                zorder=3,
                label="healthy twin alerted in the span (chance)" if i == 0 else None,
            )
            axes[1, col].bar(
                x + i * width, [np.nan if d is None else d / 60 for d in delay], width, label=k
            )
        axes[0, col].set_title(
            "deployed thresholds" if point == "deployed" else f"matched: {point} of tuning windows"
        )
        axes[0, col].set_ylabel("share of faults detected (caused alert)")
        axes[0, col].set_ylim(0, 1.05)
        axes[0, col].legend(fontsize=7)
        axes[1, col].set_ylabel("median delay (min)")
        for ax in axes[:, col]:
            ax.set_xticks(x + 0.4 - width / 2, faults, rotation=35, ha="right", fontsize=8)
            ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        f"hard synthetic plant, {setup.channels} channels, {setup.pumps} pumps x "
        f"{setup.hours:g} h per fault kind, through the daemon's streaming core"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kinds",
        default="lstm,pca",
        help=f"detector kinds, comma-separated (the library's, or {', '.join(NAMED_DETECTORS)})",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--pumps", type=int, default=4)
    parser.add_argument("--hours", type=float, default=6.0, help="test history per pump and kind")
    parser.add_argument("--train-hours", type=float, default=8.0)
    parser.add_argument("--tune-hours", type=float, default=8.0)
    parser.add_argument("--period", type=float, default=1.0, help="sampling period (s)")
    parser.add_argument("--window", type=int, default=30)
    parser.add_argument("--hop", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--far", default="0.01,0.001", help="matched shares of tuning windows, comma-separated"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="plant_detectors", help="output file stem")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kinds = [k for k in args.kinds.split(",") if k]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    setup = Setup(
        args.pumps,
        args.channels,
        args.period,
        args.train_hours,
        args.tune_hours,
        args.hours,
        args.window,
        args.hop,
        args.epochs,
        tuple(float(f) for f in args.far.split(",") if f),
    )
    started = time.perf_counter()
    runs = []
    for seed in seeds:
        sets = histories(setup, seed)
        rows = {name: sum(len(s) for s in series) for name, series in sets.items()}
        log(f"seed {seed}: plant generated, rows {rows}", started)
        for kind in kinds:
            runs.append(run_kind(kind, sets, setup, seed, started))
    summary = summarise(runs, kinds, setup)
    print(table(summary, kinds, setup))
    for k in kinds:
        mine = [r for r in runs if r["kind"] == k]
        print(
            f"{k}: {100 * np.mean([r['tuning_share_above_deployed'] for r in mine]):.2f} % of "
            f"tuning windows above the deployed threshold; train "
            f"{np.mean([r['train_seconds'] for r in mine]):.0f} s, scoring "
            f"{np.mean([r['score_seconds'] for r in mine]):.0f} s per seed; replay identical: "
            f"{all(r['replay_identical'] for r in mine)}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "setup": asdict(setup),
        "kinds": kinds,
        "seeds": seeds,
        "config": str(EXAMPLE.relative_to(REPO)),
        "summary": summary,
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    plot(summary, kinds, setup, args.out / f"{args.name}.png")
    log(f"wrote {args.out / (args.name + '.json')} and .png", started)


if __name__ == "__main__":
    main()
