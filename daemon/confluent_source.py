"""Kafka source on confluent-kafka (librdkafka): the same consumer-group member as
`daemon.source.KafkaSource`, with the record parsing and the fetch in C.

librdkafka runs the group protocol on its own threads but serves the rebalance callbacks
from inside `consume()`, on the caller's thread, so the daemon's `PartitionListener` runs
there as it is and may commit and read committed offsets. One difference is hidden here:
a partition being assigned cannot be sought before it is assigned, so the seeks and holds
the listener asks for during `on_assigned` are collected and applied by the assignment
itself (its start offsets, then a pause).

Every broker call the run loop makes is bounded by `kafka.call_timeout_s`; librdkafka's
synchronous commit has no timeout, so it runs on a worker thread that is waited for that
long (a commit still in flight makes the next one fail at once, not pile up).
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_END,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from kafka.errors import KafkaConnectionError, SaslAuthenticationFailedError

import daemon.health as health
from daemon.settings import KafkaSettings
from daemon.source import (
    KafkaUnavailable,
    PartitionListener,
    PartitionOffsets,
    Reachability,
    Record,
    TopicPartitionId,
    connect,
)

log = logging.getLogger(__name__)

# Errors that mean "the broker does not answer" (an outage, shown on /readyz), not a bug.
_UNREACHABLE = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._RESOLVE,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._WAIT_COORD,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
}
_FATAL_AT_CONNECT = {
    KafkaError._AUTHENTICATION,
    KafkaError._SSL,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}


def librdkafka_config(settings: KafkaSettings) -> dict[str, Any]:
    """The connection and security options of `settings` in librdkafka's names."""
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(settings.bootstrap_servers),
        "client.id": settings.client_id,
        "security.protocol": settings.security_protocol.lower(),
    }
    if settings.sasl_mechanism is not None:
        config["sasl.mechanism"] = settings.sasl_mechanism
        if settings.sasl_username is not None:
            config["sasl.username"] = settings.sasl_username
        if settings.sasl_password is not None:
            config["sasl.password"] = settings.sasl_password.get_secret_value()
    for ours, theirs in (
        ("ssl_cafile", "ssl.ca.location"),
        ("ssl_certfile", "ssl.certificate.location"),
        ("ssl_keyfile", "ssl.key.location"),
    ):
        path = getattr(settings, ours)
        if path is not None:
            config[theirs] = str(path)
    return config


def _ids(partitions: list[TopicPartition]) -> set[TopicPartitionId]:
    return {(tp.topic, tp.partition) for tp in partitions}


def _tp(tp: TopicPartitionId, offset: int = OFFSET_INVALID) -> TopicPartition:
    return TopicPartition(tp[0], tp[1], offset)


class ConfluentSource:
    """A consumer-group member that reads raw records and commits explicit offsets
    (the interface of `KafkaSource`). Construction waits for the broker to answer a
    metadata request, with backoff, for `kafka.connect_timeout_s`."""

    def __init__(
        self,
        settings: KafkaSettings,
        listener: PartitionListener,
        *,
        reachability: Reachability | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        **config: Any,
    ) -> None:
        self._settings = settings
        self._listener = listener
        self._paused = False
        self._closing = False
        self._waiting: set[TopicPartitionId] = set()
        self._assigned: set[TopicPartitionId] = set()  # kept by the callbacks: read every loop
        self._assigning: dict[TopicPartitionId, int] | None = None  # inside on_assign
        # Where a seek sent a partition, until it reads there: librdkafka's position() says
        # "invalid" from a seek to the next record it returns.
        self._sought: dict[TopicPartitionId, int] = {}
        self._callback_failure: BaseException | None = None
        self._in_callback = False
        self._timeout_s = settings.call_timeout_s
        self._incremental = settings.rebalance_protocol == "cooperative"
        self._committer = concurrent.futures.ThreadPoolExecutor(1, "kafka-commit")
        self._commit_in_flight: concurrent.futures.Future[Any] | None = None
        self.reachability = reachability or Reachability()
        options = librdkafka_config(settings) | {
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": settings.auto_offset_reset,
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": settings.heartbeat_interval_ms,
            "partition.assignment.strategy": (
                "cooperative-sticky" if self._incremental else "range,roundrobin"
            ),
            # The prefetch queue: librdkafka's default (64 MB) is a fleet's worth of memory.
            "queued.max.messages.kbytes": 16384,
            # A subscribed topic created after the start (or partitions added) is seen at the
            # next metadata refresh: librdkafka's default waits 5 minutes, kafka-python's less.
            "topic.metadata.refresh.interval.ms": 5000,
            "error_cb": self._on_error,
            "logger": logging.getLogger("daemon.librdkafka"),
        }
        if settings.group_instance_id is not None:
            options["group.instance.id"] = settings.group_instance_id
        options.update(config)
        try:
            self._consumer = Consumer(options)
        except (KafkaException, ValueError, TypeError) as exc:
            self._committer.shutdown(wait=False)
            error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
            text = error.str() if isinstance(error, KafkaError) else str(error)
            raise KafkaUnavailable(
                f"Kafka consumer configuration: {' '.join(text.split())}"
            ) from None
        try:
            self._wait_for_broker(should_stop)
        except BaseException:
            self._consumer.close()
            self._committer.shutdown(wait=False)
            raise
        self._consumer.subscribe(
            list(settings.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _wait_for_broker(self, should_stop: Callable[[], bool]) -> None:
        """Ask for the cluster's metadata until it answers, with `connect`'s retries."""

        def probe(bootstrap_timeout_ms: int, **_: Any) -> None:
            try:
                self._consumer.list_topics(timeout=bootstrap_timeout_ms / 1000)
            except KafkaException as exc:
                error = exc.args[0]
                fatal = error.code() in _FATAL_AT_CONNECT
                raise (SaslAuthenticationFailedError if fatal else KafkaConnectionError)(
                    error.str()
                ) from None

        probe.DEFAULT_CONFIG = {"bootstrap_timeout_ms": None}  # type: ignore[attr-defined]
        connect(
            probe,
            {"bootstrap_servers": self._settings.bootstrap_servers},
            timeout_s=self._settings.connect_timeout_s,
            what="consumer",
            reachability=self.reachability,
            should_stop=should_stop,
        )

    # -- librdkafka's callbacks (served inside consume(), on the caller's thread) ------------

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in _UNREACHABLE:
            self.reachability.failed("fetch", KafkaException(error))
        else:
            log.warning("Kafka consumer error: %s", error)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        ids = _ids(partitions)
        self._assigning = {tp: OFFSET_INVALID for tp in ids}  # INVALID: the committed offset
        try:
            if ids and not self._closing:
                log.info("partitions assigned: %s", sorted(ids))
                self._listener.on_assigned(ids)
        except BaseException as exc:
            self._callback_failure = exc
        finally:
            starts = [_tp(tp, offset) for tp, offset in sorted(self._assigning.items())]
            self._sought.update((tp, o) for tp, o in self._assigning.items() if o != OFFSET_INVALID)
            self._assigning = None
            if self._incremental:
                consumer.incremental_assign(starts)
                self._assigned |= ids
            else:
                consumer.assign(starts)
                self._assigned = set(ids)
            held = [_tp(tp) for tp in sorted(ids) if self._paused or tp in self._waiting]
            if held:
                consumer.pause(held)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        ids = _ids(partitions)
        self._waiting -= ids
        if not ids or self._closing:
            self._assigned -= ids
            return
        log.info("partitions revoked: %s", sorted(ids))
        self._in_callback = True
        try:
            self._listener.on_revoked(ids)  # may commit them: still assigned until it returns
        except BaseException as exc:
            self._callback_failure = exc
        finally:
            self._in_callback = False
            self._assigned -= ids

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own them already: nothing may be committed or written for them.
        ids = _ids(partitions)
        self._waiting -= ids
        self._assigned -= ids
        if not ids or self._closing:
            return
        log.warning("partitions lost (group membership expired): %s", sorted(ids))
        try:
            self._listener.on_lost(ids)
        except BaseException as exc:
            self._callback_failure = exc

    # -- the source interface ----------------------------------------------------------------

    @property
    def unreachable_since(self) -> float | None:
        return self.reachability.since

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]:
        """Records fetched, [] on a timeout or while the broker is away (never raises for it).

        Returns as soon as any record is there, as kafka-python's poll does: librdkafka's
        `consume(n, timeout)` waits for n records or the timeout (at 10,000 msg/s, 2,000
        records took the whole 200 ms idle timeout, and the windows in them waited for it)."""
        most = max_records or self._settings.max_poll_records
        try:
            messages = self._consumer.consume(most, 0)
            if not messages and timeout_s > 0:
                first = self._consumer.poll(timeout_s)
                if first is not None:
                    messages = (
                        [first, *self._consumer.consume(most - 1, 0)] if most > 1 else [first]
                    )
        except KafkaException as exc:
            self.reachability.failed("poll", exc)
            return []
        finally:
            failure, self._callback_failure = self._callback_failure, None
            if failure is not None:
                raise failure
        if not messages:
            return []
        records = [  # a message without an error has a topic, partition and offset
            Record(
                m.topic(),  # type: ignore[arg-type]
                m.partition(),  # type: ignore[arg-type]
                m.offset(),  # type: ignore[arg-type]
                m.key(),
                m.value() or b"",
                m.timestamp()[1],
            )
            for m in messages
            if m.error() is None
        ]
        if len(records) != len(messages):
            for m in messages:
                if (error := m.error()) is not None and error.code() != KafkaError._PARTITION_EOF:
                    log.warning("fetch error on %s[%s]: %s", m.topic(), m.partition(), error)
        if records:
            if self._sought:
                for r in records:
                    self._sought.pop((r.topic, r.partition), None)
            health.messages_in.inc(len(records))
            self.reachability.succeeded()
        return records

    def assignment(self) -> set[TopicPartitionId]:
        if self._assigning is not None:
            return self._assigned | self._assigning.keys()
        return set(self._assigned)

    def pause(self) -> None:
        """Stop fetching from every assigned partition (and from partitions assigned later)."""
        self._paused = True
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.pause(assigned)

    def resume(self) -> None:
        """Fetch again from every assigned partition except those waiting (`wait_at`)."""
        self._paused = False
        go = [
            tp
            for tp in self._consumer.assignment()
            if (tp.topic, tp.partition) not in self._waiting
        ]
        if go:
            self._consumer.resume(go)

    def wait_at(self, tp: TopicPartitionId, offset: int) -> None:
        """Stop reading `tp` at `offset` until `release(tp)` (see KafkaSource.wait_at)."""
        if tp not in self.assignment():
            return
        self.seek(tp, offset)
        self._pause_one(tp)
        self._waiting.add(tp)

    def hold_back(self, partitions: set[TopicPartitionId]) -> None:
        """Stop reading these assigned partitions until `release`."""
        held = partitions & self.assignment()
        for tp in held:
            self._pause_one(tp)
        self._waiting |= held

    def _pause_one(self, tp: TopicPartitionId) -> None:
        if self._assigning is None or tp not in self._assigning:
            self._consumer.pause([_tp(tp)])  # inside on_assign the assignment pauses it

    def partition_count(self) -> int:
        """The most partitions any input topic has (from the broker's metadata)."""
        counts = []
        for topic in self._settings.topics:
            metadata = self._consumer.list_topics(topic, timeout=self._timeout_s)
            found = metadata.topics.get(topic)
            counts.append(len(found.partitions) if found is not None else 0)
        return max(counts, default=0)

    def release(self, tp: TopicPartitionId) -> None:
        """Read `tp` again from where `wait_at` stopped it (unless paused for backpressure)."""
        if tp not in self._waiting:
            return
        self._waiting.discard(tp)
        if self._assigning is not None and tp in self._assigning:
            return  # not paused yet: the assignment leaves it running
        if not self._paused and tp in self.assignment():
            self._consumer.resume([_tp(tp)])

    @property
    def waiting(self) -> frozenset[TopicPartitionId]:
        return frozenset(self._waiting)

    @property
    def paused(self) -> bool:
        return self._paused

    def commit(self, offsets: Mapping[TopicPartitionId, int]) -> bool:
        """Commit `offsets` (the next offset to read), waiting at most `call_timeout_s`;
        partitions no longer assigned are left out. A failed commit is logged and returns
        False: the next owner resumes from the last committed offset (at-least-once)."""
        assigned = self.assignment()
        request = []
        for tp, offset in sorted(offsets.items()):
            if tp in assigned:
                request.append(_tp(tp, offset))
            else:
                log.warning("not committing %s[%d]: no longer assigned", *tp)
        if not request:
            return True
        if self._commit_in_flight is not None and not self._commit_in_flight.done():
            self.reachability.failed("commit", TimeoutError("the last commit is still waiting"))
            return False
        try:
            if self._in_callback:
                results = self._consumer.commit(offsets=request, asynchronous=False)
            else:
                future = self._committer.submit(
                    self._consumer.commit, offsets=request, asynchronous=False
                )
                self._commit_in_flight = future
                results = future.result(timeout=self._timeout_s)
        except concurrent.futures.TimeoutError as exc:
            self.reachability.failed("commit", exc)
            return False
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() in _UNREACHABLE:
                self.reachability.failed("commit", exc)
            else:
                log.warning("offset commit failed, offsets stay at the last commit: %s", error)
            return False
        failed = [r for r in results or () if r.error is not None]
        if failed:
            log.warning("offset commit failed for %d partitions: %s", len(failed), failed[0].error)
            return False
        self.reachability.succeeded()
        return True

    def _committed(self, partitions: list[TopicPartitionId]) -> dict[TopicPartitionId, int | None]:
        found = self._consumer.committed([_tp(tp) for tp in partitions], timeout=self._timeout_s)
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in found}

    def committed(self, tp: TopicPartitionId) -> int | None:
        """The group's committed offset for `tp`, None if nothing was committed; raises
        KafkaException when the broker does not answer within `call_timeout_s`."""
        return self._committed([tp]).get(tp)

    def rewind_to_committed(
        self,
        partitions: set[TopicPartitionId],
        fallback_ms: int | None = None,
        not_after: Mapping[TopicPartitionId, int] | None = None,
    ) -> None:
        """As KafkaSource.rewind_to_committed: the committed offset, or `not_after[tp]` if
        earlier; never committed: the first record at or after `fallback_ms` (if given)."""
        if not partitions:
            return
        floor = not_after or {}
        try:
            committed = self._committed(sorted(partitions))
        except KafkaException as exc:
            self.reachability.failed("committed offsets", exc)
            return
        for tp in sorted(partitions):
            offset = committed.get(tp)
            try:
                if offset is not None:
                    self.seek(tp, min(offset, floor.get(tp, offset)))
                elif fallback_ms is not None:
                    self.seek_to_time(tp, fallback_ms)
            except KafkaException as exc:
                self.reachability.failed(f"seek of {tp[0]}[{tp[1]}]", exc)
                continue
        self.reachability.succeeded()

    def position(self, tp: TopicPartitionId) -> int:
        """The offset of the next record poll() returns for `tp`."""
        return self._positions([tp])[tp]

    def seek(self, tp: TopicPartitionId, offset: int) -> None:
        self._seek(tp, max(0, offset))

    def _seek(self, tp: TopicPartitionId, offset: int) -> None:
        if self._assigning is not None and tp in self._assigning:
            self._assigning[tp] = offset  # the assignment starts there
        else:
            self._consumer.seek(_tp(tp, offset))
            self._sought[tp] = offset

    def seek_to_time(self, tp: TopicPartitionId, timestamp_ms: int) -> None:
        """Seek to the first record at or after `timestamp_ms` (the end if there is none)."""
        found = self._consumer.offsets_for_times([_tp(tp, timestamp_ms)], timeout=self._timeout_s)
        offset = found[0].offset if found else -1
        self._seek(tp, offset if offset >= 0 else OFFSET_END)

    def _ends(self, partitions: list[TopicPartitionId]) -> dict[TopicPartitionId, int]:
        ends = {}
        for tp in partitions:
            _, high = self._consumer.get_watermark_offsets(_tp(tp), timeout=self._timeout_s)
            ends[tp] = int(high)
        return ends

    def _positions(
        self,
        partitions: list[TopicPartitionId],
        ends: Mapping[TopicPartitionId, int] | None = None,
        committed: Mapping[TopicPartitionId, int | None] | None = None,
    ) -> dict[TopicPartitionId, int]:
        """Where each partition reads next: where a seek or the assignment sent it, else
        the consumer's position, or before any record was read, the committed offset (where
        it starts). Partitions with none of these are left out. `ends` and `committed`, when
        the caller read them already, are not asked of the broker again."""
        found: dict[TopicPartitionId, int] = {
            (tp.topic, tp.partition): tp.offset
            for tp in self._consumer.position([_tp(tp) for tp in partitions])
        }
        for tp in partitions:
            if (sought := self._sought.get(tp)) is not None:
                if sought != OFFSET_END:
                    found[tp] = sought
                else:
                    found[tp] = ends[tp] if ends is not None else self._ends([tp])[tp]
        unread = [tp for tp in partitions if found.get(tp, -1) < 0]
        if unread:
            known = committed if committed is not None else self._committed(unread)
            found |= {tp: off for tp in unread if (off := known.get(tp)) is not None}
        return {tp: int(off) for tp, off in found.items() if off >= 0}

    def lag(self) -> dict[TopicPartitionId, int]:
        """Records between the consumer's position and the end of each assigned partition;
        {} when the broker does not answer within `call_timeout_s` (never raises for it)."""
        assigned = sorted(self.assignment())
        if not assigned:
            return {}
        try:
            ends = self._ends(assigned)
            positions = self._positions(assigned, ends)
        except KafkaException as exc:
            self.reachability.failed("lag", exc)
            return {}
        self.reachability.succeeded()
        return {tp: max(0, ends[tp] - positions[tp]) for tp in assigned if tp in positions}

    def partition_offsets(self) -> dict[TopicPartitionId, PartitionOffsets] | None:
        """End, position and committed offset of each assigned partition; None when the broker
        does not answer within `call_timeout_s` (never raises for it)."""
        assigned = sorted(self.assignment())
        if not assigned:
            return {}
        try:
            ends = self._ends(assigned)
            committed = self._committed(assigned)
            positions = self._positions(assigned, ends, committed)
        except KafkaException as exc:
            self.reachability.failed("partition offsets", exc)
            return None
        self.reachability.succeeded()
        return {
            tp: PartitionOffsets(ends[tp], positions[tp], committed.get(tp))
            for tp in assigned
            if tp in positions
        }

    def close(self) -> None:
        self._closing = True  # librdkafka revokes on close: the daemon drained already
        try:
            self._consumer.close()
        finally:
            self._committer.shutdown(wait=False)
