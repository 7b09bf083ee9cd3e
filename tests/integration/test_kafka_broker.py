"""kafka-python against the real Apache Kafka broker started by deploy/local/devstack.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

pytestmark = pytest.mark.integration


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, int | None]]) -> None:
    """Send (key, value, partition) records and wait for every acknowledgement."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        futures = [producer.send(topic, key=k, value=v, partition=p) for k, v, p in records]
        for f in futures:
            f.get(timeout=15)
    finally:
        producer.close()


def group_consumer(bootstrap: str, group: str, **kwargs: object) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
        **kwargs,
    )


@pytest.fixture
def consumers() -> Iterator[list[KafkaConsumer]]:
    """Consumers a test opens; all closed afterwards, even when the test fails."""
    opened: list[KafkaConsumer] = []
    yield opened
    for c in opened:
        c.close()


def test_create_topic_with_partitions(kafka_bootstrap: str, unique_topic: str) -> None:
    create_topic(kafka_bootstrap, unique_topic, partitions=3)

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert unique_topic in admin.list_topics()
        (described,) = admin.describe_topics([unique_topic])
        assert sorted(p["partition_index"] for p in described["partitions"]) == [0, 1, 2]
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(unique_topic, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()


def test_manual_commit_then_next_group_member_resumes(
    kafka_bootstrap: str, unique_topic: str, consumers: list[KafkaConsumer]
) -> None:
    create_topic(kafka_bootstrap, unique_topic, partitions=1)
    produce(kafka_bootstrap, unique_topic, [(b"pump-7", f"m{i}".encode(), None) for i in range(10)])
    group = f"g-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(unique_topic, 0)

    first = group_consumer(kafka_bootstrap, group)
    consumers.append(first)
    first.subscribe([unique_topic])
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(seen) < 6 and time.monotonic() < deadline:
        for records in first.poll(timeout_ms=500, max_records=6 - len(seen)).values():
            seen.extend(r.value for r in records)
    assert seen == [f"m{i}".encode() for i in range(6)]
    first.commit({tp: OffsetAndMetadata(6, "", -1)})
    assert first.committed(tp) == 6
    first.close()

    second = group_consumer(kafka_bootstrap, group)
    consumers.append(second)
    second.subscribe([unique_topic])
    rest: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + 30
    while len(rest) < 4 and time.monotonic() < deadline:
        for records in second.poll(timeout_ms=500).values():
            rest.extend((r.offset, r.value) for r in records)
    assert rest == [(i, f"m{i}".encode()) for i in range(6, 10)]
    assert second.committed(tp) == 6  # nothing committed by the second member yet


class RecordingListener(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.revoked: list[set[TopicPartition]] = []
        self.assigned: list[set[TopicPartition]] = []

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.revoked.append(set(revoked))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.assigned.append(set(assigned))


def poll_until(
    members: list[KafkaConsumer], done: object, what: str, timeout_s: float = 45.0
) -> dict[int, list[tuple[int, bytes | None]]]:
    """Poll every member in turn (a rebalance needs all of them polling) until done()."""
    got: dict[int, list[tuple[int, bytes | None]]] = {i: [] for i in range(len(members))}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for i, member in enumerate(members):
            for tp, records in member.poll(timeout_ms=200).items():
                got[i].extend((tp.partition, r.key) for r in records)
        if done(got):  # type: ignore[operator]
            return got
    raise AssertionError(f"gave up after {timeout_s}s waiting for {what}: {got}")


def test_rebalance_splits_partitions_between_two_group_members(
    kafka_bootstrap: str, unique_topic: str, consumers: list[KafkaConsumer]
) -> None:
    create_topic(kafka_bootstrap, unique_topic, partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    everything = {TopicPartition(unique_topic, p) for p in range(4)}

    a_listener = RecordingListener()
    a = group_consumer(kafka_bootstrap, group)
    consumers.append(a)
    a.subscribe([unique_topic], listener=a_listener)
    poll_until([a], lambda _: a.assignment() == everything, "the first member to own all 4")

    b = group_consumer(kafka_bootstrap, group)
    consumers.append(b)
    b.subscribe([unique_topic])
    poll_until(
        [a, b],
        lambda _: len(a.assignment()) == 2 and len(b.assignment()) == 2,
        "the two members to split the 4 partitions",
    )
    assert a.assignment() | b.assignment() == everything
    assert not a.assignment() & b.assignment()
    assert a_listener.revoked, "the first member was never told of the revocation"

    # One record per partition: each member receives exactly the ones on its partitions.
    produce(kafka_bootstrap, unique_topic, [(f"k{p}".encode(), b"v", p) for p in range(4)])
    got = poll_until([a, b], lambda g: len(g[0]) + len(g[1]) >= 4, "4 records across members")
    assert {p for p, _ in got[0]} == {tp.partition for tp in a.assignment()}
    assert {p for p, _ in got[1]} == {tp.partition for tp in b.assignment()}
    assert sorted(k for _, k in got[0] + got[1] if k is not None) == [b"k0", b"k1", b"k2", b"k3"]

    # The second member leaves: its partitions return to the first.
    b.close()
    poll_until([a], lambda _: a.assignment() == everything, "the survivor to own all 4 again")
