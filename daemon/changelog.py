"""Each asset's durable state in a compacted Kafka topic keyed by asset: the changelog.

One topic per consumer group (`kafka.changelog_topic`), with at least as many partitions as
the input topics: an asset's state is written to the partition number its readings come from,
so the member assigned input partition p restores its assets from changelog partition p. The
value is the JSON of `StreamCore.asset_state` (baseline and warm-up, alert tracker, window
progress); compaction keeps the newest per asset. How writes are ordered against offset
commits is in docs/architecture.md ("State in Kafka") and in `Daemon._commit`.

Kafka Streams' `StoreChangelogReader` and quix-streams' `RecoveryManager` work the same way:
state changes are produced to the changelog and acknowledged before the offsets that depend on
them are committed; on assignment the changelog is read from its beginning up to the end
offset seen then, before the partition is processed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client import Gauge

from daemon.settings import KafkaSettings
from daemon.source import Reachability, connect, kafka_client_options

log = logging.getLogger(__name__)

STATE_FORMAT = "seqae-asset-state/1"
MAX_STATE_BYTES = 8 << 20  # one asset's state; a warm-up of large windows is the big part
TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "max.message.bytes": str(MAX_STATE_BYTES),
    # compaction only cleans closed segments: roll hourly so a restore reads little history
    "segment.ms": str(3_600_000),
}


# How far the changelog is behind the assets' state, as /metrics shows it (next to health.py's
# seqae_changelog_bytes/records, which count what it acknowledged).
lag_states = Gauge(
    "seqae_changelog_lag_states",
    "Changelog lag: asset states taken by a checkpoint and not yet acknowledged by the "
    "changelog (a checkpoint's states are written once InfluxDB has acknowledged its points, "
    "before its offsets are committed); grows while InfluxDB or the changelog cannot be written",
)
lag_seconds = Gauge(
    "seqae_changelog_lag_seconds",
    "Changelog lag in time: how long the oldest asset state not yet acknowledged by the "
    "changelog has waited since a checkpoint took it (0: none waits)",
)
restore_lag_records = Gauge(
    "seqae_changelog_restore_lag_records",
    "Changelog records the restore in progress has still to read (its consumer's lag to the "
    "end offsets seen when it began; 0 when no restore runs)",
)


class ChangelogLag:
    """Keeps seqae_changelog_lag_states/_seconds: states a checkpoint took, until the
    changelog acknowledges them; a failed write keeps its age (the states are taken again)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None
        lag_states.set(0)
        lag_seconds.set_function(self.seconds)

    def seconds(self) -> float:
        return 0.0 if self._since is None else self._clock() - self._since

    def taken(self, states: int) -> None:
        lag_states.set(states)
        if states == 0:
            self._since = None
        elif self._since is None:
            self._since = self._clock()

    def waiting(self, states: int) -> None:
        lag_states.set(states)

    def failed(self, states: int) -> None:
        lag_states.set(states)

    def acknowledged(self) -> None:
        lag_states.set(0)
        self._since = None


class ChangelogError(RuntimeError):
    """The changelog could not be written, read or created; the message says which and why."""


def encode_state(state: dict[str, Any]) -> bytes:
    return json.dumps({"format": STATE_FORMAT, **state}, separators=(",", ":")).encode()


def decode_state(key: bytes, value: bytes) -> dict[str, Any]:
    """One record's state; ValueError naming the asset when it is not ours or malformed."""
    asset = key.decode("utf-8", "replace")
    try:
        state = json.loads(value)
    except ValueError as exc:
        raise ValueError(f"changelog state of asset {asset!r} is not JSON: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"changelog state of asset {asset!r}: format {found!r}, expected {STATE_FORMAT!r}"
        )
    if state.get("asset") != asset:
        raise ValueError(f"changelog state keyed {asset!r} names asset {state.get('asset')!r}")
    return state


class Changelog:
    """Writes asset states (acknowledged by the broker before `write` returns) and reads a set
    of partitions back. Construction retries an unreachable broker like KafkaSource."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        reachability: Reachability | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.topic = settings.changelog
        self._settings = settings
        self._timeout_s = settings.call_timeout_s
        self.reachability = reachability or Reachability()
        base = kafka_client_options(settings)
        timeout_s, stop = settings.connect_timeout_s, should_stop
        self._producer = connect(
            KafkaProducer,
            base
            | {
                "acks": "all",
                "linger_ms": 5,
                "max_request_size": MAX_STATE_BYTES + 4096,
                "max_block_ms": int(settings.call_timeout_s * 1000),
            },
            timeout_s=timeout_s,
            what="changelog producer",
            reachability=self.reachability,
            should_stop=stop,
        )
        self._make_reader = lambda: connect(
            KafkaConsumer,
            base
            | {
                "group_id": None,
                "enable_auto_commit": False,
                "max_partition_fetch_bytes": MAX_STATE_BYTES + 4096,
            },
            timeout_s=timeout_s,
            what="changelog reader",
            reachability=self.reachability,
            should_stop=stop,
        )
        self._reader = self._make_reader()
        self._partitions: int | None = None
        self.records_written = 0
        self.bytes_written = 0

    # -- the topic ---------------------------------------------------------------------------

    def ensure(self, partitions: int) -> None:
        """The topic exists with at least `partitions` partitions: created compacted if missing;
        one with fewer partitions is refused (ChangelogError; asked again on the next call, so
        partitions an operator adds are seen)."""
        if self._partitions is not None and self._partitions >= partitions:
            return
        try:
            count = self._count_on_broker()
            if count == 0:
                self._create(partitions)
                count = partitions
            known = self._reader.partitions_for_topic(self.topic)
            if count > len(known or ()):  # the reader's metadata is older: start it afresh
                self._reader.close()
                self._reader = self._make_reader()
        except KafkaError as exc:
            raise ChangelogError(f"kafka.changelog_topic {self.topic!r}: {exc!r}") from exc
        if count < partitions:
            raise ChangelogError(
                f"kafka.changelog_topic {self.topic!r} has {count} partitions, the input "
                f"topics {partitions}: an asset's state must live in its readings' partition"
            )
        self._partitions = count

    def _count_on_broker(self) -> int:
        """The topic's partitions as the broker says now (0: no such topic)."""
        admin = KafkaAdminClient(**kafka_client_options(self._settings))
        try:
            (topic,) = admin.describe_topics([self.topic])
        finally:
            admin.close()
        return len(topic["partitions"]) if topic.get("error_code", 0) == 0 else 0

    def _create(self, partitions: int) -> None:
        admin = KafkaAdminClient(**kafka_client_options(self._settings))
        try:
            topic = NewTopic(
                self.topic,
                num_partitions=partitions,
                replication_factor=self._settings.changelog_replication_factor,
                topic_configs=TOPIC_CONFIG,
            )
            admin.create_topics([topic], timeout_ms=int(self._timeout_s * 1000))
            log.info(
                "created changelog topic %s (%d partitions, compacted)", self.topic, partitions
            )
        except TopicAlreadyExistsError:
            pass  # another member of the group created it meanwhile
        finally:
            admin.close()
        deadline = time.monotonic() + self._timeout_s
        while not self._reader.partitions_for_topic(self.topic):
            if time.monotonic() > deadline:
                raise ChangelogError(f"changelog topic {self.topic!r}: created but not visible")
            self._reader.poll(timeout_ms=50)  # refreshes metadata
            time.sleep(0.05)

    # -- writes ------------------------------------------------------------------------------

    def write(self, states: dict[str, dict[str, Any]]) -> int:
        """Send every asset's state to its readings' partition and wait until the broker has
        acknowledged all of them (acks=all); returns the bytes written. ChangelogError if any
        is not acknowledged within `kafka.call_timeout_s`: the caller must not commit then."""
        futures = []
        written = 0
        try:
            for asset, state in states.items():
                partition = state["partition"]
                if partition is None:
                    continue
                value = encode_state(state)
                futures.append(
                    self._producer.send(
                        self.topic, key=asset.encode(), value=value, partition=int(partition[1])
                    )
                )
                written += len(value)
            self._producer.flush(timeout=self._timeout_s)
            for future in futures:
                future.get(timeout=0)
        except KafkaError as exc:
            self.reachability.failed("changelog write", exc, report=False)
            raise ChangelogError(f"changelog {self.topic!r} not written: {exc!r}") from exc
        if futures:
            self.reachability.succeeded()
        self.records_written += len(futures)
        self.bytes_written += written
        return written

    # -- reads -------------------------------------------------------------------------------

    def read(self, partitions: Iterable[int]) -> dict[str, dict[str, Any]]:
        """The newest state of every asset in these changelog partitions, read from their
        beginning up to the end offsets seen now. A malformed record is logged and skipped
        (that asset starts afresh); ChangelogError if the broker does not answer."""
        tps = [TopicPartition(self.topic, p) for p in sorted(set(partitions))]
        if not tps:
            return {}
        latest: dict[bytes, bytes | None] = {}
        try:
            self._reader.assign(tps)
            ends = self._reader.end_offsets(tps, timeout_ms=int(self._timeout_s * 1000))
            self._reader.seek_to_beginning(*tps)
            left = {tp for tp in tps if ends.get(tp, 0) > 0}
            deadline = time.monotonic() + max(30.0, 6 * self._timeout_s)
            restore_lag_records.set(sum(ends.get(tp, 0) for tp in left))
            while left:
                if time.monotonic() > deadline:
                    raise ChangelogError(
                        f"changelog {self.topic!r}: partitions {sorted(t.partition for t in left)}"
                        " not read to their end in time"
                    )
                for tp, records in self._reader.poll(timeout_ms=200).items():
                    for r in records:
                        if r.offset < ends[tp] and r.key is not None:
                            latest[r.key] = r.value
                behind = 0
                for tp in list(left):
                    position = self._reader.position(tp)
                    if position >= ends[tp]:
                        left.discard(tp)
                    else:
                        behind += ends[tp] - position
                restore_lag_records.set(behind)
        except KafkaError as exc:
            self.reachability.failed("changelog read", exc, report=False)
            raise ChangelogError(f"changelog {self.topic!r} not read: {exc!r}") from exc
        finally:
            restore_lag_records.set(0)
            self._reader.assign([])
        self.reachability.succeeded()
        states = {}
        for key, value in latest.items():
            if value is None:
                continue  # a tombstone: the asset's state was removed
            try:
                state = decode_state(key, value)
            except ValueError as exc:
                log.error("%s; that asset starts afresh", exc)
                continue
            states[state["asset"]] = state
        return states

    def close(self) -> None:
        for client in (self._producer, self._reader):
            try:
                client.close()
            except Exception:
                log.debug("closing a changelog client", exc_info=True)
