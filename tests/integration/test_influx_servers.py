"""Points written through the InfluxDB v2 API (influxdb-client -> InfluxDB 2.7 with a token, and
InfluxDB 1.8's compatibility API) and the v1 HTTP API (-> InfluxDB 1.6), read back with their
tags, fields and timestamps."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from conftest import flux_records
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

if TYPE_CHECKING:
    from conftest import InfluxV1, InfluxV2

pytestmark = pytest.mark.integration

T0_NS = 1_795_723_200_125_000_000  # 2026-11-26T20:00:00.125Z
T1_NS = T0_NS + 2_000_000_000


def request(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post(url: str, body: bytes) -> tuple[int, bytes]:
    return request(url, body)


def test_v2_write_through_influxdb_client_reads_back_from_influxdb2(
    influx2_bucket: InfluxV2,
) -> None:
    measurement = f"it_score_{uuid.uuid4().hex[:8]}"
    t0 = T0_NS + 7  # InfluxDB 2.7 keeps nanoseconds
    points = [
        Point(measurement)
        .tag("asset", asset)
        .tag("profile", "pump")
        .tag("model_version", "v3")
        .field("score", score)
        .field("threshold", 1.5)
        .field("anomalous", score > 1.5)
        .field("state", "ok")
        .time(ts, WritePrecision.NS)
        for asset, score, ts in [
            ("pump-7", 0.42, t0),
            ("pump-7", 2.5, T1_NS),
            ("pump-9", 1.0, t0),
        ]
    ]
    server = influx2_bucket
    with InfluxDBClient(url=server.url, token=server.token, org=server.org) as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket=server.bucket, record=points)
    records = flux_records(
        server,
        f'from(bucket: "{server.bucket}") |> range(start: 2026-01-01T00:00:00Z)'
        f' |> filter(fn: (r) => r._measurement == "{measurement}")'
        " |> map(fn: (r) => ({r with ns: int(v: r._time)}))",
    )
    got = {(r["asset"], r["_field"], r["ns"]): r["_value"] for r in records}
    assert got == {
        ("pump-7", "score", t0): 0.42,
        ("pump-7", "score", T1_NS): 2.5,
        ("pump-7", "threshold", t0): 1.5,
        ("pump-7", "threshold", T1_NS): 1.5,
        ("pump-7", "anomalous", t0): False,
        ("pump-7", "anomalous", T1_NS): True,
        ("pump-7", "state", t0): "ok",  # strings stay strings (VictoriaMetrics made them 0)
        ("pump-7", "state", T1_NS): "ok",
        ("pump-9", "score", t0): 1.0,
        ("pump-9", "threshold", t0): 1.5,
        ("pump-9", "anomalous", t0): False,
        ("pump-9", "state", t0): "ok",
    }
    assert {(r["profile"], r["model_version"]) for r in records} == {("pump", "v3")}


@pytest.mark.parametrize(
    "header", [None, "Token not-the-token", "Token "], ids=["none", "wrong", "empty"]
)
def test_influxdb2_refuses_writes_and_queries_without_the_token(
    influx2_bucket: InfluxV2, header: str | None
) -> None:
    server = influx2_bucket
    headers = {"Authorization": header} if header is not None else {}
    q = urllib.parse.urlencode({"org": server.org, "bucket": server.bucket, "precision": "ns"})
    status, body = request(
        f"{server.url}/api/v2/write?{q}", b"it_refused,asset=a score=1 1", headers
    )
    assert status == 401, body
    status, body = request(
        f"{server.url}/api/v2/query?{urllib.parse.urlencode({'org': server.org})}",
        f'from(bucket: "{server.bucket}") |> range(start: 0)'.encode(),
        headers | {"Content-Type": "application/vnd.flux"},
    )
    assert status == 401, body
    assert (
        flux_records(
            server,
            f'from(bucket: "{server.bucket}") |> range(start: 0)'
            ' |> filter(fn: (r) => r._measurement == "it_refused")',
        )
        == []
    )


def test_v2_write_and_flux_query_through_influxdb_client_on_influxdb18(
    influxdb18_v2: InfluxV2, influxdb18_query: Callable[[str], list[dict[str, Any]]]
) -> None:
    measurement = f"it_alert_{uuid.uuid4().hex[:8]}"
    t0 = T0_NS + 7  # a real InfluxDB keeps nanoseconds
    point = (
        Point(measurement)
        .tag("asset", "pump-7")
        .tag("profile", "pump")
        .tag("severity", "major")
        .field("state", "open")
        .field("score", 2.5)
        .field("duration_s", 0)
        .field("anomalous", True)
        .time(t0, WritePrecision.NS)
    )
    with InfluxDBClient(
        url=influxdb18_v2.url, token=influxdb18_v2.token, org=influxdb18_v2.org
    ) as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket=influxdb18_v2.bucket, record=point)
        tables = client.query_api().query(
            f'from(bucket: "{influxdb18_v2.bucket}") |> range(start: 2026-01-01T00:00:00Z)'
            f' |> filter(fn: (r) => r._measurement == "{measurement}")'
        )
    records = [r.values for t in tables for r in t.records]
    assert {r["_field"]: r["_value"] for r in records} == {
        "state": "open",
        "score": 2.5,
        "duration_s": 0,
        "anomalous": True,
    }
    for r in records:
        assert (r["asset"], r["profile"], r["severity"]) == ("pump-7", "pump", "major")
        # Python datetimes stop at microseconds; the exact nanoseconds are checked below.
        assert r["_time"] == datetime(2026, 11, 26, 20, 0, 0, 125000, tzinfo=UTC)

    (series,) = influxdb18_query(f'SELECT * FROM "{measurement}" GROUP BY *')
    assert series["values"] == [[t0, True, 0, 2.5, "open"]]
    assert series["columns"] == ["time", "anomalous", "duration_s", "score", "state"]


def test_v1_http_write_reads_back_exact_nanoseconds(
    influx_v1: InfluxV1, influx_v1_query: Callable[[str], list[dict[str, Any]]]
) -> None:
    measurement = f"it_alert_{uuid.uuid4().hex[:8]}"
    t0, t1 = T0_NS + 7, T1_NS + 11  # nanoseconds survive the v1 path
    lines = "\n".join(
        [
            f'{measurement},asset=pump-7,profile=pump,severity=major state="open",score=2.5,'
            f'peak_score=2.5,duration_s=0i,top_channels="pressure,flow" {t0}',
            f'{measurement},asset=pump-7,profile=pump,severity=major state="closed",score=0.3,'
            f'peak_score=3.25,duration_s=2i,top_channels="pressure" {t1}',
        ]
    ).encode()
    status, body = post(f"{influx_v1.url}/write?db={influx_v1.database}&precision=ns", lines)
    assert status == 204, body

    (series,) = influx_v1_query(f'SELECT * FROM "{measurement}" GROUP BY *')
    assert series["tags"] == {"asset": "pump-7", "profile": "pump", "severity": "major"}
    rows = [dict(zip(series["columns"], v, strict=True)) for v in series["values"]]
    assert rows == [
        {"time": t0, "state": "open", "score": 2.5, "peak_score": 2.5, "duration_s": 0,
         "top_channels": "pressure,flow"},
        {"time": t1, "state": "closed", "score": 0.3, "peak_score": 3.25, "duration_s": 2,
         "top_channels": "pressure"},
    ]  # fmt: skip


def test_v1_write_to_unknown_database_is_refused(influx_v1: InfluxV1) -> None:
    status, body = post(f"{influx_v1.url}/write?db=no_such_db_{uuid.uuid4().hex[:6]}", b"m f=1 1")
    assert status == 404
    assert b"database not found" in body
