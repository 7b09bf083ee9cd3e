"""Kafka source: a kafka-python consumer group with manual commits, pause/resume and a
rebalance listener.

kafka-python 3 runs the group protocol, and so the rebalance callbacks, on its own IO thread,
where a blocking consumer call (commit, offsets_for_times) raises. The callbacks here are
therefore async: each runs the daemon's `PartitionListener` on a short-lived worker thread
and awaits it, so the listener may flush, commit and seek as usual while heartbeats go on.
The caller's thread is blocked inside `poll()` meanwhile, so from its point of view the
listener is "called inside poll()".

A broker outage is a state, not an exit: every call the run loop makes (poll, lag, commit,
the committed offsets on assignment) is bounded by `kafka.call_timeout_s` and guarded; a
failure returns an empty or failed result and is recorded in `Reachability`, which the app
shows on /readyz ("Kafka unreachable since ...") until a call succeeds again. Start-up retries
an unreachable broker with backoff for `kafka.connect_timeout_s` (for ever by default) instead
of raising at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, TypeVar

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

import daemon.health as health
from daemon.settings import KafkaSettings

log = logging.getLogger(__name__)

TopicPartitionId = tuple[str, int]
Client = TypeVar("Client")
_CONNECT_ATTEMPT_S = 10.0  # one bootstrap attempt; start-up retries for connect_timeout_s
_CONNECT_BACKOFF_MAX_S = 30.0


class KafkaUnavailable(RuntimeError):
    """Kafka could not be reached within `kafka.connect_timeout_s` (the message says where)."""


class Reachability:
    """Whether the broker answers: `since` is when it stopped (None while it answers).

    A failed call logs one line when an outage starts and then at most one a minute, with the
    count of failed calls; the first call that succeeds again logs how long it lasted.
    """

    def __init__(
        self, what: str = "Kafka", clock: Callable[[], float] = time.time, log_every_s: float = 60
    ) -> None:
        self._what = what
        self._clock = clock
        self._log_every_s = log_every_s
        self._lock = threading.Lock()  # the publisher's send callbacks come from its IO thread
        self.since: float | None = None  # epoch seconds
        self._failures = 0
        self._logged_at = 0.0

    @property
    def reason(self) -> str | None:
        """The /readyz line, "Kafka unreachable since <RFC 3339>", during an outage; else None."""
        since = self.since
        if since is None:
            return None
        stamp = datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds")
        return f"{self._what} unreachable since {stamp.replace('+00:00', 'Z')}"

    def failed(self, call: str, exc: BaseException, *, report: bool = True) -> None:
        """Record a failed call; `report=False` when the caller logs its own line."""
        with self._lock:
            now = self._clock()
            self._failures += 1
            if self.since is None:
                self.since, self._logged_at, self._failures = now, now, 1
                if report:
                    log.warning("%s unreachable (%s: %r); retrying", self._what, call, exc)
            elif report and now - self._logged_at >= self._log_every_s:
                log.warning(
                    "%s (%d failed calls; last %s: %r)", self.reason, self._failures, call, exc
                )
                self._logged_at = now

    def succeeded(self) -> None:
        if self.since is None:  # the common case, without the lock
            return
        with self._lock:
            if self.since is not None:
                log.info("%s reachable again after %.0f s", self._what, self._clock() - self.since)
                self.since = None


def connect(
    make: Callable[..., Client],
    options: dict[str, Any],
    *,
    timeout_s: float,
    what: str,
    reachability: Reachability,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> Client:
    """`make(**options)` (a kafka-python client), retried with backoff while the broker is
    unreachable, for at most `timeout_s` (inf: for ever); then KafkaUnavailable, in one line."""
    deadline = time.monotonic() + timeout_s
    backoff = 1.0
    attempt = 0
    servers = ",".join(options.get("bootstrap_servers", []))
    while True:
        if attempt and should_stop():
            raise KafkaUnavailable(f"stopped while waiting for Kafka at {servers} ({what})")
        attempt += 1
        left = deadline - time.monotonic()
        attempt_s = min(_CONNECT_ATTEMPT_S, max(left, 0.5))
        attempt_options = dict(options)
        if "bootstrap_timeout_ms" in getattr(make, "DEFAULT_CONFIG", {}):  # kafka-python 3
            attempt_options.setdefault("bootstrap_timeout_ms", int(attempt_s * 1000))
        try:
            client = _make_closing_on_failure(make, attempt_options)
        except KafkaError as exc:
            if not getattr(exc, "retriable", False):  # configuration, authentication, ...
                raise KafkaUnavailable(f"Kafka at {servers} ({what}): {exc!r}") from None
            reachability.failed(f"connect {what}", exc, report=False)
            left = deadline - time.monotonic()
            if should_stop():
                raise KafkaUnavailable(
                    f"stopped while waiting for Kafka at {servers} ({what})"
                ) from None
            if left <= 0:
                raise KafkaUnavailable(
                    f"Kafka at {servers} unreachable for {timeout_s:g} s ({what}): {exc}"
                ) from None
            wait = min(backoff, left)
            log.warning(
                "Kafka at %s not reachable (%s, try %d: %s); retrying in %.0f s",
                servers,
                what,
                attempt,
                type(exc).__name__,
                wait,
            )
            until = time.monotonic() + wait
            while not should_stop() and (rest := until - time.monotonic()) > 0:
                sleep(min(rest, 0.5))
            backoff = min(backoff * 2, _CONNECT_BACKOFF_MAX_S)
            continue
        reachability.succeeded()
        return client


def _make_closing_on_failure(make: Callable[..., Client], options: dict[str, Any]) -> Client:
    """A kafka-python client whose network thread is closed if its construction fails
    (kafka-python leaves it running: retries would pile them up)."""
    defaults = getattr(make, "DEFAULT_CONFIG", {})
    base = options.get("kafka_client", defaults.get("kafka_client"))
    if base is None:
        return make(**options)
    made: list[Any] = []

    def recording(**config: Any) -> Any:
        made.append(client := base(**config))
        return client

    try:
        return make(**(options | {"kafka_client": recording}))
    except BaseException:
        for client in made:
            try:
                client.close()
            except Exception:
                log.debug("closing a failed client", exc_info=True)
        raise


class Record(NamedTuple):  # a NamedTuple: one is made per message, a frozen dataclass costs 3x
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


class PartitionListener(Protocol):
    def on_revoked(self, partitions: set[TopicPartitionId]) -> None: ...

    def on_lost(self, partitions: set[TopicPartitionId]) -> None: ...

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
        self._source._waiting -= ids
        log.info("partitions revoked: %s", sorted(ids))
        await self._run_off_loop(self._listener.on_revoked, ids)

    async def on_partitions_lost(self, lost: Any) -> None:
        # Another member may own them already: nothing may be committed or written for them.
        ids = {(tp.topic, tp.partition) for tp in lost}
        if not ids:
            return
        self._source._waiting -= ids
        log.warning("partitions lost (group membership expired): %s", sorted(ids))
        await self._run_off_loop(self._listener.on_lost, ids)

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
    """A consumer-group member that reads raw records and commits explicit offsets.

    Construction retries an unreachable broker (see `connect`); `should_stop` ends the wait
    early (a SIGTERM during start-up), raising KafkaUnavailable.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        listener: PartitionListener,
        *,
        reachability: Reachability | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        **consumer_options: Any,
    ) -> None:
        self._settings = settings
        self._paused = False
        self._waiting: set[TopicPartitionId] = set()  # paused at a message that must wait
        self._timeout_ms = int(settings.call_timeout_s * 1000)
        self.reachability = reachability or Reachability()
        options = kafka_client_options(settings) | {
            "group_id": settings.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": settings.auto_offset_reset,
            "max_poll_records": settings.max_poll_records,
        }
        if settings.group_instance_id is not None:
            options["group_instance_id"] = settings.group_instance_id
        if settings.rebalance_protocol == "cooperative":
            options["partition_assignment_strategy"] = (CooperativeStickyAssignor,)
        options.update(consumer_options)
        self._consumer = connect(
            KafkaConsumer,
            options,
            timeout_s=settings.connect_timeout_s,
            what="consumer",
            reachability=self.reachability,
            should_stop=should_stop,
        )
        self._consumer.subscribe(topics=settings.topics, listener=_RebalanceBridge(self, listener))

    @property
    def unreachable_since(self) -> float | None:
        """Epoch seconds since when the broker has not answered; None while it answers."""
        return self.reachability.since

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]:
        """Records fetched, [] on a timeout or while the broker is away (never raises for it)."""
        try:
            batches = self._consumer.poll(
                timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records
            )
        except KafkaError as exc:
            self.reachability.failed("poll", exc)
            return []
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
            self.reachability.succeeded()  # a fetch answered
        return records

    def assignment(self) -> set[TopicPartitionId]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self) -> None:
        """Stop fetching from every assigned partition (and from partitions assigned later)."""
        self._paused = True
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        """Fetch again from every assigned partition except those waiting (`wait_at`)."""
        self._paused = False
        waiting = {TopicPartition(*tp) for tp in self._waiting}
        self._consumer.resume(*(self._consumer.assignment() - waiting))

    def wait_at(self, tp: TopicPartitionId, offset: int) -> None:
        """Stop reading `tp` at `offset` until `release(tp)`: the message there (and what was
        fetched after it) is read again then. Backpressure's `resume()` leaves it paused; a
        rebalance that takes the partition away ends the wait."""
        partition = TopicPartition(*tp)
        if partition not in self._consumer.assignment():
            return  # revoked meanwhile: the next owner reads from the committed offset
        self._consumer.seek(partition, offset)
        self._consumer.pause(partition)
        self._waiting.add(tp)

    def hold_back(self, partitions: set[TopicPartitionId]) -> None:
        """Stop reading these assigned partitions until `release` (their state is not restored
        yet); where they resume is the caller's seek."""
        assigned = self._consumer.assignment()
        held = [TopicPartition(*tp) for tp in partitions if TopicPartition(*tp) in assigned]
        if held:
            self._consumer.pause(*held)
            self._waiting.update((tp.topic, tp.partition) for tp in held)

    def partition_count(self) -> int:
        """The most partitions any input topic has (from the consumer's metadata)."""
        counts = [len(self._consumer.partitions_for_topic(t) or ()) for t in self._settings.topics]
        return max(counts, default=0)

    def release(self, tp: TopicPartitionId) -> None:
        """Read `tp` again from where `wait_at` stopped it (unless paused for backpressure)."""
        if tp not in self._waiting:
            return
        self._waiting.discard(tp)
        partition = TopicPartition(*tp)
        if not self._paused and partition in self._consumer.assignment():
            self._consumer.resume(partition)

    @property
    def waiting(self) -> frozenset[TopicPartitionId]:
        return frozenset(self._waiting)

    @property
    def paused(self) -> bool:
        return self._paused

    def commit(self, offsets: Mapping[TopicPartitionId, int]) -> bool:
        """Commit `offsets` (the next offset to read) synchronously.

        Partitions no longer assigned are left out. A failed commit (rebalance in progress,
        membership lost, broker unreachable, no answer within `call_timeout_s`) is logged and
        returns False: the partition's next owner resumes from the last committed offset,
        which is at-least-once, and the next commit tries again.
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
            self._consumer.commit(request, timeout_ms=self._timeout_ms)
        except KafkaTimeoutError as exc:
            self.reachability.failed("commit", exc)
            return False
        except KafkaError as exc:
            log.warning("offset commit failed, offsets stay at the last commit: %r", exc)
            return False
        self.reachability.succeeded()
        return True

    def committed(self, tp: TopicPartitionId) -> int | None:
        """The group's committed offset for `tp`, or None if nothing was committed.

        Raises KafkaError when the broker does not answer within `call_timeout_s`: "unknown"
        is not "nothing committed". The run loop uses `rewind_to_committed`, which never raises.
        """
        offset = self._consumer.committed(TopicPartition(*tp), timeout_ms=self._timeout_ms)
        return int(offset) if offset is not None else None

    def rewind_to_committed(
        self,
        partitions: set[TopicPartitionId],
        fallback_ms: int | None = None,
        not_after: Mapping[TopicPartitionId, int] | None = None,
    ) -> None:
        """Seek each partition to its committed offset, or to `not_after[tp]` if that is
        earlier (the first reading restored windows need); one never committed goes to the
        first record at or after `fallback_ms` (if given). A partition whose committed offset
        cannot be read keeps the consumer's own position (its committed offset or the reset
        policy): a guess here could skip records."""
        floor = not_after or {}
        for tp in sorted(partitions):
            try:
                committed = self.committed(tp)
                if committed is not None:
                    self.seek(tp, min(committed, floor.get(tp, committed)))
                elif fallback_ms is not None:
                    self.seek_to_time(tp, fallback_ms)
            except KafkaError as exc:
                self.reachability.failed(f"committed offset of {tp[0]}[{tp[1]}]", exc)
                continue
            self.reachability.succeeded()

    def position(self, tp: TopicPartitionId) -> int:
        """The offset of the next record poll() returns for `tp`."""
        return int(self._consumer.position(TopicPartition(*tp)))

    def seek(self, tp: TopicPartitionId, offset: int) -> None:
        self._consumer.seek(TopicPartition(*tp), max(0, offset))

    def seek_to_time(self, tp: TopicPartitionId, timestamp_ms: int) -> None:
        """Seek to the first record at or after `timestamp_ms` (the end if there is none)."""
        partition = TopicPartition(*tp)
        found = self._consumer.offsets_for_times(
            {partition: timestamp_ms}, timeout_ms=self._timeout_ms
        )
        hit = found.get(partition)
        if hit is not None:
            self._consumer.seek(partition, hit.offset)
        else:
            self._consumer.seek_to_end(partition)

    def lag(self) -> dict[TopicPartitionId, int]:
        """Records between the consumer's position and the end of each assigned partition;
        {} when the broker does not answer within `call_timeout_s` (never raises for it)."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        try:
            ends = self._consumer.end_offsets(assigned, timeout_ms=self._timeout_ms)
        except KafkaError as exc:
            self.reachability.failed("lag", exc)
            return {}
        self.reachability.succeeded()
        lag = {}
        for tp in assigned:
            try:
                position = self._consumer.position(tp, timeout_ms=min(1000, self._timeout_ms))
            except KafkaError:
                continue
            if position is not None and tp in ends:
                lag[(tp.topic, tp.partition)] = max(0, ends[tp] - position)
        return lag

    def partition_offsets(self) -> dict[TopicPartitionId, PartitionOffsets] | None:
        """End, position and the group's committed offset of each assigned partition, read from
        the broker; None when it does not answer within `call_timeout_s` (never raises for it),
        so the caller keeps the last figures it has."""
        assigned = sorted(self._consumer.assignment())
        if not assigned:
            return {}
        call_ms = min(1000, self._timeout_ms)
        try:
            ends = self._consumer.end_offsets(assigned, timeout_ms=self._timeout_ms)
            report = {}
            for tp in assigned:
                position = self._consumer.position(tp, timeout_ms=call_ms)
                committed = self._consumer.committed(tp, timeout_ms=self._timeout_ms)
                if position is not None and tp in ends:
                    report[(tp.topic, tp.partition)] = PartitionOffsets(
                        int(ends[tp]), int(position), None if committed is None else int(committed)
                    )
        except KafkaError as exc:
            self.reachability.failed("partition offsets", exc)
            return None
        self.reachability.succeeded()
        return report

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class Source(Protocol):
    """What the run loop needs of a consumer-group member (KafkaSource, ConfluentSource)."""

    reachability: Reachability

    @property
    def unreachable_since(self) -> float | None: ...

    @property
    def paused(self) -> bool: ...

    @property
    def waiting(self) -> frozenset[TopicPartitionId]: ...

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]: ...

    def assignment(self) -> set[TopicPartitionId]: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def wait_at(self, tp: TopicPartitionId, offset: int) -> None: ...

    def hold_back(self, partitions: set[TopicPartitionId]) -> None: ...

    def release(self, tp: TopicPartitionId) -> None: ...

    def partition_count(self) -> int: ...

    def commit(self, offsets: Mapping[TopicPartitionId, int]) -> bool: ...

    def committed(self, tp: TopicPartitionId) -> int | None: ...

    def rewind_to_committed(
        self,
        partitions: set[TopicPartitionId],
        fallback_ms: int | None = None,
        not_after: Mapping[TopicPartitionId, int] | None = None,
    ) -> None: ...

    def position(self, tp: TopicPartitionId) -> int: ...

    def seek(self, tp: TopicPartitionId, offset: int) -> None: ...

    def seek_to_time(self, tp: TopicPartitionId, timestamp_ms: int) -> None: ...

    def lag(self) -> dict[TopicPartitionId, int]: ...

    def partition_offsets(self) -> dict[TopicPartitionId, PartitionOffsets] | None: ...

    def close(self) -> None: ...


def open_source(
    settings: KafkaSettings,
    listener: PartitionListener,
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> Source:
    """The input consumer of `kafka.client`, joined to the group (retrying an unreachable
    broker for `kafka.connect_timeout_s`)."""
    if settings.client == "confluent":
        from daemon.confluent_source import ConfluentSource  # librdkafka only when chosen

        return ConfluentSource(settings, listener, should_stop=should_stop)
    return KafkaSource(
        settings,
        listener,
        should_stop=should_stop,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
    )


class PartitionOffsets(NamedTuple):
    end: int  # the log-end offset (the next offset the broker will write)
    position: int  # the next offset this consumer reads
    committed: int | None  # the group's committed offset (None: never committed)


class PartitionLag(NamedTuple):
    consumed: int  # end - position: what is not read yet
    committed: int  # end - committed: what a restart would read again or for the first time
    held: int  # position - committable: read, but held back by windows or unacknowledged points


def lag_figures(
    offsets: Mapping[TopicPartitionId, PartitionOffsets],
    committable: Mapping[TopicPartitionId, int],
) -> dict[TopicPartitionId, PartitionLag]:
    """Per partition, the three lags. `committable` is what the next commit may send (absent:
    nothing beyond the committed offset). The committable offset is never below the committed
    one (commits are monotone), so `committed == consumed + held` once a commit has caught up,
    and a partition that was never committed counts its whole log as committed lag."""
    figures = {}
    for tp, o in offsets.items():
        committed = o.committed if o.committed is not None else 0
        releasable = min(o.position, max(committable.get(tp, committed), committed))
        figures[tp] = PartitionLag(
            consumed=max(0, o.end - o.position),
            committed=max(0, o.end - committed),
            held=max(0, o.position - releasable),
        )
    return figures
