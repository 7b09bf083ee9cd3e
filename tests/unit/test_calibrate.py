"""seqae.calibrate: thresholds, the calibration split, baselines and their scores."""

from __future__ import annotations

import numpy as np
import pytest

from seqae.calibrate import (
    Baseline,
    CalibrationError,
    ThresholdPolicy,
    fit_baseline,
    fit_error_stats,
    input_range,
    ledoit_wolf_covariance,
    pot_threshold,
    set_threshold,
    split_for_calibration,
)
from seqae.data import RobustScaler, make_windows, nan_to_mask
from seqae.pca import PCAConfig, PCADetector
from seqae.score import Scorer

WINDOW = 10


def _plant(n: int, seed: int) -> np.ndarray:
    """Three periodic channels with AR(1) noise (slowly wandering, like real sensors)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    noise = np.zeros((n, 3))
    for i in range(1, n):
        noise[i] = 0.8 * noise[i - 1] + rng.normal(0, 0.1, 3)
    base = np.stack(
        [np.sin(2 * np.pi * t / 20), 2 + np.cos(2 * np.pi * t / 30), 5 + 0.5 * np.sin(t / 7)], 1
    )
    return (base + noise).astype(np.float32)


@pytest.fixture(scope="module")
def pca_scorer() -> tuple[Scorer, RobustScaler]:
    train = _plant(1500, seed=1)
    scaler = RobustScaler.fit(train)
    x, _ = make_windows(scaler.transform(train), WINDOW, 2)
    detector = PCADetector(PCAConfig(3, WINDOW, n_components=6)).fit(nan_to_mask(x)[0])
    return Scorer(detector, device="cpu"), scaler


def test_quantile_threshold() -> None:
    scores = np.arange(1001, dtype=np.float64)
    assert set_threshold(scores, ThresholdPolicy(quantile=0.99)) == pytest.approx(990.0)
    assert set_threshold(scores, ThresholdPolicy(quantile=0.99, margin=2.0)) == pytest.approx(
        1980.0
    )


def test_pot_on_exponential_tail_finds_the_level() -> None:
    scores = np.random.default_rng(0).exponential(1.0, 100_000)
    level = pot_threshold(scores, risk=1e-3)
    assert level == pytest.approx(-np.log(1e-3), rel=0.08)  # P(X > t) = e^-t
    policy = ThresholdPolicy(method="pot", pot_risk=1e-3)
    assert set_threshold(scores, policy) == pytest.approx(level)


def test_pot_with_few_peaks_falls_back_to_quantile() -> None:
    scores = np.arange(100, dtype=np.float64)
    assert pot_threshold(scores, risk=0.05) == pytest.approx(np.quantile(scores, 0.95))
    assert pot_threshold(scores, risk=1e-4) == 99.0


def test_split_for_calibration() -> None:
    stats, thr = split_for_calibration(100, gap=9)
    assert (stats.start, stats.stop, thr.start, thr.stop) == (0, 45, 54, 100)
    assert thr.start - stats.stop == 9
    with pytest.raises(CalibrationError, match="25 calibration windows are too few"):
        split_for_calibration(25, gap=9)


def _baseline(f: int = 3) -> Baseline:
    rng = np.random.default_rng(0)
    errors = np.abs(rng.normal(1.0, 0.2, (500, f)))
    mean, sq, precision = fit_error_stats(errors)
    return Baseline(
        center=np.zeros(f, np.float32),
        scale=np.ones(f, np.float32),
        err_mean=mean,
        err_sq_mean=sq,
        precision=precision,
        threshold=2.5,
        range_low=np.full(f, -1.0, np.float32),
        range_high=np.full(f, 1.0, np.float32),
        info={"windows": 500},
    )


def test_baseline_dict_round_trip() -> None:
    b = _baseline()
    back = Baseline.from_dict(b.to_dict())
    assert back.threshold == b.threshold and back.score_kind == b.score_kind
    np.testing.assert_array_equal(back.precision, b.precision)
    np.testing.assert_array_equal(back.range_high, b.range_high)
    errors = np.abs(np.random.default_rng(1).normal(1.0, 0.3, (7, 3)))
    np.testing.assert_allclose(back.scores(errors)[0], b.scores(errors)[0])
    assert back.info == {"windows": 500}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("threshold"), "malformed.*'threshold'"),
        (lambda d: d.update(threshold="high"), "malformed.*high"),
        (lambda d: d.update(precision=[[1.0]]), "inconsistent shapes"),
        (lambda d: d.update(scale=[1.0]), "inconsistent shapes"),
        (lambda d: d.update(score_kind="cosine"), "unknown score kind 'cosine'"),
    ],
)
def test_malformed_baseline_dict(change: object, message: str) -> None:
    d = _baseline().to_dict()
    change(d)  # type: ignore[operator]
    with pytest.raises(CalibrationError, match=message):
        Baseline.from_dict(d)


@pytest.mark.parametrize("kind", ["mahalanobis", "mse"])
def test_contributions_sum_to_score(kind: str) -> None:
    b = _baseline()
    b.score_kind = kind  # type: ignore[assignment]
    errors = np.abs(np.random.default_rng(2).normal(1.0, 0.5, (50, 3)))
    score, contrib = b.scores(errors)
    assert contrib.shape == (50, 3)
    np.testing.assert_allclose(contrib.sum(axis=1), score, rtol=1e-10)


def test_fault_on_channel_k_is_top_contribution(pca_scorer: tuple[Scorer, RobustScaler]) -> None:
    scorer, scaler = pca_scorer
    calib, _ = make_windows(_plant(1200, seed=2), WINDOW, 2)
    baseline = fit_baseline(scorer, calib, hop=2, scaler=scaler)
    test, _ = make_windows(_plant(400, seed=3), WINDOW, 5)
    normal = scorer.score(test, baseline)
    assert normal.anomalous.mean() < 0.1
    for k in range(3):
        faulty = test.copy()
        faulty[:, 4:7, k] += 5 * scaler.scale[k]  # a bump on channel k only
        batch = scorer.score(faulty, baseline)
        assert batch.anomalous.all()
        assert (batch.contributions.argmax(axis=1) == k).all()
        np.testing.assert_allclose(
            batch.contributions.sum(axis=1) + batch.latent, batch.score, rtol=1e-4
        )


def test_fit_baseline_refuses_too_few_windows(pca_scorer: tuple[Scorer, RobustScaler]) -> None:
    scorer, _ = pca_scorer
    windows, _ = make_windows(_plant(30, seed=4), WINDOW, 1)
    with pytest.raises(CalibrationError, match="21 calibration windows are too few"):
        fit_baseline(scorer, windows, hop=1)
    with pytest.raises(CalibrationError, match="non-empty"):
        fit_baseline(scorer, windows[0], hop=1)


def test_same_windows_set_a_lower_threshold_than_disjoint_halves(
    pca_scorer: tuple[Scorer, RobustScaler],
) -> None:
    """Why fit_baseline splits: statistics fitted on the windows they then score look better
    on those windows than on the next ones, so the threshold comes out too low."""
    scorer, scaler = pca_scorer
    # A short span, as when an asset calibrates from its warm-up: 71 overlapping windows.
    windows, _ = make_windows(_plant(80, seed=5), WINDOW, 1)
    errors = scorer.features(windows, scaler.center, scaler.scale)
    stats_part, thr_part = split_for_calibration(len(windows), gap=WINDOW - 1)
    mean, sq, precision = fit_error_stats(errors[stats_part])
    b = Baseline(scaler.center, scaler.scale, mean, sq, precision, threshold=0.0)
    policy = ThresholdPolicy(quantile=0.99)
    same = set_threshold(b.scores(errors[stats_part])[0], policy)
    disjoint = set_threshold(b.scores(errors[thr_part])[0], policy)
    print(f"threshold on the same windows {same:.3f}, on disjoint windows {disjoint:.3f}")
    assert disjoint > 1.5 * same


def test_expected_false_alerts_come_from_windows_that_did_not_set_the_threshold() -> None:
    from seqae.calibrate import expected_false_alerts

    rng = np.random.default_rng(0)
    quiet = rng.normal(1.0, 0.1, 2000)
    info = expected_false_alerts(quiet, ThresholdPolicy(quantile=0.999), step_s=5.0)
    assert info["false_alert_windows"] == 2000 and info["false_alert_days"] == 2000 * 5 / 86400
    assert info["expected_false_alerts_per_day"] == info["false_alert_episodes"] / (
        2000 * 5 / 86400
    )
    # the second half drifts up: a threshold set on the first half alarms there for long
    drifting = np.concatenate([quiet[:1000], quiet[1000:] + 1.0])
    drift = expected_false_alerts(drifting, ThresholdPolicy(quantile=0.999), step_s=5.0)
    assert info["false_alert_episodes"] <= 1 <= drift["false_alert_episodes"]
    assert "expected_false_alerts_per_day" not in expected_false_alerts(
        quiet[:30], ThresholdPolicy(), 5.0
    )


def test_library_alert_rule_is_the_shipped_config() -> None:
    from pathlib import Path

    from daemon.settings import load_settings
    from seqae.alerting import Rule

    example = Path(__file__).resolve().parents[2] / "configs" / "daemon.example.toml"
    shipped = load_settings(example).alerts
    for rule in (Rule(), Rule.from_toml(example)):
        for name in Rule.__dataclass_fields__:
            assert getattr(rule, name) == getattr(shipped, name), name


def test_baselines_share_their_profiles_arrays_and_keep_their_own() -> None:
    """Baselines restored from separate records (as a fleet is, after a rebalance) hold one
    read-only copy of the arrays that are their profile's, and their own statistics."""
    import json

    from seqae import calibrate

    record = json.dumps(_baseline().to_dict())
    first, second = (json.loads(record) for _ in range(2))
    second["err_mean"][0] += 0.5  # the asset's own statistics differ
    a, b = Baseline.from_dict(first), Baseline.from_dict(second)
    for name in calibrate.PROFILE_WIDE:
        assert getattr(a, name) is getattr(b, name), name
        assert not getattr(a, name).flags.writeable, name
    assert a.err_mean is not b.err_mean and a.precision is not b.precision
    assert a.err_mean.flags.writeable
    assert a.to_dict() == json.loads(record)
    assert [k for k in a.info] == [k for k in b.info] and all(
        x is y for x, y in zip(a.info, b.info, strict=True)
    )  # one copy of the names
    errors = np.abs(np.random.default_rng(1).normal(1.0, 0.3, (7, 3)))
    np.testing.assert_array_equal(a.scores(errors)[0], _baseline().scores(errors)[0])


def test_sharing_stops_at_its_bound_and_keeps_the_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from seqae import calibrate

    monkeypatch.setattr(calibrate, "MAX_SHARED_ARRAYS", len(calibrate._shared))
    values = np.array([1.0, 2.0, 3.25], np.float32)  # a value no baseline holds yet
    kept = calibrate.shared_array(values)
    assert kept is values and kept.flags.writeable
    monkeypatch.setattr(calibrate, "MAX_SHARED_ARRAYS", len(calibrate._shared) + 1)
    shared = calibrate.shared_array(values)
    assert shared is not values and not shared.flags.writeable
    np.testing.assert_array_equal(shared, values)
    assert calibrate.shared_array(values.copy()) is shared


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((40, 8), np.float64), ((64, 24), np.float32), ((5, 60), np.float64), ((30, 1), np.float64)],
)
def test_ledoit_wolf_covariance_is_sklearns(shape: tuple[int, int], dtype: type) -> None:
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(3)
    x = (rng.normal(size=shape) * np.arange(1, shape[1] + 1) + 5).astype(dtype)
    x[:, 0] = x[:, -1] * 0.5 + rng.normal(size=shape[0]) * 0.01  # strongly correlated columns
    expected = LedoitWolf().fit(x).covariance_
    got = ledoit_wolf_covariance(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype is np.float32 else 1e-12)
    still = np.ones((20, 3))  # no spread at all: no shrinkage to divide by
    np.testing.assert_array_equal(
        ledoit_wolf_covariance(still), LedoitWolf().fit(still).covariance_
    )


def test_input_range_is_nanpercentile_with_and_without_gaps() -> None:
    rows = np.random.default_rng(4).normal(size=(30, 12, 5)).astype(np.float32)
    expected = np.nanpercentile(rows.reshape(-1, 5), [0.5, 99.5], axis=0).astype(np.float32)
    np.testing.assert_array_equal(np.stack(input_range(rows)), expected)
    rows[:20, :, 1] = np.nan
    rows[:, :, 3] = np.nan
    with pytest.warns(RuntimeWarning):  # the all-NaN column
        expected = np.nanpercentile(rows.reshape(-1, 5), [0.5, 99.5], axis=0).astype(np.float32)
    np.testing.assert_array_equal(np.stack(input_range(rows)), expected)
