"""The alert rule: per-asset fault alerts with hysteresis, minimum durations, cooldown and severity bands.

An alert's life, for one asset (ratio = score / threshold of each window):

1. It opens once the ratio has stayed at or above `enter_level` for `min_duration_s`; the
   alert's opening time is the first window of that excursion.
2. While open, a window below `exit_level` starts a clearing period and a window back at or
   above `exit_level` cancels it. The alert closes at the first window for which the ratio has
   stayed below `exit_level` for `clear_duration_s` (0: the first window below it).
3. If the ratio again stays at or above `enter_level` for `min_duration_s`, in an excursion that
   begins within `cooldown_s` of the close, the fault has continued: the same alert re-opens
   (an `open` event with the same id and `reopened=True`). Its duration still counts from the
   original opening, and its peak is the higher of the peak before the close and the peak of
   the new excursion, so `peak_score` never falls within one alert. An excursion that begins
   after the cooldown opens a new alert with a new id.

Every event carries `alert_id`, derived from the asset and the alert's opening time only, so a
replay of the same windows after a crash yields the same ids (points are idempotent) and an
alert's open, update and closed events join on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np


class AlertRule(Protocol):
    """The alert rule's settings (daemon.settings.AlertRule is one)."""

    enter_level: float
    exit_level: float
    min_duration_s: float
    clear_duration_s: float
    cooldown_s: float
    critical_level: float
    update_every_s: float
    top_channels: int


Phase = Literal["idle", "pending", "open"]


def make_alert_id(asset: str, opened_ns: int) -> str:
    """The id of the asset's alert that opened at `opened_ns`: stable across runs and replays."""
    return f"{asset}@{opened_ns}"


@dataclass(frozen=True, slots=True)
class AlertEvent:
    asset: str
    profile: str
    state: Literal["open", "update", "closed"]
    severity: Literal["warning", "critical"]
    time_ns: int
    score: float
    threshold: float
    peak_score: float
    duration_s: float
    top_channels: tuple[str, ...]
    alert_id: str
    reopened: bool = False  # True only on the `open` event of an alert re-opened in its cooldown

    def point_fields(self) -> dict[str, float | int | bool | str]:
        """The fields of its `seqae_alert` point (tags: asset, profile, severity)."""
        return {
            "alert_id": self.alert_id,
            "state": self.state,
            "score": float(self.score),
            "peak_score": float(self.peak_score),
            "duration_s": float(self.duration_s),
            "top_channels": ",".join(self.top_channels),
            "reopened": self.reopened,
        }

    def to_json(self) -> dict[str, Any]:
        event = asdict(self)
        event["top_channels"] = list(self.top_channels)
        return event


@dataclass(slots=True)  # one per asset: no per-instance __dict__, no empty lists of its own
class AlertTracker:
    """One asset's alert state machine: idle -> pending (above enter) -> open -> idle.

    `opened_ns` and the `peak_*` fields describe the current alert, or the last closed one while
    it may still re-open; `pending_*` the excursion above enter that may open or re-open one.
    `clear_since_ns` is the first window of the current clearing period of an open alert (-1:
    not clearing).
    """

    asset: str
    profile: str
    phase: Phase = "idle"
    above_since_ns: int = 0
    opened_ns: int = 0
    peak_score: float = 0.0
    peak_ratio: float = 0.0
    peak_channels: Sequence[str] = ()
    last_event_ns: int = 0
    severity: Literal["warning", "critical"] = "warning"
    cooldown_until_ns: int = -1
    last_ts_ns: int = -1
    clear_since_ns: int = -1
    pending_peak_score: float = 0.0
    pending_peak_ratio: float = 0.0
    pending_peak_channels: Sequence[str] = ()

    @property
    def alert_id(self) -> str:
        return make_alert_id(self.asset, self.opened_ns)

    def observe(
        self,
        settings: AlertRule,
        time_ns: int,
        score: float,
        threshold: float,
        contributions: np.ndarray,
        channels: Sequence[str],
    ) -> list[AlertEvent]:
        """Feed one window's score; windows at or before the last one seen are ignored."""
        if time_ns <= self.last_ts_ns:
            return []
        self.last_ts_ns = time_ns
        ratio = float(score) / float(threshold) if threshold > 0 else float("inf")
        if math.isnan(ratio):
            return []  # no observed sample in the window: no evidence either way
        if self.phase != "open" and ratio < settings.enter_level:
            self.phase = "idle"  # most windows: nothing to rank the channels for
            return []
        top = _top_channels(contributions, channels, settings.top_channels)
        if self.phase == "open":
            return self._observe_open(settings, time_ns, ratio, score, threshold, top)
        return self._observe_closed(settings, time_ns, ratio, score, threshold, top)

    def _observe_open(
        self,
        settings: AlertRule,
        time_ns: int,
        ratio: float,
        score: float,
        threshold: float,
        top: list[str],
    ) -> list[AlertEvent]:
        if ratio > self.peak_ratio:
            self.peak_ratio, self.peak_score, self.peak_channels = ratio, float(score), top
        if ratio >= settings.exit_level:
            self.clear_since_ns = -1
        else:
            if self.clear_since_ns < 0:
                self.clear_since_ns = time_ns
            if time_ns - self.clear_since_ns >= round(settings.clear_duration_s * 1e9):
                event = self._event("closed", time_ns, score, threshold, self.peak_channels)
                self.phase, self.clear_since_ns = "idle", -1
                self.cooldown_until_ns = time_ns + round(settings.cooldown_s * 1e9)
                return [event]
        severity = _severity(self.peak_ratio, settings)
        due = time_ns - self.last_event_ns >= round(settings.update_every_s * 1e9)
        if severity != self.severity or due:
            self.severity = severity
            return [self._event("update", time_ns, score, threshold, top)]
        return []

    def _observe_closed(
        self,
        settings: AlertRule,
        time_ns: int,
        ratio: float,
        score: float,
        threshold: float,
        top: list[str],
    ) -> list[AlertEvent]:
        if ratio < settings.enter_level:
            self.phase = "idle"
            return []
        if self.phase == "idle":
            self.phase, self.above_since_ns = "pending", time_ns
            self._set_pending_peak(ratio, score, top)
        elif ratio > self.pending_peak_ratio:
            self._set_pending_peak(ratio, score, top)
        if time_ns - self.above_since_ns < round(settings.min_duration_s * 1e9):
            return []
        reopened = self.above_since_ns < self.cooldown_until_ns
        if not reopened:
            self.opened_ns, self.peak_ratio = self.above_since_ns, -math.inf
        if self.pending_peak_ratio > self.peak_ratio:
            self.peak_ratio, self.peak_score = self.pending_peak_ratio, self.pending_peak_score
            self.peak_channels = list(self.pending_peak_channels)
        self.phase, self.clear_since_ns = "open", -1
        self.severity = _severity(self.peak_ratio, settings)
        return [self._event("open", time_ns, score, threshold, top, reopened=reopened)]

    def _set_pending_peak(self, ratio: float, score: float, top: list[str]) -> None:
        self.pending_peak_ratio, self.pending_peak_score = ratio, float(score)
        self.pending_peak_channels = top

    def _event(
        self,
        state: Literal["open", "update", "closed"],
        time_ns: int,
        score: float,
        threshold: float,
        top: Sequence[str],
        *,
        reopened: bool = False,
    ) -> AlertEvent:
        self.last_event_ns = time_ns
        return AlertEvent(
            self.asset,
            self.profile,
            state,
            self.severity,
            time_ns,
            float(score),
            float(threshold),
            self.peak_score,
            (time_ns - self.opened_ns) / 1e9,
            tuple(top),
            self.alert_id,
            reopened,
        )


def _severity(ratio: float, settings: AlertRule) -> Literal["warning", "critical"]:
    return "critical" if ratio >= settings.critical_level else "warning"


def _top_channels(contributions: np.ndarray, channels: Sequence[str], k: int) -> list[str]:
    contributions = np.nan_to_num(np.asarray(contributions, np.float64), nan=-np.inf)
    order = np.argsort(-contributions, kind="stable")[:k]
    return [channels[i] for i in order]


_TRACKER_FIELDS = tuple(f.name for f in fields(AlertTracker))


def _tracker_dict(t: AlertTracker) -> dict[str, Any]:
    """A tracker's fields, lists copied; not asdict(): this runs for every changed asset at
    every checkpoint."""
    state = {name: getattr(t, name) for name in _TRACKER_FIELDS}
    state["peak_channels"] = list(t.peak_channels)
    state["pending_peak_channels"] = list(t.pending_peak_channels)
    return state


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """State written before trackers kept a pending excursion apart from the alert's peak:
    a pending excursion's peak then lived in `peak_*`."""
    if "pending_peak_ratio" in state or state.get("phase") != "pending":
        return state
    return {
        **state,
        "pending_peak_ratio": state.get("peak_ratio", 0.0),
        "pending_peak_score": state.get("peak_score", 0.0),
        "pending_peak_channels": list(state.get("peak_channels", [])),
    }


class AlertBook:
    """Every asset's tracker; serialisable so alert state survives a restart."""

    def __init__(self, settings: AlertRule) -> None:
        self.settings = settings
        self._trackers: dict[str, AlertTracker] = {}

    def observe(
        self,
        asset: str,
        profile: str,
        time_ns: int,
        score: float,
        threshold: float,
        contributions: np.ndarray,
        channels: Sequence[str],
    ) -> list[AlertEvent]:
        tracker = self._trackers.get(asset)
        if tracker is None:
            tracker = self._trackers[asset] = AlertTracker(asset, profile)
        tracker.profile = profile
        return tracker.observe(self.settings, time_ns, score, threshold, contributions, channels)

    @property
    def open_count(self) -> int:
        return sum(t.phase == "open" for t in self._trackers.values())

    def forget(self, assets: Sequence[str]) -> None:
        for asset in assets:
            self._trackers.pop(asset, None)

    def to_dict(self) -> dict[str, Any]:
        return {asset: _tracker_dict(t) for asset, t in self._trackers.items()}

    def tracker_state(self, asset: str) -> dict[str, Any] | None:
        """One asset's tracker as `to_dict` writes it (None: no tracker yet)."""
        t = self._trackers.get(asset)
        return None if t is None else _tracker_dict(t)

    def restore_tracker(self, asset: str, state: dict[str, Any] | None) -> None:
        """Replace one asset's tracker by `tracker_state`'s dict (None: no tracker); raises
        ValueError naming the asset on bad data."""
        if state is None:
            self._trackers.pop(asset, None)
            return
        self.restore({asset: state})

    def restore(self, data: dict[str, Any]) -> None:
        """Load state written by `to_dict`, also by versions that lacked some fields (they take
        their defaults); raises ValueError naming the asset on bad data."""
        for asset, state in data.items():
            try:
                self._trackers[asset] = AlertTracker(**_upgrade(state))
            except (TypeError, AttributeError) as exc:
                raise ValueError(f"alert state for asset {asset!r}: {exc}") from exc


@dataclass
class Rule:
    """An alert rule outside the daemon, with the shipped example config's values
    (configs/daemon.example.toml [alerts]); `from_toml` reads a daemon config's section."""

    enter_level: float = 1.0
    exit_level: float = 0.8
    min_duration_s: float = 30.0
    clear_duration_s: float = 30.0
    cooldown_s: float = 300.0
    critical_level: float = 2.0
    update_every_s: float = 60.0
    top_channels: int = 3

    @classmethod
    def from_toml(cls, path: str | Path) -> Rule:
        """The [alerts] section of a daemon TOML file (missing keys: the defaults above)."""
        import tomllib

        section = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("alerts", {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"{path}: [alerts] has unknown keys {unknown}")
        return cls(**{k: type(getattr(cls, k))(v) for k, v in section.items()})


def alert_episodes(
    scores: np.ndarray, thresholds: np.ndarray, step_s: float, rule: AlertRule
) -> int:
    """How many alerts `rule` opens on consecutive windows `step_s` apart (a re-opened alert
    counts once): the same state machine the daemon runs, without channels."""
    tracker = AlertTracker("", "")
    none = np.zeros(1)
    opened: set[str] = set()
    step_ns = round(step_s * 1e9)
    for i, (score, threshold) in enumerate(zip(scores.tolist(), thresholds.tolist(), strict=True)):
        for event in tracker.observe(rule, (i + 1) * step_ns, score, threshold, none, ("",)):
            if event.state == "open":
                opened.add(event.alert_id)
    return len(opened)
