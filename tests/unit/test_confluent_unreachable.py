"""ConfluentSource with no broker at all (a closed loopback port, a real librdkafka client):
start-up retries and then fails in one line, and once running every call returns an empty
or failed result within `kafka.call_timeout_s`: nothing raises into the run loop."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaException

import daemon.source
from daemon.confluent_producer import AcknowledgedProducer, DeliveryFailed
from daemon.confluent_source import ConfluentSource, librdkafka_config
from daemon.settings import KafkaSettings
from daemon.source import KafkaUnavailable, TopicPartitionId


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def settings(**kw: object) -> KafkaSettings:
    base: dict[str, object] = {
        "bootstrap_servers": [closed_port()],
        "call_timeout_s": 0.5,
        "client": "confluent",
    }
    return KafkaSettings(**(base | kw))  # type: ignore[arg-type]


class NoListener:
    def on_revoked(self, partitions: set[TopicPartitionId]) -> None: ...

    def on_lost(self, partitions: set[TopicPartitionId]) -> None: ...

    def on_assigned(self, partitions: set[TopicPartitionId]) -> None: ...


def test_unreachable_at_start_retries_then_fails_in_one_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon.source, "_CONNECT_ATTEMPT_S", 0.5)
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="daemon.source"),
        pytest.raises(KafkaUnavailable) as info,
    ):
        ConfluentSource(settings(connect_timeout_s=2.5), NoListener())
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "\n" not in message and "unreachable for 2.5 s (consumer)" in message
    retries = [r.getMessage() for r in caplog.records if r.name == "daemon.source"]
    assert retries and all("not reachable (consumer, try" in line for line in retries)


def test_start_up_wait_ends_when_asked_to_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon.source, "_CONNECT_ATTEMPT_S", 0.5)
    with pytest.raises(KafkaUnavailable, match="stopped while waiting"):
        ConfluentSource(settings(), NoListener(), should_stop=lambda: True)


def test_a_configuration_error_is_refused_in_one_line() -> None:
    with pytest.raises(KafkaUnavailable, match="consumer configuration") as info:
        ConfluentSource(settings(), NoListener(), **{"fetch.wait.max.ms": -5})
    assert "\n" not in str(info.value)


def test_the_password_is_passed_and_never_shown() -> None:
    s = settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="seqae",
        sasl_password="hunter2",
    )
    config = librdkafka_config(s)
    assert config["security.protocol"] == "sasl_ssl"
    assert config["sasl.password"] == "hunter2" and config["sasl.username"] == "seqae"
    assert "hunter2" not in repr(s)


@pytest.fixture
def source(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConfluentSource]:
    # Built as if the broker had answered at start and gone away since.
    monkeypatch.setattr(ConfluentSource, "_wait_for_broker", lambda self, should_stop: None)
    made = ConfluentSource(settings(), NoListener())
    yield made
    made.close()


def test_source_calls_never_raise_and_record_the_outage(source: ConfluentSource) -> None:
    assert source.unreachable_since is None
    started = time.monotonic()
    assert source.poll(0.2) == []
    assert source.lag() == {}  # nothing assigned: no call at all
    assert source.partition_offsets() == {}
    source.rewind_to_committed({("sensors", 0)}, fallback_ms=0)
    assert time.monotonic() - started < 5
    since = source.unreachable_since
    assert since is not None and abs(since - time.time()) < 60
    reason = source.reachability.reason
    assert reason is not None and reason.startswith("Kafka unreachable since 20")
    with pytest.raises(KafkaException):  # "unknown" is not "nothing committed"
        source.committed(("sensors", 0))


def test_an_unacknowledged_state_write_fails_within_the_timeout() -> None:
    producer = AcknowledgedProducer(settings(), max_message_bytes=1 << 20)
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryFailed, match=r"1 messages not acknowledged within 0\.5 s"):
            producer.send_acknowledged("changelog", [(b"pump-1", b"{}", 0)], 0.5)
    finally:
        producer.close(0.1)
    assert time.monotonic() - started < 5
