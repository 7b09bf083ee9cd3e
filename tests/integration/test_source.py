"""KafkaSource and KafkaPublisher against the real Kafka broker."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from daemon.publish import KafkaPublisher
from daemon.settings import KafkaSettings
from daemon.source import Record, Source, TopicPartitionId, open_source

pytestmark = pytest.mark.integration

MakeSource = Callable[..., "tuple[Source, RecordingListener]"]


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def produce(
    bootstrap: str,
    topic: str,
    n: int,
    *,
    partitions: int = 1,
    start: int = 0,
    ts0: int | None = None,
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        futures = [
            producer.send(
                topic,
                key=f"asset-{i % partitions}".encode(),
                value=f"m{i}".encode(),
                partition=i % partitions,
                timestamp_ms=None if ts0 is None else ts0 + i * 1000,
            )
            for i in range(start, start + n)
        ]
        for f in futures:
            f.get(timeout=15)
    finally:
        producer.close()


class RecordingListener:
    """Records callbacks; like the daemon, commits what it consumed when partitions go."""

    def __init__(self) -> None:
        self.events: list[tuple[str, set[TopicPartitionId]]] = []
        self.source: Source | None = None
        self.consumed: dict[TopicPartitionId, int] = {}
        self.commit_results: list[bool] = []

    def on_revoked(self, partitions: set[TopicPartitionId]) -> None:
        self.events.append(("revoked", set(partitions)))
        if self.source is not None:
            offsets = {tp: off for tp, off in self.consumed.items() if tp in partitions}
            self.commit_results.append(self.source.commit(offsets))

    def on_lost(self, partitions: set[TopicPartitionId]) -> None:
        self.events.append(("revoked", set(partitions)))  # gone, without a commit

    def on_assigned(self, partitions: set[TopicPartitionId]) -> None:
        self.events.append(("assigned", set(partitions)))

    def saw(self, records: list[Record]) -> None:
        for r in records:
            self.consumed[(r.topic, r.partition)] = r.offset + 1

    def assigned(self) -> set[TopicPartitionId]:
        current: set[TopicPartitionId] = set()
        for kind, parts in self.events:
            current = current - parts if kind == "revoked" else current | parts
        return current


def settings(bootstrap: str, topic: str, group: str | None = None, **kw: Any) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=[bootstrap], topics=[topic], group_id=group or f"g-{topic}", **kw
    )


@pytest.fixture(params=["kafka-python", "confluent"])
def make_source(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[MakeSource]:
    """Each test of a source runs on both clients (`kafka.client`)."""
    opened: list[Source] = []
    fast = {"session_timeout_ms": 10000, "heartbeat_interval_ms": 500, "client": request.param}

    def make(topic: str, group: str | None = None) -> tuple[Source, RecordingListener]:
        listener = RecordingListener()
        source = open_source(settings(kafka_bootstrap, topic, group, **fast), listener)
        listener.source = source
        opened.append(source)
        return source, listener

    yield make
    for source in opened:
        source.close()


def poll_until(
    sources: list[tuple[Source, RecordingListener]],
    done: Callable[[list[Record]], bool],
    timeout_s: float = 45.0,
) -> list[Record]:
    """Poll every source until `done(records so far)`; return the records."""
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while not done(got):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached; got {len(got)} records")
        for source, listener in sources:
            records = source.poll(0.2)
            listener.saw(records)
            got += records
    return got


def test_group_consume_returns_whole_records(
    kafka_bootstrap: str, unique_topic: str, make_source: MakeSource
) -> None:
    create_topic(kafka_bootstrap, unique_topic, 3)
    before_ms = int(time.time() * 1000)
    produce(kafka_bootstrap, unique_topic, 30, partitions=3)
    source, listener = make_source(unique_topic)
    got = poll_until([(source, listener)], lambda got: len(got) >= 30)
    assert len(got) == 30
    assert listener.events[0] == ("assigned", {(unique_topic, p) for p in range(3)})
    for p in range(3):
        mine = [r for r in got if r.partition == p]
        assert [r.offset for r in mine] == list(range(10))
        assert all(r.key == f"asset-{p}".encode() and r.topic == unique_topic for r in mine)
    assert sorted(r.value for r in got) == sorted(f"m{i}".encode() for i in range(30))
    assert all(r.timestamp_ms >= before_ms - 1000 for r in got)
    assert source.lag() == {(unique_topic, p): 0 for p in range(3)}


def test_a_topic_created_after_the_start_is_read(
    kafka_bootstrap: str, unique_topic: str, make_source: MakeSource
) -> None:
    # The daemon may start before its producers create the topic (a fresh plant, a container
    # started first): the subscription must pick the topic up within seconds, not minutes.
    source, listener = make_source(unique_topic)
    poll_until([(source, listener)], lambda _: True, timeout_s=1)
    for _ in range(5):
        listener.saw(source.poll(0.2))
    with contextlib.suppress(TopicAlreadyExistsError):  # kafka-python's metadata request
        create_topic(kafka_bootstrap, unique_topic, 1)  # may have had the broker create it
    produce(kafka_bootstrap, unique_topic, 10)
    got = poll_until([(source, listener)], lambda got: len(got) >= 10, timeout_s=30)
    assert sorted(int(r.value[1:]) for r in got) == list(range(10))


def test_pause_and_resume(kafka_bootstrap: str, unique_topic: str, make_source: MakeSource) -> None:
    create_topic(kafka_bootstrap, unique_topic, 2)
    produce(kafka_bootstrap, unique_topic, 4, partitions=2)
    source, listener = make_source(unique_topic)
    poll_until([(source, listener)], lambda got: len(got) >= 4)
    source.pause()
    assert source.paused
    produce(kafka_bootstrap, unique_topic, 6, partitions=2, start=4)
    while_paused = [r for _ in range(10) for r in source.poll(0.2)]
    assert while_paused == []
    assert sum(source.lag().values()) == 6
    source.resume()
    assert not source.paused
    later = poll_until([(source, listener)], lambda got: len(got) >= 6)
    assert sorted(r.value for r in later) == sorted(f"m{i}".encode() for i in range(4, 10))


def test_new_member_resumes_at_committed_offset(
    kafka_bootstrap: str, unique_topic: str, make_source: MakeSource
) -> None:
    create_topic(kafka_bootstrap, unique_topic, 1)
    produce(kafka_bootstrap, unique_topic, 20)
    tp = (unique_topic, 0)
    first, listener = make_source(unique_topic, "g-resume-" + unique_topic)
    poll_until([(first, listener)], lambda got: len(got) >= 20)
    assert first.commit({tp: 12})
    assert first.committed(tp) == 12
    listener.source = None  # leave without the usual commit-on-revocation
    first.close()
    second, listener2 = make_source(unique_topic, "g-resume-" + unique_topic)
    again = poll_until([(second, listener2)], lambda got: len(got) >= 8)
    assert [r.offset for r in again] == list(range(12, 20))
    assert second.committed(tp) == 12


def test_seek_and_seek_to_time(
    kafka_bootstrap: str, unique_topic: str, make_source: MakeSource
) -> None:
    create_topic(kafka_bootstrap, unique_topic, 1)
    ts0 = int(time.time() * 1000) - 60_000
    produce(kafka_bootstrap, unique_topic, 10, ts0=ts0)
    tp = (unique_topic, 0)
    source, listener = make_source(unique_topic)
    got = poll_until([(source, listener)], lambda got: len(got) >= 10)
    assert [r.timestamp_ms for r in got] == [ts0 + i * 1000 for i in range(10)]
    source.seek(tp, 3)
    assert source.position(tp) == 3
    again = poll_until([(source, listener)], lambda got: len(got) >= 7)
    assert again[0].offset == 3
    source.seek_to_time(tp, ts0 + 6500)  # first record at or after: offset 7
    assert source.position(tp) == 7
    source.seek_to_time(tp, ts0 + 60_000)  # after the last record: the end
    assert source.position(tp) == 10


def test_rebalance_callbacks_and_commit_on_revocation(
    kafka_bootstrap: str, unique_topic: str, make_source: MakeSource
) -> None:
    create_topic(kafka_bootstrap, unique_topic, 2)
    produce(kafka_bootstrap, unique_topic, 10, partitions=2)
    both = {(unique_topic, 0), (unique_topic, 1)}
    a = make_source(unique_topic)
    poll_until([a], lambda got: len(got) >= 10)
    assert a[1].assigned() == both
    b = make_source(unique_topic)
    poll_until(
        [a, b],
        lambda _: (
            bool(a[1].assigned())
            and bool(b[1].assigned())
            and not (a[1].assigned() & b[1].assigned())
        ),
    )
    # The first member gave up both partitions (eager protocol), committing inside the callback.
    assert ("revoked", both) in a[1].events
    assert a[1].commit_results and all(a[1].commit_results)
    assert a[1].assigned() | b[1].assigned() == both
    for tp in both:
        assert a[0].committed(tp) == 5
    # Each member now reads only its own partition, from the committed offset on.
    produce(kafka_bootstrap, unique_topic, 10, partitions=2, start=10)
    a_new: list[Record] = []
    b_new: list[Record] = []

    def split() -> bool:
        a_new.extend(a_records := a[0].poll(0.2))
        b_new.extend(b_records := b[0].poll(0.2))
        a[1].saw(a_records)
        b[1].saw(b_records)
        return len(a_new) + len(b_new) >= 10

    deadline = time.monotonic() + 45
    while not split():
        assert time.monotonic() < deadline
    assert {(r.topic, r.partition) for r in a_new} == a[1].assigned()
    assert {(r.topic, r.partition) for r in b_new} == b[1].assigned()
    assert sorted(r.offset for r in a_new + b_new) == sorted([*range(5, 10)] * 2)


def test_commit_skips_partitions_not_assigned(
    kafka_bootstrap: str, unique_topic: str, make_source: MakeSource
) -> None:
    create_topic(kafka_bootstrap, unique_topic, 1)
    produce(kafka_bootstrap, unique_topic, 2)
    source, listener = make_source(unique_topic)
    poll_until([(source, listener)], lambda got: len(got) >= 2)
    assert source.commit({(unique_topic, 0): 2, ("some-other-topic", 0): 5})
    assert source.committed((unique_topic, 0)) == 2


def test_publisher_dead_letters_and_alert_events(kafka_bootstrap: str, unique_topic: str) -> None:
    dlt, alerts = f"{unique_topic}-dlt", f"{unique_topic}-alerts"
    create_topic(kafka_bootstrap, dlt, 1)
    create_topic(kafka_bootstrap, alerts, 1)
    publisher = KafkaPublisher(
        KafkaSettings(
            bootstrap_servers=[kafka_bootstrap], dead_letter_topic=dlt, alert_topic=alerts
        )
    )
    bad_bytes = b"\xff\xfenot utf8"
    try:
        publisher.dead_letter(Record("sensors", 2, 41, b"pump-1", b"{not json", 0), "not_json")
        publisher.dead_letter(Record("sensors", 0, 7, None, bad_bytes, 0), "not_json")
        publisher.alert_event({"asset": "pump-1", "state": "open", "score": 3.5})
        publisher.flush(30)
    finally:
        publisher.close()
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=10000
    )
    try:
        consumer.subscribe([dlt, alerts])
        seen = []
        for message in consumer:
            seen.append(message)
            if len(seen) == 3:
                break
    finally:
        consumer.close()
    dead_messages = [m for m in seen if m.topic == dlt]
    assert [m.key for m in dead_messages] == [b"sensors:2:41", b"sensors:0:7"]
    assert dict(dead_messages[0].headers) == {
        "seqae.source.topic": b"sensors",
        "seqae.source.partition": b"2",
        "seqae.source.offset": b"41",
        "seqae.reason": b"not_json",
    }
    dead = [json.loads(m.value) for m in dead_messages]
    assert dead[0] == {
        "reason": "not_json",
        "topic": "sensors",
        "partition": 2,
        "offset": 41,
        "key": "pump-1",
        "value": "{not json",
    }
    assert dead[1]["key"] is None
    assert base64.b64decode(dead[1]["value"].removeprefix("base64:")) == bad_bytes
    [event] = [m for m in seen if m.topic == alerts]
    assert event.key == b"pump-1"
    assert json.loads(event.value) == {"asset": "pump-1", "state": "open", "score": 3.5}


def read_all(bootstrap: str, topic: str, n: int) -> list[Any]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=10000
    )
    try:
        seen = []
        for message in consumer:
            seen.append(message)
            if len(seen) == n:
                break
        return seen
    finally:
        consumer.close()


def test_publisher_sends_what_waited_out_an_outage(kafka_bootstrap: str, unique_topic: str) -> None:
    dlt = f"{unique_topic}-dlt"
    create_topic(kafka_bootstrap, dlt, 1)
    publisher = KafkaPublisher(
        KafkaSettings(bootstrap_servers=[kafka_bootstrap], dead_letter_topic=dlt)
    )
    try:
        publisher.reachability.failed("test", TimeoutError("broker away"))  # as after a timeout
        for offset in range(5):
            publisher.dead_letter(Record("sensors", 0, offset, None, b"x", 0), "not_json")
        assert publisher.backlog == 5  # not handed to the producer while Kafka is away
        publisher.flush(30)  # the broker answers again: sent, delivered, the outage is over
        assert publisher.backlog == 0 and publisher.unreachable_since is None
    finally:
        publisher.close()
    keys = [m.key for m in read_all(kafka_bootstrap, dlt, 5)]
    assert keys == [f"sensors:0:{i}".encode() for i in range(5)]


def test_guarded_calls_against_the_live_broker(
    kafka_bootstrap: str, unique_topic: str, make_source: MakeSource
) -> None:
    create_topic(kafka_bootstrap, unique_topic, 2)
    produce(kafka_bootstrap, unique_topic, 10, partitions=2)
    source, listener = make_source(unique_topic)
    poll_until([(source, listener)], lambda got: len(got) >= 10)
    both = {(unique_topic, 0), (unique_topic, 1)}
    assert source.commit({(unique_topic, 0): 3})
    source.rewind_to_committed(both, fallback_ms=None)
    assert source.position((unique_topic, 0)) == 3  # back to the committed offset
    assert source.position((unique_topic, 1)) == 5  # never committed, no fallback: stays
    assert source.lag() == {(unique_topic, 0): 2, (unique_topic, 1): 0}
    assert source.unreachable_since is None and source.reachability.reason is None
