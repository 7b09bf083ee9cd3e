import json
import math

import numpy as np
import pytest

from seqae.evaluate import (
    EvaluationError,
    always_alarm_reference,
    auc_pr,
    detection_delays,
    evaluate_scores,
    event_recall,
    events,
    false_alarm_episodes,
    false_alarms_per_hour,
    median_detection_delay,
    plot_series,
    plot_summary,
    point_metrics,
    random_score_reference,
    vus_pr,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Two events, (2, 5) and (8, 10); the alarms hit the first one late and miss the second.
#                  0  1  2  3  4  5  6  7  8  9 10 11
LABELS = np.array([0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0])
ALARMS = np.array([0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1], dtype=bool)


def _long_labels(n: int = 2400) -> np.ndarray:
    y = np.zeros(n, dtype=np.int8)
    y[600:720] = 1
    y[1500:1590] = 1
    y[2000:2030] = 1
    return y


def test_events_are_runs_with_exclusive_end():
    assert events(LABELS) == [(2, 5), (8, 10)]
    assert events([1, 1, 0, 1]) == [(0, 2), (3, 4)]
    assert events([0, 0, 0]) == []


def test_point_metrics_hand_computed():
    m = point_metrics(LABELS, ALARMS)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 3, 3, 4)
    assert m["precision"] == pytest.approx(2 / 5)
    assert m["recall"] == pytest.approx(2 / 5)
    assert m["f1"] == pytest.approx(2 / (2 + (3 + 3) / 2))
    assert m["far"] == pytest.approx(3 / 7)
    assert m["mar"] == pytest.approx(3 / 5)


def test_point_metrics_zero_denominators_are_nan():
    m = point_metrics([0, 0, 0], [0, 0, 0])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (0, 0, 0, 3)
    assert m["far"] == 0.0
    assert math.isnan(m["recall"]) and math.isnan(m["mar"]) and math.isnan(m["f1"])


def test_event_recall_delays_and_false_alarms_hand_computed():
    assert event_recall(LABELS, ALARMS) == 0.5
    assert detection_delays(LABELS, ALARMS, period_s=360.0) == [360.0]
    assert median_detection_delay(LABELS, ALARMS, 360.0) == 360.0
    # Alarm runs (1, 2), (3, 6), (11, 12); (3, 6) overlaps an event, so it is no false alarm.
    assert false_alarm_episodes(LABELS, ALARMS) == [(1, 2), (11, 12)]
    # 7 normal samples of 360 s = 0.7 h.
    assert false_alarms_per_hour(LABELS, ALARMS, 360.0) == pytest.approx(2 / 0.7)


def test_delays_median_over_detected_events():
    y = np.zeros(30, dtype=int)
    y[2:6] = y[10:20] = y[25:28] = 1
    a = np.zeros(30, dtype=bool)
    a[2] = a[14] = a[27] = True
    assert detection_delays(y, a, 0.5) == [0.0, 2.0, 1.0]
    assert median_detection_delay(y, a, 0.5) == 1.0
    assert math.isnan(median_detection_delay(y, np.zeros(30, dtype=bool), 0.5))


def test_evaluate_scores_bundles_the_same_numbers_and_serialises():
    score = ALARMS.astype(float) * 2.0 + 0.5  # alarms exactly where ALARMS is set
    r = evaluate_scores(LABELS, score, threshold=1.0, period_s=360.0, vus_window=2)
    assert (r.tp, r.fp, r.fn, r.tn) == (2, 3, 3, 4)
    assert r.f1 == pytest.approx(0.4)
    assert r.far == pytest.approx(3 / 7)
    assert r.mar == pytest.approx(0.6)
    assert (r.n_events, r.n_events_detected, r.event_recall) == (2, 1, 0.5)
    assert r.detection_delays_s == [360.0]
    assert r.false_alarm_episodes == 2
    assert r.false_alarms_per_hour == pytest.approx(2 / 0.7)
    assert r.auc_pr == pytest.approx(auc_pr(LABELS, score))
    assert r.vus_pr == pytest.approx(vus_pr(LABELS, score, window=2))
    d = json.loads(r.to_json())
    assert d["tp"] == 2 and d["threshold"] == 1.0 and d["vus_window"] == 2


def test_report_on_healthy_labels_has_null_for_undefined_metrics(tmp_path):
    y = np.zeros(100, dtype=int)
    score = np.zeros(100)
    score[[10, 11, 50]] = 5.0
    r = evaluate_scores(y, score, threshold=1.0, period_s=36.0)
    assert math.isnan(r.vus_pr) and math.isnan(r.auc_pr) and math.isnan(r.event_recall)
    assert r.false_alarm_episodes == 2
    assert r.false_alarms_per_hour == pytest.approx(2 / 1.0)
    path = tmp_path / "report.json"
    r.to_json(path)
    d = json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert d["vus_pr"] is None and d["recall"] is None and d["far"] == pytest.approx(3 / 100)


def test_perfect_score_gives_vus_pr_and_auc_pr_near_one():
    y = _long_labels()
    score = y + np.random.default_rng(0).random(len(y)) * 0.01
    assert auc_pr(y, score) == pytest.approx(1.0)
    assert vus_pr(y, score) > 0.99


def test_random_score_gives_about_the_positive_rate():
    y = _long_labels()
    rate = y.mean()
    values = [auc_pr(y, np.random.default_rng(s).random(len(y))) for s in range(5)]
    assert np.mean(values) == pytest.approx(rate, abs=0.02)
    vus = vus_pr(y, np.random.default_rng(0).random(len(y)))
    assert rate - 0.03 < vus < rate + 0.06  # buffers around events add a little


def test_references():
    y = _long_labels()
    always = always_alarm_reference(y, period_s=1.0, vus_window=10)
    assert always.recall == 1.0 and always.far == 1.0 and always.mar == 0.0
    assert always.precision == pytest.approx(y.mean())
    assert always.event_recall == 1.0
    assert always.false_alarm_episodes == 0  # one long alarm run that touches the events
    assert always.auc_pr == pytest.approx(y.mean())
    rand = random_score_reference(y, seed=1, vus_window=10)
    assert abs((rand.tp + rand.fp) / len(y) - y.mean()) < 0.01  # alarm rate = positive rate
    assert rand.auc_pr == pytest.approx(y.mean(), abs=0.03)
    assert rand.f1 < 0.2
    again = random_score_reference(y, seed=1, vus_window=10)
    assert again.to_dict() == rand.to_dict()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(EvaluationError, match="no anomalous samples, VUS-PR"):
        vus_pr(np.zeros(10), np.arange(10.0))
    with pytest.raises(EvaluationError, match="no normal samples, AUC-PR"):
        auc_pr(np.ones(10), np.arange(10.0))
    with pytest.raises(EvaluationError, match="no anomalous events"):
        event_recall(np.zeros(10), np.zeros(10))
    with pytest.raises(EvaluationError, match=r"score: expected shape \(4,\)"):
        auc_pr([0, 1, 0, 1], [0.1, 0.2])
    with pytest.raises(EvaluationError, match=r"score: 1 non-finite values .*index 2"):
        auc_pr([0, 1, 0, 1], [0.1, 0.2, np.nan, 0.3])
    with pytest.raises(EvaluationError, match="labels: values must be 0 or 1, found 2"):
        point_metrics([0, 2, 1], [0, 0, 1])
    with pytest.raises(EvaluationError, match="alarms: expected length 3"):
        point_metrics([0, 1, 1], [0, 1])
    with pytest.raises(EvaluationError, match="period_s"):
        detection_delays([0, 1], [0, 1], period_s=0.0)
    with pytest.raises(EvaluationError, match="threshold"):
        evaluate_scores([0, 1], [0.0, 1.0], threshold=math.nan, period_s=1.0)


def _assert_png(path, min_bytes=5000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return width, height


def test_plot_series_writes_a_png(tmp_path):
    n = 600
    ts = 1_767_225_600_000_000_000 + np.arange(n, dtype=np.int64) * 1_000_000_000
    rng = np.random.default_rng(0)
    values = rng.normal(size=(n, 3)).astype(np.float32)
    y = np.zeros(n, dtype=int)
    y[200:260] = 1
    score = np.full(n, np.nan)
    score[50:] = rng.random(n - 50) + 2.0 * y[50:]
    path = plot_series(
        tmp_path / "sub" / "series.png", ts, values, ["a", "b", "c"], score, 1.5, y, title="t"
    )
    w, h = _assert_png(path)
    assert w > 800 and h > 400


def test_plot_series_stacks_many_channels_and_takes_threshold_per_sample(tmp_path):
    n = 200
    ts = np.arange(n, dtype=np.int64) * 10**9
    values = np.random.default_rng(1).normal(size=(n, 12))
    names = [f"c{i}" for i in range(12)]
    thr = np.linspace(0.5, 1.0, n)
    _, h = _assert_png(plot_series(tmp_path / "many.png", ts, values, names, np.ones(n), thr))
    assert h < 1000  # one stacked panel, not twelve


def test_plot_series_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(EvaluationError, match=r"values: expected shape \(10, 2\)"):
        plot_series(
            tmp_path / "x.png", np.arange(10), np.zeros((10, 3)), ["a", "b"], np.zeros(10), 1.0
        )
    assert not (tmp_path / "x.png").exists()


def test_plot_summary_writes_a_png_and_checks_rows(tmp_path):
    rows = [
        {"detector": "lstm-ae", "metric": "VUS-PR", "mean": 0.8, "std": 0.05},
        {"detector": "pca", "metric": "VUS-PR", "mean": 0.6, "std": 0.1},
        {"detector": "random", "metric": "VUS-PR", "mean": 0.1},
        {"detector": "lstm-ae", "metric": "AUC-PR", "mean": 0.7, "std": 0.04},
        {"detector": "pca", "metric": "AUC-PR", "mean": 0.5, "std": 0.02},
    ]
    _assert_png(plot_summary(tmp_path / "summary.png", rows, title="bench"))
    with pytest.raises(EvaluationError, match=r"rows\[1\]: missing key 'mean'"):
        plot_summary(tmp_path / "bad.png", [rows[0], {"detector": "x", "metric": "VUS-PR"}])
    with pytest.raises(EvaluationError, match="nothing to plot"):
        plot_summary(tmp_path / "bad.png", [])


def test_summary_says_why_a_metric_is_undefined_instead_of_nan():
    normal_only = evaluate_scores(np.zeros(50), np.linspace(0, 2, 50), 1.0, 1.0)
    lines = normal_only.summary_lines()
    text = "\n".join(lines)
    assert "nan" not in text.lower()
    assert lines[0].startswith("F1 0.000  FAR 50.0%")
    assert "VUS-PR, AUC-PR, MAR, event recall, median delay undefined: no labelled anomaly" in lines
    assert normal_only.describe("vus_pr") == "VUS-PR undefined (no labelled anomaly)"
    assert normal_only.why_undefined("far") is None

    quiet = evaluate_scores(np.zeros(50), np.zeros(50), 1.0, 1.0)
    assert "F1 undefined: no labelled anomaly and no alarm" in quiet.summary_lines()

    all_anomalous = evaluate_scores(np.ones(20), np.linspace(0, 2, 20), 1.0, 1.0)
    assert "VUS-PR, AUC-PR, FAR, false alarms/h undefined: no normal (unlabelled) sample" in (
        all_anomalous.summary_lines()
    )

    missed = evaluate_scores(LABELS, np.zeros(len(LABELS)), 1.0, 1.0)
    assert missed.why_undefined("median_detection_delay_s") == "no labelled anomaly was detected"


def test_summary_of_a_defined_report_prints_every_metric():
    report = evaluate_scores(LABELS, ALARMS.astype(float) * 2, 1.0, 1.0)
    (line,) = report.summary_lines()
    assert line.startswith("VUS-PR ") and "median delay 1s" in line and "MAR " in line
    assert report.describe("far") == f"FAR {report.far:.1%}"
