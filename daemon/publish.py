"""Kafka producer for what the daemon publishes besides InfluxDB: dead letters and alert events.

Both are sent with acks=all and `flush()` waits for every send and raises if any failed,
so the delivery ledger can flush the publisher before it commits offsets.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

import daemon.health as health
from daemon.settings import KafkaSettings
from daemon.source import Record, kafka_client_options

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """A dead letter or alert event could not be delivered to Kafka."""


def dead_letter_payload(record: Record, reason: str) -> dict[str, Any]:
    """The JSON body of a dead letter: where the message came from, why, and its bytes."""

    def text_or_base64(data: bytes | None) -> str | None:
        if data is None:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(data).decode("ascii")

    return {
        "reason": reason,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": text_or_base64(record.key),
        "value": text_or_base64(record.value),
    }


class KafkaPublisher:
    """Sends dead letters to `dead_letter_topic` and alert events to `alert_topic`."""

    def __init__(self, settings: KafkaSettings, **producer_options: Any) -> None:
        self._dead_letter_topic = settings.dead_letter_topic
        self._alert_topic = settings.alert_topic
        self._failures: list[BaseException] = []
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        if self._dead_letter_topic is not None or self._alert_topic is not None:
            options = kafka_client_options(settings) | {
                "acks": "all",
                "linger_ms": 5,
                "client_id": f"{settings.client_id}-publisher",
            }
            options.update(producer_options)
            self._producer = KafkaProducer(**options)

    @property
    def enabled(self) -> bool:
        return self._producer is not None

    def dead_letter(self, record: Record, reason: str) -> None:
        """Forward a malformed record with its reason (a no-op without a dead-letter topic)."""
        if self._dead_letter_topic is None:
            return
        self._send(self._dead_letter_topic, record.key, dead_letter_payload(record, reason))
        health.dead_letters.inc()

    def alert_event(self, event: dict[str, Any]) -> None:
        """Publish an alert event as JSON, keyed by its asset (a no-op without an alert topic)."""
        if self._alert_topic is None:
            return
        asset = event.get("asset")
        key = str(asset).encode("utf-8") if asset is not None else None
        self._send(self._alert_topic, key, event)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for every send so far; raise PublishError if any of them failed."""
        if self._producer is None:
            return
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise PublishError(f"Kafka publisher flush failed: {exc!r}") from exc
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            raise PublishError(f"{len(failures)} Kafka sends failed; first: {failures[0]!r}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()

    def _send(self, topic: str, key: bytes | None, payload: dict[str, Any]) -> None:
        assert self._producer is not None
        value = json.dumps(payload, separators=(",", ":"), default=str).encode("utf-8")
        future = self._producer.send(topic, key=key, value=value)
        future.add_errback(self._failed, topic)

    def _failed(self, topic: str, exc: BaseException) -> None:
        log.error("Kafka send to %s failed: %r", topic, exc)
        with self._lock:
            self._failures.append(exc)
