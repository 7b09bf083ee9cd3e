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

The defaults are the plant the demo and the tests were built on. Two options make it harder
without changing a single default sample (their physics and noise draw on random streams of
their own):

- ``difficulty="hard"``: a wider speed range, a structural resonance in vibration, motor
  efficiency and power factor that fall at part load, and temperature driven by the pump's
  losses (shaft power times ``1 - eta``): relations between channels a linear model cannot hold.
- ``n_channels`` (5 to 50): derived and redundant sensors after the five above: pressures along
  the discharge line (the friction drop grows with flow²), bearing temperatures (friction with
  speed²), winding temperatures (I²R heating), vibration at other points, redundant flow meters,
  fluid outlet temperatures (losses over flow) and phase currents.

`SLOW_FAULT_KINDS` are small, slow faults that the default plant never draws: a sensor drifting
a few tenths of its normal standard deviation per hour, a sensor whose noise grows, a sensor
stuck at a normal value, impeller wear, efficiency loss and slow bearing wear.
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
# Small, slow faults: known to generate_asset, drawn by generate_plant only when asked.
SLOW_FAULT_KINDS: tuple[str, ...] = (
    "sensor_drift",
    "noise_growth",
    "stuck_normal",
    "impeller_wear",
    "efficiency_loss",
    "slow_bearing_wear",
)
ALL_FAULT_KINDS: tuple[str, ...] = FAULT_KINDS + SLOW_FAULT_KINDS
SENSOR_FAULT_KINDS: tuple[str, ...] = (
    "stuck_sensor",
    "spikes",
    "sensor_drift",
    "noise_growth",
    "stuck_normal",
)
DIFFICULTIES: tuple[str, ...] = ("default", "hard")
MAX_CHANNELS = 50
Difficulty = Literal["default", "hard"]
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


# Derived sensor families, dealt round-robin after the five base channels:
# (name prefix, sensor noise std, spike height, physically non-negative).
DERIVED_FAMILIES: tuple[tuple[str, float, float, bool], ...] = (
    ("pressure_line", 0.02, 1.5, False),
    ("bearing_temp", 0.05, 6.0, False),
    ("winding_temp", 0.05, 6.0, False),
    ("vibration_pt", 0.05, 4.0, True),
    ("flow_meter", 0.3, 15.0, True),
    ("fluid_temp", 0.03, 6.0, False),
    ("phase_current", 0.08, 6.0, False),
)


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


@dataclass(frozen=True)
class HardParams:
    """What the hard plant adds to a pump: resonance, motor curves, loss heating."""

    res_speed: float  # relative speed of the structural resonance
    res_width: float
    res_gain: float  # vibration multiplier at the resonance peak, less 1
    rated_kw: float  # motor rating: efficiency and power factor fall at part load
    loss_heat_share: float  # share of the temperature rise driven by losses rather than power


def _hard_params(rng: np.random.Generator) -> HardParams:
    return HardParams(
        res_speed=float(rng.uniform(0.80, 0.92)),
        res_width=float(rng.uniform(0.025, 0.045)),
        res_gain=float(rng.uniform(0.6, 1.0)),
        rated_kw=float(rng.uniform(9.0, 11.0)),
        loss_heat_share=float(rng.uniform(0.6, 0.8)),
    )


def channel_names(n_channels: int = len(CHANNELS)) -> list[str]:
    """The five base channels, then derived sensors dealt round-robin from `DERIVED_FAMILIES`."""
    if not len(CHANNELS) <= n_channels <= MAX_CHANNELS:
        raise SynthError(
            f"n_channels must be in [{len(CHANNELS)}, {MAX_CHANNELS}], got {n_channels}"
        )
    names = list(CHANNELS)
    for i in range(n_channels - len(CHANNELS)):
        prefix = DERIVED_FAMILIES[i % len(DERIVED_FAMILIES)][0]
        names.append(f"{prefix}_{i // len(DERIVED_FAMILIES) + 1}")
    return names


def _channel_specs(n_channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(noise std, spike height, non-negative) per channel."""
    noise = [NOISE_STD[c] for c in CHANNELS]
    spike = [SPIKE_HEIGHT[c] for c in CHANNELS]
    nonneg = [c in ("vibration", "flow") for c in CHANNELS]
    for i in range(n_channels - len(CHANNELS)):
        _, n, h, pos = DERIVED_FAMILIES[i % len(DERIVED_FAMILIES)]
        noise.append(n)
        spike.append(h)
        nonneg.append(pos)
    return np.asarray(noise), np.asarray(spike), np.asarray(nonneg)


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
    rng: np.random.Generator,
    n: int,
    period_s: float,
    t_s: np.ndarray,
    start_range: tuple[float, float] = (0.88, 1.02),
    level_range: tuple[float, float] = (0.85, 1.05),
) -> np.ndarray:
    """Relative speed: held setpoints joined by steps or ramps, times a daily cycle."""
    speed = np.empty(n)
    level = float(rng.uniform(*start_range))
    i = 0
    while i < n:
        hold = max(1, int(rng.exponential(900.0) / period_s) + int(120.0 / period_s))
        speed[i : i + hold] = level
        i += hold
        new_level = float(rng.uniform(*level_range))
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
    eta_factor: np.ndarray  # multiplies pump efficiency (efficiency_loss)
    bearing_temp_add: np.ndarray  # °C, added to the derived bearing temperatures


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
    fx: _ProcessEffects,
    kind: str,
    s: slice,
    rng: np.random.Generator,
    pump: PumpParams,
    hours: np.ndarray,
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
    elif kind in ("impeller_wear", "efficiency_loss", "slow_bearing_wear"):
        _apply_slow_process_fault(fx, kind, s, rng, hours)


def _apply_slow_process_fault(
    fx: _ProcessEffects, kind: str, s: slice, rng: np.random.Generator, hours: np.ndarray
) -> None:
    """Faults that grow at a steady rate per hour from their start, small at first."""
    h = hours[s] - hours[s.start]
    if kind == "impeller_wear":  # lost head, 1-2 % per hour; a little imbalance
        rate = float(rng.uniform(0.01, 0.02))
        fx.head_loss[s] += rate * h
        fx.vib_gain[s] *= 1.0 + 0.5 * rate * h
    elif kind == "efficiency_loss":  # wear rings open: 2-4 % of efficiency lost per hour
        fx.eta_factor[s] *= 1.0 - float(rng.uniform(0.02, 0.04)) * h
    else:  # slow_bearing_wear: vibration +5-10 % per hour, bearings warm 0.5-1 °C per hour
        fx.vib_gain[s] *= 1.0 + float(rng.uniform(0.05, 0.10)) * h
        warm = float(rng.uniform(0.5, 1.0)) * h
        fx.bearing_temp_add[s] += warm
        fx.temp_add[s] += 0.3 * warm


def _check_faults(
    faults: Sequence[tuple[str, int, int]], n_samples: int
) -> list[tuple[str, int, int]]:
    checked: list[tuple[str, int, int]] = []
    for i, fault in enumerate(faults):
        try:
            kind, start, end = fault
        except (TypeError, ValueError) as exc:
            raise SynthError(f"faults[{i}]: expected (kind, start, end), got {fault!r}") from exc
        if kind not in ALL_FAULT_KINDS:
            raise SynthError(f"faults[{i}]: unknown fault kind {kind!r}; known: {ALL_FAULT_KINDS}")
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
    difficulty: Difficulty = "default",
    n_channels: int = len(CHANNELS),
) -> tuple[Series, list[FaultEvent]]:
    """One pump's readings, labelled where `faults` ((kind, start, end) sample ranges) are active.

    `setpoint_steps` ((sample, factor) pairs) multiply the speed setpoint from that sample on: an
    operating-point change that keeps the plant's physics (not a fault, never labelled).
    `difficulty` and `n_channels` are described in the module's docstring; the defaults give
    the original five-channel plant, sample for sample."""
    if n_samples < 2:
        raise SynthError(f"n_samples must be at least 2, got {n_samples}")
    if not (period_s > 0 and np.isfinite(period_s)):
        raise SynthError(f"period_s must be a positive number, got {period_s}")
    if difficulty not in DIFFICULTIES:
        raise SynthError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    names = channel_names(n_channels)
    checked = _check_faults(faults, n_samples)

    period_ns = round(period_s * 1e9)
    timestamps = start_ns + np.arange(n_samples, dtype=np.int64) * period_ns
    t_s = timestamps / 1e9
    # The pump itself depends on the plant, not on the stretch of history: a later `seed`
    # gives the same pumps running through other hours.
    pump = _pump_params(_asset_rng(asset, plant_seed, 0))
    hard = _hard_params(_asset_rng(asset, plant_seed, 3)) if difficulty == "hard" else None
    rng = _asset_rng(asset, seed, 1)
    n = n_samples

    if hard is None:
        speed = _speed_schedule(rng, n, period_s, t_s)
    else:
        speed = _speed_schedule(rng, n, period_s, t_s, (0.78, 1.02), (0.72, 1.08))
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
        eta_factor=np.ones(n),
        bearing_temp_add=np.zeros(n),
    )
    hours = t_s / 3600.0
    for j, (kind, start, end) in enumerate(checked):
        fault_rng = _asset_rng(asset, seed, 100 + j)
        _apply_process_fault(fx, kind, slice(start, end), fault_rng, pump, hours)

    # Operating point: pump curve meets system curve.
    shutoff = pump.shutoff_head * speed**2 * (1.0 - fx.head_loss)
    k_sys = pump.valve_coeff * valve_wander * fx.valve_factor
    flow = np.sqrt(np.maximum(shutoff - pump.static_head, 0.0) / (pump.pump_coeff + k_sys))
    pressure = shutoff - pump.pump_coeff * flow**2

    bep = pump.bep_flow * speed
    eta = np.clip(pump.eta_max * (1.0 - ((flow - bep) / bep) ** 2), 0.3, None) * fx.eta_factor
    shaft_kw = flow * pressure / 36.0 / eta  # Q[m3/h] * p[bar] / 36 = hydraulic kW
    off_bep = 1.0 + 0.6 * ((flow - bep) / bep) ** 2
    if hard is None:
        current = pump.no_load_current + shaft_kw * 1000.0 / (np.sqrt(3.0) * 400.0 * 0.85)
        heat = pump.heat_per_kw * shaft_kw
        vib_struct = pump.vib_base * (0.7 + 0.3 * speed**2) * off_bep * fx.vib_gain
    else:
        current, heat, vib_struct = _hard_physics(pump, hard, speed, eta, shaft_kw, off_bep, fx)
    temperature = _first_order_lag(ambient + heat, period_s, pump.temp_tau_s) + fx.temp_add
    vibration = np.abs(vib_struct + pump.vib_base * 0.05 * vib_noise + fx.vib_noise)

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
    if n_channels > len(CHANNELS):
        plant = _PlantState(
            speed, flow, pressure, current, eta, shaft_kw, vib_struct, ambient, pump, fx
        )
        derived = _derived_channels(
            _asset_rng(asset, plant_seed, 2),
            _asset_rng(asset, seed, 2),
            plant,
            n_channels,
            period_s,
        )
        values = np.concatenate([values, derived], axis=1)

    noise_std, spike_height, nonneg = _channel_specs(n_channels)
    sensors = _SensorSpecs(noise_std, spike_height, nonneg, period_s)
    labels = np.zeros(n, dtype=np.int8)
    events: list[FaultEvent] = []
    for j, (kind, start, end) in enumerate(checked):
        c = _apply_sensor_fault(values, kind, start, end, _asset_rng(asset, seed, 100 + j), sensors)
        labels[start:end] = 1
        events.append(
            FaultEvent(
                asset=asset,
                kind=kind,
                start=start,
                end=end,
                start_ns=int(timestamps[start]),
                end_ns=int(start_ns + end * period_ns),
                channel=None if c is None else names[c],
            )
        )
    events.sort(key=lambda e: e.start)
    series = Series(
        timestamps=timestamps,
        values=values.astype(np.float32),
        channels=names,
        labels=labels,
        asset=asset,
    )
    return series, events


def _hard_physics(
    pump: PumpParams,
    hard: HardParams,
    speed: np.ndarray,
    eta: np.ndarray,
    shaft_kw: np.ndarray,
    off_bep: np.ndarray,
    fx: _ProcessEffects,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(motor current, heat input in °C of steady rise, structural vibration) of a hard pump."""
    load = shaft_kw / hard.rated_kw
    motor_eff = np.clip(0.93 - 0.25 * (1.0 - load) ** 2, 0.6, None)
    power_factor = np.clip(0.87 - 0.45 * (1.0 - load) ** 2, 0.4, None)
    current = pump.no_load_current + shaft_kw * 1000.0 / (
        np.sqrt(3.0) * 400.0 * power_factor * motor_eff
    )
    # Losses heat the casing: at the best efficiency point as much as the plain plant, more off it.
    losses = (1.0 - eta) / (1.0 - pump.eta_max)
    heat = (
        pump.heat_per_kw * shaft_kw * (1.0 - hard.loss_heat_share + hard.loss_heat_share * losses)
    )
    resonance = 1.0 + hard.res_gain * np.exp(-(((speed - hard.res_speed) / hard.res_width) ** 2))
    vib = pump.vib_base * (0.4 + 0.6 * speed**2) * off_bep * resonance * fx.vib_gain
    return current, heat, vib


@dataclass
class _PlantState:
    """The clean physics the derived sensors read."""

    speed: np.ndarray
    flow: np.ndarray
    pressure: np.ndarray
    current: np.ndarray
    eta: np.ndarray
    shaft_kw: np.ndarray
    vib_struct: np.ndarray
    ambient: np.ndarray
    pump: PumpParams
    fx: _ProcessEffects


def _derived_channels(
    param_rng: np.random.Generator,
    noise_rng: np.random.Generator,
    st: _PlantState,
    n_channels: int,
    period_s: float,
) -> np.ndarray:
    """Channels 6.. `n_channels`: each draws the same three parameters and one noise series in
    order, so the first derived channels do not depend on how many follow."""
    n, fx, pump = len(st.speed), st.fx, st.pump
    out = []
    for i in range(n_channels - len(CHANNELS)):
        prefix, noise_std, _, nonneg = DERIVED_FAMILIES[i % len(DERIVED_FAMILIES)]
        u = param_rng.random(3)
        noise = noise_rng.normal(0.0, noise_std, n)
        if prefix == "pressure_line":  # pipe friction before the valve, a share of the line
            x = st.pressure - (0.15 + 0.7 * u[0]) * 0.4 * pump.valve_coeff * st.flow**2
            x = x + 0.8 * fx.pressure_osc
        elif prefix == "bearing_temp":  # friction heat with speed², some from the load
            rise = (8.0 + 4.0 * u[0]) * st.speed**2 + (0.5 + 0.5 * u[1]) * st.shaft_kw
            x = _first_order_lag(st.ambient + rise, period_s, 900.0 + 600.0 * u[2])
            x = x + fx.temp_add + fx.bearing_temp_add
        elif prefix == "winding_temp":  # I²R heating
            rise = (25.0 + 10.0 * u[0]) * (st.current / 10.0) ** 2
            x = _first_order_lag(st.ambient + rise, period_s, 600.0 + 600.0 * u[1])
        elif prefix == "vibration_pt":  # another point of the casing, its own speed dependence
            x = (0.6 + 0.8 * u[0]) * (st.vib_struct * st.speed ** (1.5 * u[1] - 0.5) + fx.vib_noise)
        elif prefix == "flow_meter":
            x = st.flow * (0.98 + 0.04 * u[0]) + fx.flow_osc
        elif prefix == "fluid_temp":  # inlet follows ambient; losses heat the fluid
            rise = (1.5 + 1.0 * u[0]) * st.pressure * (1.0 / st.eta - 1.0)
            x = _first_order_lag(st.ambient - 2.0 - 3.0 * u[1] + rise, period_s, 60 + 120 * u[2])
        else:  # phase_current: a slightly unbalanced phase
            x = st.current * (0.985 + 0.03 * u[0])
        x = x + noise
        out.append(np.abs(x) if nonneg else x)
    return np.stack(out, axis=1)


@dataclass(frozen=True)
class _SensorSpecs:
    noise_std: np.ndarray  # per channel
    spike_height: np.ndarray
    nonneg: np.ndarray  # bool: physically non-negative readings
    period_s: float


def _normal_reference(values: np.ndarray, start: int, c: int) -> np.ndarray:
    """The channel's readings before the fault (all of them when fewer than 60 precede it)."""
    return values[:start, c] if start >= 60 else values[:, c]


def _apply_sensor_fault(
    values: np.ndarray, kind: str, start: int, end: int, rng: np.random.Generator, sp: _SensorSpecs
) -> int | None:
    """Apply a sensor fault in place; returns the channel's index (None: a process fault)."""
    if kind not in SENSOR_FAULT_KINDS:
        return None
    c = int(rng.integers(values.shape[1]))
    length = end - start
    if kind == "stuck_sensor":
        frozen = values[start - 1, c] if start > 0 else values[start, c]
        values[start:end, c] = frozen
    elif kind == "spikes":
        positions = [int(rng.integers(0, min(length, 5)))]
        while True:
            nxt = positions[-1] + int(rng.integers(8, 40))
            if nxt >= length:
                break
            positions.append(nxt)
        idx = start + np.asarray(positions)
        signs = rng.choice([-1.0, 1.0], len(idx))
        if sp.nonneg[c]:  # keep physically non-negative readings
            signs = np.abs(signs)
        height = sp.spike_height[c] * rng.uniform(0.8, 1.2, len(idx))
        values[idx, c] += signs * height
    elif kind == "sensor_drift":  # 0.2-0.5 of the channel's normal std per hour
        sigma = float(np.std(_normal_reference(values, start, c)))
        rate = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(0.2, 0.5)) * sigma
        values[start:end, c] += rate * np.arange(length) * sp.period_s / 3600.0
    elif kind == "noise_growth":  # the sensor's noise std grows to 2-4 times its own
        grow = float(rng.uniform(2.0, 4.0)) * (np.arange(length) + 1.0) / length
        values[start:end, c] += rng.normal(0.0, sp.noise_std[c], length) * grow
    else:  # stuck_normal: a typical value of its own, with its usual noise
        level = float(np.median(_normal_reference(values, start, c)))
        values[start:end, c] = level + rng.normal(0.0, sp.noise_std[c], length)
    if sp.nonneg[c]:
        values[start:end, c] = np.maximum(values[start:end, c], 0.0)
    return c


def _fault_lengths(kind: str, n_samples: int, rng: np.random.Generator) -> int:
    if kind in SLOW_FAULT_KINDS:
        frac = rng.uniform(0.30, 0.45)
    else:
        frac = rng.uniform(0.10, 0.16) if kind == "bearing_wear" else rng.uniform(0.04, 0.09)
    return max(20, int(frac * n_samples))


def _check_kinds(fault_kinds: Sequence[str] | None, difficulty: str) -> tuple[str, ...]:
    if fault_kinds is None:
        return FAULT_KINDS if difficulty == "default" else ALL_FAULT_KINDS
    kinds = tuple(fault_kinds)
    unknown = [k for k in kinds if k not in ALL_FAULT_KINDS]
    if unknown:
        raise SynthError(f"fault_kinds: unknown {unknown}; known: {ALL_FAULT_KINDS}")
    if not kinds or len(set(kinds)) != len(kinds):
        raise SynthError(f"fault_kinds: need distinct kinds, at least one, got {list(kinds)}")
    return kinds


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
    difficulty: Difficulty = "default",
    n_channels: int = len(CHANNELS),
    fault_kinds: Sequence[str] | None = None,
) -> dict[str, tuple[Series, list[FaultEvent]]]:
    """Assets ``pump-1``.. with their fault events.

    With faults, all but `healthy_assets` (chosen by seed) get one to `max_faults_per_asset`
    faults of distinct kinds, at seeded positions after the first 15 % of the history; kinds are
    dealt round-robin from a seeded order so that a plant covers as many kinds as it can.
    `fault_kinds` are the kinds drawn from (default: `FAULT_KINDS`, and with
    ``difficulty="hard"`` `ALL_FAULT_KINDS`).
    """
    if n_assets < 1:
        raise SynthError(f"n_assets must be at least 1, got {n_assets}")
    if not 0 <= healthy_assets <= n_assets:
        raise SynthError(
            f"healthy_assets must be in [0, n_assets={n_assets}], got {healthy_assets}"
        )
    if difficulty not in DIFFICULTIES:
        raise SynthError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    kinds_drawn = _check_kinds(fault_kinds, difficulty)
    if not 1 <= max_faults_per_asset <= len(kinds_drawn):
        raise SynthError(
            f"max_faults_per_asset must be in [1, {len(kinds_drawn)}], got {max_faults_per_asset}"
        )
    channel_names(n_channels)  # checked before any work
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
        kinds = [kinds_drawn[i] for i in rng.permutation(len(kinds_drawn))]
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
            difficulty=difficulty,
            n_channels=n_channels,
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
