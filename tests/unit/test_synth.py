import json

import numpy as np
import pytest

from seqae.data import read_series
from seqae.synth import (
    CHANNELS,
    FAULT_KINDS,
    SynthError,
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
