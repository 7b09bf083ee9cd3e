"""The retrain gate: how often a model alerts on normal data, and which faults it catches.

Both models run on the same held-out recent normal data, through the daemon's own alert rule
(`daemon.alerts.AlertBook` with `settings.alerts`: enter/exit levels, minimum duration,
cooldown), each with its default baseline:

- **false alerts per day**: alert episodes (``open`` events) on the held-out windows, over the
  days those windows cover (each window adds `hop` samples);
- **injected-fault recall**: every kind of `seqae.inject` at every size, `repeats` times, at
  seeded places of the held-out pieces. A fault is *caught* when an alert opens at a window that
  overlaps its span on the faulty copy and none opens at those windows on the unchanged data: a
  model that alerts there anyway gets no credit for it. Each trial starts a fresh tracker a
  window's length of clean windows before the first window the fault reaches.
- **labelled-fault recall**: spans labelled in the history (a label column), where an alert
  opens at a window overlapping the span. Reported, not gated: there is no clean twin to tell a
  catch from an alert that was open anyway.

The faults and where they go depend only on the data and the seed, never on a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from daemon.alerts import AlertBook
from daemon.settings import AlertSettings
from seqae.data import RobustScaler, Series, make_windows, regularize
from seqae.inject import FAULT_KINDS, PlannedFault, inject, plan_faults
from seqae.score import ScoreBatch, Scorer

SECONDS_PER_DAY = 86400.0
FAULT_SPAN_WINDOWS = 2  # an injected fault lasts this many window lengths
FAULT_REPEATS = 4  # faults of each kind and size
FAULT_SEED = 20260101

# Promotion tolerances: the candidate may alert a little more (the largest of these two and one
# episode over the held-out days), and catch a little less.
FALSE_ALERT_SLACK_PER_DAY = 0.5
FALSE_ALERT_SLACK_SHARE = 0.10
RECALL_SLACK = 0.05


@dataclass(frozen=True)
class Geometry:
    window: int
    hop: int
    period_s: float

    @property
    def lead(self) -> int:
        """Clean windows fed to a trial's tracker before the first one the fault reaches."""
        return math.ceil(self.window / self.hop)

    @property
    def span(self) -> int:
        return FAULT_SPAN_WINDOWS * self.window


@dataclass
class Piece:
    """One contiguous held-out stretch of an asset on the model's grid, cut into windows."""

    asset: str
    grid: np.ndarray  # [T, C] raw values, NaN = missing
    timestamps: np.ndarray  # int64 [T]
    windows: np.ndarray  # [N, W, C]
    ends: np.ndarray  # int64 [N] grid row of each window's last sample


@dataclass
class Trial:
    """A fault injected into a copy of one piece: the windows it reaches, rebuilt from the copy."""

    fault: PlannedFault
    piece: int
    start: int  # the labelled span, grid rows of the piece
    end: int
    reached: slice  # indices of the piece's windows that overlap [start, end)
    windows: np.ndarray  # [len(reached), W, C] from the faulty copy


@dataclass
class Labelled:
    """A labelled span of the history with the windows around it (its own grid rows)."""

    asset: str
    windows: np.ndarray
    times: np.ndarray  # int64 window end times
    reached: np.ndarray  # bool [N]: the window overlaps the labelled span


@dataclass
class GateData:
    geometry: Geometry
    pieces: list[Piece]
    trials: list[Trial]
    labelled: list[Labelled]
    spread: np.ndarray  # [C] robust spread of the held-out rows: the unit of fault sizes

    @property
    def windows(self) -> int:
        return sum(len(p.windows) for p in self.pieces)

    @property
    def days(self) -> float:
        g = self.geometry
        return self.windows * g.hop * g.period_s / SECONDS_PER_DAY


def fault_starts(rows: int, g: Geometry) -> range:
    """Rows of a piece of `rows` grid rows where a fault span may begin: its first window has
    `lead` windows before it, its last window lies within the piece."""
    n_windows = (rows - g.window) // g.hop + 1 if rows >= g.window else 0
    first = g.lead * g.hop + g.window - 1
    last = (n_windows - 1) * g.hop + 1 - g.span  # the span's last row ends window n_windows - 1
    return range(first, last + 1) if n_windows > 0 else range(0)


def min_gate_rows(g: Geometry) -> int:
    """The fewest grid rows of one held-out piece that leave room for a fault."""
    rows = g.window
    while not fault_starts(rows, g):
        rows += g.hop
    while fault_starts(rows - 1, g):
        rows -= 1
    return rows


def held_out_pieces(newer: Sequence[Series], g: Geometry, max_fill: int) -> list[Piece]:
    pieces = []
    for s in newer:
        grid = regularize(s, g.period_s, max_fill)
        if len(grid) < g.window:
            continue
        windows, ends = make_windows(grid.values, g.window, g.hop)
        pieces.append(Piece(str(s.asset), grid.values, grid.timestamps, windows, ends))
    return pieces


def reached_windows(start: int, end: int, n_windows: int, g: Geometry) -> slice:
    """Indices of the windows (window i covers rows i*hop .. i*hop+W-1) overlapping [start, end)."""
    first = max(0, -(-(start - g.window + 1) // g.hop))
    last = min(n_windows - 1, (end - 1) // g.hop)
    return slice(first, last + 1)


def build_trials(
    pieces: Sequence[Piece], g: Geometry, spread: np.ndarray, seed: int
) -> list[Trial]:
    starts = [fault_starts(len(p.grid), g) for p in pieces]
    plan = plan_faults(
        starts, span=g.span, n_channels=len(spread), seed=seed, repeats=FAULT_REPEATS
    )
    trials = []
    for fault in plan:
        p = pieces[fault.piece]
        faulty, span = inject(
            p.grid, fault.kind, start=fault.start, end=fault.end, channel=fault.channel,
            size=fault.size, scale=spread, seed=fault.seed,
        )  # fmt: skip
        reached = reached_windows(span.start, span.end, len(p.windows), g)
        assert reached.start is not None and reached.stop is not None
        rows = faulty[reached.start * g.hop : (reached.stop - 1) * g.hop + g.window]
        windows = make_windows(rows, g.window, g.hop)[0]
        trials.append(Trial(fault, fault.piece, span.start, span.end, reached, windows))
    return trials


def labelled_spans(history: Sequence[Series], g: Geometry, max_fill: int) -> list[Labelled]:
    """Each run of labelled rows, with a window's length of lead-in and the windows after it."""
    out = []
    for s in history:
        if s.labels is None or not s.labels.any():
            continue
        grid = regularize(s, g.period_s, max_fill)
        assert grid.labels is not None
        flags = np.concatenate([[0], (grid.labels > 0).astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(flags))
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            lo = max(0, int(start) - (g.lead + 1) * g.hop - g.window)
            hi = min(len(grid), int(end) + g.window - 1)
            if hi - lo < g.window:
                continue
            windows, ends = make_windows(grid.values[lo:hi], g.window, g.hop)
            rows = ends + lo
            reached = (rows >= start) & (rows - g.window + 1 < end)
            out.append(Labelled(str(s.asset), windows, grid.timestamps[rows], reached))
    return out


def gate_data(
    newer: Sequence[Series],
    history: Sequence[Series],
    g: Geometry,
    max_fill: int,
    seed: int = FAULT_SEED,
) -> GateData:
    """The held-out pieces, the injected-fault trials on them and the labelled spans; the caller
    has checked (`check_held_out`) that some piece has room for a fault."""
    pieces = held_out_pieces(newer, g, max_fill)
    spread = RobustScaler.fit(np.concatenate([p.grid for p in pieces])).scale.astype(np.float64)
    trials = build_trials(pieces, g, spread, seed)
    return GateData(g, pieces, trials, labelled_spans(history, g, max_fill), spread)


# -- one model through the alert rule ------------------------------------------------------


@dataclass
class AlertRun:
    opened: np.ndarray  # bool [N]: an `open` event (a new alert, or one re-opened) at this window
    alerts: int  # distinct alerts opened: an alert re-opened in its cooldown counts once


def run_alert_rule(
    alerts: AlertSettings,
    key: str,
    times: np.ndarray,
    batch: ScoreBatch,
    channels: Sequence[str],
) -> AlertRun:
    """A fresh tracker of the daemon's alert rule fed these windows in order."""
    book = AlertBook(alerts)
    score, threshold, contrib = batch.score, batch.threshold, batch.contributions
    opened = np.zeros(len(score), bool)
    ids: set[str] = set()
    for i in range(len(score)):
        events = book.observe(
            key, "", int(times[i]), float(score[i]), float(threshold[i]), contrib[i], channels
        )
        for e in events:
            if e.state == "open":
                opened[i] = True
                ids.add(e.alert_id)
    return AlertRun(opened, len(ids))


def _cat(parts: Sequence[ScoreBatch]) -> ScoreBatch:
    return ScoreBatch(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = tuple(ScoreBatch.__dataclass_fields__)


def _take(batch: ScoreBatch, rows: slice) -> ScoreBatch:
    return ScoreBatch(*(getattr(batch, f)[rows] for f in _FIELDS))


def trial_caught(
    data: GateData,
    t: Trial,
    normal: ScoreBatch,
    faulty: ScoreBatch,
    alerts: AlertSettings,
    channels: Sequence[str],
) -> bool:
    """An alert opens at a window the fault reaches on the faulty copy, and at none of them on
    the unchanged piece; both runs start `lead` clean windows earlier."""
    assert t.reached.start is not None
    p, reached = data.pieces[t.piece], t.reached.start
    fed = slice(reached - data.geometry.lead, t.reached.stop)
    times = p.timestamps[p.ends[fed]]
    with_fault = _cat([_take(normal, slice(fed.start, reached)), faulty])
    on_faulty = run_alert_rule(alerts, "trial", times, with_fault, channels).opened
    on_normal = run_alert_rule(alerts, "trial", times, _take(normal, fed), channels).opened
    n_lead = reached - fed.start
    return bool(on_faulty[n_lead:].any() and not on_normal[n_lead:].any())


@dataclass
class GateFigures:
    """One model's figures on the held-out data."""

    version: str
    windows: int
    days: float
    alert_episodes: int
    false_alerts_per_day: float
    injected: int
    caught: int
    recall: float
    recall_by_kind: dict[str, float]
    recall_by_size: dict[str, dict[str, float]]  # kind -> size -> recall
    labelled_spans: int = 0
    labelled_caught: int = 0
    labelled_recall: float | None = None
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("scores")
        return d


def evaluate(
    version: str,
    scorer: Scorer,
    baseline: Any,
    data: GateData,
    alerts: AlertSettings,
    channels: Sequence[str],
) -> GateFigures:
    """False alerts per day, injected- and labelled-fault recall of one model."""
    clean = [scorer.score(p.windows, baseline) for p in data.pieces]
    episodes = 0
    for k, (p, batch) in enumerate(zip(data.pieces, clean, strict=True)):
        times = p.timestamps[p.ends]
        episodes += run_alert_rule(alerts, f"{p.asset}#{k}", times, batch, channels).alerts

    faulty = scorer.score(np.concatenate([t.windows for t in data.trials]), baseline)
    bounds = np.cumsum([0] + [len(t.windows) for t in data.trials])
    caught = [
        trial_caught(data, t, clean[t.piece], _take(faulty, slice(a, b)), alerts, channels)
        for t, a, b in zip(data.trials, bounds[:-1], bounds[1:], strict=True)
    ]

    by_kind: dict[str, list[bool]] = {k: [] for k in FAULT_KINDS}
    by_size: dict[str, dict[str, list[bool]]] = {k: {} for k in FAULT_KINDS}
    for t, hit in zip(data.trials, caught, strict=True):
        by_kind[t.fault.kind].append(hit)
        by_size[t.fault.kind].setdefault(f"{t.fault.size:g}", []).append(hit)

    labelled_hits = []
    for lab in data.labelled:
        run = run_alert_rule(
            alerts, "labelled", lab.times, scorer.score(lab.windows, baseline), channels
        )
        labelled_hits.append(bool(run.opened[lab.reached].any()))
    return GateFigures(
        version=version,
        windows=data.windows,
        days=data.days,
        alert_episodes=episodes,
        false_alerts_per_day=episodes / data.days if data.days > 0 else 0.0,
        injected=len(caught),
        caught=sum(caught),
        recall=_share(caught),
        recall_by_kind={k: _share(v) for k, v in by_kind.items() if v},
        recall_by_size={
            k: {s: _share(v) for s, v in sizes.items()} for k, sizes in by_size.items() if sizes
        },
        labelled_spans=len(labelled_hits),
        labelled_caught=sum(labelled_hits),
        labelled_recall=_share(labelled_hits) if labelled_hits else None,
        scores=np.concatenate([b.score for b in clean]),
    )


def _share(hits: Sequence[bool]) -> float:
    return float(np.mean(hits)) if len(hits) else 0.0


# -- the rule ------------------------------------------------------------------------------


def allowed_false_alerts(served: GateFigures) -> float:
    """The served model's false alerts/day plus the largest of 0.5/day, 10 % of it, and one
    episode over the held-out days (on a short stretch, one episode more is no evidence)."""
    one_episode = 1.0 / served.days if served.days > 0 else 0.0
    return served.false_alerts_per_day + max(
        FALSE_ALERT_SLACK_PER_DAY,
        FALSE_ALERT_SLACK_SHARE * served.false_alerts_per_day,
        one_episode,
    )


def allowed_recall(served: GateFigures) -> float:
    return served.recall - RECALL_SLACK


def verdict(served: GateFigures, candidate: GateFigures) -> tuple[bool, str]:
    """(passes, reason): the candidate alerts no more often on normal data than the served
    model (`allowed_false_alerts`) and catches no fewer injected faults (- 0.05)."""
    fa_ok = candidate.false_alerts_per_day <= allowed_false_alerts(served)
    recall_ok = candidate.recall >= allowed_recall(served)
    fa = (
        f"{candidate.false_alerts_per_day:.1f} false alerts/day against the served "
        f"{served.false_alerts_per_day:.1f} (allowed up to {allowed_false_alerts(served):.1f})"
    )
    recall = (
        f"injected-fault recall {candidate.recall:.2f} against the served {served.recall:.2f} "
        f"(allowed down to {max(allowed_recall(served), 0.0):.2f}; "
        f"{candidate.caught} of {candidate.injected} faults caught)"
    )
    if fa_ok and recall_ok:
        return True, f"candidate: {fa}; {recall}"
    problems = []
    if not recall_ok:
        problems.append(f"it misses faults: {recall}")
    if not fa_ok:
        problems.append(f"it alerts more often: {fa}")
    return False, "candidate refused: " + "; ".join(problems)
