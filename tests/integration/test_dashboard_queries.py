"""Every dashboard query runs against real servers and returns data.

InfluxQL queries run on the devstack InfluxDB 1.x against a realistic set of
seqae_score / seqae_alert points (in a database of their own); PromQL queries run
on the devstack VictoriaMetrics against a realistic scrape history of the daemon's
metrics. Grafana's macros ($timeFilter, $__interval, $asset, ...) are substituted
the way Grafana does. Flux variants cannot run here: InfluxDB 1.6 has no Flux.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from conftest import http_request

pytestmark = pytest.mark.integration

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
ASSETS = ["pump-1", "pump-2", "pump-3", "pump-4"]
CHANNELS = ["pressure", "flow", "temperature", "vibration"]
STEP_S = 10
HISTORY_S = 2 * 3600
# Grafana's $__interval for a ~1000 px wide panel at each dashboard's default range.
RANGE_S = {"now-6h": 6 * 3600, "now-24h": 24 * 3600, "now-7d": 7 * 86400, "now-3h": 3 * 3600}
INTERVAL = {"now-6h": "20s", "now-24h": "1m", "now-7d": "10m", "now-3h": "10s"}


class InfluxV1(Protocol):
    url: str


class InfluxV2(Protocol):
    url: str


# --- a realistic day in the InfluxDB ----------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    db: str
    now_ns: int
    alerts_opened: int
    assets_in_alert: set[str]


def _esc_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def score_lines(now_ns: int) -> list[str]:
    """Two hours of 10 s windows for four pumps.

    pump-2 has a vibration/temperature fault 40..25 min ago (an alert that opened and
    closed); pump-3 is anomalous for the last 10 min (its alert is still open); pump-4
    calibrates its baseline for the first 10 min, has one gap, and serves an older model.
    """
    lines = []
    n = HISTORY_S // STEP_S
    for a, asset in enumerate(ASSETS):
        version = "v2" if asset == "pump-4" else "v3"
        tags = f"seqae_score,asset={_esc_tag(asset)},profile=pump,model_version={version}"
        for i in range(n):
            t_ns = now_ns - (n - 1 - i) * STEP_S * 1_000_000_000
            age_s = (n - 1 - i) * STEP_S
            wobble = 0.5 + 0.3 * math.sin(i / 17 + a)
            err = {ch: wobble * (0.2 + 0.1 * c) for c, ch in enumerate(CHANNELS)}
            if asset == "pump-2" and 25 * 60 <= age_s <= 40 * 60:
                err["vibration"] += 3.0
                err["temperature"] += 1.2
            if asset == "pump-3" and age_s <= 10 * 60:
                err["vibration"] += 6.0
            score = sum(err.values())
            threshold = 2.5
            state = "calibrating" if asset == "pump-4" and i < 60 else "ok"
            gap = asset == "pump-4" and i == 300
            fields = [
                f"score={score:.6f}",
                f"threshold={threshold}",
                f"anomalous={'true' if score > threshold else 'false'}",
                f'state="{state}"',
                f"gap={'true' if gap else 'false'}",
                *(f"err_{ch}={v:.6f}" for ch, v in err.items()),
            ]
            lines.append(f"{tags} {','.join(fields)} {t_ns}")
    return lines


def alert_lines(now_ns: int) -> tuple[list[str], int]:
    """Alert events: one per day for the past six days, pump-2's closed alert, pump-3's open one."""
    s = 1_000_000_000
    events: list[tuple[str, str, int, str, float, float, float, str]] = []
    for day in range(1, 7):
        t0 = now_ns - day * 86400 * s
        asset = ASSETS[day % len(ASSETS)]
        sev = "critical" if day % 3 == 0 else "warning"
        events.append((asset, sev, t0, "open", 3.1, 3.1, 0.0, "vibration,flow"))
        events.append((asset, sev, t0 + 300 * s, "closed", 2.0, 4.4, 300.0, "vibration,flow"))
    t_open = now_ns - 40 * 60 * s
    events.append(("pump-2", "warning", t_open, "open", 3.4, 3.4, 0.0, "vibration,temperature"))
    events.append(
        ("pump-2", "warning", t_open + 60 * s, "update", 4.6, 4.6, 60.0, "vibration,temperature")
    )
    events.append(
        ("pump-2", "warning", t_open + 900 * s, "closed", 2.1, 4.9, 900.0, "vibration,temperature")
    )
    t_open = now_ns - 10 * 60 * s
    events.append(("pump-3", "critical", t_open, "open", 7.2, 7.2, 0.0, "vibration,pressure"))
    events.append(
        ("pump-3", "critical", t_open + 300 * s, "update", 7.9, 8.3, 300.0, "vibration,pressure")
    )
    lines = [
        f"seqae_alert,asset={_esc_tag(asset)},profile=pump,severity={sev} "
        f'state="{state}",score={score},peak_score={peak},duration_s={dur},'
        f'top_channels="{top}" {t}'
        for asset, sev, t, state, score, peak, dur, top in events
    ]
    opened = sum(1 for e in events if e[3] == "open")
    return lines, opened


def influxql(url: str, db: str, q: str, *, method: str = "GET") -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"})
    status, body = http_request(method, f"{url}/query?{params}")
    if status != 200:
        raise AssertionError(f"InfluxQL {q!r} answered {status}: {body[:400]!r}")
    result = json.loads(body)["results"][0]
    if "error" in result:
        raise AssertionError(f"InfluxQL {q!r} failed: {result['error']}")
    series: list[dict[str, Any]] = result.get("series", [])
    return series


@pytest.fixture(scope="module")
def seqae_points(influx_v1: InfluxV1) -> Iterator[Fixture]:
    db = f"seqae_dash_{uuid.uuid4().hex[:10]}"
    influxql(influx_v1.url, db, f'CREATE DATABASE "{db}"', method="POST")
    now_ns = time.time_ns() // 1_000_000_000 * 1_000_000_000
    scores = score_lines(now_ns)
    alerts, opened = alert_lines(now_ns)
    lines = scores + alerts
    for start in range(0, len(lines), 5000):
        body = "\n".join(lines[start : start + 5000]).encode()
        status, answer = http_request("POST", f"{influx_v1.url}/write?db={db}&precision=ns", body)
        assert status == 204, f"write to {db} answered {status}: {answer[:300]!r}"
    try:
        yield Fixture(db=db, now_ns=now_ns, alerts_opened=opened, assets_in_alert={"pump-3"})
    finally:
        influxql(influx_v1.url, db, f'DROP DATABASE "{db}"', method="POST")


# --- the queries as Grafana would send them ---------------------------------------------------


@dataclass(frozen=True)
class DashboardQuery:
    file: str
    panel: str
    ref: str
    query: str
    time_from: str
    repeat: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.panel}:{self.ref}"


def _load(language: str) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((DASHBOARDS / language).glob("*.json"))
    ]


def panel_queries(language: str, key: str) -> list[DashboardQuery]:
    out = []
    for dash in _load(language):
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                out.append(
                    DashboardQuery(
                        file=dash["uid"],
                        panel=panel["title"],
                        ref=target["refId"],
                        query=target[key],
                        time_from=dash["time"]["from"],
                        repeat=panel.get("repeat", ""),
                    )
                )
    return out


def variable_queries(language: str) -> list[tuple[str, str, str]]:
    return [
        (dash["uid"], var["name"], var["query"])
        for dash in _load(language)
        for var in dash["templating"]["list"]
        if var["type"] == "query"
    ]


def grafana_regex_value(values: list[str]) -> str:
    """How Grafana renders a multi-value variable inside an InfluxQL /regex/."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}/-])", r"\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def render_influxql(q: DashboardQuery, now_ms: int, assets: list[str]) -> str:
    start_ms = now_ms - RANGE_S[q.time_from] * 1000
    text = q.query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {now_ms}ms")
    text = text.replace("$__interval", INTERVAL[q.time_from])
    text = text.replace("$asset", grafana_regex_value(assets))
    leftover = re.findall(r"\$\w+", text)
    assert not leftover, f"{q.id}: unsubstituted Grafana variables {leftover} in {text!r}"
    return text


def has_data(series: list[dict[str, Any]]) -> bool:
    """True when some row carries a value that is neither null nor zero."""
    for s in series:
        for row in s.get("values", []):
            if any(v not in (None, 0, 0.0) for v in row[1:]):
                return True
    return False


INFLUXQL = panel_queries("influxql", "query")


def test_every_influx_dashboard_has_influxql_queries() -> None:
    assert len(INFLUXQL) >= 12, [q.id for q in INFLUXQL]


@pytest.mark.parametrize("name,var,query", variable_queries("influxql"))
def test_influxql_variable_lists_assets(
    seqae_points: Fixture, influx_v1: InfluxV1, name: str, var: str, query: str
) -> None:
    series = influxql(influx_v1.url, seqae_points.db, query)
    values = sorted(row[1] for s in series for row in s["values"])
    assert values == ASSETS, f"{name} variable {var}: {values}"


@pytest.mark.parametrize("q", INFLUXQL, ids=lambda q: q.id)
def test_influxql_panel_query_returns_data(
    seqae_points: Fixture, influx_v1: InfluxV1, q: DashboardQuery
) -> None:
    now_ms = seqae_points.now_ns // 1_000_000 + 1000
    text = render_influxql(q, now_ms, ASSETS)  # the variable set to "All"
    series = influxql(influx_v1.url, seqae_points.db, text)
    assert has_data(series), f"{q.id} returned no data:\n{text}\n{series}"
    if "$asset" not in q.query:
        return
    # One asset at a time (a repeated panel, or a single choice): the filter keeps to
    # that asset, and some asset's panel shows data.
    answered = []
    for asset in ASSETS:
        single = influxql(influx_v1.url, seqae_points.db, render_influxql(q, now_ms, [asset]))
        tagged = {s["tags"]["asset"] for s in single if "asset" in s.get("tags", {})}
        assert tagged <= {asset}, f"{q.id} for {asset} returned series of {tagged}"
        if has_data(single):
            answered.append(asset)
    assert answered, f"{q.id}: no single asset returned data"


def _single_value(influx_v1: InfluxV1, fx: Fixture, file: str, panel: str) -> Any:
    (q,) = [x for x in INFLUXQL if x.file == file and x.panel == panel]
    series = influxql(
        influx_v1.url, fx.db, render_influxql(q, fx.now_ns // 1_000_000 + 1000, ASSETS)
    )
    return series


def test_fleet_panels_count_what_was_written(seqae_points: Fixture, influx_v1: InfluxV1) -> None:
    in_alert = _single_value(influx_v1, seqae_points, "seqae-fleet", "Assets in alert")
    assert in_alert[0]["values"][0][1] == len(seqae_points.assets_in_alert)
    reporting = _single_value(influx_v1, seqae_points, "seqae-fleet", "Assets reporting")
    assert reporting[0]["values"][0][1] == len(ASSETS)
    per_day = _single_value(influx_v1, seqae_points, "seqae-fleet", "Alerts per day")
    assert sum(row[1] for s in per_day for row in s["values"]) == seqae_points.alerts_opened
    open_alerts = _single_value(influx_v1, seqae_points, "seqae-fleet", "Open alerts")
    assert {s["tags"]["asset"] for s in open_alerts} == seqae_points.assets_in_alert


def test_channel_contribution_ranks_the_faulty_channel_first(
    seqae_points: Fixture, influx_v1: InfluxV1
) -> None:
    (s,) = _single_value(
        influx_v1, seqae_points, "seqae-alerts", "Channel error during anomalous windows"
    )
    row = dict(zip(s["columns"], s["values"][0], strict=True))
    errs = {k: v for k, v in row.items() if k.startswith("mean_err_")}
    assert max(errs, key=lambda k: errs[k]) == "mean_err_vibration", errs


# --- PromQL against VictoriaMetrics -----------------------------------------------------------


def scrape_history(job: str, now_s: int) -> str:
    """Twenty minutes of 15 s scrapes of one daemon, in Prometheus text format with timestamps."""
    lines = []
    buckets = [0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]
    for k in range(80):
        ts_ms = (now_s - (79 - k) * 15) * 1000
        labels = f'job="{job}",instance="seqae-0:9108"'
        msgs = 400 * 15 * (k + 1)
        windows = 50 * 15 * (k + 1)
        batches = 15 * 4 * (k + 1)
        lines += [
            f"seqae_messages_in_total{{{labels}}} {msgs} {ts_ms}",
            f"seqae_windows_scored_total{{{labels}}} {windows} {ts_ms}",
            f'seqae_bad_messages_total{{{labels},reason="decode"}} {3 * (k + 1)} {ts_ms}',
            f"seqae_sink_errors_total{{{labels}}} {k // 10 + 1 + k} {ts_ms}",
            f'seqae_consumer_lag{{{labels},partition="0"}} {120 + k % 7} {ts_ms}',
            f"seqae_alerts_open{{{labels}}} 1 {ts_ms}",
            f"up{{{labels}}} 1 {ts_ms}",
            f"seqae_batch_size_sum{{{labels}}} {windows} {ts_ms}",
            f"seqae_batch_size_count{{{labels}}} {batches} {ts_ms}",
        ]
        for metric, scale in (("seqae_e2e_latency_seconds", 1.0), ("seqae_scoring_seconds", 0.05)):
            count = batches
            for le in buckets:
                share = min(1.0, le / scale) if le < scale else 1.0
                lines.append(f'{metric}_bucket{{{labels},le="{le}"}} {int(count * share)} {ts_ms}')
            lines.append(f'{metric}_bucket{{{labels},le="+Inf"}} {count} {ts_ms}')
            lines.append(f"{metric}_sum{{{labels}}} {count * scale / 2} {ts_ms}")
            lines.append(f"{metric}_count{{{labels}}} {count} {ts_ms}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def daemon_metrics(influx_v2: InfluxV2) -> tuple[str, int]:
    job = f"seqae-dash-{uuid.uuid4().hex[:8]}"
    now_s = int(time.time())
    body = scrape_history(job, now_s).encode()
    status, answer = http_request("POST", f"{influx_v2.url}/api/v1/import/prometheus", body)
    assert status in (200, 204), f"import answered {status}: {answer[:300]!r}"
    http_request("GET", f"{influx_v2.url}/internal/force_flush")
    return job, now_s


def promql(url: str, query: str, at_s: int) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": query, "time": str(at_s)})
    status, body = http_request("GET", f"{url}/api/v1/query?{params}")
    if status != 200:
        raise AssertionError(f"PromQL {query!r} answered {status}: {body[:400]!r}")
    doc = json.loads(body)
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


PROMQL = panel_queries("prometheus", "expr")


def render_promql(q: DashboardQuery, job: str) -> str:
    text = q.query.replace("$__rate_interval", "1m").replace(
        "$job", job
    )  # no regex metacharacters in the job name
    text = text.replace("$instance", ".*")
    assert "$" not in text, f"{q.id}: unsubstituted Grafana variables in {text!r}"
    return text


@pytest.mark.parametrize("q", PROMQL, ids=lambda q: q.id)
def test_promql_panel_query_returns_data(
    daemon_metrics: tuple[str, int], influx_v2: InfluxV2, q: DashboardQuery
) -> None:
    job, now_s = daemon_metrics
    text = render_promql(q, job)
    deadline = time.monotonic() + 15
    while True:  # ingestion is asynchronous: poll briefly for the imported samples
        result = promql(influx_v2.url, text, now_s)
        values = [float(r["value"][1]) for r in result]
        if any(v > 0 and math.isfinite(v) for v in values) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert any(v > 0 and math.isfinite(v) for v in values), f"{q.id}: {text} -> {result}"


def test_promql_variables_list_the_job(
    daemon_metrics: tuple[str, int], influx_v2: InfluxV2
) -> None:
    job, now_s = daemon_metrics
    queries = dict((var, query) for _, var, query in variable_queries("prometheus"))
    match = re.fullmatch(r"label_values\((\w+), (\w+)\)", queries["job"])
    assert match, queries["job"]
    metric, label = match.groups()
    params = urllib.parse.urlencode({"match[]": metric, "start": str(now_s - 3600)})
    status, body = http_request("GET", f"{influx_v2.url}/api/v1/label/{label}/values?{params}")
    assert status == 200, body[:300]
    assert job in json.loads(body)["data"]
