"""Session fixtures for the real servers started by deploy/local/devstack.py.

`devstack.py up` starts Apache Kafka, InfluxDB 1.6 (Debian), InfluxDB 1.8 (built from the Go
module proxy) and VictoriaMetrics on loopback, or reuses the ones already running (for
instance those `.ci/run` started). A server that cannot start is a test error carrying the
tail of its log, never a skip.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEVSTACK = REPO / "deploy" / "local" / "devstack.py"


class ServerStartError(RuntimeError):
    """devstack could not bring the integration servers up."""


@dataclass(frozen=True)
class InfluxV1:
    """An InfluxDB 1.x server: v1 HTTP API (/write, /query)."""

    url: str
    database: str


@dataclass(frozen=True)
class InfluxV2:
    """A server accepting the InfluxDB v2 write API (VictoriaMetrics here)."""

    url: str
    token: str
    org: str
    bucket: str


def http_request(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="session")
def devstack_env() -> dict[str, str]:
    """Run `devstack.py up` once per session; return its SEQAE_TEST_* endpoint lines."""
    try:
        proc = subprocess.run(
            [sys.executable, str(DEVSTACK), "up"],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServerStartError(f"devstack up did not finish in 900s:\n{exc.stderr!s}") from exc
    if proc.returncode != 0:
        raise ServerStartError(
            f"devstack up failed (exit {proc.returncode}):\n{proc.stderr[-8000:]}"
        )
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    missing = {"SEQAE_TEST_KAFKA", "SEQAE_TEST_INFLUX_V1", "SEQAE_TEST_INFLUX_V2"} - set(env)
    if missing:
        raise ServerStartError(f"devstack up printed no {sorted(missing)}:\n{proc.stdout}")
    return env


@pytest.fixture(scope="session")
def kafka_bootstrap(devstack_env: dict[str, str]) -> str:
    return devstack_env["SEQAE_TEST_KAFKA"]


@pytest.fixture(scope="session")
def influx_v1(devstack_env: dict[str, str]) -> InfluxV1:
    return InfluxV1(
        url=devstack_env["SEQAE_TEST_INFLUX_V1"], database=devstack_env["SEQAE_TEST_INFLUX_V1_DB"]
    )


@pytest.fixture(scope="session")
def influx_v2(devstack_env: dict[str, str]) -> InfluxV2:
    return InfluxV2(
        url=devstack_env["SEQAE_TEST_INFLUX_V2"],
        token=devstack_env["SEQAE_TEST_INFLUX_V2_TOKEN"],
        org=devstack_env["SEQAE_TEST_INFLUX_V2_ORG"],
        bucket=devstack_env["SEQAE_TEST_INFLUX_V2_BUCKET"],
    )


def influxql_runner(url: str, database: str) -> Callable[[str], list[dict[str, Any]]]:
    def query(q: str) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"db": database, "q": q, "epoch": "ns"})
        status, body = http_request("GET", f"{url}/query?{params}")
        if status != 200:
            raise AssertionError(f"InfluxQL {q!r} answered {status}: {body[:300]!r}")
        result = json.loads(body)["results"][0]
        if "error" in result:
            raise AssertionError(f"InfluxQL {q!r} failed: {result['error']}")
        series: list[dict[str, Any]] = result.get("series", [])
        return series

    return query


@pytest.fixture(scope="session")
def influx_v1_query(influx_v1: InfluxV1) -> Callable[[str], list[dict[str, Any]]]:
    """Run an InfluxQL query (epoch=ns) on InfluxDB 1.6; return its first statement's series."""
    return influxql_runner(influx_v1.url, influx_v1.database)


@pytest.fixture(scope="session")
def influxdb18_v2(devstack_env: dict[str, str]) -> InfluxV2:
    """A real InfluxDB 1.8 through its v2 compatibility API (write and Flux query)."""
    return InfluxV2(
        url=devstack_env["SEQAE_TEST_INFLUXDB18"],
        token=":",  # "user:password"; auth is off
        org="-",  # ignored by 1.8
        bucket=devstack_env["SEQAE_TEST_INFLUXDB18_BUCKET"],  # "database/retention-policy"
    )


@pytest.fixture(scope="session")
def influxdb18_query(influxdb18_v2: InfluxV2) -> Callable[[str], list[dict[str, Any]]]:
    """Run an InfluxQL query (epoch=ns) on InfluxDB 1.8; return its first statement's series."""
    return influxql_runner(influxdb18_v2.url, influxdb18_v2.bucket.split("/")[0])


@pytest.fixture(scope="session")
def victoria_export(influx_v2: InfluxV2) -> Callable[..., list[dict[str, Any]]]:
    """Read series back through /api/v1/export.

    Ingestion is buffered, so this flushes and polls until `min_series` series match
    (or `wait_s` passes, then returns what there is).
    """

    def export(match: str, *, min_series: int = 1, wait_s: float = 15.0) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"match[]": match})
        deadline = time.monotonic() + wait_s
        while True:
            http_request("GET", f"{influx_v2.url}/internal/force_flush")
            status, body = http_request("GET", f"{influx_v2.url}/api/v1/export?{params}")
            if status != 200:
                raise AssertionError(f"export {match!r} answered {status}: {body[:300]!r}")
            rows = [json.loads(line) for line in body.decode().splitlines() if line]
            if len(rows) >= min_series or time.monotonic() > deadline:
                return rows
            time.sleep(0.2)

    return export


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> str:
    """A topic name no other test (or earlier run) uses."""
    stem = re.sub(r"[^a-zA-Z0-9._-]", "-", request.node.name)[:60]
    return f"it-{stem}-{uuid.uuid4().hex[:8]}"


Query = Callable[[str], list[dict[str, Any]]]


@pytest.fixture
def database(influx_v1: InfluxV1) -> Iterator[str]:
    """A fresh InfluxDB 1.x database for one test, dropped after it."""
    name = f"it_{uuid.uuid4().hex[:12]}"
    q = urllib.parse.urlencode({"q": f'CREATE DATABASE "{name}"'})
    status, body = http_request("POST", f"{influx_v1.url}/query?{q}")
    assert status == 200, body
    yield name
    q = urllib.parse.urlencode({"q": f'DROP DATABASE "{name}"'})
    http_request("POST", f"{influx_v1.url}/query?{q}")


@pytest.fixture
def query(influx_v1: InfluxV1, database: str) -> Query:
    """Run InfluxQL against the test's database; returns the series of the first result."""

    def run(q: str) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"db": database, "q": q, "epoch": "ns"})
        status, body = http_request("GET", f"{influx_v1.url}/query?{params}")
        assert status == 200, body
        result = json.loads(body)["results"][0]
        assert "error" not in result, result
        return result.get("series", [])  # type: ignore[no-any-return]

    return run
