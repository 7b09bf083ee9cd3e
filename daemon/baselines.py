"""Per-asset baselines: warm-up calibration on the asset's own windows, shifts of operating point.

An asset without a baseline for the served model version is `calibrating`: its windows are scored
with the model's default baseline and collected; after `warmup_windows` of them its own baseline
is fitted (seqae.calibrate.fit_asset_baseline, shrunk towards the profile's). A window the
scorer calls `shifted` (above its threshold, normal once moved along the operating envelope) is a
shift event, not a fault alert; after `rebaseline_windows` of them in a row the asset's baseline
moves to its new operating point, and the next normal window ends the shift with a `left` event.

The changelog carries every asset's calibration (`calibrations`). The files under `<state_dir>/`
(`baselines/`, `moved/`, `warmup/`, `warmup-errors/`) are a local cache of it, written with a
`snapshot`, which the daemon takes at a stop or a revocation: not at each fit, where a fleet that
starts together would wait for thousands of fsyncs on the run loop, nor ahead of the offsets its
windows came from.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from daemon.settings import BaselineSettings
from seqae.artifacts import write_atomic
from seqae.calibrate import Baseline, CalibrationError, fit_asset_baseline

log = logging.getLogger(__name__)
ScoreState = Literal["ok", "calibrating", "shifted"]


def write_files(files: list[tuple[Path, bytes | None]]) -> None:
    for path, data in files:
        if data is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, data)


def _baseline_json(baseline: Baseline | None) -> dict[str, Any] | None:
    """`Baseline.to_dict` with its arrays as base64 blocks: exact, and JSON-encoded an order
    of magnitude faster than lists of floats (this runs for every changed asset at every
    checkpoint)."""
    if baseline is None:
        return None
    d = baseline.to_dict()
    for key, value in d.items():
        if isinstance(value, list) and key != "degenerate":  # channel indices: kept a list
            d[key] = _arrays_json([np.asarray(getattr(baseline, key))])
    return d


def _baseline_from_json(data: dict[str, Any] | None) -> Baseline | None:
    if data is None:
        return None
    d = {
        k: _arrays_from_json(v)[0].tolist() if isinstance(v, dict) and "data" in v else v
        for k, v in data.items()
    }
    return Baseline.from_dict(d)


def _arrays_json(arrays: list[np.ndarray]) -> dict[str, Any] | None:
    """Same-shaped arrays as one base64 block (exact, NaN kept); None for none."""
    if not arrays:
        return None
    stacked = np.ascontiguousarray(np.stack(arrays))
    return {
        "dtype": stacked.dtype.str,
        "shape": list(stacked.shape),
        "data": base64.b64encode(stacked.tobytes()).decode("ascii"),
    }


def _arrays_from_json(data: dict[str, Any] | None) -> list[np.ndarray]:
    if data is None:
        return []
    dtype = np.dtype(data["dtype"])
    if dtype.kind != "f":
        raise ValueError(f"arrays of dtype {dtype} (expected floats)")
    flat = np.frombuffer(base64.b64decode(data["data"], validate=True), dtype)
    return list(flat.reshape([int(n) for n in data["shape"]]).copy())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


@dataclass(frozen=True, slots=True)
class ShiftEvent:
    asset: str
    profile: str
    time_ns: int
    state: Literal["entered", "left"]


@dataclass
class WarmupSnapshot:
    files: list[tuple[Path, bytes | None]] = field(default_factory=list)  # None: delete
    changes: dict[tuple[str, str], int] = field(default_factory=dict)


def join_arrays_json(blocks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Base64 blocks of same-shaped arrays as one block, exactly as if encoded at once."""
    arrays = [a for block in blocks for a in _arrays_from_json(block)]
    return _arrays_json(arrays)


@dataclass(slots=True)
class _AssetCalibration:
    version: str
    baseline: Baseline | None = None
    # tuples, replaced rather than appended to: a fitted asset holds no empty lists, and a
    # checkpoint takes them without a copy
    warmup: tuple[np.ndarray, ...] = ()
    # each warm-up window's error features as scored under the profile's baseline (None where
    # not): the fit reuses them instead of a second forward. Durable beside the windows: a
    # forward's last bits depend on the batch it ran in, so the fit after a restore must use
    # the features the windows were scored with, not features computed again
    warmup_errors: tuple[np.ndarray | None, ...] = ()
    moved: Baseline | None = None  # the baseline re-centred at the operating point it moved to
    shift_run: tuple[np.ndarray, ...] = ()  # displacements of shifted windows
    shifted: bool = False
    changes: int = 0  # bumped on every change worth persisting
    saved: int = 0  # `changes` as of the last snapshot written

    def current(self, default: Baseline) -> Baseline:
        """What scores the asset's windows: the moved baseline, else its own, else `default`."""
        if self.moved is not None:
            return self.moved
        return self.baseline if self.baseline is not None else default


@dataclass(frozen=True, slots=True)
class Calibration:
    """One profile's calibration of an asset as a checkpoint took it, not yet encoded: taking
    it copies references only (baselines are replaced, never changed; warm-up windows are
    appended, never changed), so the changelog encodes what is new since it last wrote."""

    profile: str
    version: str
    baseline: Baseline | None
    moved: Baseline | None
    warmup: tuple[np.ndarray, ...]
    warmup_errors: tuple[np.ndarray | None, ...]
    shift_run: tuple[np.ndarray, ...]
    shifted: bool

    @staticmethod
    def baseline_json(baseline: Baseline | None) -> dict[str, Any] | None:
        return _baseline_json(baseline)

    def warmup_json(self, start: int = 0) -> dict[str, Any] | None:
        """The warm-up windows from `start` on as one base64 block (None: none)."""
        return _arrays_json(list(self.warmup[start:]))

    def warmup_errors_json(self, start: int = 0) -> dict[str, Any] | None:
        """The features of the warm-up windows from `start` on (None: not every window of the
        warm-up has them, and the fit computes them all again)."""
        return _arrays_json(_known_errors(self.warmup, self.warmup_errors)[start:])

    def shift_run_json(self) -> dict[str, Any] | None:
        return _arrays_json(list(self.shift_run))

    def to_json(self) -> dict[str, Any]:
        """`AssetBaselines.asset_state`'s item: everything inline, JSON-safe and exact."""
        errors = self.warmup_errors_json()
        return {
            "profile": self.profile,
            "version": self.version,
            "baseline": _baseline_json(self.baseline),
            "moved": _baseline_json(self.moved),
            "warmup": self.warmup_json(),
            **({"warmup_errors": errors} if errors is not None else {}),  # as the changelog's
            "shift_run": self.shift_run_json(),
            "shifted": self.shifted,
        }


def _known_errors(
    warmup: tuple[np.ndarray, ...], errors: tuple[np.ndarray | None, ...]
) -> list[np.ndarray]:
    """Every warm-up window's features, or none where one is not known."""
    if len(errors) != len(warmup) or any(e is None for e in errors):
        return []
    return list(errors)  # type: ignore[arg-type]


def _with_errors(
    warmup: tuple[np.ndarray, ...], errors: list[np.ndarray]
) -> tuple[np.ndarray | None, ...]:
    """Restored features, kept only where they are one per window."""
    return tuple(errors) if len(errors) == len(warmup) else ()


def _file(asset: str, entry: _AssetCalibration, baseline: Baseline | None) -> bytes | None:
    """A baseline's cache file (None: there is none, the file goes)."""
    if baseline is None:
        return None
    payload = {"asset": asset, "model_version": entry.version, "baseline": baseline.to_dict()}
    return json.dumps(payload).encode()


# the state of most windows: no calibration, no shift (`observe_batch`)
_OK: tuple[ScoreState, ShiftEvent | None] = ("ok", None)


class AssetBaselines:
    """Which baseline scores each asset's windows, and the asset's score state."""

    def __init__(self, settings: BaselineSettings, state_dir: Path) -> None:
        self._s = settings
        self._dir = Path(state_dir)
        self._assets: dict[tuple[str, str], _AssetCalibration] = {}
        self._profiles: set[str] = set()  # every profile of a key of `_assets`
        # keys whose `changes` are ahead of `saved`: a snapshot visits these, not every asset
        self._unsaved: set[tuple[str, str]] = set()
        self.fitted = 0
        self.fit_failures = 0

    def _entry(self, profile: str, version: str, asset: str) -> _AssetCalibration:
        key = (profile, asset)
        entry = self._assets.get(key)
        if entry is None or entry.version != version:
            entry = _AssetCalibration(version)
            if self._s.mode == "per_asset":
                entry.baseline = self._load(self._path(profile, version, asset), asset)
                if entry.baseline is None:
                    entry.warmup, entry.warmup_errors = self._load_warmup(profile, version, asset)
            entry.moved = self._load(self._moved_path(profile, version, asset), asset)
            self._assets[key] = entry
            self._profiles.add(profile)
        return entry

    def baseline(self, profile: str, version: str, asset: str, default: Baseline) -> Baseline:
        return self._entry(profile, version, asset).current(default)

    def changed_since(
        self, profile: str, version: str, asset: str, used: Baseline, default: Baseline
    ) -> bool:
        """True when a window scored with `used` must be scored again: the asset's baseline
        changed after `used` was chosen (its warm-up ended, or it re-baselined after a shift,
        earlier in the same batch)."""
        return self.baseline(profile, version, asset, default) is not used

    def baselines_for(
        self, profile: str, version: str, assets: Sequence[str], default: Baseline
    ) -> list[Baseline]:
        """`baseline` of each of a batch's assets."""
        return [self._entry(profile, version, asset).current(default) for asset in assets]

    def observe_batch(
        self,
        scorer: Any,
        profile: str,
        version: str,
        hop: int,
        windows: Sequence[tuple[str, int, np.ndarray]],
        shifted: Sequence[bool],
        used: Sequence[Baseline],
        default: Baseline,
        errors: np.ndarray | None = None,
    ) -> tuple[list[tuple[ScoreState, ShiftEvent | None] | None], list[int]]:
        """`changed_since` and then `observe` for each (asset, time_ns, values) of a batch, in
        order: (each window's state and shift event, None where the window is stale; the stale
        windows' indices). The common case (an asset with its baseline, not shifted before nor
        now) is settled here; calibrating and shifting windows take `observe`. `errors`: the
        batch's error features [N, F], for the warm-up windows scored under `default`."""
        states: list[tuple[ScoreState, ShiftEvent | None] | None] = [None] * len(windows)
        stale = []
        entries = self._assets
        calibrates = self._s.mode == "per_asset"
        for i, (asset, time_ns, values) in enumerate(windows):
            entry = entries.get((profile, asset))
            if entry is not None and entry.version == version:
                if entry.current(default) is not used[i]:
                    stale.append(i)
                    continue
                if not (shifted[i] or entry.shifted or (calibrates and entry.baseline is None)):
                    entry.shift_run = ()
                    states[i] = _OK
                    continue
            elif self.changed_since(profile, version, asset, used[i], default):
                stale.append(i)
                continue
            states[i] = self.observe(
                scorer,
                profile,
                version,
                hop,
                asset,
                time_ns,
                values,
                shifted[i],
                errors[i] if errors is not None and used[i] is default else None,
            )
        return states, stale

    def observe(
        self,
        scorer: Any,
        profile: str,
        version: str,
        hop: int,
        asset: str,
        time_ns: int,
        window: np.ndarray,
        shifted: bool,
        errors: np.ndarray | None = None,
    ) -> tuple[ScoreState, ShiftEvent | None]:
        """Account for one scored window; returns its state and a shift event if one began/ended.
        `errors`: its error features, if it was scored under the profile's baseline."""
        entry = self._entry(profile, version, asset)
        event = None
        if self._s.mode == "per_asset" and entry.baseline is None:
            if entry.shifted:  # recalibration ended a shift
                entry.shifted = False
                event = ShiftEvent(asset, profile, time_ns, "left")
            entry.warmup += (window,)
            entry.warmup_errors += (None if errors is None else errors.copy(),)
            self._changed(profile, asset, entry)
            if len(entry.warmup) >= self._s.warmup_windows:
                self._fit(scorer, profile, hop, asset, entry)
            return "calibrating", event
        if shifted != entry.shifted:
            entry.shifted = shifted
            event = ShiftEvent(asset, profile, time_ns, "entered" if shifted else "left")
        if shifted:
            current = self.baseline(profile, version, asset, scorer.default_baseline)
            entry.shift_run += (current.displacement(window[None])[0],)
            if self._s.rebaseline_windows and len(entry.shift_run) >= self._s.rebaseline_windows:
                self._move(profile, asset, entry, current)
        else:
            entry.shift_run = ()
        return ("shifted" if shifted else "ok"), event

    def _move(self, profile: str, asset: str, entry: _AssetCalibration, current: Baseline) -> None:
        """Re-baseline at the operating point the asset moved to: the baseline's centre moves
        by the median displacement of the shifted windows; statistics and threshold stay."""
        moved = current.moved(np.median(np.stack(entry.shift_run), axis=0))
        entry.moved, entry.shift_run = moved, ()
        self._changed(profile, asset, entry)
        log.info(
            "asset %s (%s %s): re-baselined at its new operating point",
            asset,
            profile,
            entry.version,
        )

    def recalibrate(self, asset: str) -> int:
        """Put the asset back into warm-up for every profile; returns how many were reset."""
        reset = 0
        for (profile, name), entry in self._assets.items():
            if name == asset:
                self._path(profile, entry.version, asset).unlink(missing_ok=True)
                self._moved_path(profile, entry.version, asset).unlink(missing_ok=True)
                self._assets[(profile, name)] = _AssetCalibration(
                    entry.version, changes=1, shifted=entry.shifted
                )
                self._unsaved.add((profile, name))
                reset += 1
        return reset

    def asset_state(self, asset: str) -> list[dict[str, Any]]:
        """The asset's calibration for each profile it has one for, JSON-safe and exact (floats
        and arrays round-trip bit for bit): own and moved baselines, warm-up windows, shift."""
        return [calibration.to_json() for calibration in self.calibrations(asset)]

    def calibrations(self, asset: str) -> list[Calibration]:
        """`asset_state` as taken, not encoded (what a checkpoint hands the changelog)."""
        taken = []
        for profile in sorted(self._profiles):
            entry = self._assets.get((profile, asset))
            if entry is None:
                continue
            taken.append(
                Calibration(
                    profile,
                    entry.version,
                    entry.baseline,
                    entry.moved,
                    entry.warmup,
                    entry.warmup_errors,
                    entry.shift_run,
                    entry.shifted,
                )
            )
        return taken

    def restore_asset(self, asset: str, state: list[dict[str, Any]]) -> None:
        """Replace the asset's calibration by `asset_state`'s list; raises ValueError naming the
        asset on bad data. A profile whose served version differs calibrates again, as usual."""
        entries = {}
        try:
            for item in state:
                # interned: each record decodes its own copy of the same few names
                entry = _AssetCalibration(sys.intern(str(item["version"])))
                entry.baseline = _baseline_from_json(item["baseline"])
                entry.moved = _baseline_from_json(item["moved"])
                entry.warmup = tuple(_arrays_from_json(item["warmup"]))
                errors = _arrays_from_json(item.get("warmup_errors"))
                entry.warmup_errors = _with_errors(entry.warmup, errors)
                entry.shift_run = tuple(_arrays_from_json(item["shift_run"]))
                entry.shifted = bool(item["shifted"])
                entries[(sys.intern(str(item["profile"])), asset)] = entry
        except (KeyError, TypeError, ValueError, CalibrationError) as exc:
            raise ValueError(f"baseline state for asset {asset!r}: {exc!r}") from exc
        self.forget([asset])
        self._assets.update(entries)
        self._profiles.update(profile for profile, _ in entries)

    def _changed(self, profile: str, asset: str, entry: _AssetCalibration) -> None:
        entry.changes += 1
        self._unsaved.add((profile, asset))

    def forget(self, assets: list[str]) -> None:
        for asset in assets:
            for profile in self._profiles:
                self._assets.pop((profile, asset), None)
                self._unsaved.discard((profile, asset))

    def snapshot(self) -> WarmupSnapshot:
        """Calibrations as of now (own and moved baselines, warm-up progress), as files to write
        with the rest of a checkpoint, so a restart without the changelog continues warm-up with
        the same windows; `saved()` once they are written. Only the assets changed since their
        last saved snapshot are visited."""
        snap = WarmupSnapshot()
        for key in list(self._unsaved):
            entry = self._assets.get(key)
            if entry is None or entry.changes == entry.saved:
                self._unsaved.discard(key)  # replaced by a new version's entry meanwhile
                continue
            path = self._warmup_path(key[0], entry.version, key[1])
            errors_path = self._warmup_errors_path(key[0], entry.version, key[1])
            if entry.baseline is None and entry.warmup:
                known = _known_errors(entry.warmup, entry.warmup_errors)
                snap.files.append((path, _npy(np.stack(entry.warmup).astype(np.float32))))
                snap.files.append((errors_path, _npy(np.stack(known)) if known else None))
            else:
                snap.files.extend([(path, None), (errors_path, None)])
            profile, asset = key
            if entry.baseline is not None:
                own = _file(asset, entry, entry.baseline)
                snap.files.append((self._path(profile, entry.version, asset), own))
            if entry.baseline is not None or entry.moved is not None:  # a fit ends a move
                moved = _file(asset, entry, entry.moved)
                snap.files.append((self._moved_path(profile, entry.version, asset), moved))
            snap.changes[key] = entry.changes
        return snap

    def saved(self, snap: WarmupSnapshot) -> None:
        write_files(snap.files)
        for key, changes in snap.changes.items():
            entry = self._assets.get(key)
            if entry is not None:
                entry.saved = max(entry.saved, changes)
                if entry.saved >= entry.changes:
                    self._unsaved.discard(key)

    def checkpoint(self) -> None:
        self.saved(self.snapshot())

    def _fit(
        self, scorer: Any, profile: str, hop: int, asset: str, entry: _AssetCalibration
    ) -> None:
        windows = np.stack(entry.warmup)
        known = entry.warmup_errors
        # windows restored from a checkpoint come without their features: computed again
        errors = (
            np.stack(known)  # type: ignore[arg-type]
            if len(known) == len(windows) and all(e is not None for e in known)
            else None
        )
        try:
            baseline = fit_asset_baseline(
                scorer,
                windows,
                hop=hop,
                refit_scaler=self._s.refit_scaler,
                prior_windows=self._s.prior_windows,
                errors=errors,
            )
        except (CalibrationError, ValueError) as exc:
            # keep the newer half and go on collecting rather than fail the asset
            self.fit_failures += 1
            log.warning("baseline fit for asset %s failed: %s", asset, exc)
            half = len(entry.warmup) // 2
            entry.warmup, entry.warmup_errors = entry.warmup[half:], entry.warmup_errors[half:]
            return
        entry.baseline, entry.warmup, entry.warmup_errors, entry.moved = baseline, (), (), None
        self._changed(profile, asset, entry)
        self.fitted += 1
        log.info("asset %s (%s %s): own baseline fitted", asset, profile, entry.version)

    def _cached(self, folder: str, ext: str, profile: str, version: str, asset: str) -> Path:
        return self._dir / folder / _safe(profile) / _safe(version) / f"{_safe(asset)}{ext}"

    def _path(self, profile: str, version: str, asset: str) -> Path:
        return self._cached("baselines", ".json", profile, version, asset)

    def _moved_path(self, profile: str, version: str, asset: str) -> Path:
        return self._cached("moved", ".json", profile, version, asset)

    def _warmup_path(self, profile: str, version: str, asset: str) -> Path:
        return self._cached("warmup", ".npy", profile, version, asset)

    def _warmup_errors_path(self, profile: str, version: str, asset: str) -> Path:
        return self._cached("warmup-errors", ".npy", profile, version, asset)

    def _load(self, path: Path, asset: str) -> Baseline | None:
        if not path.exists():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            return Baseline.from_dict(payload["baseline"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s: unreadable baseline (%s); asset %s calibrates again", path, exc, asset)
            return None

    def _load_warmup(
        self, profile: str, version: str, asset: str
    ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray | None, ...]]:
        """The warm-up windows a snapshot left, and their features where it left them."""
        path = self._warmup_path(profile, version, asset)
        if not path.exists():
            return (), ()
        try:
            windows = tuple(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            log.error("%s: unreadable warm-up windows (%s); starting over", path, exc)
            return (), ()
        errors_path = self._warmup_errors_path(profile, version, asset)
        try:
            errors = list(np.load(errors_path, allow_pickle=False))
        except FileNotFoundError:
            errors = []
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); the fit computes them again", errors_path, exc)
            errors = []
        return windows, _with_errors(windows, errors)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
