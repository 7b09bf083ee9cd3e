"""Prometheus metrics (module-level, `seqae_*`) and the /healthz, /readyz, /metrics HTTP server."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

messages_in = Counter("seqae_messages_in", "Kafka messages read")
bad_messages = Counter("seqae_bad_messages", "Messages that could not be decoded", ["reason"])
dead_letters = Counter("seqae_dead_letters", "Messages forwarded to the dead-letter topic")
late_readings = Counter("seqae_late_readings", "Readings dropped as later than max lateness")
gap_resets = Counter("seqae_gap_resets", "Asset windows reset by a gap longer than max fill")
windows_scored = Counter("seqae_windows_scored", "Windows scored", ["profile"])
batch_size = Histogram(
    "seqae_batch_size",
    "Windows per scoring batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
scoring_seconds = Histogram("seqae_scoring_seconds", "Time to score one round of batches")
write_latency_seconds = Histogram(
    "seqae_write_latency_seconds",
    "From the timestamp of the message that completed a batch's oldest window to InfluxDB's "
    "acknowledgement of the batch's points",
    buckets=(
        *(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75),
        *(1, 1.5, 2.5, 5, 10, 30, 60, 300),
    ),
)
consumer_lag = Gauge(
    "seqae_consumer_lag", "Messages behind the partition end", ["topic", "partition"]
)
sink_errors = Counter("seqae_sink_errors", "InfluxDB write errors", ["kind"])
points_quarantined = Counter("seqae_points_quarantined", "Points InfluxDB refused, set aside")
sink_buffered_points = Gauge("seqae_sink_buffered_points", "Points waiting for acknowledgement")
alerts_open = Gauge("seqae_alerts_open", "Fault alerts open now")
alert_events = Counter("seqae_alert_events", "Alert events written", ["state"])
shift_events = Counter("seqae_shift_events", "Operating-point shift events", ["state"])
assets_tracked = Gauge("seqae_assets_tracked", "Assets with a window in memory")
model_load_failures = Counter("seqae_model_load_failures", "Model (re)loads that failed")
source_paused = Gauge("seqae_source_paused", "1 while partitions are paused for backpressure")
commits = Counter("seqae_commits", "Offset commits that Kafka accepted")


class HealthState:
    """What the probes report; the run loop updates it."""

    def __init__(self, stale_after_s: float = 30.0) -> None:
        self.stale_after_s = stale_after_s
        self._beat = time.monotonic()
        self.ready = False
        self.reason = "starting"

    def beat(self) -> None:
        self._beat = time.monotonic()

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._beat < self.stale_after_s

    def set_ready(self, ready: bool, reason: str = "") -> None:
        self.ready, self.reason = ready, reason


class HealthServer:
    """A small HTTP server thread; `on_recalibrate(asset)` serves POST /recalibrate?asset=..."""

    def __init__(
        self,
        host: str,
        port: int,
        state: HealthState,
        on_recalibrate: Callable[[str], None] | None = None,
    ) -> None:
        handler = _handler(state, on_recalibrate)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="seqae-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    state: HealthState, on_recalibrate: Callable[[str], None] | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path == "/healthz":
                ok = state.alive
                self._reply(200 if ok else 503, b"ok\n" if ok else b"run loop stalled\n")
            elif path == "/readyz":
                body = b"ready\n" if state.ready else f"not ready: {state.reason}\n".encode()
                self._reply(200 if state.ready else 503, body)
            elif path == "/metrics":
                self._reply(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found\n")

        def do_POST(self) -> None:
            url = urlparse(self.path)
            if url.path != "/recalibrate" or on_recalibrate is None:
                self._reply(404, b"not found\n")
                return
            assets = parse_qs(url.query).get("asset", [])
            if not assets or not assets[0]:
                self._reply(400, b"asset query parameter is required\n")
                return
            on_recalibrate(assets[0])
            self._reply(202, f"asset {assets[0]} queued for recalibration\n".encode())

        def _reply(
            self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8"
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("health %s", format % args)

    return Handler
