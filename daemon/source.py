"""Kafka source: a kafka-python consumer group with manual commits, pause/resume and a
rebalance listener.

kafka-python 3 runs the group protocol, and so the rebalance callbacks, on its own IO thread,
where a blocking consumer call (commit, offsets_for_times) raises. The callbacks here are
therefore async: each runs the daemon's `PartitionListener` on a short-lived worker thread
and awaits it, so the listener may flush, commit and seek as usual while heartbeats go on.
The caller's thread is blocked inside `poll()` meanwhile, so from its point of view the
listener is "called inside poll()".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

import daemon.health as health
from daemon.settings import KafkaSettings

log = logging.getLogger(__name__)

TopicPartitionId = tuple[str, int]


class Record(NamedTuple):  # a NamedTuple: one is made per message, a frozen dataclass costs 3x
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


class PartitionListener(Protocol):
    def on_revoked(self, partitions: set[TopicPartitionId]) -> None: ...

    def on_assigned(self, partitions: set[TopicPartitionId]) -> None: ...


def kafka_client_options(settings: KafkaSettings) -> dict[str, Any]:
    """The connection and security options shared by our consumers and producers."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(settings, name)
        if path is not None:
            options[name] = str(path)
    return options


class _RebalanceBridge(AsyncConsumerRebalanceListener):
    """Runs the daemon's listener off the consumer's IO thread and awaits it there."""

    def __init__(self, source: KafkaSource, listener: PartitionListener) -> None:
        self._source = source
        self._listener = listener

    async def on_partitions_revoked(self, revoked: Any) -> None:
        ids = {(tp.topic, tp.partition) for tp in revoked}
        if not ids:
            return
        log.info("partitions revoked: %s", sorted(ids))
        await self._run_off_loop(self._listener.on_revoked, ids)

    async def on_partitions_lost(self, lost: Any) -> None:
        # Commits for lost partitions fail (and are logged); the windows must go all the same.
        ids = {(tp.topic, tp.partition) for tp in lost}
        if not ids:
            return
        log.warning("partitions lost (group membership expired): %s", sorted(ids))
        await self._run_off_loop(self._listener.on_revoked, ids)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        ids = {(tp.topic, tp.partition) for tp in assigned}
        if not ids:
            return
        log.info("partitions assigned: %s", sorted(ids))
        if self._source.paused:
            self._source._consumer.pause(*assigned)
        await self._run_off_loop(self._listener.on_assigned, ids)

    async def _run_off_loop(
        self, call: Callable[[set[TopicPartitionId]], None], ids: set[TopicPartitionId]
    ) -> None:
        done = threading.Event()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                call(ids)
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=work, name="rebalance-listener", daemon=True).start()
        net = self._source._consumer._net  # kafka-python's IO loop: sleep yields to heartbeats
        while not done.is_set():
            await net.sleep(0.01)
        if failure:
            raise failure[0]


class KafkaSource:
    """A consumer-group member that reads raw records and commits explicit offsets."""

    def __init__(
        self, settings: KafkaSettings, listener: PartitionListener, **consumer_options: Any
    ) -> None:
        self._settings = settings
        self._paused = False
        options = kafka_client_options(settings) | {
            "group_id": settings.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": settings.auto_offset_reset,
            "max_poll_records": settings.max_poll_records,
        }
        options.update(consumer_options)
        self._consumer = KafkaConsumer(**options)
        self._consumer.subscribe(topics=settings.topics, listener=_RebalanceBridge(self, listener))

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]:
        batches = self._consumer.poll(
            timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records
        )
        records = [
            Record(
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                key=r.key,
                value=r.value if r.value is not None else b"",
                timestamp_ms=r.timestamp,
            )
            for tp in sorted(batches)
            for r in batches[tp]
        ]
        if records:
            health.messages_in.inc(len(records))
        return records

    def assignment(self) -> set[TopicPartitionId]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self) -> None:
        """Stop fetching from every assigned partition (and from partitions assigned later)."""
        self._paused = True
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._paused = False
        self._consumer.resume(*self._consumer.assignment())

    @property
    def paused(self) -> bool:
        return self._paused

    def commit(self, offsets: Mapping[TopicPartitionId, int]) -> bool:
        """Commit `offsets` (the next offset to read) synchronously.

        Partitions no longer assigned are left out. A failed commit (rebalance in progress,
        membership lost, broker unreachable) is logged and returns False: the partition's
        next owner resumes from the last committed offset, which is at-least-once.
        """
        assigned = self._consumer.assignment()
        request = {}
        for (topic, partition), offset in offsets.items():
            tp = TopicPartition(topic, partition)
            if tp in assigned:
                request[tp] = OffsetAndMetadata(offset, "", -1)
            else:
                log.warning("not committing %s[%d]: no longer assigned", topic, partition)
        if not request:
            return True
        try:
            self._consumer.commit(request)
        except KafkaError as exc:
            log.warning("offset commit failed, offsets stay at the last commit: %r", exc)
            return False
        return True

    def committed(self, tp: TopicPartitionId) -> int | None:
        """The group's committed offset for `tp`, or None if nothing was committed."""
        offset = self._consumer.committed(TopicPartition(*tp))
        return int(offset) if offset is not None else None

    def position(self, tp: TopicPartitionId) -> int:
        """The offset of the next record poll() returns for `tp`."""
        return int(self._consumer.position(TopicPartition(*tp)))

    def seek(self, tp: TopicPartitionId, offset: int) -> None:
        self._consumer.seek(TopicPartition(*tp), max(0, offset))

    def seek_to_time(self, tp: TopicPartitionId, timestamp_ms: int) -> None:
        """Seek to the first record at or after `timestamp_ms` (the end if there is none)."""
        partition = TopicPartition(*tp)
        found = self._consumer.offsets_for_times({partition: timestamp_ms})
        hit = found.get(partition)
        if hit is not None:
            self._consumer.seek(partition, hit.offset)
        else:
            self._consumer.seek_to_end(partition)

    def lag(self) -> dict[TopicPartitionId, int]:
        """Records between the consumer's position and the end of each assigned partition."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        ends = self._consumer.end_offsets(assigned)
        lag = {}
        for tp in assigned:
            try:
                position = self._consumer.position(tp, timeout_ms=1000)
            except KafkaError:
                continue
            if position is not None and tp in ends:
                lag[(tp.topic, tp.partition)] = max(0, ends[tp] - position)
        return lag

    def close(self) -> None:
        self._consumer.close(autocommit=False)
