"""InfluxSink against a tiny local HTTP server that plays InfluxDB (v1 and v2 write paths)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from daemon import health
from daemon.lineprotocol import Point
from daemon.settings import InfluxSettings
from daemon.sink import InfluxSink


class FakeInflux:
    """Accepts line protocol on /write and /api/v2/write; scripted failures."""

    def __init__(self, port: int = 0) -> None:
        self.lines: list[str] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.fail_status: int | None = None  # every request answers this while set
        self.fail_next = 0  # the next n requests answer 503
        self.reject_marker = "asset=bad"  # a batch containing it answers 400, writes nothing
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                with fake.lock:
                    fake.requests.append((self.path, dict(self.headers)))
                    if fake.fail_next > 0:
                        fake.fail_next -= 1
                        status = 503
                    elif fake.fail_status is not None:
                        status = fake.fail_status
                    elif fake.reject_marker in body:
                        status = 400
                    else:
                        fake.lines.extend(body.split("\n"))
                        status = 204
                self.send_response(status)
                payload = b'{"error":"scripted"}' if status != 204 else b""
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeInflux]:
    server = FakeInflux()
    yield server
    server.close()


@pytest.fixture(params=["v1", "v2"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_settings(url: str, api: str, **kw: object) -> InfluxSettings:
    base: dict[str, object] = {
        "api": api,
        "url": url,
        "token": "s3cret-token",
        "username": "writer",
        "password": "s3cret-pw",
        "retry_initial_s": 0.01,
        "retry_max_s": 0.05,
        "timeout_s": 5.0,
    }
    base.update(kw)
    return InfluxSettings.model_validate(base)


def points(n: int, asset: str = "pump-1", start: int = 0) -> list[Point]:
    return [
        Point("seqae_score", {"asset": asset}, {"score": float(i)}, 1_000_000_000 + start + i)
        for i in range(n)
    ]


def test_points_reach_the_right_endpoint_with_credentials(fake: FakeInflux, api: str) -> None:
    sink = InfluxSink(make_settings(fake.url, api))
    try:
        sink.submit(points(5), ticket=1)
        assert sink.flush(10)
        assert sink.take_acknowledged() == [1]
        assert len(fake.lines) == 5
        path, headers = fake.requests[0]
        if api == "v1":
            assert path.startswith("/write?") and "db=seqae" in path and "precision=ns" in path
            assert headers["Authorization"].startswith("Basic ")
            assert "s3cret" not in path
        else:
            assert path.startswith("/api/v2/write?") and "bucket=seqae" in path
            assert headers["Authorization"] == "Token s3cret-token"
    finally:
        sink.close()


def test_retry_on_503_then_success(fake: FakeInflux, api: str) -> None:
    fake.fail_next = 3
    errors_before = health.sink_errors.labels(kind="retryable")._value.get()
    sink = InfluxSink(make_settings(fake.url, api))
    try:
        sink.submit(points(10), ticket=7)
        assert sink.flush(10)
        assert sink.take_acknowledged() == [7]
        assert len(fake.lines) == 10
        assert len(fake.requests) == 4
        assert health.sink_errors.labels(kind="retryable")._value.get() - errors_before == 3
        assert sink.healthy
    finally:
        sink.close()


def test_bad_point_quarantined_and_the_rest_acknowledged(fake: FakeInflux, api: str) -> None:
    before = health.points_quarantined._value.get()
    sink = InfluxSink(make_settings(fake.url, api))
    try:
        batch = points(9, start=0) + points(1, asset="bad", start=100) + points(10, start=200)
        sink.submit(batch[:12], ticket=1)
        sink.submit(batch[12:], ticket=2)
        assert sink.flush(10)
        assert sorted(sink.take_acknowledged()) == [1, 2]
        assert len(fake.lines) == 19
        assert not any("asset=bad" in line for line in fake.lines)
        assert health.points_quarantined._value.get() - before == 1
    finally:
        sink.close()


def test_nothing_acknowledged_while_down_and_buffer_bound(fake: FakeInflux) -> None:
    fake.fail_status = 503
    sink = InfluxSink(make_settings(fake.url, "v1", max_buffered_points=10, batch_points=4))
    try:
        sink.submit(points(6), ticket=1)
        assert not sink.full
        sink.submit(points(4, start=6), ticket=2)
        assert sink.full
        assert sink.buffered_points == 10
        assert not sink.flush(0.3)
        assert sink.take_acknowledged() == []
        assert not sink.healthy
        assert fake.lines == []
        fake.fail_status = None
        assert sink.flush(10)
        assert sorted(sink.take_acknowledged()) == [1, 2]
        assert not sink.full and sink.healthy
        assert len(fake.lines) == 10
    finally:
        sink.close()


@pytest.mark.parametrize("status", [401, 404, 429, 500])
def test_statuses_an_operator_fixes_are_retried_not_quarantined(
    fake: FakeInflux, status: int
) -> None:
    fake.fail_status = status
    before = health.points_quarantined._value.get()
    sink = InfluxSink(make_settings(fake.url, "v1"))
    try:
        sink.submit(points(3), ticket=1)
        assert not sink.flush(0.3)
        assert sink.take_acknowledged() == []
        fake.fail_status = None
        assert sink.flush(10)
        assert sink.take_acknowledged() == [1]
        assert len(fake.lines) == 3
        assert health.points_quarantined._value.get() == before
    finally:
        sink.close()


def test_empty_ticket_and_unencodable_point(fake: FakeInflux) -> None:
    before = health.points_quarantined._value.get()
    sink = InfluxSink(make_settings(fake.url, "v1"))
    try:
        sink.submit([], ticket=3)
        assert sink.take_acknowledged() == [3]
        nan_point = Point("seqae_score", {"asset": "a"}, {"score": float("nan")}, 1)
        sink.submit([nan_point], ticket=4)
        assert sink.take_acknowledged() == [4]
        sink.submit([nan_point, *points(2)], ticket=5)
        assert sink.flush(10)
        assert sink.take_acknowledged() == [5]
        assert len(fake.lines) == 2
        assert health.points_quarantined._value.get() - before == 2
    finally:
        sink.close()


def test_unreachable_server_then_recovery_loses_nothing() -> None:
    fake = FakeInflux()
    url = fake.url
    port = fake.server.server_address[1]
    fake.close()  # nothing listens on the port now
    sink = InfluxSink(make_settings(url, "v1"))
    try:
        sink.submit(points(5), ticket=1)
        assert not sink.flush(0.3)
        assert sink.take_acknowledged() == []
        revived = FakeInflux(port)
        try:
            assert sink.flush(10)
            assert sink.take_acknowledged() == [1]
            assert len(revived.lines) == 5
        finally:
            revived.close()
    finally:
        sink.close()


def test_secrets_never_in_repr_or_logs(fake: FakeInflux, caplog: pytest.LogCaptureFixture) -> None:
    fake.fail_next = 2
    settings = make_settings(fake.url, "v2")
    caplog.set_level(logging.DEBUG)
    sink = InfluxSink(settings)
    try:
        sink.submit(points(2), ticket=1)
        assert sink.flush(10)
        text = repr(sink) + repr(settings) + str(settings) + caplog.text
        assert "s3cret" not in text
        assert "retrying" in caplog.text
    finally:
        sink.close()
