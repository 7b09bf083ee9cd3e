"""Prometheus metrics (module-level, `seqae_*`) and the health HTTP server.

Observation is open: /healthz, /readyz and /metrics answer anyone who can reach the port (probes
and scrapers). Control is not: POST /recalibrate (and any control endpoint to come) is off
unless `health.control_token_file` is set, and then needs `Authorization: Bearer <token>`,
compared in constant time and never logged. Each accepted request is logged with its source
address and handed to the callback with that address, so the daemon can record it.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pydantic import SecretStr

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
committed_lag = Gauge(
    "seqae_committed_lag",
    "Messages between the group's committed offset and the partition end: what a restart reads",
    ["topic", "partition"],
)
held_offsets = Gauge(
    "seqae_held_offsets",
    "Messages read but not yet committable: their windows are incomplete or their points "
    "unacknowledged",
    ["topic", "partition"],
)
partitions_waiting = Gauge(
    "seqae_partitions_waiting_for_model",
    "Partitions paused at a message whose profile has no model yet",
)
sink_errors = Counter("seqae_sink_errors", "InfluxDB write errors", ["kind"])
points_quarantined = Counter("seqae_points_quarantined", "Points InfluxDB refused, set aside")
sink_buffered_points = Gauge("seqae_sink_buffered_points", "Points waiting for acknowledgement")
alerts_open = Gauge("seqae_alerts_open", "Fault alerts open now")
alert_events = Counter("seqae_alert_events", "Alert events written", ["state"])
shift_events = Counter("seqae_shift_events", "Operating-point shift events", ["state"])
assets_tracked = Gauge("seqae_assets_tracked", "Assets with a window in memory")
assets_owned = Gauge(
    "seqae_assets_owned", "Assets of the assigned partitions (restored from the changelog or read)"
)
state_restore_seconds = Gauge(
    "seqae_state_restore_seconds",
    "Time the last assignment took to restore its assets from the changelog and seek back",
)
changelog_bytes = Counter(
    "seqae_changelog_bytes", "Asset state bytes acknowledged by the changelog"
)
changelog_records = Counter("seqae_changelog_records", "Asset states acknowledged by the changelog")
model_load_failures = Counter("seqae_model_load_failures", "Model (re)loads that failed")
source_paused = Gauge("seqae_source_paused", "1 while partitions are paused for backpressure")
_PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
checkpoint_seconds = Histogram(
    "seqae_checkpoint_seconds",
    "Run-loop time of one commit pass: acknowledgements, the next checkpoint taken and the "
    "changelog write of the last one started (it runs beside the loop)",
    buckets=_PAUSE_BUCKETS,
)
gc_pause_seconds = Histogram(
    "seqae_gc_pause_seconds",
    "Python garbage collections, by generation (2: a full collection)",
    ["generation"],
    buckets=_PAUSE_BUCKETS,
)
gc_collected_objects = Counter(
    "seqae_gc_collected_objects",
    "Unreachable objects Python's garbage collections freed, by generation (cyclic garbage)",
    ["generation"],
)
commits = Counter("seqae_commits", "Offset commits that Kafka accepted")
control_requests = Counter(
    "seqae_control_requests", "Control requests (POST) by outcome", ["endpoint", "outcome"]
)

_LAG_GAUGES = (consumer_lag, committed_lag, held_offsets)


class GcPauses:
    """Times Python's garbage collections (a `gc.callbacks` entry). The callback only appends
    (it runs inside whatever allocation set off the collection, where taking a metric's lock
    could deadlock); `export` moves what it recorded into `seqae_gc_pause_seconds` and
    `seqae_gc_collected_objects`."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        self._pauses: collections.deque[tuple[int, float, int]] = collections.deque(maxlen=10_000)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
        else:
            seconds = self._clock() - self._started
            self._pauses.append((int(info["generation"]), seconds, int(info["collected"])))

    def export(self) -> None:
        while self._pauses:
            generation, seconds, collected = self._pauses.popleft()
            gc_pause_seconds.labels(generation=str(generation)).observe(seconds)
            gc_collected_objects.labels(generation=str(generation)).inc(collected)


class LagExport:
    """Sets the per-partition lag gauges from `source.lag_figures`; a partition no longer
    assigned loses its series (a stale value would show a lag nobody owns)."""

    def __init__(self) -> None:
        self._shown: set[tuple[str, int]] = set()

    def update(self, figures: Mapping[tuple[str, int], tuple[int, int, int]]) -> None:
        """`figures[(topic, partition)]` = (consumed, committed, held) lag."""
        for topic, part in self._shown - figures.keys():
            for gauge in _LAG_GAUGES:
                with contextlib.suppress(KeyError):
                    gauge.remove(topic, str(part))
        for (topic, part), values in figures.items():
            for gauge, value in zip(_LAG_GAUGES, values, strict=True):
                gauge.labels(topic=topic, partition=str(part)).set(value)
        self._shown = set(figures)


# `on_recalibrate(asset, source_address)`: True if the asset is known (and queued), else False.
RecalibrateCallback = Callable[[str, str], bool]
_MAX_ASSET_CHARS = 240
_CONTROL_OFF = (
    b"control endpoints are off: mount a token file and set health.control_token_file "
    b"(SEQAE_HEALTH__CONTROL_TOKEN_FILE) to enable them\n"
)


class RateLimitedLog:
    """Logs a repeated message once, then at most once per `every_s` with the count since."""

    def __init__(
        self,
        logger: logging.Logger,
        every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last logged, suppressed since)

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log `message % args` unless `key` was logged less than `every_s` ago."""
        now = self._clock()
        with self._lock:
            last, suppressed = self._seen.get(key, (None, 0))
            if last is not None and now - last < self._every_s:
                self._seen[key] = (last, suppressed + 1)
                return False
            if len(self._seen) > 1000:
                self._seen.clear()  # bounded: keys may come from the network
            self._seen[key] = (now, 0)
        if suppressed:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, suppressed, now - last if last is not None else 0.0)
        self._log.log(level, message, *args)
        return True


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
    """A small HTTP server thread. `on_recalibrate(asset, source)` serves
    POST /recalibrate?asset=... when `control_token` is set (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        state: HealthState,
        on_recalibrate: RecalibrateCallback | None = None,
        *,
        control_token: SecretStr | None = None,
    ) -> None:
        handler = _handler(state, on_recalibrate, control_token)
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


def _authorized(header: str | None, token: SecretStr) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, given = (header or "").strip().partition(" ")
    expected = token.get_secret_value().encode("utf-8")
    # compare_digest's time does not depend on where a guess differs from the token
    matches = hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected)
    return scheme.lower() == "bearer" and matches


def _handler(
    state: HealthState,
    on_recalibrate: RecalibrateCallback | None,
    control_token: SecretStr | None,
) -> type[BaseHTTPRequestHandler]:
    refusals = RateLimitedLog(log)

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # an idle or slow client does not hold its thread for ever

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
            source = self.client_address[0]
            if control_token is None:
                control_requests.labels(endpoint=url.path, outcome="off").inc()
                self._reply(403, _CONTROL_OFF)
                return
            if not _authorized(self.headers.get("Authorization"), control_token):
                control_requests.labels(endpoint=url.path, outcome="unauthorized").inc()
                refusals.log(
                    logging.WARNING,
                    source,
                    "refused control request %s from %s: missing or wrong bearer token",
                    url.path,
                    source,
                )
                self._reply(401, b"unauthorized\n", headers={"WWW-Authenticate": "Bearer"})
                return
            assets = parse_qs(url.query).get("asset", [])
            if not assets or not assets[0] or len(assets[0]) > _MAX_ASSET_CHARS:
                self._reply(400, b"asset query parameter is required (one asset id)\n")
                return
            asset = assets[0]
            known = on_recalibrate(asset, source)
            outcome = "accepted" if known else "unknown_asset"
            log.info("control request from %s: recalibrate asset %r: %s", source, asset, outcome)
            control_requests.labels(endpoint=url.path, outcome=outcome).inc()
            if known:
                self._reply(202, f"asset {asset!r} queued for recalibration\n".encode())
            else:
                self._reply(404, f"unknown asset {asset!r}\n".encode())

        def _reply(
            self,
            status: int,
            body: bytes,
            ctype: str = "text/plain; charset=utf-8",
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("health %s", format % args)

    return Handler
