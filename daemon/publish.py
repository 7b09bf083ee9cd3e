"""Kafka producer for what the daemon publishes besides InfluxDB: dead letters and alert events.

Both are sent with acks=all and `flush()` raises unless every send so far was delivered, so
the delivery ledger can flush the publisher before it commits offsets. A send that failed for a
reason that passes (the broker away, a timeout) is kept and sent again by the next `flush()`,
which goes on raising until it is delivered: offsets are never committed past a dead letter
that is not in Kafka. While the broker is known to be away, sends are queued without calling
the producer, whose metadata wait would block the run loop for `call_timeout_s` per message.

Each dead letter is keyed "<topic>:<partition>:<offset>" of the message it replaces and carries
that position and the reason as headers, so the duplicates a replay after a crash produces can
be removed by key (a compacted dead-letter topic does so by itself).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from kafka import KafkaProducer
from kafka.errors import KafkaError

import daemon.health as health
from daemon.settings import KafkaSettings
from daemon.source import Reachability, Record, connect, kafka_client_options

log = logging.getLogger(__name__)

# Dead letters carry at most this much of the refused message (the producer's default request
# limit is 1 MiB; the original stays in the source topic at the offset the dead letter names).
DEAD_LETTER_VALUE_BYTES = 256 << 10
# Unsent messages kept for re-sending; beyond it `backlogged` asks the run loop to pause input.
_BACKLOG_MESSAGES = 10_000
_BACKLOG_BYTES = 64 << 20

Headers = list[tuple[str, bytes]]


class PublishError(RuntimeError):
    """A dead letter or alert event could not be delivered to Kafka."""


def dead_letter_key(record: Record) -> bytes:
    """The source position as the key: unique per message (topic names hold no ':')."""
    return f"{record.topic}:{record.partition}:{record.offset}".encode()


def dead_letter_headers(record: Record, reason: str) -> Headers:
    return [
        ("seqae.source.topic", record.topic.encode("utf-8")),
        ("seqae.source.partition", str(record.partition).encode()),
        ("seqae.source.offset", str(record.offset).encode()),
        ("seqae.reason", reason.encode("utf-8")),
    ]


def dead_letter_payload(record: Record, reason: str) -> dict[str, Any]:
    """The JSON body of a dead letter: where the message came from, why, and its bytes (the
    first DEAD_LETTER_VALUE_BYTES of them, with `truncated` and `value_bytes`, if longer)."""

    def text_or_base64(data: bytes | None) -> str | None:
        if data is None:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(data).decode("ascii")

    value = record.value
    payload: dict[str, Any] = {
        "reason": reason,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": text_or_base64(record.key[:1024] if record.key is not None else None),
        "value": text_or_base64(value[:DEAD_LETTER_VALUE_BYTES]),
    }
    if len(value) > DEAD_LETTER_VALUE_BYTES:
        payload["truncated"] = True
        payload["value_bytes"] = len(value)
    return payload


class _Message(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


class KafkaPublisher:
    """Sends dead letters to `dead_letter_topic` and alert events to `alert_topic`.

    Construction retries an unreachable broker like KafkaSource (see `source.connect`).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        reachability: Reachability | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        **producer_options: Any,
    ) -> None:
        self._dead_letter_topic = settings.dead_letter_topic
        self._alert_topic = settings.alert_topic
        self.reachability = reachability or Reachability()
        self._failures: list[BaseException] = []
        self._unsent: list[_Message] = []  # to send again: failed for a reason that passes
        self._unsent_bytes = 0
        self._lock = threading.Lock()  # send callbacks run on the producer's IO thread
        self._producer: KafkaProducer | None = None
        if self._dead_letter_topic is not None or self._alert_topic is not None:
            options = kafka_client_options(settings) | {
                "acks": "all",
                "linger_ms": 5,
                "client_id": f"{settings.client_id}-publisher",
                "max_block_ms": int(settings.call_timeout_s * 1000),
            }
            options.update(producer_options)
            self._producer = connect(
                KafkaProducer,
                options,
                timeout_s=settings.connect_timeout_s,
                what="publisher",
                reachability=self.reachability,
                should_stop=should_stop,
            )

    @property
    def enabled(self) -> bool:
        return self._producer is not None

    @property
    def unreachable_since(self) -> float | None:
        return self.reachability.since

    @property
    def backlog(self) -> int:
        """Messages waiting to be sent again."""
        return len(self._unsent)

    @property
    def backlogged(self) -> bool:
        """Enough is waiting that the run loop should pause its input until a flush succeeds."""
        return len(self._unsent) >= _BACKLOG_MESSAGES or self._unsent_bytes >= _BACKLOG_BYTES

    def dead_letter(self, record: Record, reason: str) -> None:
        """Forward a malformed record with its reason (a no-op without a dead-letter topic)."""
        if self._dead_letter_topic is None:
            return
        self._send(
            _Message(
                self._dead_letter_topic,
                dead_letter_key(record),
                _json(dead_letter_payload(record, reason)),
                dead_letter_headers(record, reason),
            )
        )
        health.dead_letters.inc()

    def alert_event(self, event: dict[str, Any]) -> None:
        """Publish an alert event as JSON, keyed by its asset (a no-op without an alert topic)."""
        if self._alert_topic is None:
            return
        asset = event.get("asset")
        key = str(asset).encode("utf-8") if asset is not None else None
        self._send(_Message(self._alert_topic, key, _json(event), []))

    def flush(self, timeout_s: float | None = None) -> None:
        """Send again what failed, wait for every send so far; raise PublishError unless all
        of them are delivered (what failed is kept for the next flush)."""
        if self._producer is None:
            return
        with self._lock:
            retry, self._unsent, self._unsent_bytes = self._unsent, [], 0
        for message in retry:
            if self._unsent:  # a send of this flush was refused just now: the rest wait
                self._keep(message)
            else:
                self._send(message, even_if_away=True)
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            self.reachability.failed("publisher flush", exc)
            raise PublishError(f"Kafka publisher flush failed: {exc!r}") from exc
        with self._lock:
            failures, self._failures = self._failures, []
            waiting = len(self._unsent)
        if waiting:
            raise PublishError(
                f"{waiting} dead letters or alert events wait for Kafka: {self.reachability.reason}"
            )
        if failures:
            raise PublishError(f"{len(failures)} Kafka sends failed; first: {failures[0]!r}")
        self.reachability.succeeded()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)

    def _send(self, message: _Message, even_if_away: bool = False) -> None:
        assert self._producer is not None
        if self.reachability.since is not None and not even_if_away:
            self._keep(message)  # known outage: the next flush sends it
            return
        try:
            future = self._producer.send(
                message.topic, key=message.key, value=message.value, headers=message.headers
            )
        except KafkaError as exc:
            self._refused(message, exc)
            return
        future.add_errback(self._refused, message)

    def _refused(self, message: _Message, exc: BaseException) -> None:
        """A send that failed: kept when the cause passes, else counted as a failure."""
        if getattr(exc, "retriable", False):
            self.reachability.failed(f"send to {message.topic}", exc)
            self._keep(message)
            return
        log.error("Kafka send to %s failed: %r", message.topic, exc)
        with self._lock:
            self._failures.append(exc)

    def _keep(self, message: _Message) -> None:
        with self._lock:
            self._unsent.append(message)
            self._unsent_bytes += len(message.value)


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=str).encode("utf-8")
