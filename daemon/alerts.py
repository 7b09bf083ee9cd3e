"""Alert events as InfluxDB points; the rule itself is `seqae.alerting` (one implementation,
shared with `seqae train`'s false-alert estimate, the backtest and the retrain gate)."""

from __future__ import annotations

from daemon.lineprotocol import Point
from seqae.alerting import AlertBook, AlertEvent, AlertTracker, make_alert_id

__all__ = ["AlertBook", "AlertEvent", "AlertTracker", "alert_point", "make_alert_id"]


def alert_point(event: AlertEvent) -> Point:
    return Point(
        "seqae_alert",
        {"asset": event.asset, "profile": event.profile, "severity": event.severity},
        event.point_fields(),
        event.time_ns,
    )
