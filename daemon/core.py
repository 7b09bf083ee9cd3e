"""The per-asset streaming core: readings in, points and events out, no I/O of its own.

    windows -> baseline -> score -> alert -> points

One implementation, driven by the Kafka run loop (daemon/app.py), by the offline backtest
(daemon/backtest.py) and by the tests alike. It owns every asset's window, baseline and alert
state; the caller owns decoding, delivery, commits and the clock of the outside world. What the
caller may commit is what `hold()` does not hold back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from daemon.alerts import AlertBook, AlertEvent, alert_point
from daemon.baselines import AssetBaselines, ShiftEvent, WarmupSnapshot
from daemon.codec import Reading
from daemon.engine import EngineOutput, ProfileRegistry, ScoredWindow, ScoringEngine, shift_point
from daemon.lineprotocol import Point
from daemon.settings import DaemonSettings
from daemon.windows import TopicPartitionId, WindowStore, partition_id

_NO_PARTITION: TopicPartitionId = ("", 0)


@dataclass
class CoreOutput:
    """What one scored batch produced, in the order the points are to be written."""

    points: list[Point] = field(default_factory=list)
    scored: list[ScoredWindow] = field(default_factory=list)
    events: list[AlertEvent] = field(default_factory=list)
    shifts: list[ShiftEvent] = field(default_factory=list)
    offsets: dict[TopicPartitionId, int] = field(default_factory=dict)  # smallest per partition
    batch_sizes: list[int] = field(default_factory=list)
    seconds: float = 0.0  # forward-pass time
    oldest_completed_ms: int = 0


class StreamCore:
    """Every asset's windows, baselines and alert trackers, and the scoring engine between them."""

    def __init__(
        self,
        settings: DaemonSettings,
        profiles: ProfileRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.profiles = profiles
        self.windows = WindowStore(settings.windows, clock)
        self.baselines = AssetBaselines(settings.baselines, settings.state_dir)
        self.engine = ScoringEngine(
            settings.engine,
            profiles,
            self.baselines,
            clock=clock,
            write_clean=settings.influx.write_clean,
        )
        self.alerts = AlertBook(settings.alerts)
        self._profile_for = settings.profiles.router.profile_for
        self._partition: dict[str, TopicPartitionId] = {}  # where each asset's readings come from
        self._changed: set[str] = set()  # assets whose durable state changed since `changed_states`

    # -- readings in -------------------------------------------------------------------------

    def add(
        self,
        reading: Reading,
        tp: TopicPartitionId = _NO_PARTITION,
        offset: int = 0,
        completed_ms: int = 0,
    ) -> int:
        """Place one reading; windows it completes are queued for scoring. Returns how many."""
        profile = self._profile_for(reading.asset)
        if profile is None:
            return 0
        served = self.profiles.get(profile)
        ready = self.windows.add(reading, served.geometry, tp, offset)
        if ready or self._partition.get(reading.asset) != tp:
            self._partition[reading.asset] = partition_id(*tp)
            self._changed.add(reading.asset)
        if not ready:
            return 0
        for w in ready:
            w.completed_ms = completed_ms
        self.engine.add(profile, ready)
        return len(ready)

    # -- scores, alerts and points out -------------------------------------------------------

    def due(self) -> bool:
        return self.engine.due()

    @property
    def busy(self) -> bool:
        return self.engine.busy

    @property
    def queued(self) -> int:
        return self.engine.queued

    def score(self, everything: bool = False, wait: bool = False) -> Iterator[CoreOutput]:
        """Hand batches to the scoring thread (all queued windows with `everything`) and yield
        each scored batch's output in order: those done so far, or all of them with `wait`."""
        self.engine.hand_out(everything)
        return self.results(wait)

    def results(self, wait: bool = False) -> Iterator[CoreOutput]:
        """Each batch handed out so far, scored, in order: those done, or all with `wait`."""
        for part in self.engine.results(wait=wait):
            yield self._finish(part)

    def _finish(self, part: EngineOutput) -> CoreOutput:
        out = CoreOutput(
            scored=part.scored,
            shifts=part.shifts,
            offsets=part.offsets,
            batch_sizes=part.batch_sizes,
            seconds=part.seconds,
            oldest_completed_ms=part.oldest_completed_ms,
        )
        points = out.points
        for w in part.scored:
            points.append(w.point())
            if w.clean is not None:
                points.extend(w.clean_points())
        out.events = self.alerts.observe_scored(part.scored)
        out.points += [alert_point(event) for event in out.events]
        out.points += [shift_point(shift) for shift in out.shifts]
        return out

    # -- what may be committed, and the state that goes with it ------------------------------

    def hold(self) -> dict[TopicPartitionId, int]:
        """Smallest offset per partition still needed: readings in unfinished windows or in
        windows queued for scoring."""
        hold = self.windows.hold()
        for tp, off in self.engine.hold().items():
            hold[tp] = min(hold.get(tp, off), off)
        return hold

    def state(self) -> dict[str, Any]:
        """Window progress and alert state, JSON-safe, for a checkpoint."""
        return {"last_ends": self.windows.last_ends(), "alerts": self.alerts.to_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        self.windows.resume_after({a: int(t) for a, t in state["last_ends"].items()})
        self.alerts.restore(state["alerts"])

    def asset_state(self, asset: str) -> dict[str, Any]:
        """One asset's durable state, JSON-safe: the partition its readings come from, its
        window progress (last window end, the offsets its next window spans), its alert tracker
        and its calibration. With the windows queued so far scored, `restore_asset` of it and a
        replay from those offsets continue the asset exactly where this core is."""
        return self._taken_state(asset) | {"baselines": self.baselines.asset_state(asset)}

    def _taken_state(self, asset: str) -> dict[str, Any]:
        """`asset_state` with the calibration as taken (`Calibration`s), not yet encoded."""
        last_end, offsets = self.windows.progress(asset)
        tp = self._partition.get(asset)
        return {
            "asset": asset,
            "partition": list(tp) if tp is not None else None,
            "last_end_ns": last_end,
            "window_offsets": [[t, p, off] for (t, p), off in sorted(offsets.items())],
            "alert": self.alerts.tracker_state(asset),
            "baselines": self.baselines.calibrations(asset),
        }

    def restore_assets(self, states: dict[str, dict[str, Any]]) -> list[tuple[str, ValueError]]:
        """Continue assets from `asset_state`'s dicts (written by this or another instance).
        Returns the assets whose state was malformed, with why: those start afresh."""
        self.engine.drop_assets(set(states))
        failed = []
        for asset, state in states.items():
            try:
                self._restore_asset(asset, state)
            except ValueError as exc:
                self.drop_assets([asset])
                failed.append((asset, exc))
        return failed

    def assets_on(self, partitions: set[TopicPartitionId]) -> list[str]:
        """Assets whose readings come from these partitions."""
        return [a for a, tp in self._partition.items() if tp in partitions]

    @property
    def assets_owned(self) -> int:
        """Assets whose partition this core was given (restored or read)."""
        return len(self._partition)

    def _restore_asset(self, asset: str, state: dict[str, Any]) -> None:
        try:
            tp = state["partition"]
            partition = partition_id(str(tp[0]), int(tp[1])) if tp is not None else None
            last_end = state["last_end_ns"]
            last_end = int(last_end) if last_end is not None else None
            alert, baselines = state["alert"], state["baselines"]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"state of asset {asset!r}: {exc!r}") from exc
        self.baselines.restore_asset(asset, baselines)
        self.alerts.restore_tracker(asset, alert)
        self.windows.restore_progress(asset, last_end)
        if partition is not None:
            self._partition[asset] = partition
        self._changed.discard(asset)

    def changed_states(self) -> dict[str, dict[str, Any]]:
        """The durable state of every asset changed since the last call (then none is), as
        `asset_state` but with each profile's calibration as a `Calibration` taken now: the
        changelog encodes only what it has not written yet (`Calibration.to_json` gives the
        inline item)."""
        changed, self._changed = self._changed, set()
        return {asset: self._taken_state(asset) for asset in sorted(changed)}

    def mark_changed(self, assets: Iterable[str]) -> None:
        """States taken by `changed_states` that were not written: take them again next time."""
        self._changed.update(a for a in assets if a in self._partition)

    def baseline_snapshot(self) -> WarmupSnapshot:
        return self.baselines.snapshot()

    def recalibrate(self, asset: str) -> int:
        """Put a known asset back into warm-up; returns how many profiles were reset (0: the
        asset is not known here)."""
        reset = self.baselines.recalibrate(asset)
        if reset:
            self._changed.add(asset)
        return reset

    def drop_assets(self, assets: list[str]) -> None:
        """Forget assets whose partitions left: windows, queued windows, alerts, baselines."""
        self.engine.drop_assets(set(assets))
        self.alerts.forget(assets)
        self.baselines.forget(assets)
        for asset in assets:
            self._changed.discard(asset)
            self._partition.pop(asset, None)

    def evict_idle(self) -> list[str]:
        idle = self.windows.evict_idle()
        self.engine.release_assets(set(idle))
        # their next window starts afresh: the changelog must stop naming the old one's offsets
        self._changed.update(a for a in idle if a in self._partition)
        return idle

    def close(self) -> None:
        self.engine.close()
