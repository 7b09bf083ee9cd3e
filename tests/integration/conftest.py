"""Session fixtures for the real servers started by deploy/local/devstack.py.

`devstack.py up` starts Apache Kafka, InfluxDB 1.6 (Debian), InfluxDB 1.8 and 2.7 (built from
the Go module proxy; 2.7's Flux engine from crates.io) and VictoriaMetrics (the PromQL engine)
on loopback, or reuses the ones already running (for
instance those `.ci/run` started). A server that cannot start is a test error carrying the
tail of its log, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
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
    """A server with the InfluxDB v2 API: InfluxDB 2.7 (token auth), or 1.8's compatibility API."""

    url: str
    token: str
    org: str
    bucket: str


def http_request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
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
    """InfluxDB 2.7 with its operator token, org and default bucket."""
    return InfluxV2(
        url=devstack_env["SEQAE_TEST_INFLUX_V2"],
        token=devstack_env["SEQAE_TEST_INFLUX_V2_TOKEN"],
        org=devstack_env["SEQAE_TEST_INFLUX_V2_ORG"],
        bucket=devstack_env["SEQAE_TEST_INFLUX_V2_BUCKET"],
    )


@pytest.fixture(scope="session")
def promql_url(devstack_env: dict[str, str]) -> str:
    """VictoriaMetrics: imports Prometheus text and answers PromQL (/api/v1/query)."""
    return devstack_env["SEQAE_TEST_PROMQL"]


def influx2_api(
    server: InfluxV2, method: str, path: str, doc: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """Call InfluxDB 2's JSON API with the operator token; returns (status, decoded body)."""
    req = urllib.request.Request(
        f"{server.url}{path}",
        data=json.dumps(doc).encode() if doc is not None else None,
        method=method,
        headers={"Authorization": f"Token {server.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    return status, json.loads(body) if body else None


@pytest.fixture
def influx2_bucket(influx_v2: InfluxV2) -> Iterator[InfluxV2]:
    """A fresh bucket on InfluxDB 2.7 for one test (same token and org), deleted after it."""
    with influx2_bucket_made(influx_v2, f"it_{uuid.uuid4().hex[:12]}") as server:
        yield server


@contextlib.contextmanager
def influx2_bucket_made(server: InfluxV2, name: str) -> Iterator[InfluxV2]:
    status, orgs = influx2_api(server, "GET", f"/api/v2/orgs?org={server.org}")
    assert status == 200, orgs
    org_id = orgs["orgs"][0]["id"]
    status, bucket = influx2_api(
        server, "POST", "/api/v2/buckets", {"orgID": org_id, "name": name, "retentionRules": []}
    )
    assert status == 201, bucket
    try:
        yield InfluxV2(url=server.url, token=server.token, org=server.org, bucket=name)
    finally:
        influx2_api(server, "DELETE", f"/api/v2/buckets/{bucket['id']}")


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


def flux_records(server: InfluxV2, flux: str) -> list[dict[str, Any]]:
    """Run a Flux query through influxdb-client; returns every record's values."""
    from influxdb_client import InfluxDBClient

    with InfluxDBClient(url=server.url, token=server.token, org=server.org) as client:
        tables = client.query_api().query(flux)
    return [dict(r.values) for t in tables for r in t.records]


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
