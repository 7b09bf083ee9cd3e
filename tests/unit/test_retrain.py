"""daemon.retrain with small in-memory data: alert spans, exclusion, the gate, report, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from daemon.retrain import (
    AlertEventRow,
    Evaluation,
    RetrainError,
    RetrainOptions,
    ScoreSummary,
    Span,
    alert_spans,
    decide,
    evaluate_model,
    exclude_spans,
    history_from_files,
    min_train_rows,
    parse_duration,
    parse_since,
    piece_windows,
    run_retrain,
    split_recent,
    summarize_scores,
)
from daemon.retrain_gate import (
    GateFigures,
    Geometry,
    fault_starts,
    gate_data,
    min_gate_rows,
    reached_windows,
    run_alert_rule,
)
from daemon.settings import AlertSettings, load_settings
from seqae.artifacts import current_version, list_versions, load_profile
from seqae.data import Series
from seqae.inject import FAULT_KINDS
from seqae.score import ScoreBatch
from seqae.synth import generate_asset
from seqae.train import train_profile

S = 1_000_000_000  # one second in ns
T0 = 1_767_225_600 * S


def series(asset: str, n: int, labels: np.ndarray | None = None) -> Series:
    stamps = T0 + np.arange(n, dtype=np.int64) * S
    values = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return Series(stamps, values, ["a", "b"], labels, asset)


def test_alert_spans_pair_open_and_close_and_an_open_alert_lasts_until_now() -> None:
    events = [
        AlertEventRow("p1", T0 + 10 * S, "open"),
        AlertEventRow("p1", T0 + 20 * S, "update"),
        AlertEventRow("p1", T0 + 30 * S, "closed"),
        AlertEventRow("p2", T0 + 50 * S, "open"),
        AlertEventRow("p3", T0 + 5 * S, "update"),  # its open lies before the query range
        AlertEventRow("p3", T0 + 8 * S, "closed"),
    ]
    now = T0 + 100 * S
    assert alert_spans(events, now) == [
        Span("p1", T0 + 10 * S, T0 + 30 * S),
        Span("p2", T0 + 50 * S, now),
        Span("p3", T0 + 5 * S, T0 + 8 * S),
    ]


def test_exclusion_drops_the_span_plus_margin_and_splits_the_rest() -> None:
    s = series("p1", 100)
    other = series("p2", 100)
    spans = [Span("p1", T0 + 40 * S, T0 + 50 * S)]
    out = exclude_spans([s, other], spans, margin_ns=5 * S, min_rows=10)
    p1 = [k for k in out.kept if k.asset == "p1"]
    assert [(int(k.timestamps[0] - T0) // S, len(k)) for k in p1] == [(0, 35), (56, 44)]
    assert [len(k) for k in out.kept if k.asset == "p2"] == [100]  # other assets untouched
    assert out.spans == 1 and out.rows_dropped == 21 and out.rows_before == 200


def test_exclusion_drops_short_pieces_and_labelled_rows() -> None:
    labels = np.zeros(100, np.int8)
    labels[60] = 1
    s = series("p1", 100, labels)
    out = exclude_spans([s], [Span("p1", T0 + 10 * S, T0 + 12 * S)], margin_ns=2 * S, min_rows=20)
    # kept: rows 15..57 (43) and 63..99 (37); rows 0..7 (8) are too short
    assert [len(k) for k in out.kept] == [43, 37]
    assert out.rows_dropped == 100 - 80
    assert all(k.labels is None for k in out.kept)


def test_split_recent_keeps_the_newest_share_for_comparison() -> None:
    older, newer, cutoff = split_recent([series("p1", 100), series("p2", 50)], 0.2)
    assert cutoff == T0 + int(99 * S * 0.8)
    assert all(int(s.timestamps[-1]) < cutoff for s in older)
    assert all(int(s.timestamps[0]) >= cutoff for s in newer)
    assert [len(s) for s in older] == [80, 50] and [len(s) for s in newer] == [20]
    with pytest.raises(RetrainError, match="--holdout"):
        split_recent([series("p1", 10)], 1.5)


def test_summary_counts_exceedance_and_alarmed_windows_per_day() -> None:
    scores = np.array([0.1, 0.2, 0.3, 2.0, 3.0], np.float32)
    s = summarize_scores("v0001", scores, threshold=1.0, period_s=1.0, hop=5)
    assert s.windows == 5 and s.exceedance == pytest.approx(0.4)
    assert s.alarmed_windows_per_day == pytest.approx(0.4 * 86400 / 5)
    assert s.max == pytest.approx(3.0) and not s.degenerate
    flat = summarize_scores("v2", np.ones(5, np.float32), threshold=2.0, period_s=1.0, hop=5)
    assert flat.degenerate
    assert summarize_scores("v3", np.array([1.0, np.nan]), 2.0, 1.0, 5).degenerate


def evaluation(
    version: str, fa: float, recall: float, degenerate: bool = False, days: float = 10.0
) -> Evaluation:
    scores = ScoreSummary(version, 1000, 1.0, 0.1, 0.5, 0.9, 1.2, 0.01, 17.0, degenerate)
    gate = GateFigures(
        version, 1000, days, round(fa * days), fa, 60, round(recall * 60), recall, {}, {}
    )
    return Evaluation(scores, gate)


def test_decision_weighs_false_alerts_and_recall_with_force_and_dry_run() -> None:
    served = evaluation("v1", fa=10.0, recall=0.80)
    better = evaluation("v2", fa=2.0, recall=0.90)
    assert decide(served, better, force=False, dry_run=False).outcome == "promoted"
    # within the tolerances: +max(0.5/day, 10 %, one episode over 10 days) and -0.05 recall
    assert decide(served, evaluation("v2", 11.0, 0.75), force=False, dry_run=False).promote
    noisier = decide(served, evaluation("v2", 11.2, 0.90), force=False, dry_run=False)
    assert noisier.outcome == "rejected" and "alerts more often" in noisier.reason
    assert "11.2 false alerts/day" in noisier.reason and "allowed up to 11.0" in noisier.reason
    blinder = decide(served, evaluation("v2", 2.0, 0.74), force=False, dry_run=False)
    assert blinder.outcome == "rejected" and "misses faults" in blinder.reason
    assert "recall 0.74 against the served 0.80" in blinder.reason
    quiet = evaluation("v0", fa=0.0, recall=0.5)
    assert not decide(quiet, evaluation("v2", 0.6, 0.5), force=False, dry_run=False).promote
    assert decide(quiet, evaluation("v2", 0.5, 0.5), force=False, dry_run=False).promote
    # on a short held-out stretch one episode more is within the noise
    short = evaluation("v0", fa=0.0, recall=0.5, days=0.1)
    assert decide(short, evaluation("v2", 10.0, 0.5, days=0.1), force=False, dry_run=False).promote
    blind = evaluation("v2", 2.0, 0.1)
    forced = decide(served, blind, force=True, dry_run=False)
    assert forced.promote and forced.forced and forced.reason.startswith("forced: ")
    dry = decide(served, better, force=False, dry_run=True)
    assert dry.outcome == "dry_run" and not dry.promote and "would promote" in dry.reason
    assert not decide(served, blind, force=True, dry_run=True).promote
    flat = decide(served, evaluation("v2", 0.0, 1.0, degenerate=True), force=False, dry_run=False)
    assert flat.outcome == "rejected" and "degenerate" in flat.reason


def batch(scores: list[float], threshold: float = 1.0) -> ScoreBatch:
    n = len(scores)
    return ScoreBatch(
        np.array(scores, np.float32), np.full(n, threshold, np.float32), np.zeros(n, bool),
        np.ones((n, 2), np.float32), np.zeros((n, 2), np.float32), np.zeros(n, bool),
        np.zeros(n, np.float32),
    )  # fmt: skip


def test_false_alerts_are_episodes_under_the_configured_alert_rule() -> None:
    b = batch([0.1, 2.0, 2.0, 2.0, 0.5, 0.1, 2.0, 0.9, 2.0, 0.1])
    times = T0 + np.arange(10, dtype=np.int64) * 5 * S
    channels = ["a", "b"]
    plain = run_alert_rule(AlertSettings(clear_duration_s=0.0), "p1", times, b, channels)
    assert np.flatnonzero(plain.opened).tolist() == [1, 6] and plain.alerts == 2
    # 0.9 stays above exit_level 0.8, so the third run of high scores is the second one's alert;
    # with 10 s below exit needed to close, the dip at 4..5 does not close the first either
    held = run_alert_rule(AlertSettings(clear_duration_s=10.0), "p1", times, b, channels)
    assert np.flatnonzero(held.opened).tolist() == [1] and held.alerts == 1
    # requiring 10 s above enter leaves only the first run, the one that lasts that long
    slow = AlertSettings(min_duration_s=10.0, clear_duration_s=0.0)
    assert np.flatnonzero(run_alert_rule(slow, "p1", times, b, channels).opened).tolist() == [3]
    # an alert re-opened within its cooldown is the same alert: one episode
    again = AlertSettings(clear_duration_s=0.0, cooldown_s=30.0)
    reopened = run_alert_rule(again, "p1", times, b, channels)
    assert reopened.opened.sum() == 2 and reopened.alerts == 1


def test_fault_room_and_reached_windows_agree_with_the_geometry() -> None:
    g = Geometry(window=20, hop=5, period_s=1.0)
    rows = min_gate_rows(g)
    assert fault_starts(rows, g) and not fault_starts(rows - 1, g)
    n_windows = (rows - g.window) // g.hop + 1
    for start in (fault_starts(rows, g)[0], fault_starts(rows, g)[-1]):
        reached = reached_windows(start, start + g.span, n_windows, g)
        assert reached.start >= g.lead and reached.stop == (start + g.span - 1) // g.hop + 1
        assert reached.stop <= n_windows
        # window i covers rows i*hop .. i*hop + W - 1: the first reached one holds `start`
        assert reached.start * g.hop <= start <= reached.start * g.hop + g.window - 1
        assert (reached.start - 1) * g.hop + g.window - 1 < start


def test_min_train_rows_is_the_least_piece_that_trains_and_calibrates_alone() -> None:
    for window, hop in ((20, 5), (64, 8), (30, 1)):
        n = min_train_rows(window, hop)
        w = piece_windows(n, window, hop)
        assert w.usable and min(w.stats, w.threshold) >= 10
        short = piece_windows(n - 1, window, hop)
        assert not (short.usable and min(short.stats, short.threshold) >= 10)


def test_durations_and_since() -> None:
    assert parse_duration("10m", "--margin") == 600.0
    assert parse_duration("45", "--margin") == 45.0
    with pytest.raises(RetrainError, match="--margin"):
        parse_duration("soon", "--margin")
    now = T0
    assert parse_since("2d", now) == now - 2 * 86400 * S
    assert parse_since("2026-01-01T00:00:00Z", now) == T0
    assert parse_since(str(T0 // 1_000_000), now) == T0
    with pytest.raises(RetrainError, match="--since"):
        parse_since("yesterday", now)


def test_files_with_an_asset_column_split_by_asset(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "timestamp": [1000, 2000, 1000, 2000],
            "asset": ["p1", "p1", "p2", "p2"],
            "a": [1.0, 2.0, 3.0, 4.0],
            "b": [5.0, 6.0, 7.0, 8.0],
        }
    )
    frame.to_csv(tmp_path / "plant.csv", index=False)
    got = history_from_files([tmp_path / "plant.csv"], ["b", "a"])
    assert [s.asset for s in got] == ["p1", "p2"]
    assert got[1].values.tolist() == [[7.0, 3.0], [8.0, 4.0]]
    frame.drop(columns=["b"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad\.csv.*missing channels"):
        history_from_files([tmp_path / "bad.csv"], ["a", "b"])


# -- a whole run from files (PCA, seconds) -------------------------------------------------

WINDOW, HOP = 20, 5


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    root = tmp_path / "models"
    normal = [generate_asset(f"pump-{i}", 2000, seed=0, plant_seed=0)[0] for i in (1, 2)]
    train_profile(
        normal, models_root=root, profile="pumps", window=WINDOW, hop=HOP, kind="pca",
        progress=False, device="cpu",
    )  # fmt: skip
    paths = []
    for i in (1, 2):
        shifted, _ = generate_asset(f"pump-{i}", 2000, seed=5, plant_seed=1)
        frame = pd.DataFrame(shifted.values, columns=shifted.channels)
        frame.insert(0, "timestamp", shifted.timestamps // 1_000_000)
        paths.append(tmp_path / f"pump-{i}.csv")
        frame.to_csv(paths[-1], index=False)
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'[profiles]\nmodels_root = "{root}"\n'
        'routes = [{ pattern = "pump-*", profile = "pumps" }]\n[engine]\ndevice = "cpu"\n'
    )
    return root, config, paths


def test_run_from_files_promotes_a_better_candidate_and_saves_the_report(
    workspace: tuple[Path, Path, list[Path]],
) -> None:
    root, config, paths = workspace
    settings = load_settings(config)
    opts = RetrainOptions(
        profile="pumps", source="files", paths=tuple(paths), ignore_alerts=True,
        device="cpu", progress=False,
    )  # fmt: skip
    lines: list[str] = []
    report = run_retrain(settings, opts, echo=lines.append)
    assert [line[:5] for line in lines if line.startswith("[")] == [
        "[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]",
    ]  # fmt: skip
    # the served model knows another operating point: it alerts on the normal data and, already
    # alerting, catches no injected fault; the candidate alerts less and catches most
    served, candidate = report.served.gate, report.candidate.gate
    assert candidate.false_alerts_per_day < served.false_alerts_per_day
    assert candidate.recall >= served.recall + 0.5
    assert report.decision.outcome == "promoted" and current_version(root, "pumps") == "v0002"
    assert "injected-fault recall" in report.decision.reason
    saved = json.loads((root / "pumps" / "v0002" / "retrain_report.json").read_text())
    assert saved["decision"]["promoted"] is True
    assert saved["held_out"]["served"]["version"] == "v0001"
    assert saved["history"]["rows"] == 4000 and saved["history"]["held_out_rows"] > 0
    gate = saved["gate"]
    assert gate["candidate"]["injected"] == gate["served"]["injected"] == 60
    assert set(gate["candidate"]["recall_by_kind"]) == set(FAULT_KINDS)
    assert gate["candidate"]["recall_by_size"]["spike"].keys() == {"3", "6", "12"}
    assert gate["served"]["windows"] > 0 and gate["served"]["days"] > 0
    assert gate["rule"]["recall_slack"] == 0.05 and gate["rule"]["alerts"]["enter_level"] == 1.0
    assert (root / "pumps" / "v0002" / "retrain_scores.png").stat().st_size > 1000
    table = report.table()
    assert "false alerts/day" in table and "injected recall" in table and "decouple" in table
    assert "v0002" in table and "promoted" in table


def held_out_normal(n: int = 1500) -> list[Series]:
    return [
        replace(generate_asset(f"pump-{i}", n, seed=7, plant_seed=0)[0], labels=None)
        for i in (1, 2)
    ]


def test_the_gate_refuses_a_blind_candidate_though_it_never_false_alerts(
    workspace: tuple[Path, Path, list[Path]],
) -> None:
    root, config, _ = workspace
    settings = load_settings(config)
    good = load_profile(root, "pumps")  # trained on this plant's operating point
    blind_baseline = replace(good.baseline, threshold=good.baseline.threshold * 1e6)
    data = gate_data(held_out_normal(), [], Geometry(WINDOW, HOP, 1.0), max_fill=3)
    channels = good.meta.channels
    served = evaluate_model("v0001", good.detector, good.baseline, data, settings, channels, "cpu")
    blind = evaluate_model("v0002", good.detector, blind_baseline, data, settings, channels, "cpu")
    assert blind.gate.false_alerts_per_day == 0.0 and blind.gate.recall == 0.0
    assert served.gate.recall > 0.3  # it catches faults; the copy catches none
    refused = decide(served, blind, force=False, dry_run=False)
    assert refused.outcome == "rejected" and "misses faults" in refused.reason
    assert f"recall 0.00 against the served {served.gate.recall:.2f}" in refused.reason
    assert decide(served, blind, force=True, dry_run=False).forced
    # the faults and where they go do not depend on the model: both saw the same trials
    assert served.gate.injected == blind.gate.injected == len(data.trials) == 60


def test_injected_faults_are_seeded_and_labelled_spans_are_counted() -> None:
    g = Geometry(WINDOW, HOP, 1.0)
    a = gate_data(held_out_normal(), [], g, max_fill=3)
    b = gate_data(held_out_normal(), [], g, max_fill=3)
    assert [t.fault for t in a.trials] == [t.fault for t in b.trials]
    assert all(
        np.array_equal(x.windows, y.windows) for x, y in zip(a.trials, b.trials, strict=True)
    )
    assert {t.fault.kind for t in a.trials} == set(FAULT_KINDS)
    faulty, _ = generate_asset("pump-1", 1500, seed=7, plant_seed=0, faults=[("spikes", 600, 700)])
    c = gate_data(held_out_normal(), [faulty], g, max_fill=3)
    assert len(c.labelled) == 1 and c.labelled[0].reached.any()


def labelled_files(tmp_path: Path, every: int) -> list[Path]:
    """The served plant's history with a labelled row every `every` rows."""
    paths = []
    for i in (1, 2):
        s, _ = generate_asset(f"pump-{i}", 2000, seed=5, plant_seed=0)
        frame = pd.DataFrame(s.values, columns=s.channels)
        frame.insert(0, "timestamp", s.timestamps // 1_000_000)
        frame["label"] = (np.arange(2000) % every == 0).astype(int)
        paths.append(tmp_path / f"labelled-{i}.csv")
        frame.to_csv(paths[-1], index=False)
    return paths


def test_too_little_history_after_exclusion_fails_before_training(
    workspace: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    root, config, _ = workspace
    opts = RetrainOptions(
        profile="pumps", source="files", paths=tuple(labelled_files(tmp_path, 150)),
        ignore_alerts=True, margin_s=10.0, device="cpu", progress=False,
    )  # fmt: skip
    with pytest.raises(RetrainError) as caught:
        run_retrain(load_settings(config), opts, echo=lambda _: None)
    message = str(caught.value)
    need = min_train_rows(WINDOW, HOP)
    assert "too little history to train" in message
    assert "excluding labelled rows ± 10s left 3432 of 4000 rows in 28 pieces" in message
    assert "(the longest 129 rows)" in message and "0 pieces long enough" in message
    assert f"one piece of {need} contiguous rows" in message and "10 + 10" in message
    assert (
        "Give more or longer files or leave less around each excluded span (--margin, now 10s)."
        in message
    )
    assert list_versions(root, "pumps") == ["v0001"]  # nothing trained, nothing saved


def test_too_short_a_held_out_part_fails_before_training(
    workspace: tuple[Path, Path, list[Path]],
) -> None:
    root, config, paths = workspace
    opts = RetrainOptions(
        profile="pumps", source="files", paths=tuple(paths), ignore_alerts=True, holdout=0.03,
        device="cpu", progress=False,
    )  # fmt: skip
    with pytest.raises(RetrainError) as caught:
        run_retrain(load_settings(config), opts, echo=lambda _: None)
    message = str(caught.value)
    assert "too little held-out history for the gate" in message
    assert f"one piece of {min_gate_rows(Geometry(WINDOW, HOP, 1.0))} contiguous rows" in message
    assert "Raise --holdout" in message and "(the longest 60)" in message
    assert list_versions(root, "pumps") == ["v0001"]


def test_cli_dry_run_reports_without_promoting(workspace: tuple[Path, Path, list[Path]]) -> None:
    from daemon.cli import build_cli

    root, config, paths = workspace
    args = ["retrain", "--config", str(config), "--profile", "pumps", "--from-files"]
    args += [*map(str, paths), "--ignore-alerts", "--dry-run", "--no-progress"]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    assert "dry run: would promote" in result.output and "false alerts/day" in result.output
    assert current_version(root, "pumps") == "v0001"
    assert list_versions(root, "pumps") == ["v0001", "v0002"]
    assert (root / "pumps" / "v0002" / "retrain_report.json").exists()


def test_cli_errors_name_the_problem(workspace: tuple[Path, Path, list[Path]]) -> None:
    from daemon.cli import build_cli

    root, config, paths = workspace
    base = ["retrain", "--config", str(config), "--no-progress", "--ignore-alerts"]
    cli = build_cli()
    unknown = CliRunner().invoke(
        cli, [*base, "--profile", "boilers", "--from-files", str(paths[0])]
    )
    assert unknown.exit_code == 2 and "boilers" in unknown.output
    both = CliRunner().invoke(cli, [*base, "--profile", "pumps", "--from-kafka", "--from-files"])
    assert both.exit_code == 2 and "one of" in both.output
    influx = CliRunner().invoke(cli, [*base, "--profile", "pumps", "--from-influx"])
    assert influx.exit_code == 2 and "--measurement" in influx.output
    assert list_versions(root, "pumps") == ["v0001"]
