"""The run loop: source -> codec -> windows -> engine -> alerts -> sink -> ledger -> commit."""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from daemon import health
from daemon.alerts import AlertBook, AlertEvent
from daemon.baselines import AssetBaselines, WarmupSnapshot
from daemon.codec import DecodeError, MessageDecoder
from daemon.delivery import CommitLedger, CommitMark
from daemon.engine import EngineOutput, ProfileRegistry, ScoringEngine, shift_point
from daemon.lineprotocol import Point
from daemon.publish import KafkaPublisher, PublishError
from daemon.settings import DaemonSettings
from daemon.sink import InfluxSink
from daemon.source import KafkaSource, Record
from daemon.windows import TopicPartitionId, WindowStore
from seqae.artifacts import ArtifactError, write_atomic

log = logging.getLogger(__name__)
_STATE_FORMAT = "seqae-daemon-state/1"


class StartupError(RuntimeError):
    """The daemon cannot start (a model, the state file or a port); the message says which."""


@dataclass
class _Checkpoint:
    mark: CommitMark
    state: bytes
    warmup: WarmupSnapshot


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
            )
        except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
            raise StartupError(f"cannot load a model profile: {exc}") from exc
        if s.engine.cpu_threads:
            torch.set_num_threads(s.engine.cpu_threads)
        self.baselines = AssetBaselines(s.baselines, s.state_dir)
        self.windows = WindowStore(s.windows)
        self.engine = ScoringEngine(
            s.engine, self.profiles, self.baselines, write_clean=s.influx.write_clean
        )
        self.alerts = AlertBook(s.alerts)
        self.ledger = CommitLedger()
        self.decoder = MessageDecoder(s.input, self._channels_for)
        self.health_state = health.HealthState()
        self._state_path = Path(s.state_dir) / f"checkpoint-{s.kafka.group_id}.json"
        self._restore_state()
        self._stop = False
        self._reload = False
        self._recalibrate: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._checkpoint: _Checkpoint | None = None
        self._newest_ts_ms = 0
        self.source: KafkaSource | None = None
        self.sink: InfluxSink | None = None
        self.publisher: KafkaPublisher | None = None
        self.health_server: health.HealthServer | None = None

    # -- wiring ------------------------------------------------------------------------------

    def _channels_for(self, asset: str) -> tuple[str, ...] | None:
        profile = self.settings.profiles.profile_for(asset)
        if profile is None:
            return None
        return self.profiles.get(profile).geometry.channels

    def _restore_state(self) -> None:
        if not self._state_path.exists():
            return
        try:
            data = json.loads(self._state_path.read_text(encoding="utf-8"))
            if data.get("format") != _STATE_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {_STATE_FORMAT!r}")
            self.windows.resume_after({a: int(t) for a, t in data["last_ends"].items()})
            self.alerts.restore(data["alerts"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StartupError(f"{self._state_path}: unreadable daemon state: {exc}") from exc
        log.info("restored state of %d assets from %s", len(data["alerts"]), self._state_path)

    def _state_bytes(self) -> bytes:
        state = {
            "format": _STATE_FORMAT,
            "last_ends": self.windows.last_ends(),
            "alerts": self.alerts.to_dict(),
        }
        return json.dumps(state, separators=(",", ":")).encode()

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def request_reload(self, *_: Any) -> None:
        self._reload = True

    def request_recalibration(self, asset: str) -> None:
        self._recalibrate.put(asset)

    # -- PartitionListener -------------------------------------------------------------------

    def on_revoked(self, partitions: set[TopicPartitionId]) -> None:
        """Flush, commit and drop the revoked assets' windows (runs inside poll)."""
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
                sorted(partitions),
            )
        dropped = self.windows.drop_partitions(partitions)
        self.engine.drop_assets(set(dropped))
        self.alerts.forget(dropped)  # the next owner starts these assets' alert state afresh
        self.baselines.forget(dropped)
        self.ledger.forget(partitions)
        self._checkpoint = None

    def on_assigned(self, partitions: set[TopicPartitionId]) -> None:
        # Commits hold back to the first reading of the next window, so reading on from the
        # committed offset makes windows whole at once. The consumer keeps its fetch position
        # for a partition it owned before the rebalance, past readings whose windows were just
        # dropped, so seek to the committed offset explicitly. A partition never committed and
        # read from `latest` starts one window length back instead.
        s = self.settings.kafka
        if self.source is None or not s.seek_back_on_assign:
            return
        span_s = max(p.geometry.window * p.geometry.period_ns / 1e9 for p in self.profiles)
        for tp in partitions:
            committed = self.source.committed(tp)
            if committed is not None:
                self.source.seek(tp, committed)
            elif s.auto_offset_reset == "latest":
                self.source.seek_to_time(tp, int((time.time() - span_s) * 1000))

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self.sink = InfluxSink(s.influx)
        self.publisher = KafkaPublisher(s.kafka)
        self.source = KafkaSource(
            s.kafka,
            self,
            session_timeout_ms=s.kafka.session_timeout_ms,
            heartbeat_interval_ms=s.kafka.heartbeat_interval_ms,
        )
        if s.health.enabled:
            try:
                self.health_server = health.HealthServer(
                    s.health.host, s.health.port, self.health_state, self.request_recalibration
                )
            except OSError as exc:
                raise StartupError(f"health.port {s.health.port}: {exc.strerror}") from exc
            self.health_server.start()
            log.info("health endpoints on http://%s:%d", s.health.host, self.health_server.port)

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or `request_stop`), then drain and commit."""
        if self.source is None:
            self.start()
        assert self.source is not None and self.sink is not None
        # Everything loaded so far (torch, numpy, models: most of the heap's objects) lives for
        # the whole run; frozen, a full collection skips it: 150 ms pauses became 2-6 ms.
        gc.collect()
        gc.freeze()
        notifier = _Notifier()
        s = self.settings
        next_commit = next_reload = next_evict = time.monotonic()
        next_lag = next_commit + 10.0
        notifier.send("READY=1")
        self.health_state.set_ready(True)
        while not self._stop:
            records = self.source.poll(self._poll_timeout(), s.kafka.max_poll_records)
            for record in records:
                # A full batch goes to the scoring thread at once, and a scored one is written
                # at once, not after the rest of the poll.
                self._handle(record)
                if self.engine.due():
                    self._score_due()
            # With the poll's readings handled, an idle scoring thread takes what is queued:
            # waiting `max_wait_ms` for a fuller batch only pays while it is busy.
            idle = not self.engine.busy
            if self.engine.due() or (idle and self.engine.queued):
                self._score_due(everything=idle)
            self._backpressure()
            now = time.monotonic()
            if now >= next_commit:
                self._take_acks()
                self._advance_checkpoint()
                next_commit = now + s.commit_interval_s
            if self._reload or now >= next_reload:
                self._reload_profiles()
                next_reload = now + s.profiles.reload_poll_s
            while not self._recalibrate.empty():
                asset = self._recalibrate.get()
                log.info(
                    "asset %s: recalibrating (%d profiles)",
                    asset,
                    self.baselines.recalibrate(asset),
                )
            if now >= next_evict:
                self.engine.release_assets(set(self.windows.evict_idle()))
                health.assets_tracked.set(len(self.windows))
                next_evict = now + min(10.0, s.windows.idle_eviction_s / 2)
            if now >= next_lag:
                for (topic, part), lag in self.source.lag().items():
                    health.consumer_lag.labels(topic=topic, partition=str(part)).set(lag)
                next_lag = now + 10.0
            self._ready_state()
            self.health_state.beat()
            notifier.watchdog()
        notifier.send("STOPPING=1")
        self.drain()

    def _poll_timeout(self) -> float:
        """Short only while windows wait (kafka-python 3.0 can fail to finish a group join when
        polls time out every few milliseconds during the rebalance): shortest while the scoring
        thread works, whose results would otherwise wait in the poll for the next readings."""
        assert self.source is not None
        if not self.source.assignment():
            return 0.5
        if self.engine.busy:
            return 0.005
        if self.engine.queued:
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
        for closer in (self.source, self.publisher, self.sink, self.health_server, self.engine):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    log.exception("error while closing %r", closer)
        self.source = self.publisher = self.sink = self.health_server = None  # type: ignore[assignment]

    def _reload_profiles(self) -> None:
        """Swap profiles between batches: windows queued for the old model are scored first."""
        if not self._reload and not self.profiles.changed():
            return
        self._score_all()
        failures = self.profiles.load_failures
        self.profiles.refresh(force=self._reload)
        health.model_load_failures.inc(self.profiles.load_failures - failures)
        self._reload = False

    # -- stages ------------------------------------------------------------------------------

    def _handle(self, record: Record) -> None:
        """Decode, window and queue one record."""
        tp = (record.topic, record.partition)
        self.ledger.consumed(tp, record.offset)
        try:
            reading = self.decoder.decode(record.value)
        except DecodeError as exc:
            health.bad_messages.labels(reason=exc.reason).inc()
            log.debug(
                "bad message %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc
            )
            if self.publisher is not None:
                self.publisher.dead_letter(record, exc.reason)
            return
        profile = self.settings.profiles.profile_for(reading.asset)
        assert profile is not None  # the decoder refused unknown assets
        served = self.profiles.get(profile)
        before = self.windows.counters.late_dropped, self.windows.counters.gap_resets
        ready = self.windows.add(reading, served.geometry, tp, record.offset)
        for w in ready:
            w.completed_ms = record.timestamp_ms
        after = self.windows.counters.late_dropped, self.windows.counters.gap_resets
        if after != before:
            health.late_readings.inc(after[0] - before[0])
            health.gap_resets.inc(after[1] - before[1])
        self._newest_ts_ms = max(self._newest_ts_ms, record.timestamp_ms)
        self.engine.add(profile, ready)

    def _score_due(self, everything: bool = False) -> None:
        self.engine.hand_out(everything)
        for out in self.engine.results():
            self._submit(out)

    def _score_all(self) -> None:
        """Score every queued window and submit its points: windows handed out are only
        recorded as done once submitted."""
        self.engine.hand_out(everything=True)
        for out in self.engine.results(wait=True):
            self._submit(out)

    def _submit(self, out: EngineOutput) -> None:
        if not out.scored:
            return
        assert self.sink is not None
        points: list[Point] = []
        events: list[AlertEvent] = []
        for w in out.scored:
            points.append(w.to_point())
            points.extend(w.clean_points())
            health.windows_scored.labels(profile=w.profile).inc()
            if w.state == "calibrating":
                continue
            events += self.alerts.observe(
                w.asset, w.profile, w.end_ns, w.score, w.threshold, w.contributions, w.channels
            )
        for event in events:
            points.append(event.to_point())
            health.alert_events.labels(state=event.state).inc()
            if self.publisher is not None:
                self.publisher.alert_event(event.to_json())
        for shift in out.shifts:
            points.append(shift_point(shift))
            health.shift_events.labels(state=shift.state).inc()
        for size in out.batch_sizes:
            health.batch_size.observe(size)
        health.scoring_seconds.observe(out.seconds)
        health.alerts_open.set(self.alerts.open_count)
        ticket = self.ledger.new_ticket()
        self.ledger.track(ticket, out.offsets)
        self.sink.submit(points, ticket, out.oldest_completed_ms or self._newest_ts_ms)

    def _take_acks(self) -> None:
        assert self.sink is not None
        self.ledger.acknowledge(self.sink.take_acknowledged())

    def _safe_offsets(self) -> dict[TopicPartitionId, int]:
        hold = self.windows.hold()
        for tp, off in self.engine.hold().items():
            hold[tp] = min(hold.get(tp, off), off)
        return self.ledger.committable(hold)

    def _advance_checkpoint(self) -> None:
        """Commit the last mark once its tickets are acknowledged; then take the next mark."""
        if self._checkpoint is not None and not self.ledger.settled(self._checkpoint.mark):
            return
        # One pass over every asset's window serves both the commit and the next mark: scoring
        # and submitting in between does not move what the windows hold.
        hold = self.windows.hold()
        if self._checkpoint is not None:
            checkpoint, self._checkpoint = self._checkpoint, None
            self._commit(checkpoint, hold)
        self._score_all()
        self._checkpoint = _Checkpoint(
            self.ledger.mark(hold), self._state_bytes(), self.baselines.snapshot()
        )

    def _settle_checkpoint(self) -> None:
        """Everything is acknowledged: write the pending checkpoint's files before a newer one."""
        if self._checkpoint is not None:
            self.baselines.saved(self._checkpoint.warmup)
            self._checkpoint = None

    def _commit_now(self, offsets: dict[TopicPartitionId, int]) -> None:
        self._commit(
            _Checkpoint(CommitMark(offsets, set()), self._state_bytes(), self.baselines.snapshot()),
            self.windows.hold(),
        )

    def _commit(self, checkpoint: _Checkpoint, window_hold: dict[TopicPartitionId, int]) -> None:
        assert self.source is not None
        try:
            if self.publisher is not None:
                self.publisher.flush(self.settings.influx.timeout_s)
        except PublishError as exc:
            log.error("not committing: dead letters or alert events not delivered: %s", exc)
            return
        self.baselines.saved(checkpoint.warmup)
        write_atomic(self._state_path, checkpoint.state)
        safe = self.ledger.committable(window_hold)
        offsets = {
            tp: min(off, safe.get(tp, off))
            for tp, off in checkpoint.mark.offsets.items()
            if off > self.ledger.committed_offset(tp)
        }
        if offsets and self.source.commit(offsets):
            self.ledger.committed(offsets)
            health.commits.inc()

    def _backpressure(self) -> None:
        assert self.source is not None and self.sink is not None
        limit = self.settings.influx.max_buffered_points
        if not self.source.paused and self.sink.full:
            log.warning(
                "sink buffer full (%d points): pausing partitions", self.sink.buffered_points
            )
            self.source.pause()
            health.source_paused.set(1)
        elif self.source.paused and self.sink.buffered_points <= limit // 2:
            log.info("sink drained: resuming partitions")
            self.source.resume()
            health.source_paused.set(0)

    def _ready_state(self) -> None:
        assert self.sink is not None
        if not self.sink.healthy:
            self.health_state.set_ready(False, "InfluxDB writes failing")
        else:
            self.health_state.set_ready(True)


def run_daemon(settings: DaemonSettings) -> None:
    """Start the daemon with signal handlers: SIGTERM/SIGINT drain and stop, SIGHUP reloads."""
    daemon = Daemon(settings)
    daemon.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: draining and stopping", signum)
        daemon.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    daemon.run()
