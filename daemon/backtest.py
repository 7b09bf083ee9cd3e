"""`seqae backtest`: a history run through the daemon's own streaming core, offline.

Each file's rows become readings, merged in time order across assets, and go through
`daemon.core.StreamCore` exactly as the Kafka loop feeds it: windows, per-asset warm-up and
baselines, scoring, shift states and the configured alert rule. Nothing is written anywhere but
the report; baselines fitted during the run live in a temporary folder.

Figures, per asset and in total:
- false alerts per day: alert episodes that overlap no labelled fault, per day not labelled,
  and the share of the time not labelled that an alert was open (an alert that never closes
  overlaps every fault, so recall alone cannot tell it from a detector);
- event recall: labelled fault spans overlapped by an alert episode (a window ends up to one
  window length after the fault's last sample and still holds it, so that much is allowed);
- detection delay: from a fault's first sample to the first alert event raised inside it;
- time `calibrating` and `shifted`: windows in that state times the hop.
"""

from __future__ import annotations

import heapq
import json
import math
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daemon.alerts import AlertEvent
from daemon.baselines import ShiftEvent
from daemon.codec import Reading
from daemon.core import CoreOutput, StreamCore
from daemon.engine import ProfileRegistry
from daemon.settings import DaemonSettings, ProfileRoute
from daemon.windows import WindowGeometry
from seqae.data import Series

SECONDS_PER_DAY = 86400.0


class BacktestError(ValueError):
    """The backtest cannot run; the message names the file, asset or setting."""


@dataclass
class AssetTrace:
    """What the core produced for one asset, window by window."""

    profile: str = ""
    end_ns: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    state: list[str] = field(default_factory=list)
    anomalous: list[bool] = field(default_factory=list)
    events: list[AlertEvent] = field(default_factory=list)
    shifts: list[ShiftEvent] = field(default_factory=list)


@dataclass
class Episode:
    asset: str
    opened_ns: int
    raised_ns: int  # the `open` event: when the alert was raised
    closed_ns: int  # the `closed` event, or the end of the history
    peak_score: float
    severity: str


@dataclass
class AssetFigures:
    asset: str
    days: float
    normal_days: float
    windows: int
    episodes: int
    false_episodes: int
    false_alerts_per_day: float
    alerted_normal_share: float  # share of the time not labelled that an alert was open
    faults: int
    detected: int
    event_recall: float | None  # None: no labelled fault
    median_delay_s: float | None  # None: nothing detected
    calibrating_s: float
    shifted_s: float
    threshold_median: float


@dataclass
class BacktestReport:
    assets: list[AssetFigures]
    total: AssetFigures
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "assets": [asdict(a) for a in self.assets],
            "total": asdict(self.total),
            "settings": self.settings,
        }

    def table(self) -> str:
        head = (
            f"{'asset':<14} {'days':>6} {'alerts':>6} {'false/day':>9} {'normal %':>8} "
            f"{'faults':>6} "
            f"{'recall':>6} {'delay s':>8} {'calib. s':>8} {'shift. s':>8} {'thr.':>8}"
        )
        lines = [head, "-" * len(head)]
        for a in [*self.assets, self.total]:
            recall = "-" if a.event_recall is None else f"{a.event_recall:.2f}"
            delay = "-" if a.median_delay_s is None else f"{a.median_delay_s:.0f}"
            lines.append(
                f"{a.asset:<14} {a.days:>6.2f} {a.episodes:>6d} {a.false_alerts_per_day:>9.2f} "
                f"{100 * a.alerted_normal_share:>8.1f} "
                f"{a.faults:>6d} {recall:>6} {delay:>8} {a.calibrating_s:>8.0f} "
                f"{a.shifted_s:>8.0f} {a.threshold_median:>8.3g}"
            )
        return "\n".join(lines)


# -- the run -------------------------------------------------------------------------------


def readings(series: Sequence[Series]) -> Iterator[Reading]:
    """Every row of every series as a wide reading, merged in time order (ties by asset)."""

    def rows(s: Series) -> Iterator[tuple[int, str, Reading]]:
        asset = s.asset or ""
        for ts, row in zip(s.timestamps.tolist(), s.values.tolist(), strict=True):
            values = {c: v for c, v in zip(s.channels, row, strict=True) if not math.isnan(v)}
            if values:
                yield ts, asset, Reading(asset, ts, values)

    for _, _, reading in heapq.merge(*(rows(s) for s in series), key=lambda r: (r[0], r[1])):
        yield reading


def with_profile(settings: DaemonSettings, profile: str | None) -> DaemonSettings:
    """The settings with every asset routed to `profile` (None: the configured routes)."""
    if profile is None:
        return settings
    profiles = settings.profiles.model_copy(
        update={"routes": [ProfileRoute(pattern="*", profile=profile)]}
    )
    return settings.model_copy(update={"profiles": profiles})


def run_core(
    settings: DaemonSettings, series: Sequence[Series], *, progress: bool = False
) -> tuple[dict[str, AssetTrace], dict[str, WindowGeometry]]:
    """Feed the series through a fresh StreamCore; returns each asset's trace and the window
    geometry of each profile served."""
    unrouted = sorted(
        {s.asset or "" for s in series if settings.profiles.profile_for(s.asset or "") is None}
    )
    if unrouted:
        raise BacktestError(
            f"assets {unrouted} match no profiles.routes pattern (use --profile to route all)"
        )
    names = sorted({settings.profiles.profile_for(s.asset or "") or "" for s in series})
    traces: dict[str, AssetTrace] = defaultdict(AssetTrace)
    with tempfile.TemporaryDirectory(prefix="seqae-backtest-") as state_dir:
        run_settings = settings.model_copy(update={"state_dir": Path(state_dir)})
        profiles = ProfileRegistry(
            settings.profiles.models_root,
            names,
            settings.engine.device,
            settings.engine.device_history,
        )
        geometries = {p.name: p.geometry for p in profiles}
        # A clock that stands still: batches are the engine's full `max_batch` in reading order,
        # and the batch in flight is taken (its baselines updated) before the next goes out, so
        # a rerun gives the same trace whatever the machine's load; the daemon's batches follow
        # its wall clock. Nothing idles out.
        core = StreamCore(run_settings, profiles, clock=lambda: 0.0)
        try:
            total = sum(len(s) for s in series)
            bar = _progress(total, progress)
            for n, reading in enumerate(readings(series), 1):
                core.add(reading)
                if core.due():
                    _collect(core.results(wait=True), traces)
                    _collect(core.score(), traces)
                if n % 4096 == 0:
                    bar.update(4096)
            _collect(core.score(everything=True, wait=True), traces)
            bar.close()
        finally:
            core.close()
    return dict(traces), geometries


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="rows", desc="backtest", disable=not enabled, leave=False)


def _collect(outputs: Iterator[CoreOutput], traces: dict[str, AssetTrace]) -> None:
    for out in outputs:
        for w in out.scored:
            t = traces[w.asset]
            t.profile = w.profile
            t.end_ns.append(w.end_ns)
            t.score.append(w.score)
            t.threshold.append(w.threshold)
            t.state.append(w.state)
            t.anomalous.append(w.anomalous)
        for event in out.events:
            traces[event.asset].events.append(event)
        for shift in out.shifts:
            traces[shift.asset].shifts.append(shift)


# -- the figures -----------------------------------------------------------------------------


def fault_spans(series: Series) -> list[tuple[int, int]]:
    """[start_ns, end_ns] of each run of labelled rows (end: the run's last timestamp)."""
    if series.labels is None or not series.labels.any():
        return []
    lab = np.concatenate([[0], (series.labels > 0).astype(np.int8), [0]])
    starts = np.flatnonzero(np.diff(lab) == 1)
    ends = np.flatnonzero(np.diff(lab) == -1) - 1
    ts = series.timestamps
    return [(int(ts[a]), int(ts[b])) for a, b in zip(starts, ends, strict=True)]


def episodes(trace: AssetTrace, asset: str, end_ns: int) -> list[Episode]:
    """One episode per alert id, from its opening to its last close (or the end of the
    history): an alert re-opened within its cooldown keeps its id and stays one episode."""
    by_id: dict[str, Episode] = {}
    for e in trace.events:
        opened = e.time_ns - round(e.duration_s * 1e9)
        ep = by_id.get(e.alert_id)
        if ep is None:
            ep = by_id[e.alert_id] = Episode(
                asset, opened, e.time_ns, end_ns, e.peak_score, e.severity
            )
        ep.peak_score = max(ep.peak_score, e.peak_score)
        if e.severity == "critical":
            ep.severity = "critical"
        ep.closed_ns = e.time_ns if e.state == "closed" else end_ns
    return sorted(by_id.values(), key=lambda ep: ep.opened_ns)


def asset_figures(
    asset: str, series: Series, trace: AssetTrace, window_span_ns: int, hop_s: float
) -> tuple[AssetFigures, list[Episode]]:
    start, end = int(series.timestamps[0]), int(series.timestamps[-1])
    spans = fault_spans(series)
    found = episodes(trace, asset, end)
    reach = [(a, b + window_span_ns) for a, b in spans]

    def overlaps(ep: Episode, span: tuple[int, int]) -> bool:
        return ep.opened_ns <= span[1] and ep.closed_ns >= span[0]

    false = [ep for ep in found if not any(overlaps(ep, s) for s in reach)]
    delays = []
    detected = 0
    for span in reach:
        hits = [ep for ep in found if overlaps(ep, span)]
        if hits:
            detected += 1
            raised = min(ep.raised_ns for ep in hits)
            delays.append(max(0.0, (raised - span[0]) / 1e9))
    days = (end - start) / 1e9 / SECONDS_PER_DAY
    labelled = sum(min(b, end) - a for a, b in reach) / 1e9 / SECONDS_PER_DAY
    normal_days = max(days - labelled, 0.0)
    alerted = (
        sum(_outside(ep.opened_ns, min(ep.closed_ns, end), reach) for ep in found)
        / 1e9
        / SECONDS_PER_DAY
    )
    states = trace.state
    return (
        AssetFigures(
            asset=asset,
            days=days,
            normal_days=normal_days,
            windows=len(states),
            episodes=len(found),
            false_episodes=len(false),
            false_alerts_per_day=len(false) / normal_days if normal_days > 0 else 0.0,
            alerted_normal_share=alerted / normal_days if normal_days > 0 else 0.0,
            faults=len(spans),
            detected=detected,
            event_recall=detected / len(spans) if spans else None,
            median_delay_s=float(np.median(delays)) if delays else None,
            calibrating_s=states.count("calibrating") * hop_s,
            shifted_s=states.count("shifted") * hop_s,
            threshold_median=float(np.median(trace.threshold)) if trace.threshold else math.nan,
        ),
        found,
    )


def _outside(a: int, b: int, spans: Sequence[tuple[int, int]]) -> int:
    """Length of [a, b] outside the (disjoint) spans."""
    inside = sum(max(0, min(b, hi) - max(a, lo)) for lo, hi in spans)
    return max(0, b - a - inside)


def total_figures(parts: Sequence[AssetFigures]) -> AssetFigures:
    normal = sum(p.normal_days for p in parts)
    false = sum(p.false_episodes for p in parts)
    faults = sum(p.faults for p in parts)
    detected = sum(p.detected for p in parts)
    delays = [p.median_delay_s for p in parts if p.median_delay_s is not None]
    thresholds = [p.threshold_median for p in parts if math.isfinite(p.threshold_median)]
    return AssetFigures(
        asset="total",
        days=sum(p.days for p in parts),
        normal_days=normal,
        windows=sum(p.windows for p in parts),
        episodes=sum(p.episodes for p in parts),
        false_episodes=false,
        false_alerts_per_day=false / normal if normal > 0 else 0.0,
        alerted_normal_share=sum(p.alerted_normal_share * p.normal_days for p in parts) / normal
        if normal > 0
        else 0.0,
        faults=faults,
        detected=detected,
        event_recall=detected / faults if faults else None,
        median_delay_s=float(np.median(delays)) if delays else None,
        calibrating_s=sum(p.calibrating_s for p in parts),
        shifted_s=sum(p.shifted_s for p in parts),
        threshold_median=float(np.median(thresholds)) if thresholds else math.nan,
    )


@dataclass
class Backtest:
    report: BacktestReport
    traces: dict[str, AssetTrace]
    episodes: dict[str, list[Episode]]
    series: dict[str, Series]


def backtest(
    settings: DaemonSettings, series: Sequence[Series], *, progress: bool = False
) -> Backtest:
    """Run `series` (one per asset, labels where known) through the core and measure it."""
    by_asset = {s.asset or "": s for s in series}
    if len(by_asset) != len(series):
        raise BacktestError("two series share an asset id: give each file its own asset")
    traces, geometries = run_core(settings, series, progress=progress)
    figures, found = [], {}
    for asset, s in by_asset.items():
        trace = traces.get(asset, AssetTrace())
        g = geometries[settings.profiles.profile_for(asset) or ""]
        fig, eps = asset_figures(asset, s, trace, g.window * g.period_ns, g.hop * g.period_ns / 1e9)
        figures.append(fig)
        found[asset] = eps
    report = BacktestReport(
        figures,
        total_figures(figures),
        {
            "baselines": settings.baselines.model_dump(mode="json"),
            "alerts": settings.alerts.model_dump(mode="json"),
            "windows": settings.windows.model_dump(mode="json"),
        },
    )
    return Backtest(report, traces, found, by_asset)


def served_meta(settings: DaemonSettings, profile: str) -> dict[str, Any]:
    """model.json of the version a profile's CURRENT names."""
    from seqae.artifacts import ArtifactError, current_version, read_meta

    root = Path(settings.profiles.models_root)
    version = current_version(root, profile)
    if version is None:
        raise ArtifactError(f"profile {profile!r}: no CURRENT under {root}")
    return read_meta(root / profile / version)


# -- the outputs -----------------------------------------------------------------------------


def save(result: Backtest, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "backtest.json"
    report.write_text(json.dumps(result.report.to_dict(), indent=2) + "\n")
    png = out_dir / "backtest.png"
    plot(result, png)
    return [report, png]


def plot(result: Backtest, out_png: Path, max_assets: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assets = list(result.series)[:max_assets]
    fig, axes = plt.subplots(
        len(assets), 1, figsize=(13, 2.4 * len(assets)), sharex=False, squeeze=False
    )
    for ax, asset in zip(axes[:, 0], assets, strict=True):
        trace = result.traces.get(asset, AssetTrace())
        s = result.series[asset]
        t0 = int(s.timestamps[0])
        hours = (np.asarray(trace.end_ns, np.int64) - t0) / 3.6e12
        score = np.clip(np.asarray(trace.score, np.float64), 1e-3, None)
        ax.semilogy(hours, score, lw=0.7, label="score")
        ax.semilogy(hours, trace.threshold, "--", lw=1.0, color="tab:orange", label="threshold")
        state = np.asarray(trace.state)
        for name, color in (("calibrating", "tab:gray"), ("shifted", "tab:purple")):
            mark = state == name
            if mark.any():
                ax.fill_between(
                    hours,
                    0,
                    1,
                    where=mark,
                    transform=ax.get_xaxis_transform(),
                    color=color,
                    alpha=0.15,
                    label=name,
                    step="mid",
                )
        for a, b in fault_spans(s):
            ax.axvspan((a - t0) / 3.6e12, (b - t0) / 3.6e12, color="tab:red", alpha=0.12)
        for ep in result.episodes.get(asset, []):
            ax.axvspan(
                (ep.opened_ns - t0) / 3.6e12,
                (ep.closed_ns - t0) / 3.6e12,
                ymin=0.92,
                ymax=1.0,
                color="black",
                alpha=0.8,
            )
        ax.set_ylabel(asset)
        ax.legend(loc="upper left", fontsize=7, ncol=4)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("hours from the start of each history")
    axes[0, 0].set_title(
        "seqae backtest: scores (log), thresholds; red = labelled fault, black bar = alert"
    )
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def history(paths: Sequence[Path], settings: DaemonSettings, profile: str | None) -> list[Series]:
    """Files as series (`daemon.retrain.asset_tables`), with the channels each asset's profile
    wants."""
    from daemon.retrain import asset_tables
    from seqae.data import frame_to_series

    channels: dict[str, list[str]] = {}  # per profile: model.json is read once
    out: list[Series] = []
    for where, asset, table in asset_tables(paths):
        name = profile or settings.profiles.profile_for(asset)
        if name is None:
            raise BacktestError(
                f"{where}: asset {asset!r} matches no profiles.routes pattern "
                "(use --profile to route every asset to one profile)"
            )
        if name not in channels:
            channels[name] = served_meta(settings, name)["channels"]
        out.append(frame_to_series(table, where=where, channels=channels[name], asset=asset))
    return out
