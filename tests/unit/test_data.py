"""seqae.data: reading tables, the sampling grid, windows and the robust scaler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqae.data import (
    DataError,
    RobustScaler,
    Series,
    check_period,
    make_windows,
    median_step_s,
    missing_share,
    nan_to_mask,
    read_series,
    regularize,
    resolve_period,
)

T0 = pd.Timestamp("2026-01-01T00:00:00Z")


def _frame(n: int = 6) -> pd.DataFrame:
    ts = [(T0 + pd.Timedelta(seconds=i)).isoformat() for i in range(n)]
    return pd.DataFrame(
        {
            "timestamp": ts,
            "a": np.arange(n, dtype=float),
            "b": np.arange(n, dtype=float) * 10,
            "label": [0] * (n - 1) + [1],
        }
    )


def _write(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_csv_with_timestamp_channels_and_label(tmp_path: Path) -> None:
    path = tmp_path / "pump-1.csv"
    _frame().to_csv(path, index=False)
    s = read_series(path)
    assert s.channels == ["a", "b"]
    assert s.values.dtype == np.float32 and s.values.shape == (6, 2)
    np.testing.assert_array_equal(s.values[:, 1], np.arange(6) * 10)
    assert s.labels is not None and s.labels.tolist() == [0, 0, 0, 0, 0, 1]
    assert s.asset == "pump-1"
    assert s.timestamps[0] == T0.value
    np.testing.assert_array_equal(np.diff(s.timestamps), 1_000_000_000)


def test_reads_parquet(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    _frame().to_parquet(path, index=False)
    s = read_series(path, channels=["b"])
    assert s.channels == ["b"]
    assert s.labels is not None and s.labels.sum() == 1
    assert s.timestamps[0] == T0.value


def test_timestamp_column_is_detected_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "x,Datetime,y\n1,2026-01-01 00:00:00,2\n3,2026-01-01 00:00:01,4\n")
    s = read_series(path)
    assert s.channels == ["x", "y"]
    assert s.timestamps[1] - s.timestamps[0] == 1_000_000_000


def test_numeric_timestamps_are_epoch_milliseconds(tmp_path: Path) -> None:
    path = _write(tmp_path, "ts,v\n1795723200125,1.0\n1795723200625,2.0\n")
    s = read_series(path)
    assert s.timestamps.tolist() == [1795723200125 * 1_000_000, 1795723200625 * 1_000_000]


def test_semicolon_separator_is_sniffed(tmp_path: Path) -> None:
    # SKAB files: `;`-separated, a `datetime` column, `anomaly` and `changepoint` columns.
    text = (
        "datetime;Accelerometer1RMS;Pressure;anomaly;changepoint\n"
        "2020-03-09 10:14:33;0.0266;0.054;0.0;0.0\n"
        "2020-03-09 10:14:34;0.0264;0.382;1.0;0.0\n"
    )
    s = read_series(_write(tmp_path, text))
    assert s.channels == ["Accelerometer1RMS", "Pressure"]
    assert s.labels is not None and s.labels.tolist() == [0, 1]
    assert read_series(_write(tmp_path, text, "e.csv"), sep=";").channels == s.channels


def test_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    with pytest.raises(DataError, match=r"d\.csv.*empty"):
        read_series(path)


def test_header_only_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,a,b\n")
    with pytest.raises(DataError, match=r"d\.csv.*no rows"):
        read_series(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        read_series(tmp_path / "nope.csv")


def test_missing_channel_names_it(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    _frame().to_csv(path, index=False)
    with pytest.raises(DataError, match=r"d\.csv: missing channels \['c'\]"):
        read_series(path, channels=["a", "c"])


def test_extra_channel_refused_when_not_allowed(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    _frame().to_csv(path, index=False)
    assert read_series(path, channels=["a"]).channels == ["a"]
    with pytest.raises(DataError, match=r"d\.csv: unexpected extra channels \['b'\]"):
        read_series(path, channels=["a"], allow_extra=False)


def test_infinite_value_names_channel_and_row(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[3, "b"] = np.inf
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"infinite value in channel 'b' at row 3"):
        read_series(path)


def test_all_nan_channel(tmp_path: Path) -> None:
    frame = _frame()
    frame["b"] = np.nan
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"channel 'b' has no finite value"):
        read_series(path)


def test_nan_cells_stay_missing_and_become_mask(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "timestamp,a,b\n2026-01-01T00:00:00Z,1,\n2026-01-01T00:00:01Z,,2\n2026-01-01T00:00:02Z,3,4\n",
    )
    s = read_series(path)
    assert np.isnan(s.values[0, 1]) and np.isnan(s.values[1, 0])
    x, mask = nan_to_mask(s.values[None])
    assert mask[0].tolist() == [[True, False], [False, True], [True, True]]
    assert x[0, 0, 1] == 0.0 and x[0, 2, 1] == 4.0


def test_duplicate_timestamp(tmp_path: Path) -> None:
    path = _write(tmp_path, "ts,a\n1000,1\n2000,2\n2000,3\n")
    with pytest.raises(DataError, match=r"d\.csv: duplicate timestamp at row 2"):
        read_series(path)


def test_backwards_timestamps(tmp_path: Path) -> None:
    path = _write(tmp_path, "ts,a\n1000,1\n3000,2\n2000,3\n")
    with pytest.raises(DataError, match=r"d\.csv: timestamps go backwards at row 2"):
        read_series(path)


def test_unparseable_timestamp(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,a\n2026-01-01T00:00:00Z,1\nyesterday-ish,2\n")
    with pytest.raises(DataError, match=r"d\.csv: unparseable timestamp 'yesterday-ish'"):
        read_series(path)


def test_no_timestamp_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,b\n1,2\n")
    with pytest.raises(DataError, match=r"d\.csv: no timestamp column"):
        read_series(path)


def test_non_numeric_cell(tmp_path: Path) -> None:
    path = _write(tmp_path, "ts,a\n1000,1\n2000,oops\n")
    with pytest.raises(DataError, match=r"d\.csv: non-numeric value.*oops"):
        read_series(path)


def _series(seconds: list[float], values: list[float], labels: list[int] | None = None) -> Series:
    ts = (np.asarray(seconds) * 1e9).astype(np.int64)
    vals = np.asarray(values, np.float32)[:, None]
    lab = None if labels is None else np.asarray(labels, np.int8)
    return Series(ts, vals, ["v"], lab, "a")


def test_regularize_keeps_last_value_per_slot_and_carries_labels() -> None:
    s = _series([0.0, 1.2, 1.7, 3.0], [1, 2, 3, 4], [0, 1, 0, 0])
    g = regularize(s, 1.0, max_fill=0)
    assert g.timestamps.tolist() == [0, 1_000_000_000, 2_000_000_000, 3_000_000_000]
    assert g.values[:, 0].tolist()[:2] == [1.0, 3.0]  # slot 1 holds the later sample
    assert np.isnan(g.values[2, 0])
    assert g.labels is not None and g.labels.tolist() == [0, 1, 0, 0]


def test_regularize_fills_short_gaps_only_up_to_max_fill() -> None:
    s = _series([0, 1, 4, 5, 12], [1, 2, 5, 6, 13])
    g = regularize(s, 1.0, max_fill=2)
    v = g.values[:, 0]
    assert v[:6].tolist() == [1, 2, 2, 2, 5, 6]  # two empty slots: both filled
    assert v[6:8].tolist() == [6, 6]  # a longer gap is filled for max_fill slots...
    assert np.isnan(v[8:12]).all()  # ...and the rest stays missing
    assert v[12] == 13


def test_regularize_rejects_bad_period() -> None:
    with pytest.raises(DataError, match="period must be positive"):
        regularize(_series([0, 1], [1, 2]), 0.0)


def test_make_windows_shapes_ends_and_hop() -> None:
    values = np.arange(20, dtype=np.float32).reshape(10, 2)
    x, ends = make_windows(values, window=4, hop=3)
    assert x.shape == (3, 4, 2) and x.dtype == np.float32
    assert ends.tolist() == [3, 6, 9]
    np.testing.assert_array_equal(x[1], values[3:7])
    np.testing.assert_array_equal(x[:, -1], values[ends])


def test_make_windows_bad_arguments() -> None:
    with pytest.raises(DataError, match="fewer than one window"):
        make_windows(np.zeros((3, 1), np.float32), window=4, hop=1)
    with pytest.raises(DataError, match="hop >= 1"):
        make_windows(np.zeros((8, 1), np.float32), window=4, hop=0)


def test_robust_scaler_ignores_nan_and_scales_a_constant_channel_by_its_level() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(5.0, 2.0, 4000)
    a[::7] = np.nan
    const = np.full(4000, 100.0)
    values = np.stack([a, const], axis=1).astype(np.float32)
    sc = RobustScaler.fit(values)
    assert np.isfinite(sc.center).all() and np.isfinite(sc.scale).all()
    assert abs(sc.center[0] - 5.0) < 0.15 and abs(sc.scale[0] - 2.0) < 0.15
    # constant: a change as large as its level is one unit (it was 1e-3 * |centre|, so that a
    # change to 0 read as 1000 units)
    assert sc.center[1] == 100.0 and sc.scale[1] == 100.0
    assert sc.degenerate.tolist() == [False, True]
    assert [(n.channel, n.kind) for n in sc.notes] == [("1", "constant")]
    out = sc.transform(values)
    assert np.isnan(out[0, 0]) and np.isfinite(out[1]).all()
    assert np.abs(out[:, 1]).max() == 0.0
    np.testing.assert_allclose(sc.inverse(out[1:2]), values[1:2], rtol=1e-5)
    assert RobustScaler.from_dict(sc.to_dict()).scale.tolist() == sc.scale.tolist()


def test_robust_scaler_refuses_channel_without_values() -> None:
    values = np.array([[1.0, np.nan], [2.0, np.nan]], np.float32)
    with pytest.raises(DataError, match="no finite value"):
        RobustScaler.fit(values)


def test_median_step_ignores_gaps_and_jitter() -> None:
    seconds = [0, 180, 360, 545, 720, 900, 5000, 5180]
    assert median_step_s(_series(seconds, [0.0] * 8)) == pytest.approx(180.0)
    with pytest.raises(DataError, match=r"f\.csv: 1 row, a sampling period needs two"):
        median_step_s(_series([0], [1.0]), "f.csv")


def test_check_period_names_both_values_beyond_the_tolerance() -> None:
    s = _series([0, 180, 360, 540], [0.0] * 4)
    assert check_period(s, 185.0, "--period") == 180.0  # 2.8 % off: accepted
    with pytest.raises(
        DataError, match=r"f.csv: --period is 1 s but the timestamps' median step is 180 s"
    ):
        check_period(s, 1.0, "--period", where="f.csv")
    with pytest.raises(DataError, match="more than 5%"):
        check_period(s, 190.0, "--period")  # 5.6 % off


def test_resolve_period_infers_checks_and_compares_files() -> None:
    one = _series([0, 1, 2, 3], [0.0] * 4)
    two = _series([0, 2, 4, 6], [0.0] * 4)
    assert resolve_period([one, one], None) == 1.0
    assert resolve_period([two], 2.0) == 2.0
    with pytest.raises(
        DataError, match=r"b\.csv: the timestamps' median step is 2 s but a\.csv's is 1 s"
    ):
        resolve_period([one, two], None, names=["a.csv", "b.csv"])
    with pytest.raises(DataError, match=r"b\.csv: --period is 1 s"):
        resolve_period([one, two], 1.0, names=["a.csv", "b.csv"])
    with pytest.raises(DataError, match="--period must be a positive number"):
        resolve_period([one], -1.0)


def test_missing_share_counts_nan_samples() -> None:
    values = np.array([[1.0, np.nan], [np.nan, np.nan]], dtype=np.float32)
    assert missing_share(values) == 0.75


def _legacy_scale(values: np.ndarray) -> np.ndarray:
    """The scaler's rule before issue 10, for channels that move."""
    flat = values.astype(np.float64)
    center = np.nanmedian(flat, axis=0)
    q75, q25 = np.nanpercentile(flat, [75, 25], axis=0)
    iqr = (q75 - q25) / 1.349
    floor = np.maximum(1e-3 * np.maximum(np.abs(center), 1.0), 1e-6)
    return np.maximum(np.where(iqr > 0, iqr, np.nanstd(flat, axis=0)), floor).astype(np.float32)


def test_robust_scaler_keeps_the_scale_of_ordinary_channels_bit_for_bit() -> None:
    """Channels that move (every synthetic pump channel, and a noisy one near 0 with a spread
    above 1e-3) get exactly the scale they had before degenerate channels were handled."""
    from seqae.synth import generate_asset

    series, _ = generate_asset("pump-1", 3000, seed=0)
    rng = np.random.default_rng(1)
    near_zero = rng.normal(0.0, 0.01, (3000, 1)).astype(np.float32)
    values = np.concatenate([series.values, near_zero], axis=1)
    values[::13, 2] = np.nan
    sc = RobustScaler.fit(values)
    assert not sc.degenerate.any() and sc.notes == []
    assert sc.scale.tobytes() == _legacy_scale(values).tobytes()


@pytest.mark.parametrize("factor", [1e6, 1e-6])
def test_robust_scaler_is_unit_free(factor: float) -> None:
    """The same channel in units 1e6 larger or smaller scales to the same values; before, the
    absolute floor of 1e-3 flattened the 1e-6 version to a fifth of its size."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 0.05, (2000, 2))
    sc = RobustScaler.fit(x.astype(np.float32))
    y = x.copy()
    y[:, 1] *= factor
    sc_y = RobustScaler.fit(y.astype(np.float32))
    np.testing.assert_allclose(
        sc_y.transform(y.astype(np.float32)), sc.transform(x.astype(np.float32)), atol=1e-4
    )
    assert [(n.channel, n.kind) for n in sc_y.notes] == [("0", "scale"), ("1", "scale")]
    if factor < 1:
        assert _legacy_scale(y)[1] / sc_y.scale[1] > 4  # what the old floor did


def test_a_quantised_sensor_at_one_level_half_the_time_is_ordinary() -> None:
    """SKAB's Pressure: 5-9 levels 0.33 apart, over half of the samples at one (an IQR of 0), a
    swing of about 5 standard deviations. Not a flag: it keeps its scale (the std) exactly."""
    rng = np.random.default_rng(0)
    pressure = np.round(rng.normal(0.0, 0.2, (1200, 1)) / 0.328) * 0.328
    sc = RobustScaler.fit(pressure.astype(np.float32))
    assert np.subtract(*np.percentile(pressure, [75, 25])) == 0
    assert not sc.degenerate.any() and sc.notes == []
    assert sc.scale.tobytes() == _legacy_scale(pressure.astype(np.float32)).tobytes()


def test_robust_scaler_units_of_degenerate_channels() -> None:
    """A rarely switching flag is scaled by its swing, a constant at 0 by 1, a mostly constant
    channel by its range, a nearly constant one by 1e-3 of its level; all are marked
    degenerate."""
    rng = np.random.default_rng(0)
    n = 5000
    rare_flag = np.zeros(n)
    rare_flag[100:103] = 1.0  # on for 3 samples in 5000
    idle = np.zeros(n)
    idle[::500] = rng.uniform(0.5, 2.0, n // 500)  # excursions on 0.2 % of the samples
    near = 230.0 + rng.normal(0, 0.01, n)  # spread 4e-5 of its level
    zero = np.zeros(n)
    moving = rng.normal(1.0, 0.2, n)
    values = np.stack([rare_flag, idle, near, zero, moving], axis=1).astype(np.float32)
    sc = RobustScaler.fit(values, ["flag", "idle", "near", "zero", "moving"])
    assert sc.degenerate.tolist() == [True, True, True, True, False]
    kinds = {n.channel: n.kind for n in sc.notes}
    assert kinds == {
        "flag": "flag",
        "idle": "mostly_constant",
        "near": "nearly_constant",
        "zero": "constant",
    }
    assert sc.scale[0] == 1.0 and sc.scale[3] == 1.0
    assert sc.scale[1] == pytest.approx(values[:, 1].max(), rel=1e-6)
    assert sc.scale[2] == pytest.approx(0.23, rel=1e-3)
