#!/usr/bin/env python3
"""Write the provisioned Grafana dashboards of seqae from one description.

    python deploy/grafana/build_dashboards.py           rewrite deploy/grafana/dashboards/
    python deploy/grafana/build_dashboards.py --check   fail if the JSON on disk is stale

Every InfluxDB panel carries an InfluxQL query (InfluxDB 1.x, and 2.x through its
database/retention-policy mapping) and a Flux query (InfluxDB 2.x); the two dashboard
sets under dashboards/influxql and dashboards/flux differ only in which one they use.
The daemon-health dashboard queries Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 39
TAGS = ["seqae"]

DS_INFLUX = "DS_INFLUXDB"
DS_PROMETHEUS = "DS_PROMETHEUS"
DEFAULT_DS = {"influxql": "seqae-influxql", "flux": "seqae-flux", "prometheus": "seqae-prometheus"}

# Flux building blocks. Grafana substitutes ${bucket}, ${asset:regex} and the v.* record.
_FROM = 'from(bucket: "${bucket}")\n  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n'
_SCORE = _FROM + '  |> filter(fn: (r) => r._measurement == "seqae_score")\n'
_ALERT = _FROM + '  |> filter(fn: (r) => r._measurement == "seqae_alert")\n'
_ASSET = "  |> filter(fn: (r) => r.asset =~ /^${asset:regex}$/)\n"
_SHIFT = _FROM + '  |> filter(fn: (r) => r._measurement == "seqae_event" and r.kind == "shift")\n'


@dataclass(frozen=True)
class Query:
    """One panel target: the same question in InfluxQL and Flux, or in PromQL."""

    ref: str
    influxql: str = ""
    flux: str = ""
    promql: str = ""
    legend: str = ""
    fmt: str = "time_series"  # or "table"


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # Grafana panel type
    queries: tuple[Query, ...]
    w: int = 12
    h: int = 8
    description: str = ""
    unit: str = ""
    repeat: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[dict[str, Any], ...] = ()
    transformations: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    time_from: str = "now-6h"
    asset_variable: bool = True


def _fixed_color(color: str) -> dict[str, Any]:
    return {"color": {"mode": "fixed", "fixedColor": color}}


def _override(name: str, props: dict[str, Any]) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in props.items()],
    }


STATE_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "ok": {"text": "ok", "color": "green", "index": 0},
            "calibrating": {"text": "calibrating", "color": "blue", "index": 1},
            "shifted": {"text": "shifted", "color": "orange", "index": 2},
            "open": {"text": "open", "color": "red", "index": 3},
            "update": {"text": "open", "color": "red", "index": 4},
            "closed": {"text": "closed", "color": "green", "index": 5},
        },
    }
]

SHIFT_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "entered": {"text": "shifted", "color": "orange", "index": 0},
            "left": {"text": "back in range", "color": "green", "index": 1},
        },
    }
]

# --- the asset dashboard ----------------------------------------------------------------------

ASSET = Dashboard(
    uid="seqae-asset",
    title="seqae / Asset score",
    description="Per-asset anomaly score against its threshold, channel errors and model state.",
    panels=(
        Panel(
            title="Score and threshold: $asset",
            kind="timeseries",
            repeat="asset",
            w=24,
            description="Window score (max per interval) and the threshold in force. "
            "Above the threshold the window is anomalous.",
            queries=(
                Query(
                    ref="A",
                    influxql='SELECT max("score") AS "score", mean("threshold") AS "threshold" '
                    'FROM "seqae_score" WHERE "asset" =~ /^$asset$/ AND $timeFilter '
                    "GROUP BY time($__interval) fill(null)",
                    flux=_SCORE
                    + _ASSET
                    + '  |> filter(fn: (r) => r._field == "score" or r._field == "threshold")\n'
                    "  |> aggregateWindow(every: v.windowPeriod, fn: max, createEmpty: false)\n"
                    '  |> keep(columns: ["_time", "_value", "_field"])',
                ),
            ),
            overrides=(
                _override(
                    "threshold",
                    {"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}} | _fixed_color("red"),
                ),
            ),
        ),
        Panel(
            title="Per-channel error",
            kind="timeseries",
            description="Mean squared standardised reconstruction error per channel "
            "(the err_<channel> fields): which channel drives the score.",
            unit="none",
            queries=(
                Query(
                    ref="A",
                    influxql='SELECT mean(/^err_/) FROM "seqae_score" '
                    'WHERE "asset" =~ /^$asset$/ AND $timeFilter '
                    'GROUP BY time($__interval), "asset" fill(null)',
                    legend="$tag_asset $col",
                    flux=_SCORE + _ASSET + "  |> filter(fn: (r) => r._field =~ /^err_/)\n"
                    "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
                    '  |> keep(columns: ["_time", "_value", "_field", "asset"])',
                ),
            ),
        ),
        Panel(
            title="Model state",
            kind="state-timeline",
            description="ok, calibrating (per-asset baseline being fitted) or shifted "
            "(inputs outside the range the baseline knows).",
            queries=(
                Query(
                    ref="A",
                    influxql='SELECT last("state") AS "state" FROM "seqae_score" '
                    'WHERE "asset" =~ /^$asset$/ AND $timeFilter '
                    'GROUP BY time($__interval), "asset" fill(previous)',
                    legend="$tag_asset",
                    flux=_SCORE + _ASSET + '  |> filter(fn: (r) => r._field == "state")\n'
                    "  |> aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)\n"
                    '  |> keep(columns: ["_time", "_value", "asset"])',
                ),
            ),
            defaults={"mappings": STATE_MAPPINGS},
        ),
        Panel(
            title="Anomalous windows and gaps",
            kind="timeseries",
            description="Windows above the threshold, and windows that follow a gap "
            "in the readings (the window was reset).",
            queries=(
                Query(
                    ref="A",
                    influxql='SELECT count("score") AS "anomalous" FROM "seqae_score" '
                    'WHERE "anomalous" = true AND "asset" =~ /^$asset$/ AND $timeFilter '
                    'GROUP BY time($__interval), "asset" fill(0)',
                    legend="$tag_asset anomalous",
                    flux=_SCORE
                    + _ASSET
                    + '  |> filter(fn: (r) => r._field == "anomalous")\n'
                    + "  |> filter(fn: (r) => r._value == true)\n"
                    "  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: true)\n"
                    '  |> keep(columns: ["_time", "_value", "asset"])',
                ),
                Query(
                    ref="B",
                    influxql='SELECT count("score") AS "gaps" FROM "seqae_score" '
                    'WHERE "gap" = true AND "asset" =~ /^$asset$/ AND $timeFilter '
                    'GROUP BY time($__interval), "asset" fill(0)',
                    legend="$tag_asset gaps",
                    flux=_SCORE
                    + _ASSET
                    + '  |> filter(fn: (r) => r._field == "gap")\n'
                    + "  |> filter(fn: (r) => r._value == true)\n"
                    "  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: true)\n"
                    '  |> keep(columns: ["_time", "_value", "asset"])',
                ),
            ),
            options={"legend": {"displayMode": "list", "placement": "bottom"}},
            defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
        ),
        Panel(
            title="Operating-point shifts",
            kind="state-timeline",
            description="Shift events (seqae_event, kind=shift): orange from the moment an "
            "asset's inputs left the range its baseline knows (entered) until they came back "
            "or it re-baselined (left). A shift opens no fault alert.",
            queries=(
                Query(
                    ref="A",
                    influxql='SELECT last("state") AS "state" FROM "seqae_event" '
                    'WHERE "kind" = \'shift\' AND "asset" =~ /^$asset$/ AND $timeFilter '
                    'GROUP BY time($__interval), "asset" fill(previous)',
                    legend="$tag_asset",
                    flux=_SHIFT + _ASSET + '  |> filter(fn: (r) => r._field == "state")\n'
                    "  |> aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)\n"
                    '  |> keep(columns: ["_time", "_value", "asset"])',
                ),
            ),
            defaults={"mappings": SHIFT_MAPPINGS},
        ),
        Panel(
            title="Shift events",
            kind="table",
            description="Each shift event, newest first: the asset, its profile and whether "
            "it entered or left the shifted state.",
            queries=(
                Query(
                    ref="A",
                    fmt="table",
                    influxql='SELECT "asset", "profile", "state" FROM "seqae_event" '
                    'WHERE "kind" = \'shift\' AND "asset" =~ /^$asset$/ AND $timeFilter '
                    "ORDER BY time DESC LIMIT 200",
                    flux=_SHIFT + _ASSET + '  |> filter(fn: (r) => r._field == "state")\n'
                    "  |> group()\n"
                    '  |> keep(columns: ["_time", "asset", "profile", "_value"])\n'
                    '  |> rename(columns: {_value: "state"})\n'
                    '  |> sort(columns: ["_time"], desc: true)\n'
                    "  |> limit(n: 200)",
                ),
            ),
        ),
        Panel(
            title="Models serving",
            kind="table",
            w=12,
            description="Latest score per asset with the profile and model version that produced it.",
            queries=(
                Query(
                    ref="A",
                    fmt="table",
                    influxql='SELECT last("score") AS "score", last("threshold") AS "threshold" '
                    'FROM "seqae_score" WHERE "asset" =~ /^$asset$/ AND $timeFilter '
                    'GROUP BY "asset", "profile", "model_version"',
                    flux=_SCORE
                    + _ASSET
                    + '  |> filter(fn: (r) => r._field == "score" or r._field == "threshold")\n'
                    "  |> last()\n"
                    '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
                    "  |> group()\n"
                    '  |> keep(columns: ["asset", "profile", "model_version", "score", "threshold"])',
                ),
            ),
        ),
    ),
)

# --- the alert dashboard ----------------------------------------------------------------------

ALERTS = Dashboard(
    uid="seqae-alerts",
    title="seqae / Alerts",
    description="Alert timeline (open and closed, by severity) and the channels behind recent alerts.",
    time_from="now-24h",
    panels=(
        Panel(
            title="Alert timeline",
            kind="state-timeline",
            w=24,
            description="Red while an alert is open (its series name carries the severity), "
            "green once closed.",
            queries=(
                Query(
                    ref="A",
                    influxql='SELECT last("state") AS "state" FROM "seqae_alert" '
                    'WHERE "asset" =~ /^$asset$/ AND $timeFilter '
                    'GROUP BY time($__interval), "asset", "severity" fill(previous)',
                    legend="$tag_asset ($tag_severity)",
                    flux=_ALERT + _ASSET + '  |> filter(fn: (r) => r._field == "state")\n'
                    "  |> aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)\n"
                    '  |> keep(columns: ["_time", "_value", "asset", "severity"])',
                ),
            ),
            defaults={"mappings": STATE_MAPPINGS},
        ),
        Panel(
            title="Alerts opened, by severity",
            kind="timeseries",
            queries=(
                Query(
                    ref="A",
                    influxql='SELECT count("score") AS "opened" FROM "seqae_alert" '
                    'WHERE "state" = \'open\' AND "asset" =~ /^$asset$/ AND $timeFilter '
                    'GROUP BY time($__interval), "severity" fill(0)',
                    legend="$tag_severity",
                    flux=_ALERT
                    + _ASSET
                    + '  |> filter(fn: (r) => r._field == "state")\n'
                    + '  |> filter(fn: (r) => r._value == "open")\n'
                    '  |> group(columns: ["severity"])\n'
                    "  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: true)",
                ),
            ),
            defaults={
                "custom": {"drawStyle": "bars", "fillOpacity": 60, "stacking": {"mode": "normal"}}
            },
            overrides=(
                _override("critical", _fixed_color("red")),
                _override("warning", _fixed_color("orange")),
            ),
        ),
        Panel(
            title="Channel error during anomalous windows",
            kind="bargauge",
            description="Mean per-channel error over the anomalous windows in range: "
            "the channels that contribute most to this period's alerts.",
            queries=(
                Query(
                    ref="A",
                    fmt="table",
                    influxql='SELECT mean(/^err_/) FROM "seqae_score" '
                    'WHERE "anomalous" = true AND "asset" =~ /^$asset$/ AND $timeFilter',
                    # experimental.unpivot needs InfluxDB 2.3 or later.
                    flux='import "experimental"\n\n'
                    + _SCORE
                    + _ASSET
                    + '  |> filter(fn: (r) => r._field == "anomalous" or r._field =~ /^err_/)\n'
                    '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
                    "  |> filter(fn: (r) => r.anomalous == true)\n"
                    '  |> drop(columns: ["anomalous"])\n'
                    "  |> experimental.unpivot()\n"
                    '  |> group(columns: ["_field"])\n'
                    "  |> mean()",
                ),
            ),
            options={
                "orientation": "horizontal",
                "displayMode": "gradient",
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False, "fields": ""},
            },
        ),
        Panel(
            title="Recent alerts and their top channels",
            kind="table",
            w=24,
            h=10,
            description="Alert events, newest first: state, peak score, duration and the "
            "channels that contributed most (top_channels). Events of one alert share its "
            "alert_id; a second open of the same alert_id is the alert re-opened by a fault "
            "that came back during its cooldown.",
            queries=(
                Query(
                    ref="A",
                    fmt="table",
                    influxql='SELECT "alert_id", "asset", "severity", "state", "score", '
                    '"peak_score", "duration_s", "top_channels" FROM "seqae_alert" '
                    'WHERE "asset" =~ /^$asset$/ AND $timeFilter ORDER BY time DESC LIMIT 200',
                    flux=_ALERT
                    + _ASSET
                    + '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
                    "  |> group()\n"
                    '  |> keep(columns: ["_time", "alert_id", "asset", "severity", "state", '
                    '"score", "peak_score", "duration_s", "top_channels"])\n'
                    '  |> sort(columns: ["_time"], desc: true)\n'
                    "  |> limit(n: 200)",
                ),
            ),
            overrides=(_override("duration_s", {"unit": "s"}),),
        ),
    ),
)

# --- the fleet dashboard ----------------------------------------------------------------------

FLEET = Dashboard(
    uid="seqae-fleet",
    title="seqae / Fleet overview",
    description="All assets at once: how many are in alert, alerts per day, the worst scores.",
    time_from="now-7d",
    asset_variable=False,
    panels=(
        Panel(
            title="Assets in alert",
            kind="stat",
            w=6,
            h=5,
            description="Assets whose latest alert event in range is not 'closed'.",
            queries=(
                Query(
                    ref="A",
                    influxql='SELECT count("state") AS "assets" FROM '
                    '(SELECT last("state") AS "state" FROM "seqae_alert" '
                    'WHERE $timeFilter GROUP BY "asset") WHERE "state" <> \'closed\'',
                    flux=_ALERT + '  |> filter(fn: (r) => r._field == "state")\n'
                    '  |> group(columns: ["asset"])\n'
                    "  |> last()\n"
                    '  |> filter(fn: (r) => r._value != "closed")\n'
                    "  |> group()\n"
                    "  |> count()",
                ),
            ),
            defaults={
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
                }
            },
            options={
                "colorMode": "background",
                "graphMode": "none",
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False, "fields": ""},
            },
        ),
        Panel(
            title="Assets reporting",
            kind="stat",
            w=6,
            h=5,
            description="Assets with at least one scored window in range.",
            queries=(
                Query(
                    ref="A",
                    influxql='SELECT count("score") AS "assets" FROM '
                    '(SELECT last("score") AS "score" FROM "seqae_score" '
                    'WHERE $timeFilter GROUP BY "asset")',
                    flux=_SCORE + '  |> filter(fn: (r) => r._field == "score")\n'
                    '  |> group(columns: ["asset"])\n'
                    "  |> last()\n"
                    "  |> group()\n"
                    "  |> count()",
                ),
            ),
            options={
                "graphMode": "none",
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False, "fields": ""},
            },
        ),
        Panel(
            title="Alerts per day",
            kind="barchart",
            w=12,
            h=10,
            description="Alerts opened per day, by severity.",
            queries=(
                Query(
                    ref="A",
                    fmt="table",
                    influxql='SELECT count("score") AS "opened" FROM "seqae_alert" '
                    "WHERE \"state\" = 'open' AND $timeFilter "
                    'GROUP BY time(1d), "severity" fill(0)',
                    flux=_ALERT
                    + '  |> filter(fn: (r) => r._field == "state")\n'
                    + '  |> filter(fn: (r) => r._value == "open")\n'
                    '  |> group(columns: ["severity"])\n'
                    "  |> aggregateWindow(every: 1d, fn: count, createEmpty: true)",
                ),
            ),
            options={"stacking": "normal", "xTickLabelRotation": -45},
            transformations=({"id": "prepareTimeSeries", "options": {"format": "multi"}},),
        ),
        Panel(
            title="Open alerts",
            kind="table",
            w=12,
            description="Latest event of each asset's alert, for the assets still in alert, "
            "with the alert_id that joins it to its events.",
            queries=(
                Query(
                    ref="A",
                    fmt="table",
                    influxql='SELECT "alert_id", "state", "peak_score", "top_channels" FROM '
                    '(SELECT last("alert_id") AS "alert_id", last("state") AS "state", '
                    'last("peak_score") AS "peak_score", '
                    'last("top_channels") AS "top_channels" FROM "seqae_alert" '
                    'WHERE $timeFilter GROUP BY "asset", "severity") '
                    'WHERE "state" <> \'closed\' GROUP BY "asset", "severity"',
                    flux=_ALERT
                    + '  |> filter(fn: (r) => r._field == "alert_id" or r._field == "state" '
                    'or r._field == "peak_score" or r._field == "top_channels")\n'
                    '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
                    '  |> group(columns: ["asset", "severity"])\n'
                    '  |> last(column: "state")\n'
                    '  |> filter(fn: (r) => r.state != "closed")\n'
                    "  |> group()\n"
                    '  |> keep(columns: ["alert_id", "asset", "severity", "state", "peak_score", '
                    '"top_channels"])',
                ),
            ),
        ),
        Panel(
            title="Score / threshold by asset",
            kind="timeseries",
            w=12,
            description="Worst window score relative to its threshold; above 1 is anomalous.",
            queries=(
                Query(
                    ref="A",
                    influxql='SELECT max("score") / mean("threshold") AS "ratio" FROM "seqae_score" '
                    'WHERE $timeFilter GROUP BY time($__interval), "asset" fill(null)',
                    legend="$tag_asset",
                    flux=_SCORE
                    + '  |> filter(fn: (r) => r._field == "score" or r._field == "threshold")\n'
                    "  |> aggregateWindow(every: v.windowPeriod, fn: max, createEmpty: false)\n"
                    '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
                    "  |> map(fn: (r) => ({r with _value: r.score / r.threshold}))\n"
                    '  |> keep(columns: ["_time", "_value", "asset"])',
                ),
            ),
            defaults={
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
                },
                "custom": {"thresholdsStyle": {"mode": "line"}},
            },
        ),
        Panel(
            title="Anomalous windows by asset",
            kind="bargauge",
            w=12,
            queries=(
                Query(
                    ref="A",
                    influxql='SELECT count("score") AS "anomalous" FROM "seqae_score" '
                    'WHERE "anomalous" = true AND $timeFilter GROUP BY "asset"',
                    legend="$tag_asset",
                    flux=_SCORE
                    + '  |> filter(fn: (r) => r._field == "anomalous")\n'
                    + "  |> filter(fn: (r) => r._value == true)\n"
                    '  |> group(columns: ["asset"])\n'
                    "  |> count()",
                ),
            ),
            options={
                "orientation": "horizontal",
                "displayMode": "gradient",
                "reduceOptions": {"calcs": ["sum"], "values": False, "fields": ""},
            },
        ),
    ),
)

# --- daemon health (Prometheus) ---------------------------------------------------------------

_JOB = 'job=~"$job", instance=~"$instance"'


def _p(quantile: str, metric: str) -> str:
    return (
        f"histogram_quantile({quantile}, sum by (le) "
        f"(rate({metric}_bucket{{{_JOB}}}[$__rate_interval])))"
    )


HEALTH = Dashboard(
    uid="seqae-daemon-health",
    title="seqae / Daemon health",
    description="The daemon's own metrics (Prometheus /metrics): throughput, lag, latency, errors.",
    time_from="now-3h",
    asset_variable=False,
    panels=(
        Panel(
            title="Throughput",
            kind="timeseries",
            unit="ops",
            queries=(
                Query(
                    ref="A",
                    promql=f"sum(rate(seqae_messages_in_total{{{_JOB}}}[$__rate_interval]))",
                    legend="messages in /s",
                ),
                Query(
                    ref="B",
                    promql=f"sum(rate(seqae_windows_scored_total{{{_JOB}}}[$__rate_interval]))",
                    legend="windows scored /s",
                ),
            ),
        ),
        Panel(
            title="Consumer lag",
            kind="timeseries",
            unit="short",
            description="Messages behind the end of each partition.",
            queries=(
                Query(
                    ref="A",
                    promql=f"sum by (instance) (seqae_consumer_lag{{{_JOB}}})",
                    legend="{{instance}}",
                ),
            ),
        ),
        Panel(
            title="Committed lag and held offsets",
            kind="timeseries",
            unit="short",
            description="Per partition: messages after the group's committed offset (what a "
            "restart reads again) and, of those, messages read but held back from the commit "
            "by incomplete windows or unacknowledged points. Committed lag = consumer lag + "
            "held once a commit has caught up; a held count that stays up when the stream "
            "is idle is a pinned partition.",
            queries=(
                Query(
                    ref="A",
                    promql=f"max by (topic, partition) (seqae_committed_lag{{{_JOB}}})",
                    legend="committed lag {{topic}}[{{partition}}]",
                ),
                Query(
                    ref="B",
                    promql=f"max by (topic, partition) (seqae_held_offsets{{{_JOB}}})",
                    legend="held {{topic}}[{{partition}}]",
                ),
            ),
        ),
        Panel(
            title="Latency",
            kind="timeseries",
            unit="s",
            description="Write latency: from the timestamp of the message that completed a "
            "batch's oldest window to InfluxDB's acknowledgement of its points; and model "
            "scoring time per round of batches.",
            queries=(
                Query(ref="A", promql=_p("0.5", "seqae_write_latency_seconds"), legend="write p50"),
                Query(
                    ref="B", promql=_p("0.99", "seqae_write_latency_seconds"), legend="write p99"
                ),
                Query(ref="C", promql=_p("0.99", "seqae_scoring_seconds"), legend="scoring p99"),
            ),
        ),
        Panel(
            title="Batch size",
            kind="timeseries",
            unit="short",
            queries=(
                Query(
                    ref="A",
                    promql=f"sum(rate(seqae_batch_size_sum{{{_JOB}}}[$__rate_interval])) / "
                    f"sum(rate(seqae_batch_size_count{{{_JOB}}}[$__rate_interval]))",
                    legend="mean windows per batch",
                ),
            ),
        ),
        Panel(
            title="Errors",
            kind="timeseries",
            unit="ops",
            description="Bad input messages by reason, and failed InfluxDB writes (retried).",
            queries=(
                Query(
                    ref="A",
                    promql=f"sum by (reason) (rate(seqae_bad_messages_total{{{_JOB}}}[$__rate_interval]))",
                    legend="bad: {{reason}}",
                ),
                Query(
                    ref="B",
                    promql=f"sum(rate(seqae_sink_errors_total{{{_JOB}}}[$__rate_interval]))",
                    legend="sink errors",
                ),
            ),
        ),
        Panel(
            title="Alert and shift events",
            kind="timeseries",
            unit="short",
            description="Fault alert events (open, update, closed) and operating-point shift "
            "events (entered, left) written, per state, in each interval.",
            queries=(
                Query(
                    ref="A",
                    promql=f"sum by (state) (increase(seqae_alert_events_total{{{_JOB}}}"
                    "[$__rate_interval]))",
                    legend="alert {{state}}",
                ),
                Query(
                    ref="B",
                    promql=f"sum by (state) (increase(seqae_shift_events_total{{{_JOB}}}"
                    "[$__rate_interval]))",
                    legend="shift {{state}}",
                ),
            ),
        ),
        Panel(
            title="Open alerts and instances up",
            kind="timeseries",
            unit="short",
            queries=(
                Query(ref="A", promql=f"sum(seqae_alerts_open{{{_JOB}}})", legend="open alerts"),
                Query(ref="B", promql=f"sum(up{{{_JOB}}})", legend="instances up"),
            ),
        ),
    ),
)

INFLUX_DASHBOARDS = (ASSET, ALERTS, FLEET)

# --- JSON rendering ---------------------------------------------------------------------------


def _datasource_variable(name: str, plugin: str, default_uid: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "datasource",
        "query": plugin,
        "current": {"selected": False, "text": default_uid, "value": default_uid},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def _query_variable(
    name: str, ds: dict[str, str], query: str, *, multi: bool, include_all: bool
) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": ds,
        "definition": query,
        "query": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": include_all,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if include_all else {},
        "hide": 0,
        "options": [],
        "regex": "",
    }


def _variables(dash: Dashboard, language: str) -> list[dict[str, Any]]:
    if language == "prometheus":
        ds = {"type": "prometheus", "uid": f"${{{DS_PROMETHEUS}}}"}
        return [
            _datasource_variable(
                DS_PROMETHEUS, "prometheus", DEFAULT_DS["prometheus"], "Prometheus"
            ),
            _query_variable(
                "job",
                ds,
                "label_values(seqae_windows_scored_total, job)",
                multi=True,
                include_all=True,
            ),
            _query_variable(
                "instance",
                ds,
                'label_values(seqae_windows_scored_total{job=~"$job"}, instance)',
                multi=True,
                include_all=True,
            ),
        ]
    ds = {"type": "influxdb", "uid": f"${{{DS_INFLUX}}}"}
    label = "InfluxDB (InfluxQL)" if language == "influxql" else "InfluxDB (Flux)"
    out = [_datasource_variable(DS_INFLUX, "influxdb", DEFAULT_DS[language], label)]
    if language == "flux":
        out.append(
            {
                "name": "bucket",
                "label": "bucket",
                "type": "constant",
                "query": "seqae",
                "hide": 2,
            }
        )
    if dash.asset_variable:
        if language == "influxql":
            query = 'SHOW TAG VALUES FROM "seqae_score" WITH KEY = "asset"'
        else:
            query = (
                'import "influxdata/influxdb/schema"\n'
                'schema.tagValues(bucket: "${bucket}", tag: "asset", '
                'predicate: (r) => r._measurement == "seqae_score", start: -30d)'
            )
        out.append(_query_variable("asset", ds, query, multi=True, include_all=True))
    return out


def _target(q: Query, language: str) -> dict[str, Any]:
    if language == "prometheus":
        return {
            "refId": q.ref,
            "datasource": {"type": "prometheus", "uid": f"${{{DS_PROMETHEUS}}}"},
            "expr": q.promql,
            "legendFormat": q.legend,
            "range": True,
        }
    target: dict[str, Any] = {
        "refId": q.ref,
        "datasource": {"type": "influxdb", "uid": f"${{{DS_INFLUX}}}"},
        "query": q.influxql if language == "influxql" else q.flux,
        "resultFormat": q.fmt,
    }
    if language == "influxql":
        target["rawQuery"] = True
        if q.legend:
            target["alias"] = q.legend
    return target


def _panels(dash: Dashboard, language: str) -> list[dict[str, Any]]:
    plugin = "prometheus" if language == "prometheus" else "influxdb"
    ds_var = DS_PROMETHEUS if language == "prometheus" else DS_INFLUX
    panels, x, y, row_h = [], 0, 0, 0
    for pid, p in enumerate(dash.panels, start=1):
        if x + p.w > 24:
            x, y, row_h = 0, y + row_h, 0
        defaults: dict[str, Any] = {"unit": p.unit} if p.unit else {}
        defaults.update(p.defaults)
        panel: dict[str, Any] = {
            "id": pid,
            "type": p.kind,
            "title": p.title,
            "description": p.description,
            "datasource": {"type": plugin, "uid": f"${{{ds_var}}}"},
            "gridPos": {"x": x, "y": y, "w": p.w, "h": p.h},
            "targets": [_target(q, language) for q in p.queries],
            "fieldConfig": {"defaults": defaults, "overrides": list(p.overrides)},
            "options": p.options,
        }
        if p.transformations:
            panel["transformations"] = list(p.transformations)
        if p.repeat:
            panel["repeat"] = p.repeat
            panel["repeatDirection"] = "v"
        panels.append(panel)
        x += p.w
        row_h = max(row_h, p.h)
    return panels


def render(dash: Dashboard, language: str) -> dict[str, Any]:
    """The Grafana dashboard JSON of `dash` with its queries in `language`."""
    suffix = "" if language in ("influxql", "prometheus") else f"-{language}"
    title = dash.title + (" (Flux)" if language == "flux" else "")
    links = [
        {
            "title": "seqae",
            "type": "dashboards",
            "tags": TAGS,
            "asDropdown": True,
            "includeVars": False,
            "keepTime": True,
        }
    ]
    return {
        "uid": dash.uid + suffix,
        "title": title,
        "description": dash.description,
        "tags": [*TAGS, language],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "",
        "refresh": "1m",
        "time": {"from": dash.time_from, "to": "now"},
        "timepicker": {},
        "links": links,
        "annotations": {"list": []},
        "templating": {"list": _variables(dash, language)},
        "panels": _panels(dash, language),
    }


def dashboard_files() -> Iterator[tuple[Path, dict[str, Any]]]:
    for dash in INFLUX_DASHBOARDS:
        for language in ("influxql", "flux"):
            yield OUT / language / f"{dash.uid}.json", render(dash, language)
    yield OUT / "prometheus" / f"{HEALTH.uid}.json", render(HEALTH, "prometheus")


def _text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def query_catalogue() -> str:
    """QUERIES.md: every panel's query for InfluxDB 1.x (InfluxQL), 2.x (Flux) or Prometheus."""
    out = [
        "# seqae dashboard queries",
        "",
        "Generated by `build_dashboards.py`; do not edit. Each InfluxDB panel has an InfluxQL",
        "query (InfluxDB 1.x, and 2.x through its database/retention-policy mapping) and a Flux",
        "query (InfluxDB 2.x; 1.8 only with `flux-enabled = true`; InfluxDB 1.6 has no Flux).",
        "Grafana fills in `$timeFilter`, `$__interval`, `$asset` (InfluxQL) and",
        "`v.timeRangeStart`, `v.windowPeriod`, `${bucket}`, `${asset:regex}` (Flux).",
    ]
    for dash in (*INFLUX_DASHBOARDS, HEALTH):
        out += ["", f"## {dash.title}", "", dash.description]
        for panel in dash.panels:
            out += ["", f"### {panel.title}"]
            if panel.description:
                out += ["", panel.description]
            for q in panel.queries:
                blocks = (
                    [("PromQL", "promql", q.promql)]
                    if q.promql
                    else [("InfluxQL", "sql", q.influxql), ("Flux", "flux", q.flux)]
                )
                for label, lang, text in blocks:
                    out += ["", f"{label} ({q.ref}):", "", f"```{lang}", text, "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if a file on disk differs")
    args = parser.parse_args(argv)
    stale = []
    files = [(path, _text(doc)) for path, doc in dashboard_files()]
    files.append((OUT.parent / "QUERIES.md", query_catalogue()))
    for path, text in files:
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        names = ", ".join(str(p) for p in stale)
        print(
            f"stale dashboards (run deploy/grafana/build_dashboards.py): {names}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
