"""A synthetic plant of centrifugal pumps with labelled faults (`seqae synth`).

Each pump runs at a speed setpoint (steps, ramps and a slow daily cycle) against a system curve
set by its valve. The operating point is where the pump curve, ``H = H0 n² - a Q²``, meets the
system curve, ``H = Hs + k Q²``, so pressure and flow rise and fall together with speed. Motor
current follows shaft power (hydraulic power over efficiency), temperature is a first-order lag
of shaft power, vibration a baseline that grows with speed and with distance from the best
efficiency point. Every asset has its own operating point and every channel its own sensor noise.

Process faults (bearing wear, cavitation, valve blockage) act on the physics, sensor faults
(stuck sensor, spikes) on the measurements. Faults draw on their own random streams, so a pump
generated with faults equals the healthy pump, sample for sample, before its first fault and,
for sensor faults, everywhere outside the fault; after a process fault only the temperature
still differs while it relaxes back (a few time constants).
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

from seqae.data import Series

CHANNELS: tuple[str, ...] = ("pressure", "flow", "motor_current", "temperature", "vibration")
FAULT_KINDS: tuple[str, ...] = (
    "bearing_wear",
    "cavitation",
    "stuck_sensor",
    "spikes",
    "valve_blockage",
)
DEFAULT_START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z

# Sensor noise standard deviation per channel, in the channel's unit.
NOISE_STD = {
    "pressure": 0.02,
    "flow": 0.3,
    "motor_current": 0.08,
    "temperature": 0.05,
    "vibration": 0.05,
}
# Spike height per channel: several times the channel's normal spread.
SPIKE_HEIGHT = {
    "pressure": 1.5,
    "flow": 15.0,
    "motor_current": 6.0,
    "temperature": 6.0,
    "vibration": 4.0,
}


class SynthError(ValueError):
    """A synthetic-plant request that cannot be met; the message names the argument."""


@dataclass
class FaultEvent:
    """One labelled fault: samples ``start`` to ``end`` (exclusive) of ``asset``."""

    asset: str
    kind: str
    start: int
    end: int
    start_ns: int
    end_ns: int  # timestamp of the first sample after the fault (or one period past the end)
    channel: str | None = None  # the affected sensor for stuck_sensor and spikes


@dataclass(frozen=True)
class PumpParams:
    """The operating point of one pump."""

    shutoff_head: float  # bar at rated speed and zero flow
    pump_coeff: float  # bar / (m3/h)²
    static_head: float  # bar
    valve_coeff: float  # bar / (m3/h)² at the base opening
    bep_flow: float  # m3/h, best efficiency point at rated speed
    eta_max: float
    no_load_current: float  # A
    ambient: float  # °C
    heat_per_kw: float  # °C rise per kW shaft power at steady state
    temp_tau_s: float
    vib_base: float  # mm/s RMS


def _asset_rng(asset: str, seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(asset.encode()), stream])


def _pump_params(rng: np.random.Generator) -> PumpParams:
    return PumpParams(
        shutoff_head=float(rng.uniform(5.6, 6.4)),
        pump_coeff=float(rng.uniform(1.0e-3, 1.3e-3)),
        static_head=float(rng.uniform(1.0, 1.6)),
        valve_coeff=float(rng.uniform(1.6e-3, 2.2e-3)),
        bep_flow=float(rng.uniform(38.0, 44.0)),
        eta_max=float(rng.uniform(0.68, 0.76)),
        no_load_current=float(rng.uniform(2.5, 3.5)),
        ambient=float(rng.uniform(22.0, 28.0)),
        heat_per_kw=float(rng.uniform(3.0, 4.0)),
        temp_tau_s=float(rng.uniform(400.0, 800.0)),
        vib_base=float(rng.uniform(1.2, 2.4)),
    )


def _speed_schedule(
    rng: np.random.Generator, n: int, period_s: float, t_s: np.ndarray
) -> np.ndarray:
    """Relative speed: held setpoints joined by steps or ramps, times a daily cycle."""
    speed = np.empty(n)
    level = float(rng.uniform(0.88, 1.02))
    i = 0
    while i < n:
        hold = max(1, int(rng.exponential(900.0) / period_s) + int(120.0 / period_s))
        speed[i : i + hold] = level
        i += hold
        new_level = float(rng.uniform(0.85, 1.05))
        if i < n and rng.random() < 0.5:
            ramp = min(n - i, max(1, int(rng.uniform(30.0, 180.0) / period_s)))
            speed[i : i + ramp] = np.linspace(level, new_level, ramp + 1)[1:]
            i += ramp
        level = new_level
    hour = (t_s / 3600.0) % 24.0
    daily = 1.0 + 0.03 * np.sin(2.0 * np.pi * (hour - 8.0) / 24.0)
    return speed * daily


def _smooth_walk(rng: np.random.Generator, n: int, step: float, alpha: float) -> np.ndarray:
    """A slowly wandering signal around 0: x[i] = (1 - alpha) x[i-1] + noise."""
    return np.asarray(lfilter([1.0], [1.0, alpha - 1.0], rng.normal(0.0, step, n)))


def _first_order_lag(target: np.ndarray, period_s: float, tau_s: float) -> np.ndarray:
    """y[i] = y[i-1] + a (x[i] - y[i-1]), starting at steady state on x[0]."""
    a = 1.0 - np.exp(-period_s / tau_s)
    y, _ = lfilter([a], [1.0, a - 1.0], target, zi=[(1.0 - a) * target[0]])
    return np.asarray(y)


@dataclass
class _ProcessEffects:
    """Per-sample changes that process faults make to the physics."""

    valve_factor: np.ndarray  # multiplies the system-curve coefficient
    head_loss: np.ndarray  # fraction of pump head lost (cavitation)
    pressure_osc: np.ndarray  # bar
    flow_osc: np.ndarray  # m3/h
    vib_gain: np.ndarray  # multiplies vibration
    vib_noise: np.ndarray  # mm/s, added
    temp_add: np.ndarray  # °C, added


def _onset(length: int, samples: int) -> np.ndarray:
    """0 → 1 over the first `samples` of a segment, then 1."""
    return np.minimum(1.0, (np.arange(length) + 1.0) / max(1, samples))


def _hf_oscillation(rng: np.random.Generator, length: int) -> np.ndarray:
    """Unit-scale oscillation with its power near the Nyquist frequency."""
    t = np.arange(length)
    periods = rng.uniform(2.2, 4.0, 3)
    phases = rng.uniform(0.0, 2.0 * np.pi, 3)
    wave = sum(np.sin(2.0 * np.pi * t / p + ph) for p, ph in zip(periods, phases, strict=True))
    white = rng.normal(0.0, 1.0, length)
    return np.asarray(0.5 * wave + 0.5 * np.diff(white, prepend=0.0))


def _apply_process_fault(
    fx: _ProcessEffects, kind: str, s: slice, rng: np.random.Generator, pump: PumpParams
) -> None:
    length = s.stop - s.start
    if kind == "bearing_wear":
        growth = (np.arange(length) + 1.0) / length
        fx.vib_gain[s] *= 1.0 + 2.0 * growth**1.5
        fx.vib_noise[s] += rng.normal(0.0, 0.15, length) * growth
        fx.temp_add[s] += 2.5 * growth
    elif kind == "cavitation":
        ramp = _onset(length, 20)
        fx.head_loss[s] += 0.12 * ramp
        fx.pressure_osc[s] += 0.18 * ramp * _hf_oscillation(rng, length)
        fx.flow_osc[s] += 1.8 * ramp * _hf_oscillation(rng, length)
        fx.vib_gain[s] *= 1.0 + 0.8 * ramp
        fx.vib_noise[s] += np.abs(rng.normal(0.0, 0.6 * pump.vib_base, length)) * ramp
    elif kind == "valve_blockage":
        fx.valve_factor[s] *= 1.0 + 0.5 * _onset(length, max(1, length // 3))


def _check_faults(
    faults: Sequence[tuple[str, int, int]], n_samples: int
) -> list[tuple[str, int, int]]:
    checked: list[tuple[str, int, int]] = []
    for i, fault in enumerate(faults):
        try:
            kind, start, end = fault
        except (TypeError, ValueError) as exc:
            raise SynthError(f"faults[{i}]: expected (kind, start, end), got {fault!r}") from exc
        if kind not in FAULT_KINDS:
            raise SynthError(f"faults[{i}]: unknown fault kind {kind!r}; known: {FAULT_KINDS}")
        if not (0 <= int(start) < int(end) <= n_samples):
            raise SynthError(
                f"faults[{i}] ({kind}): need 0 <= start < end <= n_samples={n_samples}, "
                f"got start={start}, end={end}"
            )
        checked.append((kind, int(start), int(end)))
    ordered = sorted(checked, key=lambda f: f[1])
    for a, b in itertools.pairwise(ordered):
        if b[1] < a[2]:
            raise SynthError(f"faults overlap: {a} and {b}; give each fault its own segment")
    return checked


def generate_asset(
    asset: str,
    n_samples: int,
    *,
    period_s: float = 1.0,
    seed: int = 0,
    faults: Sequence[tuple[str, int, int]] = (),
    start_ns: int = DEFAULT_START_NS,
    plant_seed: int = 0,
    setpoint_steps: Sequence[tuple[int, float]] = (),
) -> tuple[Series, list[FaultEvent]]:
    """One pump's readings, labelled where `faults` ((kind, start, end) sample ranges) are active.

    `setpoint_steps` ((sample, factor) pairs) multiply the speed setpoint from that sample on: an
    operating-point change that keeps the plant's physics (not a fault, never labelled)."""
    if n_samples < 2:
        raise SynthError(f"n_samples must be at least 2, got {n_samples}")
    if not (period_s > 0 and np.isfinite(period_s)):
        raise SynthError(f"period_s must be a positive number, got {period_s}")
    checked = _check_faults(faults, n_samples)

    period_ns = round(period_s * 1e9)
    timestamps = start_ns + np.arange(n_samples, dtype=np.int64) * period_ns
    t_s = timestamps / 1e9
    # The pump itself depends on the plant, not on the stretch of history: a later `seed`
    # gives the same pumps running through other hours.
    pump = _pump_params(_asset_rng(asset, plant_seed, 0))
    rng = _asset_rng(asset, seed, 1)
    n = n_samples

    speed = _speed_schedule(rng, n, period_s, t_s)
    for at, factor in setpoint_steps:
        if not (0 <= at < n and factor > 0):
            raise SynthError(
                f"setpoint_steps: need 0 <= sample < {n} and factor > 0, got {at}, {factor}"
            )
        speed[at:] *= factor
    alpha = min(1.0, period_s / 1800.0)
    valve_wander = 1.0 + _smooth_walk(rng, n, 0.003 * np.sqrt(alpha), alpha)
    ambient = pump.ambient + 1.5 * np.sin(2.0 * np.pi * ((t_s / 3600.0) % 24.0 - 9.0) / 24.0)
    noise = {c: rng.normal(0.0, NOISE_STD[c], n) for c in CHANNELS}
    vib_noise = rng.normal(0.0, 0.08, n)

    fx = _ProcessEffects(
        valve_factor=np.ones(n),
        head_loss=np.zeros(n),
        pressure_osc=np.zeros(n),
        flow_osc=np.zeros(n),
        vib_gain=np.ones(n),
        vib_noise=np.zeros(n),
        temp_add=np.zeros(n),
    )
    for j, (kind, start, end) in enumerate(checked):
        _apply_process_fault(fx, kind, slice(start, end), _asset_rng(asset, seed, 100 + j), pump)

    # Operating point: pump curve meets system curve.
    shutoff = pump.shutoff_head * speed**2 * (1.0 - fx.head_loss)
    k_sys = pump.valve_coeff * valve_wander * fx.valve_factor
    flow = np.sqrt(np.maximum(shutoff - pump.static_head, 0.0) / (pump.pump_coeff + k_sys))
    pressure = shutoff - pump.pump_coeff * flow**2

    bep = pump.bep_flow * speed
    eta = np.clip(pump.eta_max * (1.0 - ((flow - bep) / bep) ** 2), 0.3, None)
    shaft_kw = flow * pressure / 36.0 / eta  # Q[m3/h] * p[bar] / 36 = hydraulic kW
    current = pump.no_load_current + shaft_kw * 1000.0 / (np.sqrt(3.0) * 400.0 * 0.85)
    temperature = (
        _first_order_lag(ambient + pump.heat_per_kw * shaft_kw, period_s, pump.temp_tau_s)
        + fx.temp_add
    )
    off_bep = 1.0 + 0.6 * ((flow - bep) / bep) ** 2
    vibration = pump.vib_base * (0.7 + 0.3 * speed**2) * off_bep * fx.vib_gain
    vibration = np.abs(vibration + pump.vib_base * 0.05 * vib_noise + fx.vib_noise)

    values = np.stack(
        [
            pressure + fx.pressure_osc + noise["pressure"],
            flow + fx.flow_osc + noise["flow"],
            current + noise["motor_current"],
            temperature + noise["temperature"],
            vibration + noise["vibration"],
        ],
        axis=1,
    )

    labels = np.zeros(n, dtype=np.int8)
    events: list[FaultEvent] = []
    for j, (kind, start, end) in enumerate(checked):
        channel = _apply_sensor_fault(values, kind, start, end, _asset_rng(asset, seed, 100 + j))
        labels[start:end] = 1
        events.append(
            FaultEvent(
                asset=asset,
                kind=kind,
                start=start,
                end=end,
                start_ns=int(timestamps[start]),
                end_ns=int(start_ns + end * period_ns),
                channel=channel,
            )
        )
    events.sort(key=lambda e: e.start)
    series = Series(
        timestamps=timestamps,
        values=values.astype(np.float32),
        channels=list(CHANNELS),
        labels=labels,
        asset=asset,
    )
    return series, events


def _apply_sensor_fault(
    values: np.ndarray, kind: str, start: int, end: int, rng: np.random.Generator
) -> str | None:
    if kind == "stuck_sensor":
        c = int(rng.integers(len(CHANNELS)))
        frozen = values[start - 1, c] if start > 0 else values[start, c]
        values[start:end, c] = frozen
        return CHANNELS[c]
    if kind == "spikes":
        c = int(rng.integers(len(CHANNELS)))
        length = end - start
        positions = [int(rng.integers(0, min(length, 5)))]
        while True:
            nxt = positions[-1] + int(rng.integers(8, 40))
            if nxt >= length:
                break
            positions.append(nxt)
        idx = start + np.asarray(positions)
        signs = rng.choice([-1.0, 1.0], len(idx))
        if CHANNELS[c] in ("vibration", "flow"):  # keep physically non-negative readings
            signs = np.abs(signs)
        height = SPIKE_HEIGHT[CHANNELS[c]] * rng.uniform(0.8, 1.2, len(idx))
        values[idx, c] += signs * height
        return CHANNELS[c]
    return None


def _fault_lengths(kind: str, n_samples: int, rng: np.random.Generator) -> int:
    frac = rng.uniform(0.10, 0.16) if kind == "bearing_wear" else rng.uniform(0.04, 0.09)
    return max(20, int(frac * n_samples))


def generate_plant(
    n_assets: int = 3,
    n_samples: int = 3600,
    *,
    period_s: float = 1.0,
    seed: int = 0,
    with_faults: bool = True,
    healthy_assets: int = 1,
    max_faults_per_asset: int = 2,
    start_ns: int = DEFAULT_START_NS,
    plant_seed: int = 0,
) -> dict[str, tuple[Series, list[FaultEvent]]]:
    """Assets ``pump-1``.. with their fault events.

    With faults, all but `healthy_assets` (chosen by seed) get one to `max_faults_per_asset`
    faults of distinct kinds, at seeded positions after the first 15 % of the history; kinds are
    dealt round-robin from a seeded order so that a plant covers as many kinds as it can.
    """
    if n_assets < 1:
        raise SynthError(f"n_assets must be at least 1, got {n_assets}")
    if not 0 <= healthy_assets <= n_assets:
        raise SynthError(
            f"healthy_assets must be in [0, n_assets={n_assets}], got {healthy_assets}"
        )
    if not 1 <= max_faults_per_asset <= len(FAULT_KINDS):
        raise SynthError(
            f"max_faults_per_asset must be in [1, {len(FAULT_KINDS)}], got {max_faults_per_asset}"
        )
    assets = [f"pump-{i + 1}" for i in range(n_assets)]
    plan: dict[str, list[tuple[str, int, int]]] = {a: [] for a in assets}
    if with_faults and healthy_assets < n_assets:
        min_samples = 300 * max_faults_per_asset
        if n_samples < min_samples:
            raise SynthError(
                f"n_samples must be at least {min_samples} to place faults, got {n_samples}"
            )
        rng = np.random.default_rng([seed, 7])
        healthy = set(rng.choice(assets, healthy_assets, replace=False).tolist())
        kinds = [FAULT_KINDS[i] for i in rng.permutation(len(FAULT_KINDS))]
        k = 0
        for asset in assets:
            if asset in healthy:
                continue
            count = int(rng.integers(1, max_faults_per_asset + 1))
            chosen: list[str] = []
            while len(chosen) < count:
                kind = kinds[k % len(kinds)]
                k += 1
                if kind not in chosen:
                    chosen.append(kind)
            lo, hi = int(0.15 * n_samples), int(0.97 * n_samples)
            slot = (hi - lo) // count
            for j, kind in enumerate(chosen):
                length = min(_fault_lengths(kind, n_samples, rng), slot - 1)
                start = lo + j * slot + int(rng.integers(0, slot - length))
                plan[asset].append((kind, start, start + length))
    return {
        asset: generate_asset(
            asset,
            n_samples,
            period_s=period_s,
            seed=seed,
            faults=plan[asset],
            start_ns=start_ns,
            plant_seed=plant_seed,
        )
        for asset in assets
    }


def _rfc3339(timestamps: np.ndarray) -> np.ndarray:
    """Epoch-ns timestamps as RFC 3339 UTC text, with as many decimals as they need."""
    units: tuple[tuple[Literal["s", "ms", "us"], int], ...] = (
        ("s", 10**9),
        ("ms", 10**6),
        ("us", 10**3),
    )
    unit: Literal["s", "ms", "us", "ns"] = "ns"
    for candidate, ns in units:
        if np.all(timestamps % ns == 0):
            unit = candidate
            break
    as_dt: npt.NDArray[np.datetime64] = timestamps.astype("datetime64[ns]")
    return np.char.add(np.datetime_as_string(as_dt, unit=unit), "Z")


def write_plant(
    out_dir: str | Path,
    plant: Mapping[str, tuple[Series, list[FaultEvent]]],
    *,
    fmt: str = "csv",
) -> list[Path]:
    """Write ``<asset>.csv`` per asset, a time-sorted ``plant.csv`` for replay, and ``faults.json``."""
    import pandas as pd  # only needed here

    if fmt != "csv":
        raise SynthError(f"fmt: only 'csv' is supported, got {fmt!r}")
    if not plant:
        raise SynthError("plant: nothing to write, the plant has no assets")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    channels = next(iter(plant.values()))[0].channels
    paths: list[Path] = []
    frames: list[pd.DataFrame] = []
    all_events: list[FaultEvent] = []
    for asset, (series, events) in plant.items():
        if series.channels != channels:
            raise SynthError(f"plant[{asset!r}]: channels {series.channels} differ from {channels}")
        fault = np.full(len(series.timestamps), "", dtype=object)
        for e in events:
            fault[e.start : e.end] = e.kind
        labels = series.labels if series.labels is not None else np.zeros(len(fault), np.int8)
        ts_text = _rfc3339(series.timestamps)
        table = pd.DataFrame({"timestamp": ts_text})
        for i, c in enumerate(channels):
            table[c] = series.values[:, i]
        table["label"] = labels.astype(int)
        table["fault"] = fault
        path = out / f"{asset}.csv"
        table.to_csv(path, index=False, float_format="%.6g", na_rep="")
        paths.append(path)
        wide = table[["timestamp", *channels]].copy()
        wide.insert(1, "asset", asset)
        wide["_ns"] = series.timestamps
        frames.append(wide)
        all_events.extend(events)

    combined = pd.concat(frames, ignore_index=True)
    combined = combined.sort_values(["_ns", "asset"], kind="stable").drop(columns="_ns")
    plant_path = out / "plant.csv"
    combined.to_csv(plant_path, index=False, float_format="%.6g", na_rep="")
    paths.append(plant_path)

    faults_path = out / "faults.json"
    doc = {
        "assets": list(plant),
        "channels": list(channels),
        "events": [
            {
                **asdict(e),
                "start_time": str(_rfc3339(np.array([e.start_ns]))[0]),
                "end_time": str(_rfc3339(np.array([e.end_ns]))[0]),
            }
            for e in all_events
        ],
    }
    faults_path.write_text(json.dumps(doc, indent=2) + "\n")
    paths.append(faults_path)
    return paths
