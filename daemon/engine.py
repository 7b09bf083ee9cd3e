"""Micro-batched scoring of ready windows across assets, one Scorer per served profile."""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from daemon.baselines import AssetBaselines, ScoreState, ShiftEvent
from daemon.device_history import DeviceFeed
from daemon.health import RateLimitedLog
from daemon.lineprotocol import (
    LineProtocolError,
    Point,
    float_texts,
    key_text,
    plain_tag_values,
    tag_value,
)
from daemon.settings import EngineSettings
from daemon.windows import ReadyWindow, TopicPartitionId, WindowGeometry
from seqae.artifacts import ArtifactError, LoadedProfile, current_version, load_profile
from seqae.calibrate import Baseline
from seqae.extras import reconstruct_raw
from seqae.score import ScoreBatch, Scorer

log = logging.getLogger(__name__)
# a bad CURRENT is seen at every reload poll: logged once, then once a minute with a count
_repeated = RateLimitedLog(log)


@dataclass
class ServedProfile:
    name: str
    loaded: LoadedProfile
    scorer: Scorer
    geometry: WindowGeometry
    feed: DeviceFeed | None = None  # per-asset history on the device (CUDA)

    @property
    def version(self) -> str:
        return self.loaded.version

    def features(
        self, x: np.ndarray, batch: Sequence[ReadyWindow], used: list[Baseline]
    ) -> np.ndarray:
        """Error features [N, F] of host windows `x` [N, W, C] (`Scorer.finish` makes scores of
        them); with a device feed, only new rows cross the bus and the windows are gathered and
        scaled on the device."""
        if self.feed is None:
            center = np.array([b.center for b in used], np.float32)
            scale = np.array([b.scale for b in used], np.float32)
            return self.scorer.features(x, center, scale)
        raw = self.feed.windows(batch)
        device = raw.device
        center_t = torch.from_numpy(np.stack([b.center for b in used])).to(device)
        scale_t = torch.from_numpy(np.stack([b.scale for b in used])).to(device)
        return self.scorer.features_raw(raw, center_t, scale_t).cpu().numpy()

    @cached_property
    def score_lines(self) -> ScoreLines | None:
        return ScoreLines.of(self.name, self.version, self.geometry.channels)

    def release(self, assets: set[str]) -> None:
        if self.feed is not None:
            for asset in assets:
                self.feed.release(asset)


class ProfileRegistry:
    """The profiles being served; swaps a profile when its CURRENT changes and the new one loads.

    With `allow_missing`, a profile that has no CURRENT yet (no model trained or promoted) is
    not an error: its name is in `missing` until a `refresh()` finds a CURRENT and loads it.
    A model that is there but does not load (corrupt, altered, pickled) is refused all the same.
    """

    def __init__(
        self,
        models_root: Path,
        names: Sequence[str],
        device: str,
        device_history: str = "auto",
        *,
        allow_missing: bool = False,
    ) -> None:
        self._root = Path(models_root)
        self._device = device
        self._device_history = device_history
        self._served: dict[str, ServedProfile] = {}
        self.missing: set[str] = set()
        self._failed_versions: dict[str, str] = {}  # missing profile -> version that failed
        self.load_failures = 0
        for name in names:
            if allow_missing and self._current(name) is None:
                self.missing.add(name)
                log.warning(
                    "profile %s: no model yet (%s); waiting for it", name, self._where(name)
                )
                continue
            self._served[name] = self._load(name, None)

    def _current(self, name: str) -> str | None:
        try:
            return current_version(self._root, name)
        except OSError:
            return None

    def _where(self, name: str) -> str:
        return f"{self._root / name / 'CURRENT'} does not exist"

    def _load(self, name: str, version: str | None) -> ServedProfile:
        loaded = load_profile(self._root, name, version)
        m = loaded.meta
        geometry = WindowGeometry.of(m.channels, m.period_s, m.window, m.hop)
        scorer = Scorer(loaded, device=self._device)
        feed = None
        wanted = self._device_history
        if wanted == "always" or (wanted == "auto" and scorer.device.type == "cuda"):
            feed = DeviceFeed(len(m.channels), m.window, geometry.period_ns, scorer.device)
        return ServedProfile(name, loaded, scorer, geometry, feed)

    def get(self, name: str) -> ServedProfile:
        return self._served[name]

    def missing_reason(self) -> str | None:
        """The /readyz line while some profile has no model yet, else None."""
        if not self.missing:
            return None
        names = ", ".join(sorted(self.missing))
        return f"no model yet for profile(s) {names} (waiting for CURRENT under {self._root})"

    def __iter__(self) -> Iterator[ServedProfile]:
        return iter(self._served.values())

    def changed(self) -> list[str]:
        """Profiles whose CURRENT names a version other than the one served."""
        moved = []
        for name, served in self._served.items():
            try:
                wanted = current_version(self._root, name)
            except (OSError, ArtifactError):
                continue  # refresh() reports it
            if wanted is not None and wanted != served.version:
                moved.append(name)
        for name in sorted(self.missing):
            wanted = self._current(name)
            if wanted is not None and wanted != self._failed_versions.get(name):
                moved.append(name)
        return moved

    def _load_missing(self) -> list[str]:
        """Load missing profiles whose CURRENT appeared; a version that fails is tried again
        only when CURRENT moves (one ERROR line per version, not one per poll)."""
        loaded = []
        for name in sorted(self.missing):
            wanted = self._current(name)
            if wanted is None or wanted == self._failed_versions.get(name):
                continue
            try:
                self._served[name] = self._load(name, wanted)
            except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
                self.load_failures += 1
                self._failed_versions[name] = wanted
                log.error("profile %s %s failed to load, still waiting: %s", name, wanted, exc)
                continue
            self.missing.discard(name)
            self._failed_versions.pop(name, None)
            loaded.append(name)
            log.info("profile %s: now serving %s (its first model)", name, wanted)
        return loaded

    def refresh(self, force: bool = False) -> list[str]:
        """Reload profiles whose CURRENT moved (all of them when `force`); a profile that fails
        to load keeps the served one; a missing profile is loaded once its CURRENT appears.
        Returns the names swapped or loaded."""
        if force:
            self._failed_versions.clear()
        swapped = self._load_missing()
        for name, served in list(self._served.items()):
            if name in swapped:
                continue
            try:
                wanted = current_version(self._root, name)
            except (OSError, ArtifactError) as exc:
                self.load_failures += 1
                _repeated.log(
                    logging.ERROR,
                    f"current:{name}",
                    "profile %s: cannot read CURRENT: %s",
                    name,
                    exc,
                )
                continue
            if wanted is None or (wanted == served.version and not force):
                continue
            try:
                self._served[name] = self._load(name, wanted)
            except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
                self.load_failures += 1
                _repeated.log(
                    logging.ERROR,
                    f"load:{name}:{wanted}",
                    "profile %s %s failed to load, still serving %s: %s",
                    name,
                    wanted,
                    served.version,
                    exc,
                )
                continue
            swapped.append(name)
            log.info("profile %s: now serving %s (was %s)", name, wanted, served.version)
        return swapped


@functools.lru_cache(maxsize=256)
def _error_keys(channels: tuple[str, ...]) -> tuple[str, ...]:
    """The `seqae_score` field of each channel's error."""
    return tuple(f"err_{name}" for name in channels)


@dataclass(slots=True)
class ScoredWindow:
    asset: str
    profile: str
    version: str
    channels: tuple[str, ...]
    end_ns: int
    score: float
    threshold: float
    anomalous: bool
    state: ScoreState
    gap: bool
    errors: np.ndarray  # [C]
    contributions: np.ndarray  # [C]
    clean: np.ndarray | None = None  # [hop, C] reconstructed raw values of the newest slots
    period_ns: int = 0
    late: int = 0  # the asset's readings dropped as too late since its previous window
    line: str | None = None  # `to_point()`'s line, made with its batch's (ScoreLines)

    def clean_points(self) -> list[Point]:
        """`seqae_clean`: the model's reconstruction of the window's newest `hop` slots, so
        every slot is written once (denoised, and filled where a sample was missing)."""
        if self.clean is None:
            return []
        tags = {"asset": self.asset, "profile": self.profile, "model_version": self.version}
        hop = len(self.clean)
        points = []
        for k, row in enumerate(self.clean.tolist()):
            fields: dict[str, float | int | bool | str] = {
                name: value
                for name, value in zip(self.channels, row, strict=True)
                if math.isfinite(value)
            }
            if fields:
                time_ns = self.end_ns - (hop - 1 - k) * self.period_ns
                points.append(Point("seqae_clean", tags, fields, time_ns))
        return points

    def to_point(self) -> Point:
        fields: dict[str, float | int | bool | str] = {
            "score": float(self.score),
            "threshold": float(self.threshold),
            "anomalous": bool(self.anomalous),
            "state": self.state,
            "gap": bool(self.gap),
        }
        if self.late:  # only when some were dropped: most windows have none
            fields["late"] = int(self.late)
        for key, err in zip(_error_keys(self.channels), self.errors.tolist(), strict=True):
            if math.isfinite(err):  # a channel with no observed sample has no error
                fields[key] = err
        tags = {"asset": self.asset, "profile": self.profile, "model_version": self.version}
        return Point("seqae_score", tags, fields, self.end_ns, self.line)

    def point(self) -> Point:
        """`to_point()` for the run loop: with its line made, its tags and fields are only
        built if read (`encode` reads the line alone)."""
        if self.line is None:
            return self.to_point()
        return _LinePoint(self)


class _LinePoint(Point):
    """A score point whose line is made: `ScoredWindow.to_point()`'s tags and fields are built
    on first reading; it compares equal to that point."""

    __slots__ = ("_built", "_window")

    def __init__(self, window: ScoredWindow) -> None:
        self._window = window
        self._built: Point | None = None
        self.measurement = "seqae_score"
        self.time_ns = window.end_ns
        self.line = window.line

    def _full(self) -> Point:
        if self._built is None:
            self._built = self._window.to_point()
        return self._built

    @property
    def tags(self) -> dict[str, str]:
        return self._full().tags

    @tags.setter
    def tags(self, value: dict[str, str]) -> None:
        self._full().tags = value

    @property
    def fields(self) -> dict[str, float | int | bool | str]:
        return self._full().fields

    @fields.setter
    def fields(self, value: dict[str, float | int | bool | str]) -> None:
        self._full().fields = value

    def __eq__(self, other: object) -> bool:
        return self._full() == other

    __hash__ = None  # type: ignore[assignment]


class ScoreLines:
    """The `seqae_score` lines of one served profile version, made for a batch at once: the
    text `encode` gives of `ScoredWindow.to_point()`, without its per-field type checks. Only
    for windows whose score, threshold and errors are all finite (the others are encoded point
    by point, which drops a missing channel's error and refuses a non-finite score)."""

    MEASUREMENT = "seqae_score"

    def __init__(self, profile: str, version: str, channels: Sequence[str]) -> None:
        m = self.MEASUREMENT
        # tags sorted: asset, model_version, profile; one `%` per line, of texts: the floats'
        # shortest reprs are made for the whole batch at once (`float_texts`)
        version_text = tag_value(version, "model_version", m)
        profile_text = tag_value(profile, "profile", m)
        errors = "".join(f",{key_text('err_' + c, m)}=%s" for c in channels)
        self._template = (
            f"{m},asset=%s,model_version={version_text},profile={profile_text}"
            f' score=%s,threshold=%s,anomalous=%s,state="%s",gap=%s%s{errors} %d'
        )

    @classmethod
    def of(cls, profile: str, version: str, channels: Sequence[str]) -> ScoreLines | None:
        try:
            return cls(profile, version, channels)
        except LineProtocolError:
            return None  # an empty or unwritable tag: encoded point by point (and refused)

    def lines(
        self,
        batch: Sequence[ReadyWindow],
        numbers: np.ndarray,
        anomalous: Sequence[bool],
        states: Sequence[str],
        finite: Sequence[bool],
    ) -> list[str | None]:
        """The line of each window of `batch` (None where not `finite`, or the asset id cannot
        be a tag); `numbers` [N, 2 + C] holds each window's score, threshold and errors."""
        texts = float_texts(numbers)
        width = numbers.shape[1]
        plain = plain_tag_values([w.asset for w in batch])  # else checked one by one
        out: list[str | None] = []
        for i, w in enumerate(batch):
            asset_text = w.asset if plain else self._asset_text(w.asset)
            if not finite[i] or asset_text is None:
                out.append(None)
                continue
            at = i * width
            out.append(
                self._format(
                    asset_text,
                    w.end_ns,
                    texts[at : at + width],
                    anomalous[i],
                    states[i],
                    w.gap,
                    w.late,
                )
            )
        return out

    def line(
        self,
        asset: str,
        end_ns: int,
        score: float,
        threshold: float,
        anomalous: bool,
        state: str,
        gap: bool,
        late: int,
        errors: Sequence[float],
    ) -> str | None:
        """One window's line (its score, threshold and errors finite)."""
        asset_text = self._asset_text(asset)
        if asset_text is None:
            return None
        texts = float_texts(np.array([score, threshold, *errors], np.float64))
        return self._format(asset_text, end_ns, texts, anomalous, state, gap, late)

    def _asset_text(self, asset: str) -> str | None:
        try:
            return tag_value(asset, "asset", self.MEASUREMENT)
        except LineProtocolError:
            return None

    def _format(
        self,
        asset_text: str,
        end_ns: int,
        texts: list[str],  # score, threshold, errors
        anomalous: bool,
        state: str,
        gap: bool,
        late: int,
    ) -> str:
        score, threshold, *errors = texts
        return self._template % (
            asset_text,
            score,
            threshold,
            "true" if anomalous else "false",
            state,
            "true" if gap else "false",
            f",late={late}i" if late else "",
            *errors,
            end_ns,
        )


@dataclass
class EngineOutput:
    scored: list[ScoredWindow] = field(default_factory=list)
    shifts: list[ShiftEvent] = field(default_factory=list)
    offsets: dict[TopicPartitionId, int] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)
    seconds: float = 0.0
    oldest_completed_ms: int = 0  # earliest `completed_ms` among the scored windows (0: none)


@dataclass
class _Queue:
    windows: list[ReadyWindow] = field(default_factory=list)
    since: float = 0.0


@dataclass
class _InFlight:
    """A batch handed to the scoring thread; its results are taken in hand-out order."""

    served: ServedProfile
    batch: list[ReadyWindow]
    x: np.ndarray  # [N, W, C]
    used: list[Baseline]
    features: Future[tuple[np.ndarray, float]]


class ScoringEngine:
    """Collects ready windows per profile and scores them in batches of at most `max_batch`,
    once a batch is full or its oldest window waited `max_wait_ms`.

    The forward passes run on one scoring thread (torch releases the GIL there), so decoding,
    windowing and writing the points of one batch overlap the forward of the next. Results are
    taken back, and per-asset state moves, in the order the batches were handed out."""

    def __init__(
        self,
        settings: EngineSettings,
        profiles: ProfileRegistry,
        baselines: AssetBaselines,
        clock: Callable[[], float] = time.monotonic,
        write_clean: bool = False,
    ) -> None:
        self._s = settings
        self._write_clean = write_clean
        self._profiles = profiles
        self._baselines = baselines
        self._clock = clock
        self._queues: dict[str, _Queue] = {}
        self._in_flight: deque[_InFlight] = deque()
        # Between its torch ops the scoring thread needs the GIL back; at the default 5 ms
        # switch interval it waits that long behind the run loop's Python each time (a forward
        # measured 10x slower), at 0.1 ms it runs within ~30 % of its speed alone.
        sys.setswitchinterval(min(sys.getswitchinterval(), 1e-4))
        # OpenMP keeps its thread count per thread: the scoring thread takes this thread's.
        self._worker = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="seqae-scoring",
            initializer=torch.set_num_threads,
            initargs=(torch.get_num_threads(),),
        )

    def add(self, profile: str, windows: Sequence[ReadyWindow]) -> None:
        if not windows:
            return
        queue = self._queues.setdefault(profile, _Queue())
        if not queue.windows:
            queue.since = self._clock()
        queue.windows.extend(windows)

    @property
    def queued(self) -> int:
        """Windows not yet scored: waiting for their batch or in the scoring thread."""
        waiting = sum(len(q.windows) for q in self._queues.values())
        return waiting + sum(len(f.batch) for f in self._in_flight)

    def due(self) -> bool:
        """A batch is ready to hand out, or a handed-out batch is scored."""
        if self._in_flight and self._in_flight[0].features.done():
            return True
        if not self._queues or not any(q.windows for q in self._queues.values()):
            return False
        deadline = self._clock() - self._s.max_wait_ms / 1000
        return any(
            len(q.windows) >= self._s.max_batch or (q.windows and q.since <= deadline)
            for q in self._queues.values()
        )

    def hold(self) -> dict[TopicPartitionId, int]:
        """Offsets of readings in windows not yet scored: not committable."""
        held: dict[TopicPartitionId, int] = {}
        waiting = [w for q in self._queues.values() for w in q.windows]
        for w in waiting + [w for f in self._in_flight for w in f.batch]:
            for tp, off in w.offsets.items():
                held[tp] = min(held.get(tp, off), off)
        return held

    def drop_assets(self, assets: set[str]) -> None:
        for q in self._queues.values():
            q.windows = [w for w in q.windows if w.asset not in assets]
        self.release_assets(assets)

    def release_assets(self, assets: set[str]) -> None:
        """Forget device-side history of assets that left (evicted or revoked)."""
        for served in self._profiles:
            # through the scoring thread, so it cannot race a batch that uses the history
            self._worker.submit(served.release, set(assets))

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    @property
    def busy(self) -> bool:
        """The scoring thread has a batch it has not finished."""
        return any(not job.features.done() for job in self._in_flight)

    def hand_out(self, everything: bool = False) -> None:
        """Give the scoring thread every full batch and every batch whose oldest window waited
        `max_wait_ms`; with `everything`, all queued windows."""
        deadline = self._clock() - self._s.max_wait_ms / 1000
        for name, q in self._queues.items():
            while q.windows and (
                everything or len(q.windows) >= self._s.max_batch or q.since <= deadline
            ):
                batch, q.windows = q.windows[: self._s.max_batch], q.windows[self._s.max_batch :]
                self._hand_out(self._profiles.get(name), batch)
                q.since = self._clock()

    def results(self, wait: bool = False) -> Iterator[EngineOutput]:
        """Each scored batch in hand-out order: those scored so far, or all handed out when
        `wait`. The caller writes one batch while the scoring thread works on the next."""
        while self._in_flight and (wait or self._in_flight[0].features.done()):
            out = EngineOutput()
            self._take(self._in_flight.popleft(), out)
            yield out

    def run(self, force: bool = False, wait: bool = False) -> EngineOutput:
        """`hand_out(force)`, then `results(force or wait)` as one output."""
        self.hand_out(force)
        out = EngineOutput()
        for part in self.results(force or wait):
            _merge(out, part)
        return out

    def _hand_out(self, served: ServedProfile, batch: list[ReadyWindow]) -> None:
        # np.array of same-shaped arrays: np.stack's values at a fraction of its overhead
        x = np.array([w.values for w in batch])  # [N, W, C]
        used = self._baselines_of(served, batch, range(len(batch)))
        features = self._worker.submit(_timed_features, served, x, batch, used)
        self._in_flight.append(_InFlight(served, batch, x, used, features))

    def _baselines_of(
        self, served: ServedProfile, batch: Sequence[ReadyWindow], idx: Iterable[int]
    ) -> list[Baseline]:
        assets = [batch[i].asset for i in idx]
        return self._baselines.baselines_for(
            served.name, served.version, assets, served.loaded.baseline
        )

    def _take(self, job: _InFlight, out: EngineOutput) -> None:
        served, batch, x, used = job.served, job.batch, job.x, job.used
        lp = served.loaded
        feats, seconds = job.features.result()
        out.seconds += seconds
        result = served.scorer.finish(feats, x, used)
        clean = None
        if self._write_clean:
            clean = reconstruct_raw(served.scorer, x, used, last=served.geometry.hop)
        rows = list(range(len(batch)))  # row of each window in `result`
        # stale: windows whose baseline changed after hand-out (scored again below)
        states, stale = self._baselines.observe_batch(
            served.scorer,
            served.name,
            served.version,
            served.geometry.hop,
            [(w.asset, w.end_ns, w.values) for w in batch],
            result.shifted.tolist(),
            used,
            lp.baseline,
            feats,
        )
        if stale:
            again = served.scorer.score(x[stale], self._baselines_of(served, batch, stale))
            for j, i in enumerate(stale):
                rows[i] = len(batch) + j
                states[i] = self._observe(served, batch[i], bool(again.shifted[j]))
            result = _concat(result, again)
        # Per batch, not per window: gather each window's row, test finiteness, go to Python.
        at = np.asarray(rows)
        score, threshold, errors = result.score[at], result.threshold[at], result.errors[at]
        anomalous = result.anomalous[at].tolist()
        finite = (np.isfinite(score) & np.isfinite(threshold) & np.isfinite(errors).all(1)).tolist()
        score_l, threshold_l = score.tolist(), threshold.tolist()
        contributions = result.contributions[at]
        geometry = served.geometry
        state_l: list[ScoreState] = []
        for entry in states:
            assert entry is not None
            state, shift = entry
            if shift is not None:
                out.shifts.append(shift)
            state_l.append(state)
        alarms = [a and s != "calibrating" for a, s in zip(anomalous, state_l, strict=True)]
        lines = served.score_lines
        texts: Sequence[str | None] = [None] * len(batch)
        if lines is not None:
            numbers = np.column_stack([score, threshold, errors])
            texts = lines.lines(batch, numbers, alarms, state_l, finite)
        name, version, channels, period_ns = (
            served.name,
            served.version,
            geometry.channels,
            geometry.period_ns,
        )
        offsets = out.offsets
        error_rows, contribution_rows = list(errors), list(contributions)  # views, made in C
        for i, w in enumerate(batch):
            out.scored.append(
                ScoredWindow(
                    asset=w.asset,
                    profile=name,
                    version=version,
                    channels=channels,
                    end_ns=w.end_ns,
                    score=score_l[i],
                    threshold=threshold_l[i],
                    anomalous=alarms[i],
                    state=state_l[i],
                    gap=w.gap,
                    late=w.late,
                    errors=error_rows[i],
                    contributions=contribution_rows[i],
                    clean=None if clean is None else clean[i],
                    period_ns=period_ns,
                    line=texts[i],
                )
            )
            for tp, off in w.offsets.items():
                if off < offsets.get(tp, off + 1):
                    offsets[tp] = off
        completed = [w.completed_ms for w in batch if w.completed_ms]
        if completed:
            oldest = min(completed)
            if not out.oldest_completed_ms or oldest < out.oldest_completed_ms:
                out.oldest_completed_ms = oldest
        out.batch_sizes.append(len(batch))

    def _observe(
        self, served: ServedProfile, w: ReadyWindow, shifted: bool
    ) -> tuple[ScoreState, ShiftEvent | None]:
        return self._baselines.observe(
            served.scorer,
            served.name,
            served.version,
            served.geometry.hop,
            w.asset,
            w.end_ns,
            w.values,
            shifted,
        )


def _timed_features(
    served: ServedProfile, x: np.ndarray, batch: Sequence[ReadyWindow], used: list[Baseline]
) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    feats = served.features(x, batch, used)
    return feats, time.perf_counter() - started


def _merge(into: EngineOutput, part: EngineOutput) -> None:
    into.scored += part.scored
    into.shifts += part.shifts
    for tp, off in part.offsets.items():
        into.offsets[tp] = min(into.offsets.get(tp, off), off)
    into.batch_sizes += part.batch_sizes
    into.seconds += part.seconds
    if part.oldest_completed_ms and (
        not into.oldest_completed_ms or part.oldest_completed_ms < into.oldest_completed_ms
    ):
        into.oldest_completed_ms = part.oldest_completed_ms


def _concat(a: ScoreBatch, b: ScoreBatch) -> ScoreBatch:
    return ScoreBatch(
        *(np.concatenate([getattr(a, f.name), getattr(b, f.name)]) for f in fields(ScoreBatch))
    )


def shift_point(event: ShiftEvent) -> Point:
    """A shift of operating point: written to `seqae_event`, apart from fault alerts."""
    return Point(
        "seqae_event",
        {"asset": event.asset, "profile": event.profile, "kind": "shift"},
        {"state": event.state},
        event.time_ns,
    )
