"""Alert events as InfluxDB points; the rule itself is `seqae.alerting` (one implementation,
shared with `seqae train`'s false-alert estimate, the backtest and the retrain gate)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from daemon.lineprotocol import Point
from seqae import alerting
from seqae.alerting import AlertEvent, AlertTracker, make_alert_id

if TYPE_CHECKING:
    from daemon.engine import ScoredWindow

__all__ = ["AlertBook", "AlertEvent", "AlertTracker", "alert_point", "make_alert_id"]


class AlertBook(alerting.AlertBook):
    """`seqae.alerting.AlertBook`, with the rule run over a batch of scored windows."""

    def observe_scored(self, scored: Sequence[ScoredWindow]) -> list[AlertEvent]:
        """`observe` of each window of `scored` that is not `calibrating`, in order: the same
        events and tracker states. The rule's common case (ratio below `enter_level`, no alert
        open: the tracker only notes the window and goes idle) is told apart for the whole
        batch with one comparison; only the other windows run the rule one by one."""
        if not scored:
            return []
        n = len(scored)
        score = np.fromiter((w.score for w in scored), np.float64, n)
        threshold = np.fromiter((w.threshold for w in scored), np.float64, n)
        # the rule's ratio (score / threshold, inf when threshold <= 0): NaN or not below
        # enter_level (any ratio of a threshold <= 0) takes the rule itself
        with np.errstate(divide="ignore", invalid="ignore"):
            quiet = ((score / threshold < self.settings.enter_level) & (threshold > 0)).tolist()
        trackers = self._trackers
        events: list[AlertEvent] = []
        for w, below in zip(scored, quiet, strict=True):
            if w.state == "calibrating":
                continue
            tracker = trackers.get(w.asset)
            if below and tracker is not None and tracker.phase != "open":
                tracker.profile = w.profile
                if w.end_ns > tracker.last_ts_ns:  # else: seen before, ignored by the rule
                    tracker.last_ts_ns = w.end_ns
                    tracker.phase = "idle"
                continue
            events += self.observe(
                w.asset, w.profile, w.end_ns, w.score, w.threshold, w.contributions, w.channels
            )
        return events


def alert_point(event: AlertEvent) -> Point:
    return Point(
        "seqae_alert",
        {"asset": event.asset, "profile": event.profile, "severity": event.severity},
        event.point_fields(),
        event.time_ns,
    )
