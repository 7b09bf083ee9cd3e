"""Every dashboard query runs against real servers and returns data.

InfluxQL queries run on the devstack InfluxDB 1.x and Flux queries on its InfluxDB 2.7, each
against the same realistic set of seqae_score / seqae_alert / seqae_event points (in a database
or bucket of their own). The PromQL dashboard is checked against a real daemon: every metric it
names must be declared by the daemon's /metrics, and its scrapes (taken after each chunk of
input was scored) are imported into VictoriaMetrics, where every panel must return series.
Grafana's macros ($timeFilter, $__interval, $asset, v.timeRangeStart, ${asset:regex}, ...)
are substituted the way Grafana does.
"""

from __future__ import annotations

import json
import math
import re
import signal
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
from conftest import InfluxV2 as InfluxV2Server
from conftest import flux_records, http_request, influx2_bucket_made
from prometheus_client.parser import text_string_to_metric_families
from test_daemon_service import (
    FAULTY,
    HEALTHY,
    DaemonProcess,
    expected_ends,
    free_port,
    interleave,
    make_topic,
    metric_value,
    metrics,
    produce,
    stream,
    train_pumps,
    wait_for,
)

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


SHIFTED_NOW = {"pump-1"}


def event_lines(now_ns: int) -> list[str]:
    """Shift events: pump-4 shifted 50..45 min ago and came back; pump-1 shifted 5 min ago."""
    s = 1_000_000_000
    events = [
        ("pump-4", now_ns - 50 * 60 * s, "entered"),
        ("pump-4", now_ns - 45 * 60 * s, "left"),
        ("pump-1", now_ns - 5 * 60 * s, "entered"),
    ]
    return [
        f'seqae_event,asset={_esc_tag(asset)},profile=pump,kind=shift state="{state}" {t}'
        for asset, t, state in events
    ]


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
    lines = scores + alerts + event_lines(now_ns)
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


# --- Flux against InfluxDB 2.7 ------------------------------------------------------------------


@dataclass(frozen=True)
class FluxFixture:
    server: InfluxV2Server
    now_ns: int
    alerts_opened: int


@pytest.fixture(scope="module")
def flux_points(influx_v2: InfluxV2Server) -> Iterator[FluxFixture]:
    """The same day of points as the InfluxQL fixture, in a bucket of its own on InfluxDB 2.7."""
    with influx2_bucket_made(influx_v2, f"seqae_dash_{uuid.uuid4().hex[:10]}") as server:
        now_ns = time.time_ns() // 1_000_000_000 * 1_000_000_000
        alerts, opened = alert_lines(now_ns)
        lines = score_lines(now_ns) + alerts + event_lines(now_ns)
        q = urllib.parse.urlencode({"org": server.org, "bucket": server.bucket, "precision": "ns"})
        for start in range(0, len(lines), 5000):
            req = urllib.request.Request(
                f"{server.url}/api/v2/write?{q}",
                data="\n".join(lines[start : start + 5000]).encode(),
                headers={"Authorization": f"Token {server.token}"},
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 204
        yield FluxFixture(server=server, now_ns=now_ns, alerts_opened=opened)


def _rfc3339(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


def render_flux(q: DashboardQuery, now_ns: int, bucket: str, assets: list[str]) -> str:
    """Substitute what Grafana's Flux data source fills in: v.*, ${bucket}, ${asset:regex}."""
    start_ns = now_ns - RANGE_S[q.time_from] * 1_000_000_000
    text = q.query.replace("v.timeRangeStart", _rfc3339(start_ns))
    text = text.replace("v.timeRangeStop", _rfc3339(now_ns))
    text = text.replace("v.windowPeriod", INTERVAL[q.time_from])
    text = text.replace("${bucket}", bucket)
    text = text.replace("${asset:regex}", grafana_regex_value(assets))
    leftover = re.findall(r"\$\{?\w+|\bv\.\w+", text)
    assert not leftover, f"{q.id}: unsubstituted Grafana variables {leftover} in {text!r}"
    return text


_FLUX_META = {"result", "table", "_start", "_stop", "_time", "_measurement", "_field"}


def flux_has_data(records: list[dict[str, Any]]) -> bool:
    """True when some record carries a value that is neither null nor zero."""
    return any(
        v not in (None, 0, 0.0, "")
        for r in records
        for k, v in r.items()
        if k not in _FLUX_META and k not in ("asset", "profile", "severity", "model_version")
    )


FLUX = panel_queries("flux", "query")


def test_every_influxql_query_has_its_flux_twin() -> None:
    assert len(FLUX) == len(INFLUXQL) >= 14, [q.id for q in FLUX]


@pytest.mark.parametrize("name,var,query", variable_queries("flux"))
def test_flux_variable_lists_assets(
    flux_points: FluxFixture, name: str, var: str, query: str
) -> None:
    text = query.replace("${bucket}", flux_points.server.bucket)
    values = sorted(r["_value"] for r in flux_records(flux_points.server, text))
    assert values == ASSETS, f"{name} variable {var}: {values}"


@pytest.mark.parametrize("q", FLUX, ids=lambda q: q.id)
def test_flux_panel_query_returns_data(flux_points: FluxFixture, q: DashboardQuery) -> None:
    server, now_ns = flux_points.server, flux_points.now_ns + 1_000_000_000
    text = render_flux(q, now_ns, server.bucket, ASSETS)  # the variable set to "All"
    records = flux_records(server, text)
    assert flux_has_data(records), f"{q.id} returned no data:\n{text}\n{records[:5]}"
    if "${asset:regex}" not in q.query:
        return
    answered = []
    for asset in ASSETS:
        single = flux_records(server, render_flux(q, now_ns, server.bucket, [asset]))
        tagged = {r["asset"] for r in single if "asset" in r}
        assert tagged <= {asset}, f"{q.id} for {asset} returned records of {tagged}"
        if flux_has_data(single):
            answered.append(asset)
    assert answered, f"{q.id}: no single asset returned data"


def _flux_panel(fx: FluxFixture, file: str, panel: str) -> list[dict[str, Any]]:
    (q,) = [x for x in FLUX if x.file == file and x.panel == panel]
    now_ns = fx.now_ns + 1_000_000_000
    return flux_records(fx.server, render_flux(q, now_ns, fx.server.bucket, ASSETS))


def test_flux_fleet_panels_count_what_was_written(flux_points: FluxFixture) -> None:
    (in_alert,) = _flux_panel(flux_points, "seqae-fleet-flux", "Assets in alert")
    assert in_alert["_value"] == 1  # pump-3
    (reporting,) = _flux_panel(flux_points, "seqae-fleet-flux", "Assets reporting")
    assert reporting["_value"] == len(ASSETS)
    per_day = _flux_panel(flux_points, "seqae-fleet-flux", "Alerts per day")
    assert sum(r["_value"] for r in per_day) == flux_points.alerts_opened
    open_alerts = _flux_panel(flux_points, "seqae-fleet-flux", "Open alerts")
    assert {r["asset"] for r in open_alerts} == {"pump-3"}


def test_flux_shift_panels_show_the_written_events(flux_points: FluxFixture) -> None:
    events = _flux_panel(flux_points, "seqae-asset-flux", "Shift events")
    assert [(r["asset"], r["state"]) for r in events] == [
        ("pump-1", "entered"),
        ("pump-4", "left"),
        ("pump-4", "entered"),
    ]
    timeline = _flux_panel(flux_points, "seqae-asset-flux", "Operating-point shifts")
    last = {}
    for r in sorted(timeline, key=lambda r: r["_time"]):
        last[r["asset"]] = r["_value"]
    assert {a for a, state in last.items() if state == "entered"} == SHIFTED_NOW


def test_influxql_shift_panels_show_the_written_events(
    seqae_points: Fixture, influx_v1: InfluxV1
) -> None:
    (events,) = _single_value(influx_v1, seqae_points, "seqae-asset", "Shift events")
    rows = [dict(zip(events["columns"], v, strict=True)) for v in events["values"]]
    assert [(r["asset"], r["state"]) for r in rows] == [
        ("pump-1", "entered"),
        ("pump-4", "left"),
        ("pump-4", "entered"),
    ]


# --- PromQL: a real daemon's /metrics, its scrapes run through VictoriaMetrics ------------------


@dataclass(frozen=True)
class Scrapes:
    texts: list[str]  # /metrics of a real daemon, one per chunk of input it had scored
    server: InfluxV2Server  # the InfluxDB 2.7 bucket it wrote to


def daemon_config(
    tmp: Path, *, bootstrap: str, topic: str, server: InfluxV2Server, port: int
) -> Path:
    models = tmp / "models"
    train_pumps(models)
    config = tmp / "daemon.toml"
    config.write_text(
        f"""
state_dir = "{tmp / "state"}"
commit_interval_s = 0.5
[kafka]
bootstrap_servers = ["{bootstrap}"]
topics = ["{topic}"]
group_id = "g-{topic}"
[profiles]
models_root = "{models}"
routes = [{{ pattern = "pump-*", profile = "pumps" }}]
[baselines]
mode = "model"
[engine]
device = "cpu"
[alerts]
enter_level = 1.0
exit_level = 0.8
min_duration_s = 10
[influx]
api = "v2"
url = "{server.url}"
org = "{server.org}"
bucket = "{server.bucket}"
retry_initial_s = 0.2
retry_max_s = 2
[health]
port = {port}
"""
    )
    return config


@pytest.fixture(scope="module")
def daemon_scrapes(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, influx_v2: InfluxV2Server
) -> Iterator[Scrapes]:
    """A real daemon scores a faulty and a healthy pump into InfluxDB 2.7, in four chunks;
    /metrics is scraped after each chunk has been scored."""
    tmp = tmp_path_factory.mktemp("dash-daemon")
    topic = f"it-dash-{uuid.uuid4().hex[:8]}"
    make_topic(kafka_bootstrap, topic, 2)
    messages = interleave(stream(FAULTY), stream(HEALTHY), assets=(FAULTY, HEALTHY))
    with influx2_bucket_made(influx_v2, f"seqae_daemon_{uuid.uuid4().hex[:10]}") as server:
        port = free_port()
        config = daemon_config(
            tmp, bootstrap=kafka_bootstrap, topic=topic, server=server, port=port
        )
        # The token comes from the environment, as the systemd unit and the images pass it.
        daemon = DaemonProcess(config, tmp / "daemon.log", {"SEQAE_INFLUX__TOKEN": server.token})
        daemon.start()
        texts = []
        try:
            chunk = len(messages) // 4
            for k in range(4):
                produce(kafka_bootstrap, topic, messages[k * chunk : (k + 1) * chunk])
                produce(kafka_bootstrap, topic, [(HEALTHY, b"{not json")])  # one bad per chunk
                want = expected_total_windows((k + 1) * chunk // 2)
                wait_for(lambda want=want: windows_scored(port) >= want, 120, f"chunk {k}", daemon)
                bad = f'seqae_bad_messages_total{{reason="not_json"}} {k + 1}.0'
                wait_for(lambda bad=bad: bad in metrics(port), 30, bad, daemon)
                if k == 0:  # the lag gauge is refreshed every 10 s
                    wait_for(lambda: "seqae_consumer_lag{" in metrics(port), 30, "lag", daemon)
                texts.append(metrics(port))
            assert daemon.signal(signal.SIGTERM) == 0, daemon.log()
        finally:
            daemon.stop()
        yield Scrapes(texts=texts, server=server)


def expected_total_windows(samples: int) -> int:
    return sum(len(expected_ends(a, samples)) for a in (FAULTY, HEALTHY))


def windows_scored(port: int) -> float:
    try:
        text = metrics(port)
    except OSError:  # the health server is not listening yet
        return 0.0
    return metric_value(text, "seqae_windows_scored_total", profile="pumps")


# Series that Prometheus itself adds for every scrape target, not the daemon.
PROMETHEUS_SERIES = {"up"}


def exported_series(metrics_text: str) -> set[str]:
    """Every series name the exposition declares (a labelled family may have no sample yet)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (each of ours is written name{...})."""
    return set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{", expr))


def missing_metrics(expressions: list[str], metrics_text: str) -> dict[str, set[str]]:
    exported = exported_series(metrics_text) | PROMETHEUS_SERIES
    out = {e: promql_metric_names(e) - exported for e in expressions}
    return {e: names for e, names in out.items() if names}


def test_every_promql_metric_is_exported_by_a_running_daemon(daemon_scrapes: Scrapes) -> None:
    expressions = [q.query for q in PROMQL] + [q for _, _, q in variable_queries("prometheus")]
    assert sum(len(promql_metric_names(e)) for e in expressions) >= len(PROMQL)
    assert missing_metrics(expressions, daemon_scrapes.texts[-1]) == {}


def test_the_metric_check_flags_a_name_the_daemon_does_not_export(
    daemon_scrapes: Scrapes,
) -> None:
    """The panel that used to query seqae_e2e_latency_seconds would fail the check above."""
    broken = 'histogram_quantile(0.99, sum by (le) (rate(seqae_e2e_latency_seconds_bucket{job=~"x"}[1m])))'
    assert missing_metrics([broken], daemon_scrapes.texts[-1]) == {
        broken: {"seqae_e2e_latency_seconds_bucket"}
    }


def with_timestamp(metrics_text: str, labels: str, ts_ms: int) -> list[str]:
    """The samples of one scrape as Prometheus text lines with extra labels and a timestamp."""
    lines = []
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            pairs = [f'{k}="{v}"' for k, v in sorted(sample.labels.items())]
            lines.append(f"{sample.name}{{{','.join([*pairs, labels])}}} {sample.value!r} {ts_ms}")
    return lines


@pytest.fixture(scope="module")
def daemon_metrics(daemon_scrapes: Scrapes, promql_url: str) -> tuple[str, int]:
    """The daemon's real scrapes, 15 s apart, imported into VictoriaMetrics under a fresh job."""
    job = f"seqae-dash-{uuid.uuid4().hex[:8]}"
    now_s = int(time.time())
    labels = f'job="{job}",instance="seqae-0:9108"'
    lines = [f"up{{{labels}}} 1 {(now_s - 15 * 4) * 1000}"]
    for k, text in enumerate(daemon_scrapes.texts):
        ts_ms = (now_s - 15 * (len(daemon_scrapes.texts) - 1 - k)) * 1000
        lines += with_timestamp(text, labels, ts_ms)
        lines.append(f"up{{{labels}}} 1 {ts_ms}")
    body = ("\n".join(lines) + "\n").encode()
    status, answer = http_request("POST", f"{promql_url}/api/v1/import/prometheus", body)
    assert status in (200, 204), f"import answered {status}: {answer[:300]!r}"
    http_request("GET", f"{promql_url}/internal/force_flush")
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


def test_the_daemon_wrote_its_scores_and_alert_to_influxdb2_with_the_token(
    daemon_scrapes: Scrapes,
) -> None:
    server = daemon_scrapes.server
    rows = flux_records(
        server,
        f'from(bucket: "{server.bucket}") |> range(start: 0)'
        ' |> filter(fn: (r) => r._measurement == "seqae_score" and r._field == "score")'
        ' |> group(columns: ["asset"]) |> count()',
    )
    assert {r["asset"]: r["_value"] for r in rows} == {
        a: len(expected_ends(a)) for a in (FAULTY, HEALTHY)
    }
    alerts = flux_records(
        server,
        f'from(bucket: "{server.bucket}") |> range(start: 0)'
        ' |> filter(fn: (r) => r._measurement == "seqae_alert" and r._field == "state")',
    )
    assert [r["_value"] for r in alerts if r["asset"] == FAULTY][::-1][0] == "closed"
    assert {r["asset"] for r in alerts} == {FAULTY}


# What the daemon run's story (one fault that opens and closes, no gap) leaves empty.
EMPTY_AFTER_THE_DAEMON_RUN = {
    "seqae-asset-flux:Anomalous windows and gaps:B": "the stream has no gap",
    "seqae-fleet-flux:Assets in alert:A": "the only alert closed",
    "seqae-fleet-flux:Open alerts:A": "the only alert closed",
}


@pytest.mark.parametrize("q", FLUX, ids=lambda q: q.id)
def test_flux_panel_query_returns_data_after_a_real_daemon_run(
    daemon_scrapes: Scrapes, q: DashboardQuery
) -> None:
    server = daemon_scrapes.server
    (last,) = flux_records(
        server,
        f'from(bucket: "{server.bucket}") |> range(start: 0)'
        ' |> filter(fn: (r) => r._measurement == "seqae_score" and r._field == "score")'
        ' |> group() |> max(column: "_time") |> map(fn: (r) => ({r with ns: int(v: r._time)}))',
    )
    text = render_flux(q, last["ns"] + 1_000_000_000, server.bucket, [FAULTY, HEALTHY])
    records = flux_records(server, text)
    why_empty = EMPTY_AFTER_THE_DAEMON_RUN.get(q.id) or (
        "baselines mode 'model': no asset shifts" if '"seqae_event"' in q.query else ""
    )
    if why_empty:  # the panel is right to be empty; the synthetic day above gives it data
        assert not flux_has_data(records), f"{q.id} has data although {why_empty}"
        return
    assert flux_has_data(records), f"{q.id} returned no data:\n{text}\n{records[:5]}"


# Labelled counters a healthy run never increments: the daemon declares them (checked above)
# but exports no sample, so their panels show "No data" until the first error or shift.
SAMPLELESS_IN_A_HEALTHY_RUN = {"seqae_sink_errors_total", "seqae_shift_events_total"}


def sampled_series(metrics_text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(metrics_text) for s in f.samples}


@pytest.mark.parametrize("q", PROMQL, ids=lambda q: q.id)
def test_promql_panel_query_returns_data(
    daemon_scrapes: Scrapes, daemon_metrics: tuple[str, int], promql_url: str, q: DashboardQuery
) -> None:
    job, now_s = daemon_metrics
    text = render_promql(q, job)
    names = promql_metric_names(q.query)
    if names <= SAMPLELESS_IN_A_HEALTHY_RUN:
        sampled = set().union(*(sampled_series(t) for t in daemon_scrapes.texts))
        assert not names & sampled, f"{q.id}: {names} now have samples: drop them from the list"
        assert promql(promql_url, text, now_s) == []
        return
    deadline = time.monotonic() + 15
    while True:  # ingestion is asynchronous: poll briefly for the imported samples
        result = promql(promql_url, text, now_s)
        if result or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert result, f"{q.id}: {text} returned no series"


def test_throughput_panel_shows_the_daemon_working(
    daemon_metrics: tuple[str, int], promql_url: str
) -> None:
    job, now_s = daemon_metrics
    for q in [q for q in PROMQL if q.panel == "Throughput"]:
        values = [float(r["value"][1]) for r in promql(promql_url, render_promql(q, job), now_s)]
        assert values and all(v > 0 and math.isfinite(v) for v in values), (q.id, values)


def test_promql_variables_list_the_job(daemon_metrics: tuple[str, int], promql_url: str) -> None:
    job, now_s = daemon_metrics
    queries = dict((var, query) for _, var, query in variable_queries("prometheus"))
    match = re.fullmatch(r"label_values\((\w+), (\w+)\)", queries["job"])
    assert match, queries["job"]
    metric, label = match.groups()
    params = urllib.parse.urlencode({"match[]": metric, "start": str(now_s - 3600)})
    status, body = http_request("GET", f"{promql_url}/api/v1/label/{label}/values?{params}")
    assert status == 200, body[:300]
    assert job in json.loads(body)["data"]
