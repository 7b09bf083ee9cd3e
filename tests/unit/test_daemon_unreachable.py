"""The Kafka source and publisher with no broker at all (a closed loopback port, real
kafka-python clients): every call returns an empty or failed result within
`kafka.call_timeout_s`, nothing raises into the run loop, and the outage is a state."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from kafka.errors import KafkaError

from daemon.publish import (
    DEAD_LETTER_VALUE_BYTES,
    KafkaPublisher,
    PublishError,
    dead_letter_headers,
    dead_letter_key,
    dead_letter_payload,
)
from daemon.settings import KafkaSettings
from daemon.source import KafkaSource, KafkaUnavailable, Reachability, Record, TopicPartitionId

# Given, the clients skip the version probe that needs a broker at construction.
NO_PROBE = {"api_version": (3, 9)}


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again when this returns


def settings(**kw: object) -> KafkaSettings:
    base: dict[str, object] = {
        "bootstrap_servers": [closed_port()],
        "call_timeout_s": 0.5,
        "dead_letter_topic": "sensors-dead",
    }
    return KafkaSettings(**(base | kw))  # type: ignore[arg-type]


class NoListener:
    def on_revoked(self, partitions: set[TopicPartitionId]) -> None: ...

    def on_lost(self, partitions: set[TopicPartitionId]) -> None: ...

    def on_assigned(self, partitions: set[TopicPartitionId]) -> None: ...


def kafka_threads() -> int:
    return sum(t.name.startswith("kafka-io") for t in threading.enumerate())


@pytest.fixture
def source() -> Iterator[KafkaSource]:
    made = KafkaSource(settings(), NoListener(), **NO_PROBE)
    yield made
    made.close()


def test_unreachable_at_start_retries_then_fails_in_one_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("daemon.source._CONNECT_ATTEMPT_S", 0.5)  # short tries, to see two
    before = kafka_threads()
    with (
        caplog.at_level(logging.WARNING, logger="daemon.source"),
        pytest.raises(KafkaUnavailable) as info,
    ):
        KafkaSource(settings(connect_timeout_s=2.5), NoListener())
    message = str(info.value)
    assert "\n" not in message and "unreachable for 2.5 s (consumer)" in message
    retries = [r.getMessage() for r in caplog.records if r.name == "daemon.source"]
    assert len(retries) >= 1
    assert all("not reachable (consumer, try" in line for line in retries)
    time.sleep(0.2)
    assert kafka_threads() == before  # the failed clients' network threads were closed


def test_start_up_wait_ends_when_asked_to_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("daemon.source._CONNECT_ATTEMPT_S", 0.5)
    with pytest.raises(KafkaUnavailable, match="stopped while waiting"):
        KafkaSource(settings(), NoListener(), should_stop=lambda: True)


def test_a_configuration_error_is_not_retried() -> None:
    with pytest.raises(KafkaUnavailable, match="consumer"):
        KafkaSource(settings(), NoListener(), request_timeout_ms=1)  # below fetch_max_wait_ms


def test_source_calls_never_raise_and_record_the_outage(source: KafkaSource) -> None:
    assert source.unreachable_since is None
    assert source.poll(0.2) == []
    assert source.lag() == {}  # nothing assigned yet: no call at all
    source.rewind_to_committed({("sensors", 0)}, fallback_ms=0)
    since = source.unreachable_since
    assert since is not None and abs(since - time.time()) < 60
    reason = source.reachability.reason
    assert reason is not None and reason.startswith("Kafka unreachable since 20")
    assert reason.endswith("Z")
    with pytest.raises(KafkaError):  # "unknown" is not "nothing committed"
        source.committed(("sensors", 0))


def test_reachability_logs_an_outage_once_then_at_a_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1795723200.0]
    r = Reachability(clock=lambda: now[0], log_every_s=60)
    with caplog.at_level(logging.INFO, logger="daemon.source"):
        for _ in range(10):
            r.failed("lag", TimeoutError("no answer"))
            now[0] += 1
        assert r.reason == "Kafka unreachable since 2026-11-26T20:00:00Z"
        now[0] += 60
        r.failed("lag", TimeoutError("no answer"))
        r.succeeded()
        r.succeeded()
    assert r.since is None and r.reason is None
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("Kafka unreachable (lag: TimeoutError")
    assert "(11 failed calls; last lag" in lines[1]
    assert lines[2] == "Kafka reachable again after 70 s"


def record(offset: int, value: bytes = b"{not json") -> Record:
    return Record("sensors", 2, offset, b"pump-1", value, 0)


def test_dead_letters_are_keyed_and_headed_by_their_source_position() -> None:
    r = record(41)
    assert dead_letter_key(r) == b"sensors:2:41"
    assert dead_letter_headers(r, "not_json") == [
        ("seqae.source.topic", b"sensors"),
        ("seqae.source.partition", b"2"),
        ("seqae.source.offset", b"41"),
        ("seqae.reason", b"not_json"),
    ]
    assert dead_letter_key(record(42)) != dead_letter_key(r)


def test_a_dead_letter_holds_at_most_a_bounded_part_of_the_message() -> None:
    big = record(7, b"x" * (DEAD_LETTER_VALUE_BYTES + 10))
    payload = dead_letter_payload(big, "too_large")
    assert payload["truncated"] is True and payload["value_bytes"] == DEAD_LETTER_VALUE_BYTES + 10
    assert len(payload["value"]) == DEAD_LETTER_VALUE_BYTES
    assert len(json.dumps(payload)) < 1 << 20  # under the producer's request limit
    assert "truncated" not in dead_letter_payload(record(8), "not_json")


def test_publisher_keeps_what_it_could_not_send_and_blocks_commits() -> None:
    publisher = KafkaPublisher(settings(), **NO_PROBE)
    try:
        publisher.dead_letter(record(1), "not_json")  # waits call_timeout_s for metadata once
        assert publisher.unreachable_since is not None
        for offset in range(2, 50):
            publisher.dead_letter(record(offset), "not_json")  # known outage: queued at once
        assert publisher.backlog == 49 and not publisher.backlogged
        assert publisher.unreachable_since is not None
        with pytest.raises(PublishError, match="49 dead letters or alert events wait"):
            publisher.flush(0.5)
        assert publisher.backlog == 49  # kept: the next flush tries again
        with pytest.raises(PublishError):
            publisher.flush(0.5)
    finally:
        publisher.close()
