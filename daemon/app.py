"""The run loop: source -> codec -> windows -> engine -> alerts -> sink -> ledger -> commit."""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import signal
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from daemon import health
from daemon.baselines import WarmupSnapshot
from daemon.changelog import Changelog, ChangelogError, ChangelogLag
from daemon.codec import DecodeError, MessageDecoder
from daemon.core import CoreOutput, StreamCore
from daemon.delivery import CommitLedger, CommitMark
from daemon.engine import ProfileRegistry
from daemon.lineprotocol import Point
from daemon.publish import KafkaPublisher, PublishError
from daemon.settings import DaemonSettings
from daemon.sink import InfluxSink, check_influx_access
from daemon.source import KafkaUnavailable, Record, Source, lag_figures, open_source
from daemon.windows import TopicPartitionId
from seqae.artifacts import ArtifactError, write_atomic

log = logging.getLogger(__name__)
_DUE_CHECK_STRIDE = 255  # records between checks for a scored batch (a mask: 2**k - 1)
_STATE_FORMAT = "seqae-daemon-state/1"
_GC_THRESHOLDS = (50_000, 20, 10)  # benchmarks/RESULTS.md, "Issue 15, session 7"


class StartupError(RuntimeError):
    """The daemon cannot start (a model, the state file or a port); the message says which."""


class _NoModelYet(DecodeError):
    """The message's asset routes to a profile with no model yet: it waits, it is no dead
    letter (passes the decoder's boundary as a DecodeError; `reason` is no metric label)."""

    def __init__(self, profile: str) -> None:
        ValueError.__init__(self, f"profile {profile!r} has no model yet")
        self.reason = "no_model"
        self.profile = profile


@dataclass
class _Checkpoint:
    mark: CommitMark
    state: bytes | None  # the local state file (a cache): taken only at a stop or revocation
    warmup: WarmupSnapshot
    assets: dict[str, dict[str, Any]]  # durable states of the assets changed since the last one


@dataclass
class _Writing:
    """A checkpoint whose changelog write is in flight (`Daemon._commit`, step 2)."""

    checkpoint: _Checkpoint
    window_hold: dict[TopicPartitionId, int]
    written: Future[int]  # the changelog's bytes, or its ChangelogError


class _Notifier:
    """systemd Type=notify READY/WATCHDOG, only when NOTIFY_SOCKET is set."""

    def __init__(self) -> None:
        self._notify: Any = None
        self._last = 0.0
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify

            self._notify = sdnotify.SystemdNotifier()

    def send(self, message: str) -> None:
        if self._notify is not None:
            self._notify.notify(message)

    def watchdog(self) -> None:
        now = time.monotonic()
        if self._notify is not None and now - self._last >= 1.0:
            self._last = now
            self._notify.notify("WATCHDOG=1")


class Daemon:
    """Owns every stage and the loop between them; `run()` returns when stopped."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        s = settings
        if not s.profiles.routes:
            raise StartupError("profiles.routes: no asset pattern is mapped to a model profile")
        try:
            self.profiles = ProfileRegistry(
                s.profiles.models_root,
                s.profiles.profile_names,
                s.engine.device,
                s.engine.device_history,
                allow_missing=True,  # its assets' messages wait: see _wait_for_model
            )
        except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
            raise StartupError(f"cannot load a model profile: {exc}") from exc
        if s.engine.cpu_threads:
            torch.set_num_threads(s.engine.cpu_threads)
        self.core = StreamCore(s, self.profiles)
        self.ledger = CommitLedger()
        self._profile_for = s.profiles.router.profile_for
        self.decoder = MessageDecoder(s.input, self._channels_for)
        self.health_state = health.HealthState()
        self._state_path = Path(s.state_dir) / f"checkpoint-{s.kafka.group_id}.json"
        self._restore_state()
        self._stop = False
        self._reload = False
        self._recalibrate: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._checkpoint: _Checkpoint | None = None
        self._writing: _Writing | None = None
        self._newest_ts_ms = 0
        self._late_exported = self._gaps_exported = 0  # the window counters as last exported
        self._unexpected = health.RateLimitedLog(log)
        self._lag_export = health.LagExport()
        self._waiting: dict[TopicPartitionId, str] = {}  # partition -> profile it waits for
        self.source: Source | None = None
        self.sink: InfluxSink | None = None
        self.publisher: KafkaPublisher | None = None
        self.changelog: Changelog | None = None
        self._unrestored: set[TopicPartitionId] = set()  # assigned, changelog not read yet
        self._changelog_lag = ChangelogLag()
        self._next_restore = 0.0
        self._restore_backoff_s = 1.0
        self.health_server: health.HealthServer | None = None

    # -- wiring ------------------------------------------------------------------------------

    def _channels_for(self, asset: str) -> tuple[str, ...] | None:
        profile = self._profile_for(asset)
        if profile is None:
            return None
        if profile in self.profiles.missing:
            raise _NoModelYet(profile)
        return self.profiles.get(profile).geometry.channels

    def _restore_state(self) -> None:
        if not self._state_path.exists():
            return
        try:
            data = json.loads(self._state_path.read_text(encoding="utf-8"))
            if data.get("format") != _STATE_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {_STATE_FORMAT!r}")
            self.core.restore(data)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StartupError(f"{self._state_path}: unreadable daemon state: {exc}") from exc
        log.info("restored state of %d assets from %s", len(data["alerts"]), self._state_path)

    def _state_bytes(self) -> bytes:
        state = {"format": _STATE_FORMAT, **self.core.state()}
        return json.dumps(state, separators=(",", ":")).encode()

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def request_reload(self, *_: Any) -> None:
        self._reload = True

    def request_recalibration(self, asset: str, source: str = "") -> bool:
        """Queue a recalibration (called on the health server's thread, `source` the caller's
        address); False for an asset that no profile route maps."""
        if self.settings.profiles.profile_for(asset) is None:
            return False
        self._recalibrate.put((asset, source))
        return True

    # -- PartitionListener -------------------------------------------------------------------

    def on_revoked(self, partitions: set[TopicPartitionId]) -> None:
        """Flush, write the changelog, commit and drop the revoked assets (runs inside poll):
        their next owner restores them from the changelog."""
        self._score_all()
        if self.sink is not None and self.sink.flush(self.settings.influx.timeout_s):
            self._take_acks()
            self._settle_checkpoint()
            self._commit_now(
                {tp: off for tp, off in self._safe_offsets().items() if tp in partitions}
            )
        else:
            log.warning(
                "revoked %s before all points were acknowledged; the next owner re-reads",
                _names(partitions),
            )
        self._drop(partitions)

    def on_lost(self, partitions: set[TopicPartitionId]) -> None:
        """The group gave these partitions away (this member's session expired): their new
        owner may already have restored and changed their assets, so neither their state nor
        their offsets are written from here (a zombie's write would overwrite the owner's)."""
        self._score_all()
        self._drop(partitions)

    def _drop(self, partitions: set[TopicPartitionId]) -> None:
        self._finish_commit(wait=True, leaving=partitions)
        if self._checkpoint is not None:
            self.core.mark_changed(self._checkpoint.assets)
        self.core.drop_assets(self.core.windows.drop_partitions(partitions))
        self.core.drop_assets(self.core.assets_on(partitions))
        self.ledger.forget(partitions)
        if self.changelog is not None:
            self.changelog.forget(partitions)
        self._checkpoint = None
        self._unrestored -= partitions
        for tp in partitions:
            self._waiting.pop(tp, None)
        health.partitions_waiting.set(len(self._waiting))
        health.assets_owned.set(self.core.assets_owned)

    def on_assigned(self, partitions: set[TopicPartitionId]) -> None:
        """Restore the assigned partitions' assets from the changelog, then seek back so their
        windows are whole again; a partition whose changelog cannot be read waits (paused)
        and is retried from the run loop: no asset is scored without its state."""
        self._unrestored |= partitions
        self._restore_assigned()

    def _restore_assigned(self) -> None:
        partitions = set(self._unrestored)
        if self.source is None or not partitions:
            return
        started = time.monotonic()
        try:
            floor = self._restore(partitions)
        except ChangelogError as exc:
            self._unexpected.log(
                logging.ERROR, "changelog", "%s; partitions %s wait", exc, _names(partitions)
            )
            self.source.hold_back(partitions)
            self._next_restore = time.monotonic() + self._restore_backoff_s
            self._restore_backoff_s = min(30.0, self._restore_backoff_s * 2)
            return
        self._restore_backoff_s = 1.0
        self._unrestored -= partitions
        for tp in partitions:
            self.source.release(tp)
        self._rewind(partitions, floor)
        seconds = time.monotonic() - started
        health.state_restore_seconds.set(seconds)
        health.assets_owned.set(self.core.assets_owned)
        log.info(
            "partitions %s ready in %.3f s; assigned now %s",
            _names(partitions),
            seconds,
            _names(self.source.assignment()),
        )

    def _restore(self, partitions: set[TopicPartitionId]) -> dict[TopicPartitionId, int]:
        """Read the changelog partitions of `partitions` into the core; returns, per partition,
        the smallest offset the restored assets' next windows span."""
        assert self.changelog is not None and self.source is not None
        needed = max(self.source.partition_count(), max(p for _, p in partitions) + 1)
        self.changelog.ensure(needed)
        started = time.monotonic()
        states = {
            asset: state
            for asset, state in self.changelog.read({p for _, p in partitions}).items()
            if state.get("partition") is not None and tuple(state["partition"]) in partitions
        }
        for asset, exc in self.core.restore_assets(states):
            log.error("%s; asset %s starts afresh", exc, asset)
        floor: dict[TopicPartitionId, int] = {}
        for state in states.values():
            for topic, partition, offset in state.get("window_offsets") or []:
                tp = (str(topic), int(partition))
                floor[tp] = min(floor.get(tp, int(offset)), int(offset))
        log.info(
            "restored state of %d assets of partitions %s from %s in %.3f s",
            len(states),
            _names(partitions),
            self.changelog.topic,
            time.monotonic() - started,
        )
        return floor

    def _rewind(
        self, partitions: set[TopicPartitionId], floor: dict[TopicPartitionId, int]
    ) -> None:
        # Commits hold back to the first reading of the next window, so reading on from the
        # committed offset makes windows whole at once. The consumer keeps its fetch position
        # for a partition it owned before the rebalance, past readings whose windows were just
        # dropped, so seek to the committed offset explicitly (or to the first reading the
        # restored windows need, if that is earlier). A partition never committed and read
        # from `latest` starts one window length back instead.
        s = self.settings.kafka
        if self.source is None or not s.seek_back_on_assign:
            return
        span_s = max(
            (p.geometry.window * p.geometry.period_ns / 1e9 for p in self.profiles), default=0.0
        )
        fallback_ms = int((time.time() - span_s) * 1000)
        self.source.rewind_to_committed(
            partitions, fallback_ms if s.auto_offset_reset == "latest" else None, floor
        )

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        # The health server first: while Kafka is unreachable at start /readyz says so.
        if s.health.enabled:
            try:
                self.health_server = health.HealthServer(
                    s.health.host,
                    s.health.port,
                    self.health_state,
                    self.request_recalibration,
                    control_token=s.health.control_token,
                )
            except OSError as exc:
                raise StartupError(f"health.port {s.health.port}: {exc.strerror}") from exc
            self.health_server.start()
            log.info("health endpoints on http://%s:%d", s.health.host, self.health_server.port)
        servers = ",".join(s.kafka.bootstrap_servers)
        self.health_state.set_ready(False, f"connecting to Kafka at {servers}")
        problem = check_influx_access(s.influx)
        if problem is not None:
            self.close()
            raise StartupError(problem)
        self.sink = InfluxSink(s.influx)
        try:
            self.publisher = KafkaPublisher(s.kafka, should_stop=lambda: self._stop)
            self.changelog = Changelog(s.kafka, should_stop=lambda: self._stop)
            self.source = open_source(s.kafka, self, should_stop=lambda: self._stop)
        except KafkaUnavailable as exc:
            self.close()
            raise StartupError(f"kafka.connect_timeout_s: {exc}") from exc

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or `request_stop`), then drain and commit."""
        if self.source is None:
            self.start()
        assert self.source is not None and self.sink is not None
        gc_pauses = health.GcPauses()
        gc.callbacks.append(gc_pauses)
        # Everything loaded so far (torch, numpy, models: most of the heap's objects) lives for
        # the whole run; frozen, a full collection skips it: 150 ms pauses became 2-6 ms.
        gc.collect()
        gc.freeze()
        # Most objects the loop makes die within a poll's batch, yet at the default thresholds
        # (700, 10, 10) enough outlived two young collections that a full one (85-130 ms at
        # 2,500 assets) ran every 1.5 s; far larger young generations let them die first. A
        # full collection is still considered every 200 young ones (hours apart at 25,000
        # msg/s) and runs, as with the defaults, once a quarter of the old heap is new: cyclic
        # garbage stays bounded, and `seqae_gc_collected_objects` shows how much there is.
        thresholds = gc.get_threshold()
        gc.set_threshold(*_GC_THRESHOLDS)
        notifier = _Notifier()
        s = self.settings
        next_commit = next_reload = next_evict = time.monotonic()
        next_lag = next_commit + 10.0
        notifier.send("READY=1")
        self.health_state.set_ready(True)
        try:
            while not self._stop:
                records = self.source.poll(self._poll_timeout(), s.kafka.max_poll_records)
                for i, record in enumerate(records):
                    if self._waiting and (record.topic, record.partition) in self._waiting:
                        continue  # fetched after a message that waits for its model: read again
                    if self._unrestored and (record.topic, record.partition) in self._unrestored:
                        continue  # its assets' state is not restored: read again after the restore
                    # A full batch goes to the scoring thread at once, and a scored one is written
                    # within a few milliseconds, not after the rest of the poll.
                    if (self._handle(record) or not i & _DUE_CHECK_STRIDE) and self.core.due():
                        self._score_due()
                if records:
                    self._export_window_counters()
                # With the poll's readings handled, an idle scoring thread takes what is queued:
                # waiting `max_wait_ms` for a fuller batch only pays while it is busy.
                idle = not self.core.busy
                if self.core.due() or (idle and self.core.queued):
                    self._score_due(everything=idle)
                self._backpressure()
                self._finish_commit()  # commits once the changelog write in flight is done
                now = time.monotonic()
                if now >= next_commit:
                    self._take_acks()
                    self._advance_checkpoint()
                    health.checkpoint_seconds.observe(time.monotonic() - now)
                    gc_pauses.export()
                    next_commit = now + s.commit_interval_s
                if self._reload or now >= next_reload:
                    self._reload_profiles()
                    next_reload = now + s.profiles.reload_poll_s
                while not self._recalibrate.empty():
                    self._recalibrate_now(*self._recalibrate.get())
                if self._unrestored and now >= self._next_restore:
                    self._restore_assigned()
                if now >= next_evict:
                    self.core.evict_idle()
                    health.assets_tracked.set(len(self.core.windows))
                    health.assets_owned.set(self.core.assets_owned)  # new assets read meanwhile
                    next_evict = now + min(10.0, s.windows.idle_eviction_s / 2)
                if now >= next_lag:
                    self._export_lag()
                    next_lag = now + 10.0
                self._ready_state()
                self.health_state.beat()
                notifier.watchdog()
        finally:
            gc.callbacks.remove(gc_pauses)
            gc.set_threshold(*thresholds)
        notifier.send("STOPPING=1")
        self.drain()

    def _export_lag(self) -> None:
        """Consumed lag, committed lag and held offsets per partition; while the broker does
        not answer the gauges keep their last values."""
        assert self.source is not None
        offsets = self.source.partition_offsets()
        if offsets is not None:
            self._lag_export.update(lag_figures(offsets, self._safe_offsets()))

    def _poll_timeout(self) -> float:
        """Short only while windows wait (kafka-python 3.0 can fail to finish a group join when
        polls time out every few milliseconds during the rebalance): shortest while the scoring
        thread works, whose results would otherwise wait in the poll for the next readings."""
        assert self.source is not None
        if not self.source.assignment():
            return 0.5
        if self.core.busy:
            return 0.005
        if self.core.queued:
            return max(0.02, min(0.1, self.settings.engine.max_wait_ms / 1000))
        return 0.2

    def drain(self) -> None:
        """Score what is queued, wait for the sink, save state and commit; then close."""
        assert self.source is not None and self.sink is not None
        self._score_all()
        if self.sink.flush(self.settings.influx.timeout_s * 3):
            self._take_acks()
            self._settle_checkpoint()
            self._commit_now(self._safe_offsets())
        else:
            log.warning("stopping with unacknowledged points; their offsets stay uncommitted")
        self.close()

    def close(self) -> None:
        closers = (self.source, self.publisher, self.changelog, self.sink, self.health_server)
        for closer in (*closers, self.core):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    log.exception("error while closing %r", closer)
        self.source = self.publisher = self.sink = self.health_server = None  # type: ignore[assignment]
        self.changelog = None

    def _reload_profiles(self) -> None:
        """Swap profiles between batches: windows queued for the old model are scored first."""
        if not self._reload and not self.profiles.changed():
            return
        self._score_all()
        failures = self.profiles.load_failures
        self.profiles.refresh(force=self._reload)
        health.model_load_failures.inc(self.profiles.load_failures - failures)
        self._reload = False
        for tp, profile in list(self._waiting.items()):
            if profile not in self.profiles.missing:
                del self._waiting[tp]
                if self.source is not None:
                    self.source.release(tp)
                log.info("profile %s loaded: reading %s[%d] again", profile, *tp)
        health.partitions_waiting.set(len(self._waiting))

    # -- stages ------------------------------------------------------------------------------

    def _handle(self, record: Record) -> int:
        """Decode, window and queue one record; returns how many windows it queued."""
        tp = (record.topic, record.partition)
        try:
            reading = self.decoder.decode(record.value)
        except _NoModelYet as exc:
            self._wait_for_model(record, exc.profile)
            return 0
        except DecodeError as exc:
            self.ledger.consumed(tp, record.offset)
            health.bad_messages.labels(reason=exc.reason).inc()
            log.debug(
                "bad message %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc
            )
            if self.publisher is not None:
                self.publisher.dead_letter(record, exc.reason)
            return 0
        self.ledger.consumed(tp, record.offset)
        try:
            queued = self.core.add(reading, tp, record.offset, record.timestamp_ms)
        except Exception as exc:  # one reading never stops the loop: a dead letter, and a bug
            self._unexpected.log(
                logging.ERROR,
                type(exc).__name__,
                "reading %s[%d]@%d of asset %r not windowed: %r",
                record.topic,
                record.partition,
                record.offset,
                reading.asset,
                exc,
            )
            health.bad_messages.labels(reason="undecodable").inc()
            if self.publisher is not None:
                self.publisher.dead_letter(record, "undecodable")
            return 0
        if record.timestamp_ms > self._newest_ts_ms:
            self._newest_ts_ms = record.timestamp_ms
        return queued

    def _export_window_counters(self) -> None:
        """Late readings and gap resets since the last call, once a poll (not per reading)."""
        counters = self.core.windows.counters
        late, gaps = counters.late_dropped, counters.gap_resets
        if late != self._late_exported:
            health.late_readings.inc(late - self._late_exported)
            self._late_exported = late
        if gaps != self._gaps_exported:
            health.gap_resets.inc(gaps - self._gaps_exported)
            self._gaps_exported = gaps

    def _wait_for_model(self, record: Record, profile: str) -> None:
        """A message whose profile has no model yet is neither scored nor consumed: its
        partition stops at it (the ledger never sees it, so no commit passes it) and is read
        again from it once the profile loads. Other assets of the partition wait with it."""
        assert self.source is not None
        tp = (record.topic, record.partition)
        self.source.wait_at(tp, record.offset)
        self._waiting[tp] = profile
        health.partitions_waiting.set(len(self._waiting))
        log.warning(
            "%s[%d]@%d: profile %s has no model yet; the partition waits for it",
            record.topic,
            record.partition,
            record.offset,
            profile,
        )

    def _recalibrate_now(self, asset: str, source: str) -> None:
        """An accepted control request: logged, and written to `seqae_event` (kind=control)
        with the caller's address, so every change of the detector's behaviour leaves a trace."""
        reset = self.core.recalibrate(asset)
        log.info("asset %s: recalibrating (%d profiles), asked by %s", asset, reset, source)
        assert self.sink is not None
        point = Point(
            "seqae_event",
            {
                "asset": asset,
                "profile": self.settings.profiles.profile_for(asset) or "",
                "kind": "control",
            },
            {"action": "recalibrate", "source": source, "profiles_reset": reset},
            time.time_ns(),
        )
        self.sink.submit([point], self.ledger.new_ticket(), self._newest_ts_ms)

    def _score_due(self, everything: bool = False) -> None:
        for out in self.core.score(everything):
            self._submit(out)

    def _score_all(self) -> None:
        """Score every queued window and submit its points: windows handed out are only
        recorded as done once submitted."""
        for out in self.core.score(everything=True, wait=True):
            self._submit(out)

    def _submit(self, out: CoreOutput) -> None:
        if not out.scored:
            return
        assert self.sink is not None
        for profile, count in Counter(w.profile for w in out.scored).items():
            health.windows_scored.labels(profile=profile).inc(count)
        for event in out.events:
            health.alert_events.labels(state=event.state).inc()
            if self.publisher is not None:
                self.publisher.alert_event(event.to_json())
        for shift in out.shifts:
            health.shift_events.labels(state=shift.state).inc()
        for size in out.batch_sizes:
            health.batch_size.observe(size)
        health.scoring_seconds.observe(out.seconds)
        health.alerts_open.set(self.core.alerts.open_count)
        ticket = self.ledger.new_ticket()
        self.ledger.track(ticket, out.offsets)
        self.sink.submit(out.points, ticket, out.oldest_completed_ms or self._newest_ts_ms)

    def _take_acks(self) -> None:
        assert self.sink is not None
        self.ledger.acknowledge(self.sink.take_acknowledged())

    @property
    def _windows_in_changelog(self) -> bool:
        """Whether the changelog states' window offsets are sought back to on assignment: then
        a partial window needs no commit held back for it (its readings are re-read from the
        offsets its state names), so committed lag reaches 0 when a stream stops."""
        return self.settings.kafka.seek_back_on_assign

    def _window_hold(self) -> dict[TopicPartitionId, int]:
        """The first offset per partition of every asset's next window where commits wait for
        them, a pass over every window; {} (no pass) where the changelog carries them."""
        return {} if self._windows_in_changelog else self.core.windows.hold()

    def _commit_hold(self) -> dict[TopicPartitionId, int]:
        """What commits must stay at or before, besides unacknowledged points: windows queued
        for scoring, and, unless the changelog carries them, every asset's next window."""
        if self._windows_in_changelog:
            return self.core.engine.hold()
        return self.core.hold()

    def _safe_offsets(self) -> dict[TopicPartitionId, int]:
        return self.ledger.committable(self._commit_hold())

    def _changed_states(self) -> dict[str, dict[str, Any]]:
        """The durable states a checkpoint writes: the assets changed since the last one, and
        those whose next window now needs readings their written state does not name."""
        self.core.mark_changed(self.core.windows.take_unreported())
        return self.core.changed_states()

    def _advance_checkpoint(self) -> None:
        """Commit the last mark once its tickets are acknowledged; then take the next mark."""
        if not self._finish_commit():
            assert self._writing is not None
            self._changelog_lag.waiting(len(self._writing.checkpoint.assets))
            return
        if self._checkpoint is not None and not self.ledger.settled(self._checkpoint.mark):
            self._changelog_lag.waiting(len(self._checkpoint.assets))
            return
        # One window hold serves both the commit and the next mark (scoring and submitting in
        # between does not move what the windows hold); the queue is empty after `_score_all`.
        hold = self._window_hold()
        settled, self._checkpoint = self._checkpoint, None
        self._score_all()
        self._checkpoint = _Checkpoint(
            self.ledger.mark(hold),
            None,
            WarmupSnapshot(),  # the changelog holds the warm-up: files only at `_commit_now`
            self._changed_states(),
        )
        self._changelog_lag.taken(len(self._checkpoint.assets))
        # after the next mark is taken: the write's encoding on the changelog's thread then
        # shares the interpreter with reading, not with taking the states
        if settled is not None:
            self._commit(settled, hold)

    def _settle_checkpoint(self) -> None:
        """Everything is acknowledged: write the pending checkpoint's files before a newer one."""
        self._finish_commit(wait=True)
        if self._checkpoint is not None:
            self.core.baselines.saved(self._checkpoint.warmup)
            self.core.mark_changed(self._checkpoint.assets)  # the newer checkpoint writes them
            self._checkpoint = None

    def _commit_now(self, offsets: dict[TopicPartitionId, int]) -> None:
        """A checkpoint taken and committed at once (revocation, stop): everything is scored
        and acknowledged; the local state file is written too."""
        self._finish_commit(wait=True)  # before the states are taken: a failed one's are taken
        self._commit(
            _Checkpoint(
                CommitMark(offsets, set()),
                self._state_bytes(),
                self.core.baseline_snapshot(),
                self._changed_states(),
            ),
            self._commit_hold(),
        )
        self._finish_commit(wait=True)

    def _commit(self, checkpoint: _Checkpoint, window_hold: dict[TopicPartitionId, int]) -> None:
        """Make one checkpoint durable, in this order (docs/architecture.md, "State in Kafka"):
        1. dead letters and alert events are acknowledged by Kafka (publisher flush);
        2. the changed assets' states of the checkpoint are acknowledged by the changelog: the
           write runs on the changelog's thread while the loop reads on, and `_finish_commit`
           takes its outcome;
        3. the local cache files (warm-up and state file, taken at a stop or revocation only)
           are written;
        4. only then are the checkpoint's offsets committed. With the windows in the changelog
           these pass partial windows: the states of step 2 name the offsets each asset's next
           window spans, and the next owner seeks back to them (`_restore`, `_rewind`).
        A failure at 1 or 2 commits nothing (the states are written again by the next one)."""
        try:
            if self.publisher is not None:
                self.publisher.flush(self.settings.kafka.call_timeout_s)
        except PublishError as exc:
            self._unexpected.log(
                logging.ERROR,
                "publisher",
                "not committing: dead letters or alert events not delivered: %s",
                exc,
            )
            self._not_committed(checkpoint)
            return
        if checkpoint.assets and self.changelog is not None:
            written = self.changelog.start_write(checkpoint.assets)
        else:
            written = Future()
            written.set_result(0)
        self._writing = _Writing(checkpoint, window_hold, written)
        self._finish_commit()

    def _finish_commit(
        self, wait: bool = False, leaving: set[TopicPartitionId] | None = None
    ) -> bool:
        """Steps 3 and 4 of `_commit` once the changelog has acknowledged the states of the
        checkpoint in flight (at once with `wait`); False while it has not. `leaving`: lost
        partitions, whose offsets are no longer this member's to commit."""
        writing = self._writing
        if writing is None:
            return True
        if not wait and not writing.written.done():
            return False
        self._writing = None
        checkpoint = writing.checkpoint
        try:
            written = writing.written.result()
        except ChangelogError as exc:
            self._unexpected.log(logging.ERROR, "changelog", "not committing: %s", exc)
            self._not_committed(checkpoint)
            return True
        if checkpoint.assets and self.changelog is not None:
            health.changelog_bytes.inc(written)
            health.changelog_records.inc(len(checkpoint.assets))
        self._changelog_lag.acknowledged()
        self.core.baselines.saved(checkpoint.warmup)
        if checkpoint.state is not None:
            write_atomic(self._state_path, checkpoint.state, mode=0o600)
        safe = self.ledger.committable(writing.window_hold)
        offsets = {
            tp: min(off, safe.get(tp, off))
            for tp, off in checkpoint.mark.offsets.items()
            if off > self.ledger.committed_offset(tp) and tp not in (leaving or ())
        }
        assert self.source is not None
        if offsets and self.source.commit(offsets):
            self.ledger.committed(offsets)
            health.commits.inc()
        return True

    def _not_committed(self, checkpoint: _Checkpoint) -> None:
        """Its states are written again by the next checkpoint, and a mark taken since is
        dropped: taken without them, it must not commit past them."""
        self.core.mark_changed(checkpoint.assets)
        self._changelog_lag.failed(len(checkpoint.assets))
        if self._checkpoint is not None:
            self.core.mark_changed(self._checkpoint.assets)
            self._checkpoint = None

    def _backpressure(self) -> None:
        assert self.source is not None and self.sink is not None
        limit = self.settings.influx.max_buffered_points
        backlogged = self.publisher is not None and self.publisher.backlogged
        if not self.source.paused and (self.sink.full or backlogged):
            log.warning(
                "sink buffer full (%d points) or publisher backlogged: pausing partitions",
                self.sink.buffered_points,
            )
            self.source.pause()
            health.source_paused.set(1)
        elif (
            self.source.paused
            and self.sink.buffered_points <= limit // 2
            and not (self.publisher is not None and self.publisher.backlog)
        ):
            log.info("sink drained: resuming partitions")
            self.source.resume()
            health.source_paused.set(0)

    def _ready_state(self) -> None:
        assert self.sink is not None and self.source is not None
        reasons = [self.source.reachability.reason, self.profiles.missing_reason()]
        if self.publisher is not None:
            reasons.append(self.publisher.reachability.reason)
        if self.changelog is not None:
            reasons.append(self.changelog.reachability.reason)
        if self._unrestored:
            reasons.append(f"restoring asset state of partitions {_names(self._unrestored)}")
        if not self.sink.healthy:
            reasons.append("InfluxDB writes failing")
        shown = [r for r in dict.fromkeys(reasons) if r]
        self.health_state.set_ready(not shown, "; ".join(shown))


def _names(partitions: set[TopicPartitionId]) -> str:
    """'topic[0,1]' per topic: a log line's short form of a set of partitions."""
    topics: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        topics.setdefault(topic, []).append(partition)
    return " ".join(f"{t}[{','.join(map(str, ps))}]" for t, ps in topics.items())


def run_daemon(settings: DaemonSettings) -> None:
    """Start the daemon with signal handlers: SIGTERM/SIGINT drain and stop, SIGHUP reloads."""
    daemon = Daemon(settings)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: draining and stopping", signum)
        daemon.request_stop()

    # before start(): a SIGTERM while it waits for Kafka ends the wait
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    daemon.start()
    daemon.run()
