"""Each asset's durable state in a compacted Kafka topic keyed by asset: the changelog.

One topic per consumer group (`kafka.changelog_topic`), with at least as many partitions as
the input topics: an asset's state is written to the partition number its readings come from,
so the member assigned input partition p restores its assets from changelog partition p. The
value is the JSON of `StreamCore.asset_state` (baseline and warm-up, alert tracker, window
progress); compaction keeps the newest per asset. How writes are ordered against offset
commits is in docs/architecture.md ("State in Kafka") and in `Daemon._commit`.

What is big and changes rarely is not in the asset's record but in immutable part records of
the same partition, keyed `<asset>\\x00<blake2b of the part's bytes>` (`PartWriter`): each
fitted or moved baseline, and the warm-up windows as append-only segments, each naming the
segment before it. The asset's record (written whenever a window completes) names its
baselines' parts and its newest segment, so a checkpoint writes a record of constant size
and only the windows added since the last one. Parts are acknowledged before the records
that name them are sent; a part no longer named is tombstoned after the record that stopped
naming it is acknowledged (and a part a restore finds named by nothing, left by a crash, is
tombstoned by the next write).

Kafka Streams' `StoreChangelogReader` and quix-streams' `RecoveryManager` work the same way:
state changes are produced to the changelog and acknowledged before the offsets that depend on
them are committed; on assignment the changelog is read from its beginning up to the end
offset seen then, before the partition is processed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client import Gauge

from daemon.baselines import Calibration, join_arrays_json
from daemon.confluent_producer import AcknowledgedProducer, DeliveryFailed
from daemon.settings import KafkaSettings
from daemon.source import Reachability, connect, kafka_client_options
from daemon.windows import TopicPartitionId, partition_id
from seqae.calibrate import Baseline

log = logging.getLogger(__name__)

STATE_FORMAT = "seqae-asset-state/2"  # /2: big arrays in part records the state names
READABLE_FORMATS = (STATE_FORMAT, "seqae-asset-state/1")  # /1: every array inline
PART_FORMAT = "seqae-asset-part/1"
PART_SEPARATOR = b"\x00"  # asset + separator + digest: a part's key, never an asset's
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


def _inline(value: Any) -> Any:
    if isinstance(value, Calibration):
        return value.to_json()
    raise TypeError(f"not JSON: {type(value).__name__}")


def encode_state(state: dict[str, Any]) -> bytes:
    """A record with everything inline (a `Calibration` as its `to_json`)."""
    return json.dumps(
        {"format": STATE_FORMAT, **state}, separators=(",", ":"), default=_inline
    ).encode()


def decode_state(key: bytes, value: bytes) -> dict[str, Any]:
    """One record's state; ValueError naming the asset when it is not ours or malformed."""
    asset = key.decode("utf-8", "replace")
    try:
        state = json.loads(value)
    except ValueError as exc:
        raise ValueError(f"changelog state of asset {asset!r} is not JSON: {exc}") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"changelog state of asset {asset!r}: format {found!r}, expected {STATE_FORMAT!r}"
        )
    if state.get("asset") != asset:
        raise ValueError(f"changelog state keyed {asset!r} names asset {state.get('asset')!r}")
    return state


# -- parts: the big arrays of a state, each written once ---------------------------------------


def part_key(asset: str, digest: str) -> bytes:
    return asset.encode() + PART_SEPARATOR + digest.encode()


def _part(asset: str, kind: str, body: dict[str, Any]) -> tuple[str, bytes]:
    value = json.dumps(
        {"format": PART_FORMAT, "asset": asset, "kind": kind, **body}, separators=(",", ":")
    ).encode()
    return hashlib.blake2b(value, digest_size=16).hexdigest(), value


@dataclass(frozen=True, slots=True)
class Message:
    partition: int
    key: bytes
    value: bytes | None  # None: a tombstone


@dataclass(slots=True)
class _ProfileParts:
    """The parts the newest acknowledged record of an asset names for one profile."""

    version: str
    baseline: tuple[Baseline | None, str] | None = None  # (the object written, its digest)
    moved: tuple[Baseline | None, str] | None = None
    segments: tuple[str, ...] = ()  # warm-up segments' digests, oldest first
    windows: tuple[np.ndarray, ...] | None = None  # what they hold; None: not known (restored)

    def digests(self) -> set[str]:
        named = {d for _, d in filter(None, (self.baseline, self.moved))}
        return named | set(self.segments)


@dataclass(slots=True)
class _Named:
    partition: TopicPartitionId
    profiles: dict[str, _ProfileParts] = field(default_factory=dict)

    def digests(self) -> set[str]:
        return set().union(*(p.digests() for p in self.profiles.values()))


@dataclass
class Batch:
    """One checkpoint's messages, in the order they must be acknowledged."""

    parts: list[Message] = field(default_factory=list)  # new parts (and due tombstones)
    records: list[Message] = field(default_factory=list)  # the asset records naming them
    named: dict[str, _Named] = field(default_factory=dict)  # what each record names

    @property
    def part_bytes(self) -> int:
        return sum(len(m.value or b"") for m in self.parts)

    @property
    def record_bytes(self) -> int:
        return sum(len(m.value or b"") for m in self.records)


class PartWriter:
    """Splits states into asset records and the parts they name, knowing which parts the newest
    acknowledged record of each asset names: a checkpoint writes only what is new. No I/O: the
    caller sends `encode`'s batch (parts acknowledged before records) and then calls
    `acknowledged`, whose tombstones may be sent any time after."""

    def __init__(self) -> None:
        self._named: dict[str, _Named] = {}
        self._orphans: dict[bytes, int] = {}  # part key -> partition: found named by nothing

    def encode(self, states: dict[str, dict[str, Any]]) -> Batch:
        batch = Batch()
        for asset, state in states.items():
            partition = state["partition"]
            if partition is None:
                continue
            if "\x00" in asset:
                log.error("asset %r: a NUL in its name cannot be keyed in the changelog", asset)
                continue
            named = _Named(partition_id(str(partition[0]), int(partition[1])))
            record = dict(state)
            if "baselines" in state:
                record["baselines"] = [
                    self._encode_profile(asset, item, named, batch)
                    if isinstance(item, Calibration)
                    else item  # already JSON: inline
                    for item in state["baselines"]
                ]
            value = json.dumps({"format": STATE_FORMAT, **record}, separators=(",", ":"))
            batch.records.append(Message(named.partition[1], asset.encode(), value.encode()))
            batch.named[asset] = named
        for key, partition in list(self._orphans.items()):
            owner, digest = (b.decode() for b in key.split(PART_SEPARATOR, 1))
            naming = batch.named.get(owner) or self._named.get(owner)
            if naming is not None and digest in naming.digests():
                del self._orphans[key]  # named again (the same bytes): keep it
            else:
                batch.parts.append(Message(partition, key, None))
        return batch

    def _encode_profile(
        self, asset: str, cal: Calibration, named: _Named, batch: Batch
    ) -> dict[str, Any]:
        before = self._named.get(asset)
        if before is not None and before.partition != named.partition:
            before = None  # the asset's readings moved: its parts are written where it is now
        old = before.profiles.get(cal.profile) if before is not None else None
        if old is not None and old.version != cal.version:
            old = None
        now = _ProfileParts(cal.version)
        known = before.digests() if before is not None else set()
        partition = named.partition[1]

        def baseline_part(
            baseline: Baseline | None, written: tuple[Baseline | None, str] | None
        ) -> tuple[Baseline | None, str] | None:
            if baseline is None:
                return None
            if written is not None and written[0] is baseline:
                return written  # encoded when it was written: baselines are replaced, not changed
            digest, value = _part(asset, "baseline", {"baseline": cal.baseline_json(baseline)})
            if digest not in known:
                batch.parts.append(Message(partition, part_key(asset, digest), value))
            return baseline, digest

        now.baseline = baseline_part(cal.baseline, old.baseline if old else None)
        now.moved = baseline_part(cal.moved, old.moved if old else None)
        start = 0
        segments: tuple[str, ...] = ()
        if old is not None and old.windows is not None and _extends(cal.warmup, old.windows):
            start, segments = len(old.windows), old.segments
        if len(cal.warmup) > start:  # the windows added since: one segment on the last
            body: dict[str, Any] = {"previous": segments[-1] if segments else None}
            body["windows"] = cal.warmup_json(start)
            errors = cal.warmup_errors_json(start)
            if errors is not None:  # absent rather than null: such a segment's digest is as before
                body["errors"] = errors
            digest, value = _part(asset, "warmup", body)
            if digest not in known:
                batch.parts.append(Message(partition, part_key(asset, digest), value))
            segments = (*segments, digest)
        now.segments, now.windows = segments, cal.warmup
        named.profiles[cal.profile] = now

        def ref(written: tuple[Baseline | None, str] | None) -> dict[str, str] | None:
            return None if written is None else {"part": written[1]}

        return {
            "profile": cal.profile,
            "version": cal.version,
            "baseline": ref(now.baseline),
            "moved": ref(now.moved),
            "warmup": {"part": segments[-1], "windows": len(cal.warmup)} if segments else None,
            "shift_run": cal.shift_run_json(),
            "shifted": cal.shifted,
        }

    def acknowledged(self, batch: Batch) -> list[Message]:
        """The batch's records are acknowledged: they are now what each asset names. Returns
        the tombstones of the parts the records before them named and these do not."""
        tombstones = []
        for message in batch.parts:
            if message.value is None:
                self._orphans.pop(message.key, None)
        for asset, named in batch.named.items():
            before = self._named.get(asset)
            self._named[asset] = named
            if before is None or before.partition != named.partition:
                continue  # what it named stays named by the record left in that partition
            for digest in sorted(before.digests() - named.digests()):
                tombstones.append(Message(before.partition[1], part_key(asset, digest), None))
        return tombstones

    def learn(self, asset: str, named: _Named) -> None:
        """What a restored record names (read from the changelog)."""
        self._named[asset] = named

    def orphaned(self, key: bytes, partition: int) -> None:
        """A part a read found named by no record: tombstoned by the next write."""
        self._orphans[key] = partition

    def forget(self, partitions: set[TopicPartitionId]) -> None:
        """These partitions' assets left: their next owner writes their parts."""
        for asset in [a for a, n in self._named.items() if n.partition in partitions]:
            del self._named[asset]
        numbers = {p for _, p in partitions}
        self._orphans = {k: p for k, p in self._orphans.items() if p not in numbers}


def _extends(windows: tuple[np.ndarray, ...], written: tuple[np.ndarray, ...]) -> bool:
    """Whether `windows` is `written` with windows appended (the same arrays, not copies)."""
    return len(windows) >= len(written) and all(
        a is b for a, b in zip(windows, written, strict=False)
    )


def assemble(
    asset: str, state: dict[str, Any], parts: dict[str, bytes], partition: int
) -> tuple[dict[str, Any], _Named]:
    """A record's whole state (`StreamCore.asset_state`'s form) from it and its asset's parts
    (digest -> value), and what it names; ValueError naming the asset and the part when one is
    missing or malformed."""
    tp = state.get("partition")
    named = _Named(partition_id(str(tp[0]), int(tp[1])) if tp else partition_id("", partition))
    if "baselines" not in state:
        return state, named
    resolved = []
    try:
        for item in state["baselines"]:
            profile = _ProfileParts(sys.intern(str(item["version"])))
            whole = dict(item)
            for field_name in ("baseline", "moved"):
                ref = _ref(item[field_name])
                if ref is not None:
                    body = _read_part(asset, parts, ref, "baseline")
                    whole[field_name] = body["baseline"]
                    setattr(profile, field_name, (None, ref))
            head = _ref(item["warmup"])
            if head is not None:
                segments: list[str] = []
                blocks: list[dict[str, Any]] = []
                error_blocks: list[dict[str, Any] | None] = []
                digest: str | None = head
                while digest is not None:
                    if len(segments) > len(parts):
                        raise ValueError(f"warm-up segments from part {head} form a loop")
                    body = _read_part(asset, parts, digest, "warmup")
                    segments.append(digest)
                    blocks.append(body["windows"])
                    error_blocks.append(body.get("errors"))
                    digest = body["previous"]
                whole["warmup"] = join_arrays_json(blocks[::-1])
                known = [block for block in error_blocks if block is not None]
                if len(known) == len(error_blocks):  # every segment has its windows' features
                    whole["warmup_errors"] = join_arrays_json(known[::-1])
                count = whole["warmup"]["shape"][0] if whole["warmup"] else 0
                if count != int(item["warmup"]["windows"]):
                    raise ValueError(
                        f"warm-up segments hold {count} windows, the record names "
                        f"{item['warmup']['windows']}"
                    )
                profile.segments = tuple(segments[::-1])
            resolved.append(whole)
            named.profiles[sys.intern(str(item["profile"]))] = profile
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"changelog state of asset {asset!r}: {exc}") from None
    return state | {"baselines": resolved}, named


def assemble_states(
    latest: dict[bytes, tuple[int, bytes | None]], writer: PartWriter
) -> dict[str, dict[str, Any]]:
    """Asset states from the newest (partition, value) per key read from a changelog: each
    asset's record with its parts (a record naming a missing or malformed part is logged and
    skipped: that asset starts afresh). `writer` learns what each record names, and the parts
    no record names (left by a crash between a checkpoint's parts and its records, or whose
    tombstone was lost), which its next write tombstones."""
    records: dict[bytes, tuple[int, bytes]] = {}
    parts: dict[bytes, dict[str, tuple[int, bytes]]] = {}
    for key, (partition, value) in latest.items():
        if value is None:
            continue  # a tombstone: the asset's state or the part was removed
        if PART_SEPARATOR in key:
            asset, digest = key.split(PART_SEPARATOR, 1)
            found = parts.setdefault(asset, {})
            found[digest.decode("ascii", "replace")] = (partition, value)
        else:
            records[key] = (partition, value)
    states = {}
    named_now: dict[bytes, set[str]] = {}
    for key, (partition, value) in records.items():
        own = {digest: part for digest, (_, part) in parts.get(key, {}).items()}
        try:
            state = decode_state(key, value)
            state, named = assemble(state["asset"], state, own, partition)
        except ValueError as exc:
            log.error("%s; that asset starts afresh", exc)
            continue
        states[state["asset"]] = state
        writer.learn(state["asset"], named)
        named_now[key] = named.digests()
    for owner, found in parts.items():
        for name, (partition, _) in found.items():
            if name not in named_now.get(owner, set()):
                writer.orphaned(owner + PART_SEPARATOR + name.encode(), partition)
    return states


def _ref(value: Any) -> str | None:
    """The digest a record's field names, or None when it is inline (or null)."""
    if isinstance(value, dict) and set(value) <= {"part", "windows"} and "part" in value:
        return str(value["part"])
    return None


def _read_part(asset: str, parts: dict[str, bytes], digest: str, kind: str) -> dict[str, Any]:
    value = parts.get(digest)
    if value is None:
        raise ValueError(f"it names {kind} part {digest}, which is not in the changelog")
    if hashlib.blake2b(value, digest_size=16).hexdigest() != digest:
        raise ValueError(f"{kind} part {digest}: its bytes do not hash to its key")
    body = json.loads(value)
    if body.get("format") != PART_FORMAT or body.get("asset") != asset or body["kind"] != kind:
        raise ValueError(f"part {digest} is not a {kind} part of this asset")
    return body


class _StateProducer(Protocol):
    def send(
        self, topic: str, messages: Sequence[tuple[bytes, bytes | None, int]], timeout_s: float
    ) -> None: ...

    def send_acknowledged(
        self, topic: str, messages: Sequence[tuple[bytes, bytes | None, int]], timeout_s: float
    ) -> None: ...

    def close(self) -> None: ...


class _KafkaPythonProducer:
    """kafka-python's producer behind the interface of `AcknowledgedProducer`."""

    def __init__(self, producer: KafkaProducer) -> None:
        self._producer = producer

    def send(
        self, topic: str, messages: Sequence[tuple[bytes, bytes | None, int]], timeout_s: float
    ) -> None:
        self._sent(topic, messages)

    def _sent(self, topic: str, messages: Sequence[tuple[bytes, bytes | None, int]]) -> list[Any]:
        return [
            self._producer.send(topic, key=key, value=value, partition=partition)
            for key, value, partition in messages
        ]

    def send_acknowledged(
        self, topic: str, messages: Sequence[tuple[bytes, bytes | None, int]], timeout_s: float
    ) -> None:
        futures = self._sent(topic, messages)
        self._producer.flush(timeout=timeout_s)
        for future in futures:
            future.get(timeout=0)

    def close(self) -> None:
        self._producer.close()


class Changelog:
    """Writes asset states (acknowledged by the broker before `write` returns, or before the
    future of `start_write` is done) and reads a set of partitions back. Construction retries
    an unreachable broker like KafkaSource.

    A write started by `start_write` runs on the changelog's own thread, so the run loop reads
    on while the states are encoded and acknowledged. While it runs the writer's state is that
    thread's: every other method waits for it first, so no two calls ever overlap."""

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
        self._producer: _StateProducer
        if settings.client == "confluent":
            self._producer = AcknowledgedProducer(
                settings, max_message_bytes=MAX_STATE_BYTES + 4096
            )
        else:
            self._producer = _KafkaPythonProducer(
                connect(
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
        self._parts = PartWriter()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="changelog")
        self._in_flight: Future[int] | None = None
        self.records_written = 0  # asset records
        self.parts_written = 0
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

    def start_write(self, states: dict[str, dict[str, Any]]) -> Future[int]:
        """`write` on the changelog's thread: the future gives its bytes or its ChangelogError.
        The states must not change meanwhile (`StreamCore.changed_states` takes fresh ones)."""
        self._wait_for_write()
        self._in_flight = self._writer.submit(self._write, states)
        return self._in_flight

    def _wait_for_write(self) -> None:
        """The write in flight is done (its caller reads its outcome from its future)."""
        if self._in_flight is not None:
            self._in_flight.exception()
            self._in_flight = None

    def write(self, states: dict[str, dict[str, Any]]) -> int:
        """Send every asset's state to its readings' partition and wait until the broker has
        acknowledged all of them (acks=all); returns the bytes written. In this order: the
        parts the states name and no acknowledged record does (flushed, every one checked),
        then the asset records (flushed, checked), then the tombstones of parts no record
        names any more (not waited for: the next write's flush or `close` sends them; one
        lost is found by the next restore). ChangelogError if any part or record is not
        acknowledged within `kafka.call_timeout_s`: the caller must not commit then."""
        self._wait_for_write()
        return self._write(states)

    def _write(self, states: dict[str, dict[str, Any]]) -> int:
        batch = self._parts.encode(states)
        try:
            for messages in (batch.parts, batch.records):
                if messages:
                    self._producer.send_acknowledged(
                        self.topic,
                        [(m.key, m.value, m.partition) for m in messages],
                        self._timeout_s,
                    )
        except (KafkaError, DeliveryFailed) as exc:
            self.reachability.failed("changelog write", exc, report=False)
            raise ChangelogError(f"changelog {self.topic!r} not written: {exc!r}") from exc
        if batch.records:
            self.reachability.succeeded()
        tombstones = self._parts.acknowledged(batch)
        try:
            self._producer.send(
                self.topic, [(m.key, None, m.partition) for m in tombstones], self._timeout_s
            )
        except (KafkaError, DeliveryFailed) as exc:  # the parts stay until a restore finds them
            log.warning("changelog %r: tombstones of unnamed parts not sent: %r", self.topic, exc)
        written = batch.part_bytes + batch.record_bytes
        self.records_written += len(batch.records)
        self.parts_written += sum(1 for m in batch.parts if m.value is not None)
        self.bytes_written += written
        return written

    def forget(self, partitions: set[TopicPartitionId]) -> None:
        """These input partitions' assets left this member: what their records name is their
        next owner's to know."""
        self._parts.forget(partitions)

    # -- reads -------------------------------------------------------------------------------

    def read(self, partitions: Iterable[int]) -> dict[str, dict[str, Any]]:
        """The newest state of every asset in these changelog partitions, read from their
        beginning up to the end offsets seen now, each assembled from its record and the parts
        it names (`assemble_states`). A malformed record, or one naming a missing or malformed
        part, is logged and skipped (that asset starts afresh); ChangelogError if the broker
        does not answer."""
        self._wait_for_write()
        tps = [TopicPartition(self.topic, p) for p in sorted(set(partitions))]
        if not tps:
            return {}
        latest: dict[bytes, tuple[int, bytes | None]] = {}  # key -> (partition, newest value)
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
                            latest[r.key] = (tp.partition, r.value)
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
        return assemble_states(latest, self._parts)

    def close(self) -> None:
        self._wait_for_write()
        self._writer.shutdown()
        for client in (self._producer, self._reader):
            try:
                client.close()
            except Exception:
                log.debug("closing a changelog client", exc_info=True)
