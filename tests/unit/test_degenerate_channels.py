"""Degenerate channels (issue 10, item 2): constant channels, flags that switch on only in use,
and channels on scales a million times apart.

The behaviour held here: training succeeds and reports each such channel (in `seqae train`'s
output and in model.json); scores on normal data stay finite and bounded and the threshold is
above 0; a flag switching on, or a constant channel changing, shows (in the score, and in
`Baseline.out_of_range` whatever its size) without a score of 1e8; a channel in units 1e6 times
larger or smaller scores the same.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from seqae.artifacts import load_profile
from seqae.calibrate import (
    DEGENERATE_UNIT_SCORE,
    Baseline,
    CalibrationError,
    ThresholdPolicy,
    bound_log_var,
    fit_error_stats,
    set_threshold,
)
from seqae.cli import cli
from seqae.data import Series, make_windows
from seqae.score import Scorer
from seqae.synth import generate_asset
from seqae.train import TrainConfig, fit_profile, train_profile

WINDOW, HOP = 10, 2
TINY = {"hidden_size": 8, "latent_size": 4}
ROWS = 2400
HELD_OUT = 1920  # the calibration part of a 2400-row series (the last 20 %): normal, unseen
FLAG, IDLE, BIG = 5, 6, 7  # column of each added channel
LEVEL = 12.0  # the idle channel's constant level


def with_extra_channels(pump: Series) -> Series:
    """The pump's five channels, a flag that never switches (0), idle telemetry constant at
    12.0, and flow in units 1e6 times smaller (a channel 1e6 times the others' scale)."""
    n = len(pump)
    values = np.column_stack(
        [pump.values, np.zeros(n), np.full(n, LEVEL), pump.values[:, 1] * 1e6]
    ).astype(np.float32)
    return replace(pump, values=values, channels=[*pump.channels, "flag", "idle", "flow_micro"])


@pytest.fixture(scope="module")
def history() -> Series:
    pump, _ = generate_asset("pump-1", ROWS, seed=0)
    return with_extra_channels(pump)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, history: Series) -> Path:
    root = tmp_path_factory.mktemp("models")
    for kind in ("lstm", "pca"):
        train_profile(
            [history],
            models_root=root,
            profile=kind,
            window=WINDOW,
            hop=HOP,
            kind=kind,  # type: ignore[arg-type]
            epochs=5,
            model_cfg=TINY if kind == "lstm" else None,
            device="cpu",
            progress=False,
        )
    return root


def held_out(history: Series) -> np.ndarray:
    return history.values[HELD_OUT:].copy()


def score(models: Path, kind: str, values: np.ndarray) -> tuple[np.ndarray, Baseline, np.ndarray]:
    """(scores, baseline, window ends) of `values` under the profile's own baseline."""
    lp = load_profile(models, kind)
    windows, ends = make_windows(values, WINDOW, HOP)
    batch = Scorer(lp, device="cpu").score(windows, lp.baseline)
    return batch.score, lp.baseline, ends


@pytest.mark.parametrize("kind", ["lstm", "pca"])
def test_training_succeeds_and_records_each_degenerate_channel(models: Path, kind: str) -> None:
    meta = json.loads((models / kind / "v0001" / "model.json").read_text())
    notes = {n["channel"]: n for n in meta["training"]["degenerate_channels"]}
    assert {c: n["kind"] for c, n in notes.items()} == {
        "flag": "constant",
        "idle": "constant",
        "flow_micro": "scale",
    }
    assert notes["flag"]["scale"] == 1.0 and notes["idle"]["scale"] == LEVEL
    assert "constant in training (at 12)" in notes["idle"]["detail"]
    assert "times the median of the other channels'" in notes["flow_micro"]["detail"]
    # the baseline marks the degenerate ones by index; a scale note changes nothing
    assert meta["baseline"]["degenerate"] == [FLAG, IDLE]


@pytest.mark.parametrize("kind", ["lstm", "pca"])
def test_normal_scores_stay_finite_and_bounded_above_a_positive_threshold(
    models: Path, history: Series, kind: str
) -> None:
    scores, baseline, _ = score(models, kind, held_out(history))
    assert np.isfinite(scores).all()
    assert 0 < baseline.threshold < 20 and np.isfinite(baseline.threshold)
    assert scores.max() < 3 * baseline.threshold
    assert (scores > baseline.threshold).mean() < 0.05
    lp = load_profile(models, kind)
    windows, _ = make_windows(held_out(history), WINDOW, HOP)
    batch = Scorer(lp, device="cpu").score(windows, lp.baseline)
    # the never-moving channels add next to nothing on normal data
    assert np.abs(batch.contributions[:, [FLAG, IDLE]]).max() < 0.01 * baseline.threshold
    assert not baseline.out_of_range(windows).any()


@pytest.mark.parametrize("kind", ["lstm", "pca"])
def test_a_flag_switching_on_shows_without_exploding(
    models: Path, history: Series, kind: str
) -> None:
    values = held_out(history)
    values[200:, FLAG] = 1.0
    scores, baseline, ends = score(models, kind, values)
    after = ends - WINDOW + 1 >= 200  # windows that lie wholly after the switch
    before = ends < 200
    assert (scores[after] > baseline.threshold).mean() > 0.9
    assert (scores[before] > baseline.threshold).mean() < 0.05
    # one unit over a whole window adds at most DEGENERATE_UNIT_SCORE (it was about 1e8)
    assert scores.max() < baseline.threshold + 2 * DEGENERATE_UNIT_SCORE
    windows, _ = make_windows(values, WINDOW, HOP)
    out = baseline.out_of_range(windows)
    assert out[ends >= 200, FLAG].all() and not out[before].any()
    assert not out[:, [0, 1, 2, 3, 4, IDLE, BIG]].any()


@pytest.mark.parametrize("kind", ["lstm", "pca"])
def test_a_constant_channel_changing_shows_without_exploding(
    models: Path, history: Series, kind: str
) -> None:
    """Idle telemetry at 12 falls to 0 (one unit: its level): the score shows it. A drop to
    11.9 is too small to move the score much; out_of_range shows it all the same."""
    values = held_out(history)
    values[200:, IDLE] = 0.0
    scores, baseline, ends = score(models, kind, values)
    after = ends - WINDOW + 1 >= 200
    assert (scores[after] > baseline.threshold).mean() > 0.9
    assert scores.max() < baseline.threshold + 2 * DEGENERATE_UNIT_SCORE
    small = held_out(history)
    small[200:, IDLE] = 11.9
    windows, ends = make_windows(small, WINDOW, HOP)
    out = baseline.out_of_range(windows)
    assert out[ends >= 200, IDLE].all() and not out[ends < 200].any()


def test_the_1e6_channel_scores_as_the_channel_in_its_own_units(history: Series) -> None:
    """A profile where flow is given in units 1e6 times smaller, or larger, scores the same
    windows as one with flow as it is: the scale does not matter once scaled."""
    pump = history.select(["pressure", "flow", "motor_current", "temperature", "vibration"])
    cfg = TrainConfig(device="cpu")
    results = []
    for factor in (1.0, 1e6, 1e-6):
        values = pump.values.astype(np.float64)
        values[:, 1] *= factor
        series = replace(pump, values=values.astype(np.float32))
        fitted = fit_profile(
            [series],
            profile="p",
            window=WINDOW,
            hop=HOP,
            period_s=1.0,
            kind="pca",
            train_cfg=cfg,
            progress=False,
        )
        windows, _ = make_windows(series.values[HELD_OUT:], WINDOW, HOP)
        batch = Scorer(fitted.detector, device="cpu").score(windows, fitted.baseline)
        results.append((batch.score, fitted.baseline.threshold))
    for scores, threshold in results[1:]:
        np.testing.assert_allclose(scores, results[0][0], rtol=1e-3, atol=1e-3)
        assert threshold == pytest.approx(results[0][1], rel=1e-3)


@pytest.mark.parametrize("kind", ["lstm", "pca"])
def test_a_profile_of_constant_channels_alone_gets_a_threshold_above_zero(kind: str) -> None:
    """Idle telemetry and a flag that never switch, alone in a profile: every held-out score is
    (nearly) 0. The threshold is above 0, normal data raises no alarm, a switch does.

    PCA fitted on windows without any variance has only zero-variance components: their
    eigenvalues are floored (seqae/pca.py), or its T² would be ~1e9 times any change."""
    n = 1500
    ts = np.arange(n, dtype=np.int64) * 1_000_000_000
    values = np.column_stack([np.zeros(n), np.full(n, 3.3)]).astype(np.float32)
    series = Series(ts, values, ["flag", "idle"], None, "probe")
    fitted = fit_profile(
        [series],
        profile="idle",
        window=WINDOW,
        hop=HOP,
        period_s=1.0,
        kind=kind,  # type: ignore[arg-type]
        model_cfg=TINY if kind == "lstm" else None,
        train_cfg=TrainConfig(device="cpu", epochs=3),
        progress=False,
    )
    b = fitted.baseline
    assert np.isfinite(b.threshold) and b.threshold > 0
    assert [n["kind"] for n in fitted.meta.training["degenerate_channels"]] == [
        "constant",
        "constant",
    ]
    scorer = Scorer(fitted.detector, device="cpu")
    normal = scorer.score(make_windows(values, WINDOW, HOP)[0], b)
    assert np.isfinite(normal.score).all() and not normal.anomalous.any()
    switched = values.copy()
    switched[700:, 0] = 1.0
    windows, ends = make_windows(switched, WINDOW, HOP)
    batch = scorer.score(windows, b)
    assert batch.anomalous[ends >= 700].all() and not batch.anomalous[ends < 700].any()
    assert batch.score.max() < 2 * DEGENERATE_UNIT_SCORE


@pytest.mark.parametrize("kind", ["mahalanobis", "mse"])
def test_a_degenerate_error_weighs_at_most_the_bound_per_unit(kind: str) -> None:
    """The third feature barely varied (its errors are 1e-4 apart): marked degenerate, a one-unit
    deviation of it adds at most DEGENERATE_UNIT_SCORE. One that did not vary at all is weighed
    so even unmarked."""
    rng = np.random.default_rng(0)
    errors = np.column_stack(
        [rng.gamma(4, 0.05, 400), rng.gamma(4, 0.05, 400), 0.01 + 1e-4 * rng.random(400)]
    )
    degenerate = np.array([False, False, True])
    mean, sq, precision = fit_error_stats(errors, degenerate)
    b = Baseline(np.zeros(3, np.float32), np.ones(3, np.float32), mean, sq, precision, 1.0, kind)  # type: ignore[arg-type]
    probe = mean[None, :].copy()
    probe[0, 2] += 1.0
    _, contrib = b.scores(probe)
    # mse weighs the error itself, Mahalanobis its deviation from the mean
    size = probe[0, 2] ** 2 if kind == "mse" else 1.0
    assert 0 < contrib[0, 2] <= DEGENERATE_UNIT_SCORE * size * (1 + 1e-9)
    assert precision[2, :2].tolist() == [0.0, 0.0]
    plain_mean, _, plain_precision = fit_error_stats(errors)
    # without the mark, shrinkage alone leaves it 100 times heavier (and its scale of 1e-3 made
    # a one-unit switch 1000 units: 1e8)
    assert plain_precision[2, 2] > 100 * precision[2, 2]
    np.testing.assert_array_equal(plain_mean, mean)
    errors[:, 2] = 0.01
    _, _, unmarked = fit_error_stats(errors)
    assert unmarked[2, 2] == pytest.approx(3 * DEGENERATE_UNIT_SCORE)


def test_fit_error_stats_without_degenerate_features_is_unchanged() -> None:
    """No marked feature, or an all-False mask: the statistics an ordinary profile always had
    (so its scores and threshold stay identical)."""
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(1)
    errors = np.abs(rng.normal(0.2, 0.05, (300, 4)))
    cov = LedoitWolf().fit(errors).covariance_
    cov += np.eye(4) * max(1e-9, 1e-6 * float(np.trace(cov)) / 4)
    for mask in (None, np.zeros(4, bool)):
        _, _, precision = fit_error_stats(errors, mask)
        assert precision.tobytes() == np.linalg.inv(cov).tobytes()


def test_likelihood_log_variance_is_bounded_for_degenerate_channels() -> None:
    log_var = np.array([-9.0, -9.0, 0.5])
    bounded = bound_log_var(log_var, np.array([False, True, True]))
    assert bounded[0] == -9.0 and bounded[2] == 0.5
    assert 0.5 / np.exp(bounded[1]) == pytest.approx(DEGENERATE_UNIT_SCORE)


def test_a_threshold_is_never_zero_nor_non_finite() -> None:
    zeros = np.zeros(200)
    for policy in (ThresholdPolicy(), ThresholdPolicy(method="pot")):
        level = set_threshold(zeros, policy)
        assert level > 0 and np.isfinite(level)
        assert (zeros > level).mean() == 0.0
    # a likelihood (a log-density) landing exactly on 0 is moved off it
    assert set_threshold(np.full(200, -1e-3), ThresholdPolicy()) != 0.0
    with pytest.raises(CalibrationError, match="2 of 200 held-out scores are not finite"):
        set_threshold(np.r_[np.ones(198), np.inf, np.nan], ThresholdPolicy())
    # ordinary scores: the quantile, untouched
    scores = np.arange(1000.0)
    assert set_threshold(scores, ThresholdPolicy(quantile=0.99)) == np.quantile(scores, 0.99)


def test_baselines_without_the_field_load_and_the_field_round_trips(models: Path) -> None:
    lp = load_profile(models, "pca")
    d = lp.baseline.to_dict()
    assert d["degenerate"] == [FLAG, IDLE]
    again = Baseline.from_dict(json.loads(json.dumps(d)))
    assert again.degenerate.tolist() == lp.baseline.degenerate.tolist()
    assert again.scaler.degenerate.tolist() == lp.baseline.degenerate.tolist()
    old = {k: v for k, v in d.items() if k != "degenerate"}  # a model.json from before
    legacy = Baseline.from_dict(old)
    assert legacy.degenerate.size == 0
    assert not legacy.out_of_range(np.ones((2, WINDOW, len(legacy.center)), np.float32)).any()
    with pytest.raises(CalibrationError, match=r"outside 0\.\.7"):
        Baseline.from_dict({**d, "degenerate": [8]})


def test_an_ordinary_profile_writes_no_degenerate_field(tmp_path: Path) -> None:
    pump, _ = generate_asset("pump-1", ROWS, seed=0)
    train_profile(
        [pump],
        models_root=tmp_path,
        profile="p",
        window=WINDOW,
        hop=HOP,
        kind="pca",
        device="cpu",
        progress=False,
    )
    meta = json.loads((tmp_path / "p" / "v0001" / "model.json").read_text())
    assert "degenerate" not in meta["baseline"]
    assert meta["training"]["degenerate_channels"] == []


def test_seqae_train_prints_a_line_per_degenerate_channel(tmp_path: Path, history: Series) -> None:
    frame = pd.DataFrame(history.values, columns=history.channels)
    frame.insert(0, "timestamp", pd.to_datetime(history.timestamps, utc=True))
    path = tmp_path / "pump-1.csv"
    frame.to_csv(path, index=False)
    args = ["train", str(path), "--profile", "p", "--models", str(tmp_path / "m")]
    result = CliRunner().invoke(cli, [*args, "--kind", "pca", "--window", "10", "--hop", "2"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("channel ")]
    assert [line.split(":")[0] for line in lines] == [
        "channel 'flag' (constant)",
        "channel 'idle' (constant)",
        "channel 'flow_micro' (scale)",
    ]
    assert "scaled by 12" in lines[1]


def test_a_flag_that_switched_only_briefly_in_training_is_a_flag(history: Series) -> None:
    """A flag on for 5 samples of 2400 in training: its spread (a standard deviation of 0.05)
    made its switch 20 units; as a flag it is scaled by its swing, 1, and stays bounded."""
    values = history.values[:, :6].copy()
    values[500:505, FLAG] = 1.0
    series = replace(history, values=values, channels=history.channels[:6])
    fitted = fit_profile(
        [series],
        profile="p",
        window=WINDOW,
        hop=HOP,
        period_s=1.0,
        kind="pca",
        train_cfg=TrainConfig(device="cpu"),
        progress=False,
    )
    notes = fitted.meta.training["degenerate_channels"]
    assert [(n["channel"], n["kind"], n["scale"]) for n in notes] == [("flag", "flag", 1.0)]
    test = values[HELD_OUT:].copy()
    test[200:, FLAG] = 1.0
    windows, ends = make_windows(test, WINDOW, HOP)
    batch = Scorer(fitted.detector, device="cpu").score(windows, fitted.baseline)
    after = ends - WINDOW + 1 >= 200
    assert batch.anomalous[after].mean() > 0.9 and batch.anomalous[ends < 200].mean() < 0.05
    assert batch.score.max() < fitted.baseline.threshold + 2 * DEGENERATE_UNIT_SCORE


def test_the_daemons_paths_bound_the_flag_the_same_way(models: Path, history: Series) -> None:
    """An asset's warm-up baseline (fit_asset_baseline, what daemon/baselines.py calls) keeps the
    degenerate channels and their bound; a batch of many assets' baselines (the stacked path of
    Scorer.finish the daemon's engine takes) scores as each baseline alone."""
    from seqae.calibrate import fit_asset_baseline

    lp = load_profile(models, "pca")
    scorer = Scorer(lp, device="cpu")
    warm_up, _ = make_windows(history.values[:600], WINDOW, HOP)
    own = fit_asset_baseline(scorer, warm_up, hop=HOP, period_s=1.0)
    assert own.degenerate.tolist() == lp.baseline.degenerate.tolist()
    values = held_out(history)
    values[200:, FLAG] = 1.0
    windows, ends = make_windows(values, WINDOW, HOP)
    alone = scorer.score(windows, own)
    after = ends - WINDOW + 1 >= 200
    assert alone.anomalous[after].mean() > 0.9
    assert alone.score.max() < own.threshold + 2 * DEGENERATE_UNIT_SCORE
    many = [replace(own, threshold=own.threshold + i * 1e-6) for i in range(8)]
    stacked = scorer.score(windows, [many[i % 8] for i in range(len(windows))])
    np.testing.assert_allclose(stacked.score, alone.score, rtol=1e-5, atol=1e-6)


def test_degenerate_features_follow_the_detectors_map_of_features_to_channels() -> None:
    """One feature per channel (then PCA's T²), or a detector's own map (the fused kind gives
    each channel an autoencoder and a PCA feature, and window-wide ones)."""
    from seqae.calibrate import degenerate_features

    degenerate = np.array([False, True, False])
    assert degenerate_features(object(), degenerate, 3).tolist() == [False, True, False]
    assert degenerate_features(object(), degenerate, 4).tolist() == [False, True, False, False]

    class Fused:
        def feature_channels(self) -> np.ndarray:
            return np.array([0, 1, 2, -1, 0, 1, 2, -1])

    weak = degenerate_features(Fused(), degenerate, 8)
    assert np.flatnonzero(weak).tolist() == [1, 5]
    with pytest.raises(CalibrationError, match="channels of 8 error features, but there are 9"):
        degenerate_features(Fused(), degenerate, 9)
    assert not degenerate_features(Fused(), np.zeros(0, bool), 8).any()
