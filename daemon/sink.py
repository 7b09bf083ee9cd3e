"""InfluxDB sink: a bounded buffer drained by one writer thread, acknowledged per ticket.

Points arrive with a ticket (the delivery ledger's name for "the results of these messages").
A ticket is acknowledged only when every one of its points was accepted by the server, or
quarantined because the server rejected that very point. Retryable failures (connection
errors, timeouts, 5xx, 429, and auth/not-found errors that an operator must fix) are retried
with exponential backoff and jitter until they succeed or the sink is closed; nothing is
dropped. A batch the server rejects as bad (400, 413, 422) is bisected until the bad points
are isolated; they are counted, logged at a rate limit and acknowledged, the rest written.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode

import urllib3

import daemon.health as health
from daemon.lineprotocol import LineProtocolError, Point, encode
from daemon.settings import InfluxSettings

log = logging.getLogger(__name__)

# Statuses that mean "these points are bad": bisect and quarantine. Every other failure is
# retried, because dropping points for a server or configuration problem would lose data.
_REJECTING_STATUSES = frozenset({400, 413, 422})


class WriteRejected(Exception):
    """The server refused the points themselves (bad line, type conflict, too large)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class WriteUnavailable(Exception):
    """The write may succeed later (connection error, timeout, 5xx, 429, auth, not found)."""


class LineWriter(Protocol):
    """One backend: writes newline-separated line protocol, raises WriteRejected/WriteUnavailable."""

    def write(self, body: bytes) -> None: ...

    def close(self) -> None: ...


def _raise_for_status(status: int, body: bytes | str | None) -> None:
    if 200 <= status < 300:
        return
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    detail = (body or "").strip()[:300]
    if status in _REJECTING_STATUSES:
        raise WriteRejected(status, detail)
    raise WriteUnavailable(f"HTTP {status}: {detail}")


class InfluxV1Writer:
    """InfluxDB 1.x `/write?db=...&precision=ns`; credentials go in a header, never the URL."""

    def __init__(self, settings: InfluxSettings) -> None:
        query = urlencode({"db": settings.database, "precision": "ns"})
        self._url = f"{settings.url}/write?{query}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else ""
            pair = f"{settings.username}:{password}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(total=settings.timeout_s), retries=False, maxsize=1
        )

    def write(self, body: bytes) -> None:
        try:
            resp = self._http.request("POST", self._url, body=body, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise WriteUnavailable(f"{type(exc).__name__}: {exc}") from exc
        _raise_for_status(resp.status, resp.data)

    def close(self) -> None:
        self._http.clear()

    def __repr__(self) -> str:
        return f"InfluxV1Writer({self._url!r})"


class InfluxV2Writer:
    """InfluxDB v2 write API through influxdb-client in SYNCHRONOUS mode (no hidden batching)."""

    def __init__(self, settings: InfluxSettings) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        token = settings.token.get_secret_value() if settings.token else ""
        self._client = InfluxDBClient(
            url=settings.url,
            token=token,
            org=settings.org,
            timeout=int(settings.timeout_s * 1000),
            retries=False,  # the sink owns retrying, with its own backoff
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._bucket = settings.bucket
        self._org = settings.org
        self._url = settings.url

    def write(self, body: bytes) -> None:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self._write_api.write(
                bucket=self._bucket,
                org=self._org,
                record=body,
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            _raise_for_status(int(exc.status or 0), exc.body)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise WriteUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._write_api.close()
        self._client.close()

    def __repr__(self) -> str:
        return f"InfluxV2Writer({self._url!r}, bucket={self._bucket!r})"


def make_writer(settings: InfluxSettings) -> LineWriter:
    if settings.api == "v1":
        return InfluxV1Writer(settings)
    return InfluxV2Writer(settings)


class _ThrottledLog:
    """At most one line per key and interval; says how many were held back."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, level: int, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._interval_s) < self._interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            msg += " (%d similar messages held back)"
            args = (*args, held)
        log.log(level, msg, *args)


@dataclass(slots=True)
class _Line:
    ticket: int
    text: str


class _Closing(Exception):
    pass


class InfluxSink:
    """Bounded, acknowledged writes of points to InfluxDB (v1 or v2 API) from a writer thread."""

    def __init__(self, settings: InfluxSettings, writer: LineWriter | None = None) -> None:
        self._settings = settings
        self._writer = writer if writer is not None else make_writer(settings)
        self._cond = threading.Condition()
        self._queue: deque[_Line] = deque()
        self._remaining: dict[int, int] = {}  # ticket -> points not yet written or quarantined
        self._acknowledged: list[int] = []
        self._origin_ms: dict[int, float] = {}  # ticket -> epoch ms its latency counts from
        self._buffered = 0  # queued + in flight
        self._closing = threading.Event()
        self._healthy = True
        self._log = _ThrottledLog()
        self._thread = threading.Thread(target=self._run, name="influx-sink", daemon=True)
        self._thread.start()

    # -- caller side -------------------------------------------------------------------------

    def submit(self, points: Sequence[Point], ticket: int, origin_ms: float | None = None) -> None:
        """Queue points under `ticket`; never drops (check `full` first to bound memory).
        With `origin_ms` (epoch ms of the message the points stem from), the time from it to
        the ticket's acknowledgement is observed as the write latency."""
        if self._closing.is_set():
            raise RuntimeError("InfluxSink.submit after close")
        lines = []
        for point in points:
            try:
                lines.append(_Line(ticket, encode(point)))
            except LineProtocolError as exc:
                self._quarantine(1, f"cannot encode: {exc}")
        with self._cond:
            if origin_ms:
                self._origin_ms[ticket] = min(origin_ms, self._origin_ms.get(ticket, origin_ms))
            if not lines:
                if ticket not in self._remaining:
                    self._acknowledge(ticket)
                return
            self._remaining[ticket] = self._remaining.get(ticket, 0) + len(lines)
            self._queue.extend(lines)
            self._buffered += len(lines)
            health.sink_buffered_points.set(self._buffered)
            self._cond.notify_all()

    @property
    def full(self) -> bool:
        return self._buffered >= self._settings.max_buffered_points

    @property
    def buffered_points(self) -> int:
        return self._buffered

    @property
    def healthy(self) -> bool:
        return self._healthy and self._thread.is_alive()

    def take_acknowledged(self) -> list[int]:
        """Tickets whose points are all written or quarantined, since the last call."""
        with self._cond:
            done, self._acknowledged = self._acknowledged, []
        return done

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything submitted is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._buffered:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Stop the writer; unacknowledged points stay unacknowledged (their offsets uncommitted)."""
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(self._settings.timeout_s + 5.0)
        self._writer.close()

    def __repr__(self) -> str:
        return f"InfluxSink({self._writer!r}, buffered={self._buffered})"

    # -- writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing.is_set():
                        self._cond.wait()
                    if self._closing.is_set():
                        return
                    n = min(len(self._queue), self._settings.batch_points)
                    batch = [self._queue.popleft() for _ in range(n)]
                self._deliver(batch)
        except _Closing:
            return
        except Exception:
            log.exception("influx sink writer thread failed; the sink is unhealthy")
            self._healthy = False
            with self._cond:
                self._cond.notify_all()

    def _deliver(self, batch: list[_Line]) -> None:
        parts = [batch]
        while parts:
            part = parts.pop()
            try:
                self._write_retrying(part)
            except WriteRejected as exc:
                if len(part) == 1:
                    self._quarantine(1, f"{exc}; line: {part[0].text[:200]}")
                    self._done(part)
                else:
                    mid = len(part) // 2
                    parts.extend([part[mid:], part[:mid]])
            else:
                self._done(part)

    def _write_retrying(self, part: list[_Line]) -> None:
        body = "\n".join(line.text for line in part).encode("utf-8")
        attempt = 0
        while True:
            if self._closing.is_set():
                raise _Closing
            try:
                self._writer.write(body)
            except WriteUnavailable as exc:
                self._healthy = False
                health.sink_errors.labels(kind="retryable").inc()
                delay = min(self._settings.retry_max_s, self._settings.retry_initial_s * 2**attempt)
                delay *= random.uniform(0.5, 1.0)
                attempt = min(attempt + 1, 32)
                self._log(
                    logging.WARNING,
                    "unavailable",
                    "influx write of %d points failed (%s); retrying in %.1fs",
                    len(part),
                    exc,
                    delay,
                )
                self._closing.wait(delay)
                continue
            except WriteRejected:
                health.sink_errors.labels(kind="rejected").inc()
                raise
            if not self._healthy:
                log.info("influx writes succeed again")
            self._healthy = True
            return

    def _acknowledge(self, ticket: int) -> None:
        """Called with the lock held."""
        self._acknowledged.append(ticket)
        origin = self._origin_ms.pop(ticket, None)
        if origin is not None:
            health.write_latency_seconds.observe(max(0.0, time.time() - origin / 1000))

    def _quarantine(self, count: int, reason: str) -> None:
        health.points_quarantined.inc(count)
        self._log(logging.ERROR, "quarantine", "point quarantined (not written): %s", reason)

    def _done(self, lines: list[_Line]) -> None:
        with self._cond:
            for line in lines:
                left = self._remaining[line.ticket] - 1
                if left:
                    self._remaining[line.ticket] = left
                else:
                    del self._remaining[line.ticket]
                    self._acknowledge(line.ticket)
            self._buffered -= len(lines)
            health.sink_buffered_points.set(self._buffered)
            self._cond.notify_all()


def check_influx_access(settings: InfluxSettings) -> str | None:
    """Ask InfluxDB, with an empty write, whether these credentials may write there.

    Returns what is wrong, naming the setting (401/403: the token or user/password; 404: the
    bucket or database), or None when the write is allowed. An unreachable server or a 5xx
    returns None: an outage is a state on /readyz, never a reason not to start.
    """
    if settings.api == "v2":
        query = urlencode({"org": settings.org, "bucket": settings.bucket, "precision": "ns"})
        url = f"{settings.url}/api/v2/write?{query}"
        token = settings.token.get_secret_value() if settings.token else ""
        headers = {"Authorization": f"Token {token}"}
        refused = "influx.token (SEQAE_INFLUX__TOKEN or influx.token_file)"
        missing = f"influx.bucket {settings.bucket!r} (org {settings.org!r})"
    else:
        url = f"{settings.url}/write?{urlencode({'db': settings.database})}"
        headers = {}
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else ""
            pair = f"{settings.username}:{password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        refused = "influx.username / influx.password"
        missing = f"influx.database {settings.database!r}"
    http = urllib3.PoolManager(timeout=urllib3.Timeout(total=settings.timeout_s), retries=False)
    try:
        resp = http.request("POST", url, body=b"", headers=headers)
    except urllib3.exceptions.HTTPError:
        return None
    finally:
        http.clear()
    if resp.status in (401, 403):
        return f"{refused}: InfluxDB at {settings.url} refused it (HTTP {resp.status})"
    if resp.status == 404:
        return f"{missing}: not found at {settings.url} (HTTP 404)"
    return None
