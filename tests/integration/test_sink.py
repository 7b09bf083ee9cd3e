"""InfluxSink against real servers: InfluxDB 1.x (v1 API), InfluxDB 2.7 (v2 API with a token)
and, for the outage test, a VictoriaMetrics started late (v2 write API)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import flux_records

from daemon import health
from daemon.lineprotocol import Point
from daemon.settings import InfluxSettings
from daemon.sink import InfluxSink

pytestmark = pytest.mark.integration


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def now_ns() -> int:
    return time.time_ns() // 1_000_000 * 1_000_000  # whole ms: VictoriaMetrics keeps ms


@pytest.fixture
def measurement() -> str:
    return f"it_sink_{uuid.uuid4().hex[:10]}"


def v1_settings(server: Any, **kw: Any) -> InfluxSettings:
    return InfluxSettings.model_validate(
        {"api": "v1", "url": server.url, "database": server.database, "retry_initial_s": 0.05} | kw
    )


def v2_settings(server: Any, **kw: Any) -> InfluxSettings:
    return InfluxSettings.model_validate(
        {
            "api": "v2",
            "url": server.url,
            "token": server.token,
            "org": server.org,
            "bucket": server.bucket,
            "retry_initial_s": 0.05,
            "retry_max_s": 0.5,
        }
        | kw
    )


def test_v1_points_read_back_with_tags_fields_and_time(
    influx_v1: Any,
    influx_v1_query: Callable[[str], list[dict[str, Any]]],
    measurement: str,
) -> None:
    t0 = now_ns() + 123  # ns precision survives in InfluxDB 1.x
    pts = [
        Point(
            measurement,
            {"asset": "pump 7,a=b", "profile": "pumps"},
            {
                "score": 0.1 + 0.2,
                "n": i,
                "anomalous": i % 2 == 1,
                "state": 'say "hi"',
                "err_flow rate": 1.5,
            },
            t0 + i,
        )
        for i in range(3)
    ]
    sink = InfluxSink(v1_settings(influx_v1))
    try:
        sink.submit(pts, ticket=11)
        assert sink.flush(30)
        assert sink.take_acknowledged() == [11]
    finally:
        sink.close()
    series = influx_v1_query(f'SELECT * FROM "{measurement}" GROUP BY *')
    assert len(series) == 1
    assert series[0]["tags"] == {"asset": "pump 7,a=b", "profile": "pumps"}
    rows = [dict(zip(series[0]["columns"], v, strict=True)) for v in series[0]["values"]]
    assert [r["time"] for r in rows] == [t0, t0 + 1, t0 + 2]
    assert [r["n"] for r in rows] == [0, 1, 2]
    assert [r["anomalous"] for r in rows] == [False, True, False]
    assert all(r["score"] == 0.1 + 0.2 for r in rows)
    assert all(r["state"] == 'say "hi"' for r in rows)
    assert all(r["err_flow rate"] == 1.5 for r in rows)


def test_v1_rewrite_is_idempotent_and_type_conflict_is_quarantined(
    influx_v1: Any,
    influx_v1_query: Callable[[str], list[dict[str, Any]]],
    measurement: str,
) -> None:
    t0 = now_ns()
    good = [Point(measurement, {"asset": "a"}, {"score": float(i)}, t0 + i) for i in range(10)]
    # "score" is a float field in this measurement; a string value is a field type conflict
    # that InfluxDB refuses with 400: exactly that point must be set aside.
    conflict = Point(measurement, {"asset": "a"}, {"score": "oops"}, t0 + 100)
    before = health.points_quarantined._value.get()
    sink = InfluxSink(v1_settings(influx_v1))
    try:
        sink.submit(good[:5], ticket=1)
        assert sink.flush(30)
        sink.submit([*good[5:8], conflict, *good[8:]], ticket=2)
        sink.submit(good, ticket=3)  # a replay after a crash writes the same points again
        assert sink.flush(30)
        assert sorted(sink.take_acknowledged()) == [1, 2, 3]
    finally:
        sink.close()
    assert health.points_quarantined._value.get() - before == 1
    series = influx_v1_query(f'SELECT count("score") FROM "{measurement}"')
    assert series[0]["values"][0][1] == 10


def test_v2_points_read_back_from_influxdb2_with_nanoseconds_and_types(
    influx2_bucket: Any, measurement: str
) -> None:
    """The sink writes with the token; InfluxDB 2.7 keeps tags, typed fields and exact ns."""
    t0 = now_ns() + 7  # a real InfluxDB keeps nanoseconds
    pts = [
        Point(
            measurement,
            {"asset": "pump 9,a=b", "profile": "p"},
            {"score": i / 4, "n": i, "anomalous": i % 2 == 1, "state": 'say "hi"'},
            t0 + i,
        )
        for i in range(4)
    ]
    sink = InfluxSink(v2_settings(influx2_bucket))
    try:
        sink.submit(pts, ticket=5)
        assert sink.flush(30)
        assert sink.take_acknowledged() == [5]
    finally:
        sink.close()
    records = flux_records(
        influx2_bucket,
        f'from(bucket: "{influx2_bucket.bucket}") |> range(start: 0)'
        f' |> filter(fn: (r) => r._measurement == "{measurement}")'
        ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
        ' |> group() |> sort(columns: ["_time"])'
        " |> map(fn: (r) => ({r with ns: int(v: r._time)}))",
    )
    assert [r["ns"] for r in records] == [t0 + i for i in range(4)]
    assert [r["score"] for r in records] == [0.0, 0.25, 0.5, 0.75]
    assert [r["n"] for r in records] == [0, 1, 2, 3]
    assert [r["anomalous"] for r in records] == [False, True, False, True]
    assert {r["state"] for r in records} == {'say "hi"'}
    assert {(r["asset"], r["profile"]) for r in records} == {("pump 9,a=b", "p")}


@pytest.mark.parametrize("token", ["", "not-the-token"], ids=["missing", "wrong"])
def test_v2_write_without_the_right_token_is_never_acknowledged(
    influx2_bucket: Any, measurement: str, token: str
) -> None:
    """InfluxDB 2.7 answers 401; the sink keeps the points (no loss) and reports unhealthy."""
    retryable = health.sink_errors.labels(kind="retryable")
    before = retryable._value.get()
    settings = v2_settings(influx2_bucket, token=token or None)
    sink = InfluxSink(settings)
    try:
        sink.submit([Point(measurement, {"asset": "a"}, {"score": 1.0}, now_ns())], ticket=1)
        assert not sink.flush(1.0)
        assert sink.take_acknowledged() == []
        assert not sink.healthy and sink.buffered_points == 1
    finally:
        sink.close()
    assert retryable._value.get() > before  # counted as a failed write, retried, not dropped
    written = flux_records(
        influx2_bucket,
        f'from(bucket: "{influx2_bucket.bucket}") |> range(start: 0)'
        f' |> filter(fn: (r) => r._measurement == "{measurement}")',
    )
    assert written == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def throwaway_victoria(tmp_path: Path) -> Iterator[Callable[[], None]]:
    """A port with nothing behind it yet; calling the fixture starts VictoriaMetrics there."""
    binary = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        log = (tmp_path / "vm.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    f"-storageDataPath={tmp_path / 'data'}",
                    f"-httpListenAddr=127.0.0.1:{port}",
                    "-retentionPeriod=1y",
                    "-search.latencyOffset=0s",
                    "-memory.allowedBytes=128MB",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    start.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def test_outage_then_recovery_loses_nothing_and_bounds_memory(
    throwaway_victoria: Callable[[], None], measurement: str
) -> None:
    url = throwaway_victoria.url  # type: ignore[attr-defined]
    settings = InfluxSettings(
        api="v2",
        url=url,
        token="x",  # type: ignore[arg-type]
        batch_points=50,
        max_buffered_points=300,
        retry_initial_s=0.05,
        retry_max_s=0.5,
    )
    sink = InfluxSink(settings)
    t0 = now_ns()
    submitted: list[int] = []
    peak = 0
    try:
        ticket = 0
        # The caller (the daemon) stops submitting while `full`, as it pauses the source.
        while not sink.full:
            ticket += 1
            sink.submit(
                [
                    Point(
                        measurement,
                        {"asset": "a"},
                        {"v": float(ticket * 10 + i)},
                        t0 + (ticket * 10 + i) * 1_000_000,
                    )
                    for i in range(10)
                ],
                ticket,
            )
            submitted.append(ticket)
            peak = max(peak, sink.buffered_points)
        assert peak == 300 and len(submitted) == 30
        assert not sink.flush(1.0)
        assert sink.take_acknowledged() == [] and not sink.healthy
        throwaway_victoria()
        assert sink.flush(60)
        assert sorted(sink.take_acknowledged()) == submitted
        assert sink.healthy and not sink.full
    finally:
        sink.close()
    assert exported_values(url, f"{measurement}_v", expect=300) == 300


def exported_values(url: str, metric: str, *, expect: int, wait_s: float = 20.0) -> int:
    """How many samples of `metric` VictoriaMetrics at `url` holds (polls until `expect`)."""
    query = urllib.parse.urlencode({"match[]": metric})
    deadline = time.monotonic() + wait_s
    while True:
        http_get(f"{url}/internal/force_flush")
        status, body = http_get(f"{url}/api/v1/export?{query}")
        assert status == 200, body[:300]
        count = sum(len(json.loads(line)["values"]) for line in body.splitlines() if line)
        if count >= expect or time.monotonic() > deadline:
            return count
        time.sleep(0.3)
