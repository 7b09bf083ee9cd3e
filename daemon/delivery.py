"""What may be committed to Kafka: the one place that owns the at-least-once guarantee."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TopicPartitionId = tuple[str, int]


@dataclass
class CommitMark:
    offsets: dict[TopicPartitionId, int]
    tickets: set[int]


class CommitLedger:
    """Tracks, per partition, the next offset that is safe to commit.

    The committable offset of a partition is the smallest of
      (a) the first offset of any message whose points are submitted (or about to be) but not yet
          acknowledged by InfluxDB: `track(ticket, offsets)` ... `acknowledge(ticket)`;
      (b) the first offset of any reading that a window not yet scored needs: windows queued
          for scoring (ScoringEngine.hold()) and, only when the changelog does not carry them
          (`kafka.seek_back_on_assign` off), future windows still in an asset's buffer
          (WindowStore.hold()), passed as `committable(hold=...)`;
      (c) the last consumed offset + 1 (`consumed`).

    Why this is at-least-once, in steps:
      1. Every point is derived from readings of known offsets; its ticket is tracked with the
         smallest offset per partition of those readings before the points leave for the sink.
      2. A ticket is released only when the sink reports every point of it durable (or
         quarantined as unwritable); until then (a) keeps the commit at or below its readings.
      3. Readings of windows queued are held by (b), so no window's inputs are committed past
         before its points exist; readings no window needs again (dropped as late, malformed,
         evicted) are covered by (c).
      4. Readings of a window not yet complete are either held by (b) or named by the asset's
         durable state: a checkpoint writes to the changelog, before committing its offsets,
         the state of every asset whose next window needs a reading the state last written
         does not name (`WindowStore.take_unreported`), with the smallest offset per partition
         its next window spans; the next owner seeks back to those offsets before reading on.
      5. Kafka is only ever told min(a, b, c) as the next offset to read, and never an offset
         lower than one already committed (commits are monotone per partition).
      6. So after a crash the restarted consumer resumes at or before the first reading of every
         unwritten point and of every unfinished window, rebuilds the same windows on the same
         absolute grid, and rewrites the same idempotent points: nothing lost, nothing doubled.
    On revocation the owner flushes the sink, commits `committable()` and calls `forget()`.
    The run loop commits through `mark()`/`settled()`: offsets min(b, c) taken at one moment are
    committed once every ticket pending at that moment is acknowledged, together with the state
    (alerts, window ends) saved at that moment; tickets submitted later only hold readings at or
    after that moment's hold, so such a commit never passes (a) either.
    """

    def __init__(self) -> None:
        self._tickets: dict[int, dict[TopicPartitionId, int]] = {}
        self._consumed: dict[TopicPartitionId, int] = {}
        self._committed: dict[TopicPartitionId, int] = {}
        self._next_ticket = 0

    def consumed(self, tp: TopicPartitionId, offset: int) -> None:
        """A message at `offset` was read (whether or not it produced anything)."""
        if offset + 1 > self._consumed.get(tp, -1):
            self._consumed[tp] = offset + 1

    def new_ticket(self) -> int:
        self._next_ticket += 1
        return self._next_ticket

    def track(self, ticket: int, offsets: Mapping[TopicPartitionId, int]) -> None:
        """Points of `ticket` derive from readings at or after `offsets` (per partition)."""
        held = self._tickets.setdefault(ticket, {})
        for tp, off in offsets.items():
            held[tp] = min(held.get(tp, off), off)

    def acknowledge(self, tickets: Iterable[int]) -> None:
        for ticket in tickets:
            self._tickets.pop(ticket, None)

    @property
    def pending(self) -> int:
        return len(self._tickets)

    def committable(
        self, hold: Mapping[TopicPartitionId, int] | None = None
    ) -> dict[TopicPartitionId, int]:
        """Next offset to read per partition that may be committed now (only those that advance)."""
        safe = dict(self._consumed)
        for held in [*self._tickets.values(), hold or {}]:
            for tp, off in held.items():
                if tp in safe and off < safe[tp]:
                    safe[tp] = off
        return {tp: off for tp, off in safe.items() if off > self._committed.get(tp, -1)}

    def committed_offset(self, tp: TopicPartitionId) -> int:
        return self._committed.get(tp, -1)

    def committed(self, offsets: Mapping[TopicPartitionId, int]) -> None:
        """Record offsets that Kafka accepted."""
        for tp, off in offsets.items():
            self._committed[tp] = max(self._committed.get(tp, -1), off)

    def mark(self, hold: Mapping[TopicPartitionId, int] | None = None) -> CommitMark:
        """Offsets to commit once every ticket pending now is acknowledged (a checkpoint): the
        state saved with the mark and these offsets then describe the same moment."""
        offsets = dict(self._consumed)
        for tp, off in (hold or {}).items():
            if tp in offsets and off < offsets[tp]:
                offsets[tp] = off
        return CommitMark(offsets, set(self._tickets))

    def settled(self, mark: CommitMark) -> bool:
        mark.tickets &= self._tickets.keys()
        return not mark.tickets

    def forget(self, partitions: Iterable[TopicPartitionId]) -> None:
        """Drop a revoked partition's state; its tickets' other partitions stay tracked."""
        gone = set(partitions)
        for tp in gone:
            self._consumed.pop(tp, None)
            self._committed.pop(tp, None)
        for ticket, held in list(self._tickets.items()):
            for tp in gone & held.keys():
                del held[tp]
            if not held:
                del self._tickets[ticket]
