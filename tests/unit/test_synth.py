import hashlib
import json
from dataclasses import asdict

import numpy as np
import pytest
from click.testing import CliRunner

from seqae.cli import cli
from seqae.data import read_series
from seqae.synth import (
    ALL_FAULT_KINDS,
    CHANNELS,
    FAULT_KINDS,
    SLOW_FAULT_KINDS,
    SynthError,
    _hard_params,
    _hard_physics,
    _ProcessEffects,
    _pump_params,
    channel_names,
    generate_asset,
    generate_plant,
    write_plant,
)

N = 2400


def _one_fault(kind: str, start: int = 1200, end: int = 1500, seed: int = 3):
    faulty, events = generate_asset("pump-9", N, seed=seed, faults=[(kind, start, end)])
    healthy, _ = generate_asset("pump-9", N, seed=seed)
    return faulty, healthy, events[0]


def _col(series, name):
    return series.values[:, series.channels.index(name)].astype(np.float64)


def _hf_power(x: np.ndarray) -> float:
    return float(np.mean(np.diff(x) ** 2))


def test_same_seed_same_data_other_seed_other_data():
    a, ea = generate_asset("pump-1", 500, seed=5, faults=[("spikes", 100, 200)])
    b, eb = generate_asset("pump-1", 500, seed=5, faults=[("spikes", 100, 200)])
    c, _ = generate_asset("pump-1", 500, seed=6, faults=[("spikes", 100, 200)])
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert ea == eb
    assert not np.allclose(a.values, c.values)


def test_plant_is_deterministic_by_seed():
    p1 = generate_plant(3, 1200, seed=11)
    p2 = generate_plant(3, 1200, seed=11)
    p3 = generate_plant(3, 1200, seed=12)
    for asset in p1:
        np.testing.assert_array_equal(p1[asset][0].values, p2[asset][0].values)
        assert p1[asset][1] == p2[asset][1]
    assert any(not np.allclose(p1[a][0].values, p3[a][0].values) for a in p1)


def test_shapes_channels_and_timestamps():
    s, events = generate_asset("pump-2", 300, period_s=0.5)
    assert s.channels == list(CHANNELS)
    assert s.values.shape == (300, len(CHANNELS))
    assert s.values.dtype == np.float32
    assert s.timestamps.dtype == np.int64
    assert np.all(np.diff(s.timestamps) == 500_000_000)
    assert s.timestamps[0] == 1_767_225_600_000_000_000
    assert s.labels is not None and s.labels.dtype == np.int8
    assert s.asset == "pump-2"
    assert events == []
    assert np.all(np.isfinite(s.values))


def test_values_are_physically_plausible_and_assets_differ():
    plant = generate_plant(3, 3600, seed=0, with_faults=False)
    medians = []
    for series, _ in plant.values():
        p, q, i, t, v = (_col(series, c) for c in CHANNELS)
        assert p.min() > 1.5 and p.max() < 7.0
        assert q.min() > 10.0 and q.max() < 60.0
        assert i.min() > 3.0 and i.max() < 30.0
        assert t.min() > 15.0 and t.max() < 80.0
        assert v.min() >= 0.0 and v.max() < 5.0
        # Pressure and flow move together with speed in normal operation.
        assert np.corrcoef(p, q)[0, 1] > 0.5
        medians.append(np.median(series.values, axis=0))
    assert not np.allclose(medians[0], medians[1], rtol=0.02)


def test_normal_plant_has_no_labels_or_events():
    plant = generate_plant(4, 1000, seed=1, with_faults=False)
    assert list(plant) == ["pump-1", "pump-2", "pump-3", "pump-4"]
    for series, events in plant.values():
        assert events == []
        assert series.labels is not None and series.labels.sum() == 0


def test_plant_faults_labels_match_events_and_leave_healthy_assets():
    plant = generate_plant(5, 3600, seed=4, healthy_assets=2)
    healthy = [a for a, (_, ev) in plant.items() if not ev]
    assert len(healthy) == 2
    kinds_seen = set()
    for series, events in plant.values():
        expected = np.zeros(len(series.timestamps), dtype=np.int8)
        kinds = [e.kind for e in events]
        assert len(kinds) == len(set(kinds)) <= 2
        for e in events:
            assert e.kind in FAULT_KINDS
            assert 0 <= e.start < e.end <= 3600
            assert e.start_ns == series.timestamps[e.start]
            expected[e.start : e.end] = 1
            kinds_seen.add(e.kind)
        np.testing.assert_array_equal(series.labels, expected)
    assert len(kinds_seen) >= 3


def test_faults_change_nothing_before_they_start():
    for kind in FAULT_KINDS:
        faulty, healthy, _ = _one_fault(kind)
        np.testing.assert_array_equal(faulty.values[:1200], healthy.values[:1200])


def test_sensor_faults_change_nothing_outside_their_segment():
    for kind in ("stuck_sensor", "spikes"):
        faulty, healthy, e = _one_fault(kind)
        outside = np.ones(N, dtype=bool)
        outside[e.start : e.end] = False
        np.testing.assert_array_equal(faulty.values[outside], healthy.values[outside])


def test_stuck_sensor_freezes_one_channel_at_its_last_value():
    faulty, healthy, e = _one_fault("stuck_sensor")
    assert e.channel in CHANNELS
    seg = _col(faulty, e.channel)[e.start : e.end]
    assert np.var(seg) == 0.0
    assert seg[0] == _col(healthy, e.channel)[e.start - 1]
    others = [c for c in CHANNELS if c != e.channel]
    for c in others:
        assert np.var(_col(faulty, c)[e.start : e.end]) > 0.0


def test_spikes_are_isolated_large_outliers_on_one_channel():
    faulty, healthy, e = _one_fault("spikes")
    assert e.channel is not None
    diff = np.abs(_col(faulty, e.channel) - _col(healthy, e.channel))
    spikes = np.flatnonzero(diff > 0)
    assert len(spikes) >= 5
    assert np.all((spikes >= e.start) & (spikes < e.end))
    assert np.all(np.diff(spikes) >= 8)  # isolated
    noise = np.std(np.diff(_col(healthy, e.channel)[: e.start]))
    assert diff[spikes].min() > 10 * noise
    assert spikes[0] - e.start < 5  # the fault shows from its start


def test_valve_blockage_raises_pressure_and_lowers_flow():
    faulty, healthy, e = _one_fault("valve_blockage")
    late = slice(e.end - 100, e.end)
    dp = _col(faulty, "pressure")[late].mean() - _col(healthy, "pressure")[late].mean()
    dq = _col(faulty, "flow")[late].mean() - _col(healthy, "flow")[late].mean()
    assert dp > 0.15
    assert dq < -2.0
    # ... while staying near the range this pump covers in normal operation.
    normal, _ = generate_asset("pump-9", 7200, seed=3)
    for c in ("pressure", "flow"):
        lo, hi = np.percentile(_col(normal, c), [0.5, 99.5])
        span = hi - lo
        seg = _col(faulty, c)[e.start : e.end]
        assert lo - 0.5 * span < seg.min() and seg.max() < hi + 0.5 * span


def test_cavitation_adds_high_frequency_power_and_drops_pressure():
    faulty, healthy, e = _one_fault("cavitation")
    seg = slice(e.start + 30, e.end)
    for c in ("pressure", "flow", "vibration"):
        assert _hf_power(_col(faulty, c)[seg]) > 10 * _hf_power(_col(healthy, c)[seg])
    assert _col(faulty, "pressure")[seg].mean() < 0.95 * _col(healthy, "pressure")[seg].mean()


def test_bearing_wear_grows_vibration_and_temperature():
    faulty, healthy, e = _one_fault("bearing_wear", 1000, 1400)
    vib = _col(faulty, "vibration") - _col(healthy, "vibration")
    temp = _col(faulty, "temperature") - _col(healthy, "temperature")
    first, last = slice(e.start, e.start + 50), slice(e.end - 50, e.end)
    assert vib[last].mean() > 1.0 > vib[first].mean() + 0.5
    assert vib[last].mean() > 5 * abs(vib[first].mean())
    assert 1.0 < temp[last].mean() < 5.0
    assert abs(temp[first].mean()) < 0.3


def test_bad_requests_raise_clear_errors():
    with pytest.raises(SynthError, match="unknown fault kind 'melt'"):
        generate_asset("p", 100, faults=[("melt", 1, 5)])
    with pytest.raises(SynthError, match=r"faults\[0\].*end=200"):
        generate_asset("p", 100, faults=[("spikes", 10, 200)])
    with pytest.raises(SynthError, match="overlap"):
        generate_asset("p", 100, faults=[("spikes", 10, 50), ("cavitation", 40, 60)])
    with pytest.raises(SynthError, match="period_s"):
        generate_asset("p", 100, period_s=0)
    with pytest.raises(SynthError, match="healthy_assets"):
        generate_plant(2, 1000, healthy_assets=3)
    with pytest.raises(SynthError, match="n_samples"):
        generate_plant(2, 100)


def test_write_plant_round_trips_through_read_series(tmp_path):
    plant = generate_plant(3, 900, seed=2, healthy_assets=1)
    paths = write_plant(tmp_path, plant)
    names = sorted(p.name for p in paths)
    assert names == ["faults.json", "plant.csv", "pump-1.csv", "pump-2.csv", "pump-3.csv"]

    for asset, (series, _) in plant.items():
        back = read_series(tmp_path / f"{asset}.csv")
        assert back.channels == list(CHANNELS)
        np.testing.assert_array_equal(back.timestamps, series.timestamps)
        np.testing.assert_allclose(back.values, series.values, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(back.labels, series.labels)
        header = (tmp_path / f"{asset}.csv").read_text().splitlines()[:2]
        assert (
            header[0] == "timestamp,pressure,flow,motor_current,temperature,vibration,label,fault"
        )
        assert header[1].startswith("2026-01-01T00:00:00Z,")

    lines = (tmp_path / "plant.csv").read_text().splitlines()
    assert lines[0] == "timestamp,asset,pressure,flow,motor_current,temperature,vibration"
    assert len(lines) == 1 + 3 * 900
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert [r[1] for r in rows[:3]] == ["pump-1", "pump-2", "pump-3"]

    doc = json.loads((tmp_path / "faults.json").read_text())
    flat = [e for _, evs in plant.values() for e in evs]
    assert len(doc["events"]) == len(flat) > 0
    for got, want in zip(doc["events"], flat, strict=True):
        assert (got["asset"], got["kind"], got["start"], got["end"]) == (
            want.asset,
            want.kind,
            want.start,
            want.end,
        )
        assert got["start_time"].endswith("Z")


def test_write_plant_fault_column_names_the_kind(tmp_path):
    plant = {"pump-1": generate_asset("pump-1", 300, faults=[("cavitation", 100, 150)])}
    write_plant(tmp_path, plant)
    rows = (tmp_path / "pump-1.csv").read_text().splitlines()[1:]
    fault = [r.rsplit(",", 1)[1] for r in rows]
    assert fault[99] == "" and fault[100] == "cavitation" and fault[149] == "cavitation"
    assert fault[150] == ""


def test_write_plant_rejects_unknown_format(tmp_path):
    with pytest.raises(SynthError, match="fmt"):
        write_plant(tmp_path, generate_plant(1, 100, with_faults=False), fmt="xlsx")


# -- the defaults are frozen: the demo, the e2e test and the daemon tests were built on them ---

# sha256 of default runs, computed before the hard plant and the slow faults were added.
FROZEN = {
    "plant_default": "2801794870199cd73a37547b03a61a72360353c862981869184960b79e2ab9ea",
    "plant_s3_n4_2000": "908ce75e167acc2b1f1803c808d89075c2bb13dee76d506efddbb62b7df085e2",
    "plant_healthy": "5d877cd84fffcd7a1298f33d6f8e2eccd0846d4ce81b81e3167763c5a6bda913",
    "asset_bearing_wear": "2ec08268ae22ade75debb307bd2a4d8390f5d15e65b67fab616721ec0eae5297",
    "asset_cavitation": "98931379f11c083f8d94d838410a2c9ff2165ba96e296bc1b7bc852c3acfa9a3",
    "asset_stuck_sensor": "dfe2ebe23abeedca4c71474434eab48939187e825a2aca0eb7448a62edebb7bd",
    "asset_spikes": "eae1d330f1e34b6d396494ee97774fd026c2c82d7e873974142be19c3269a0df",
    "asset_valve_blockage": "def755e8c9fcceee79667fb4669601d36a6e1c29eedd349ea290acceacdf0e1e",
}
FROZEN_CLI = {  # `seqae synth OUT --samples 1200`
    "faults.json": "a550000d702ce1fe8b8e5184554978e7b9cab279620202680a24c4d1f0c8d6d3",
    "plant.csv": "7de359342657d7c3ea2ee99cb29790311616252cffbd35a712273e98bc0fba15",
    "pump-1.csv": "65425fcff34249b9e2800b0c27ab6b35dfb28af9de4c498a66348dcc52480417",
    "pump-2.csv": "07d98ce9cbe7c14d1d83d3089ac2da94c5f947088a14493405381b02fbe6eafa",
    "pump-3.csv": "5c205f3adf5b0adc1473f205c90927069a7b4b9fac4270c348eacc369c70067e",
}


def _digest(plant) -> str:
    h = hashlib.sha256()
    for asset, (s, events) in plant.items():
        h.update(asset.encode())
        for array in (s.timestamps, s.values, s.labels):
            h.update(np.ascontiguousarray(array).tobytes())
        h.update(json.dumps([asdict(e) for e in events]).encode())
        h.update(json.dumps(s.channels).encode())
    return h.hexdigest()


def test_default_plant_is_bit_identical_to_the_frozen_runs():
    got = {
        "plant_default": _digest(generate_plant()),
        "plant_s3_n4_2000": _digest(
            generate_plant(
                n_assets=4,
                n_samples=2000,
                seed=3,
                period_s=2.0,
                healthy_assets=0,
                max_faults_per_asset=3,
            )
        ),
        "plant_healthy": _digest(
            generate_plant(n_assets=2, n_samples=1000, with_faults=False, plant_seed=5)
        ),
    }
    for kind in FAULT_KINDS:
        one = generate_asset(
            "pump-9", 1500, seed=2, faults=[(kind, 400, 900)], setpoint_steps=[(1200, 1.05)]
        )
        got[f"asset_{kind}"] = _digest({"pump-9": one})
    assert got == FROZEN


def test_default_synth_command_writes_the_frozen_files(tmp_path):
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "out"), "--samples", "1200"])
    assert result.exit_code == 0, result.output
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "out").iterdir()}
    assert got == FROZEN_CLI


def test_default_plant_never_draws_slow_faults():
    for seed in range(12):
        for _, events in generate_plant(5, 3600, seed=seed, healthy_assets=0).values():
            assert all(e.kind in FAULT_KINDS for e in events)


# -- more channels ------------------------------------------------------------------------------


def test_channel_names_add_derived_sensors_after_the_base_five():
    assert channel_names() == list(CHANNELS)
    eight = channel_names(8)
    assert eight == [*CHANNELS, "pressure_line_1", "bearing_temp_1", "winding_temp_1"]
    fifty = channel_names(50)
    assert len(fifty) == len(set(fifty)) == 50 and fifty[:8] == eight
    for bad in (4, 51):
        with pytest.raises(SynthError, match="n_channels"):
            channel_names(bad)


def test_derived_channels_leave_the_base_ones_and_do_not_depend_on_how_many_follow():
    base, _ = generate_asset("pump-3", 900, seed=4)
    eight, _ = generate_asset("pump-3", 900, seed=4, n_channels=8)
    fifty, _ = generate_asset("pump-3", 900, seed=4, n_channels=50)
    np.testing.assert_array_equal(eight.values[:, :5], base.values)
    np.testing.assert_array_equal(fifty.values[:, :8], eight.values)
    assert fifty.values.shape == (900, 50) and np.all(np.isfinite(fifty.values))


def test_derived_sensors_follow_their_physics():
    s, _ = generate_asset("pump-2", 4 * 3600, seed=1, n_channels=12, difficulty="hard")
    p, q = _col(s, "pressure"), _col(s, "flow")
    line = _col(s, "pressure_line_1")
    drop = p - line
    assert np.percentile(drop, 5) > 0.0  # pressure falls along the line (noise aside) ...
    assert np.corrcoef(drop, q**2)[0, 1] > 0.7  # ... with the friction of flow² (noise: 0.02 bar)
    assert np.corrcoef(_col(s, "flow_meter_1"), q)[0, 1] > 0.98  # a redundant meter
    assert np.corrcoef(_col(s, "phase_current_1"), _col(s, "motor_current"))[0, 1] > 0.98
    for c in ("vibration", "vibration_pt_1"):
        assert _col(s, c).min() >= 0.0


# -- the hard plant -----------------------------------------------------------------------------


def test_hard_plant_is_other_data_in_a_plausible_range():
    default, _ = generate_asset("pump-1", 3600, seed=2)
    hard, _ = generate_asset("pump-1", 3600, seed=2, difficulty="hard")
    assert hard.channels == default.channels
    assert not np.allclose(hard.values, default.values)
    p, q, i, t, v = (_col(hard, c) for c in CHANNELS)
    assert p.min() > 1.5 and p.max() < 7.0
    assert q.min() > 10.0 and q.max() < 60.0
    assert i.min() > 3.0 and i.max() < 30.0
    assert t.min() > 15.0 and t.max() < 80.0
    assert v.min() >= 0.0 and v.max() < 6.0


def _physics(speed: np.ndarray, eta: np.ndarray, shaft_kw: np.ndarray):
    pump = _pump_params(np.random.default_rng(0))
    hard = _hard_params(np.random.default_rng(1))
    n = len(speed)
    ones, zeros = np.ones(n), np.zeros(n)
    fx = _ProcessEffects(  # no fault
        valve_factor=ones,
        head_loss=zeros,
        pressure_osc=zeros,
        flow_osc=zeros,
        vib_gain=ones,
        vib_noise=zeros,
        temp_add=zeros,
        eta_factor=ones,
        bearing_temp_add=zeros,
    )
    return pump, hard, _hard_physics(pump, hard, speed, eta, shaft_kw, np.ones(n), fx)


def test_hard_vibration_has_a_resonance_in_speed():
    speed = np.linspace(0.72, 1.08, 721)
    _, hard, (_, _, vib) = _physics(speed, np.full(721, 0.7), np.full(721, 5.0))
    at = int(np.argmin(np.abs(speed - hard.res_speed)))
    away = int(np.argmin(np.abs(speed - (hard.res_speed + 4 * hard.res_width))))
    # Not monotone in speed, as speed² alone would be: the peak stands above a faster speed.
    assert vib[at] > 1.3 * vib[away]


def test_hard_temperature_rises_with_losses_and_current_bends_at_part_load():
    n = 3
    pump, _, (current, heat, _) = _physics(np.ones(n), np.array([0.75, 0.6, 0.45]), np.full(n, 5.0))
    assert heat[0] < heat[1] < heat[2]  # same shaft power, lower efficiency: more heat
    kw = np.array([1.5, 3.0, 6.0])
    _, _, (current, _, _) = _physics(np.ones(n), np.full(n, 0.7), kw)
    per_kw = (current - pump.no_load_current) / kw
    assert per_kw[0] > per_kw[1] > per_kw[2]  # poor efficiency and power factor at part load


# -- small, slow faults ---------------------------------------------------------------------------

HOURS = 3600
SLOW_N = 4 * HOURS


def _slow_fault(kind: str, start: int = HOURS, end: int = SLOW_N, channels: int = 8):
    args = {"seed": 5, "difficulty": "hard", "n_channels": channels}
    faulty, events = generate_asset("pump-4", SLOW_N, faults=[(kind, start, end)], **args)
    healthy, _ = generate_asset("pump-4", SLOW_N, **args)
    return faulty, healthy, events[0]


def test_slow_faults_change_nothing_before_they_start_and_label_their_span():
    for kind in SLOW_FAULT_KINDS:
        faulty, healthy, e = _slow_fault(kind)
        np.testing.assert_array_equal(faulty.values[:HOURS], healthy.values[:HOURS])
        assert faulty.labels is not None
        assert faulty.labels[:HOURS].sum() == 0 and faulty.labels[HOURS:].all()
        assert (e.channel is None) == (kind not in ("sensor_drift", "noise_growth", "stuck_normal"))


def test_sensor_drift_moves_one_channel_a_few_tenths_of_its_std_per_hour():
    faulty, healthy, e = _slow_fault("sensor_drift")
    diff = faulty.values.astype(np.float64) - healthy.values
    c = faulty.channels.index(e.channel)
    assert np.abs(np.delete(diff, c, axis=1)).max() == 0.0
    sigma = np.std(_col(healthy, e.channel)[:HOURS])
    rate = np.polyfit(np.arange(SLOW_N - HOURS) / HOURS, diff[HOURS:, c], 1)[0] / sigma
    assert 0.2 <= abs(rate) <= 0.5


def test_noise_growth_widens_one_channels_noise_and_keeps_its_level():
    faulty, healthy, e = _slow_fault("noise_growth")
    c = faulty.channels.index(e.channel)
    diff = faulty.values[:, c].astype(np.float64) - healthy.values[:, c]
    early, late = diff[HOURS : HOURS + 600], diff[-600:]
    assert late.std() > 5 * early.std()
    assert abs(late.mean()) < 0.3 * late.std()
    assert np.abs(np.delete(faulty.values - healthy.values, c, axis=1)).max() == 0.0


def test_stuck_normal_holds_a_typical_value_with_ordinary_noise():
    faulty, healthy, e = _slow_fault("stuck_normal", channels=5)
    seg = _col(faulty, e.channel)[HOURS:]
    before = _col(healthy, e.channel)[:HOURS]
    lo, hi = np.percentile(before, [10, 90])
    assert lo < seg.mean() < hi  # a normal value ...
    assert seg.std() < 0.2 * before.std()  # ... that no longer follows the process
    assert seg.std() > 0.0  # but not frozen flat, as stuck_sensor is


def test_slow_process_faults_start_small_and_grow():
    cases = {
        "impeller_wear": ("pressure", -1),
        "efficiency_loss": ("temperature", 1),
        "slow_bearing_wear": ("bearing_temp_1", 1),
    }
    for kind, (channel, sign) in cases.items():
        faulty, healthy, _ = _slow_fault(kind)
        diff = sign * (_col(faulty, channel) - _col(healthy, channel))
        sigma = np.std(_col(healthy, channel)[:HOURS])
        first, last = diff[HOURS : HOURS + 300].mean(), diff[-300:].mean()
        assert abs(first) < 0.1 * sigma, kind
        assert 0.1 * sigma < last < 3.0 * sigma, kind
    faulty, healthy, _ = _slow_fault("efficiency_loss")
    for c in ("pressure", "flow"):  # efficiency: same hydraulics, more power
        np.testing.assert_array_equal(_col(faulty, c), _col(healthy, c))
    assert (_col(faulty, "motor_current") - _col(healthy, "motor_current"))[-300:].mean() > 0


def test_hard_plant_draws_every_kind_and_honours_fault_kinds():
    seen = set()
    for seed in range(4):
        plant = generate_plant(6, 3600, seed=seed, healthy_assets=0, difficulty="hard")
        seen |= {e.kind for _, events in plant.values() for e in events}
    assert seen & set(SLOW_FAULT_KINDS) and seen <= set(ALL_FAULT_KINDS)
    only = generate_plant(
        4,
        3600,
        seed=1,
        healthy_assets=0,
        fault_kinds=["sensor_drift"],
        max_faults_per_asset=1,
        n_channels=8,
    )
    for series, events in only.values():
        assert [e.kind for e in events] == ["sensor_drift"]
        assert series.values.shape[1] == 8


def test_hard_options_reject_bad_values():
    with pytest.raises(SynthError, match="difficulty"):
        generate_asset("p", 100, difficulty="extreme")  # type: ignore[arg-type]
    with pytest.raises(SynthError, match="fault_kinds: unknown"):
        generate_plant(2, 1000, fault_kinds=["melt"])
    with pytest.raises(SynthError, match="max_faults_per_asset"):
        generate_plant(2, 1000, fault_kinds=["spikes"], max_faults_per_asset=2)
    with pytest.raises(SynthError, match="n_channels"):
        generate_plant(2, 1000, n_channels=51)


def test_synth_command_writes_a_hard_plant(tmp_path):
    out = tmp_path / "hard"
    args = ["synth", str(out), "--samples", "1200", "--difficulty", "hard", "--channels", "9"]
    result = CliRunner().invoke(cli, [*args, "--fault-kinds", "stuck_normal,noise_growth"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "faults.json").read_text())
    assert doc["channels"] == channel_names(9)
    assert {e["kind"] for e in doc["events"]} <= {"stuck_normal", "noise_growth"}
    bad = CliRunner().invoke(cli, ["synth", str(tmp_path / "x"), "--fault-kinds", "melt"])
    assert bad.exit_code != 0 and "unknown ['melt']" in bad.output
