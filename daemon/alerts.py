"""Per-asset fault alerts with hysteresis, minimum duration, cooldown and severity bands."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from daemon.lineprotocol import Point
from daemon.settings import AlertSettings

Phase = Literal["idle", "pending", "open"]


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

    def to_point(self) -> Point:
        return Point(
            "seqae_alert",
            {"asset": self.asset, "profile": self.profile, "severity": self.severity},
            {
                "state": self.state,
                "score": float(self.score),
                "peak_score": float(self.peak_score),
                "duration_s": float(self.duration_s),
                "top_channels": ",".join(self.top_channels),
            },
            self.time_ns,
        )

    def to_json(self) -> dict[str, Any]:
        event = asdict(self)
        event["top_channels"] = list(self.top_channels)
        return event


@dataclass
class AlertTracker:
    """One asset's alert state machine: idle -> pending (above enter) -> open -> idle."""

    asset: str
    profile: str
    phase: Phase = "idle"
    above_since_ns: int = 0
    opened_ns: int = 0
    peak_score: float = 0.0
    peak_ratio: float = 0.0
    peak_channels: list[str] = field(default_factory=list)
    last_event_ns: int = 0
    severity: Literal["warning", "critical"] = "warning"
    cooldown_until_ns: int = -1
    last_ts_ns: int = -1

    def observe(
        self,
        settings: AlertSettings,
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
        top = _top_channels(contributions, channels, settings.top_channels)

        if self.phase == "open":
            if ratio > self.peak_ratio:
                self.peak_ratio, self.peak_score, self.peak_channels = ratio, float(score), top
            if ratio < settings.exit_level:
                event = self._event("closed", time_ns, score, threshold, self.peak_channels)
                self.phase = "idle"
                self.cooldown_until_ns = time_ns + round(settings.cooldown_s * 1e9)
                return [event]
            severity = _severity(self.peak_ratio, settings)
            due = time_ns - self.last_event_ns >= round(settings.update_every_s * 1e9)
            if severity != self.severity or due:
                self.severity = severity
                return [self._event("update", time_ns, score, threshold, top)]
            return []

        if ratio < settings.enter_level or time_ns < self.cooldown_until_ns:
            self.phase = "idle"
            return []
        if self.phase == "idle":
            self.phase, self.above_since_ns = "pending", time_ns
            self.peak_ratio, self.peak_score, self.peak_channels = ratio, float(score), top
        elif ratio > self.peak_ratio:
            self.peak_ratio, self.peak_score, self.peak_channels = ratio, float(score), top
        if time_ns - self.above_since_ns < round(settings.min_duration_s * 1e9):
            return []
        self.phase, self.opened_ns = "open", self.above_since_ns
        self.severity = _severity(self.peak_ratio, settings)
        return [self._event("open", time_ns, score, threshold, top)]

    def _event(
        self,
        state: Literal["open", "update", "closed"],
        time_ns: int,
        score: float,
        threshold: float,
        top: list[str],
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
        )


def _severity(ratio: float, settings: AlertSettings) -> Literal["warning", "critical"]:
    return "critical" if ratio >= settings.critical_level else "warning"


def _top_channels(contributions: np.ndarray, channels: Sequence[str], k: int) -> list[str]:
    contributions = np.nan_to_num(np.asarray(contributions, np.float64), nan=-np.inf)
    order = np.argsort(-contributions, kind="stable")[:k]
    return [channels[i] for i in order]


class AlertBook:
    """Every asset's tracker; serialisable so alert state survives a restart."""

    def __init__(self, settings: AlertSettings) -> None:
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
        # vars() rather than asdict(): this runs for every asset at every commit
        return {
            asset: {**vars(t), "peak_channels": list(t.peak_channels)}
            for asset, t in self._trackers.items()
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Load state written by `to_dict`; raises ValueError naming the asset on bad data."""
        for asset, fields in data.items():
            try:
                self._trackers[asset] = AlertTracker(**fields)
            except TypeError as exc:
                raise ValueError(f"alert state for asset {asset!r}: {exc}") from exc
