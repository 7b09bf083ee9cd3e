"""daemon.retrain with small in-memory data: alert spans, exclusion, decision, report, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from daemon.retrain import (
    AlertEventRow,
    RetrainError,
    RetrainOptions,
    ScoreSummary,
    Span,
    alert_spans,
    decide,
    exclude_spans,
    history_from_files,
    parse_duration,
    parse_since,
    run_retrain,
    split_recent,
    summarize_scores,
)
from daemon.settings import load_settings
from seqae.artifacts import current_version, list_versions
from seqae.data import Series
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


def test_summary_counts_exceedance_and_false_alarms_per_day() -> None:
    scores = np.array([0.1, 0.2, 0.3, 2.0, 3.0], np.float32)
    s = summarize_scores("v0001", scores, threshold=1.0, period_s=1.0, hop=5)
    assert s.windows == 5 and s.exceedance == pytest.approx(0.4)
    assert s.false_alarms_per_day == pytest.approx(0.4 * 86400 / 5)
    assert s.max == pytest.approx(3.0) and not s.degenerate
    flat = summarize_scores("v2", np.ones(5, np.float32), threshold=2.0, period_s=1.0, hop=5)
    assert flat.degenerate
    assert summarize_scores("v3", np.array([1.0, np.nan]), 2.0, 1.0, 5).degenerate


def summary(version: str, fa: float, degenerate: bool = False) -> ScoreSummary:
    return ScoreSummary(version, 100, 1.0, 0.1, 0.5, 0.9, 1.2, fa / 17280.0, fa, degenerate)


def test_decision_rule_with_force_and_dry_run() -> None:
    served, better, worse = summary("v1", 100.0), summary("v2", 10.0), summary("v2", 500.0)
    assert decide(served, better, force=False, dry_run=False).outcome == "promoted"
    assert decide(served, summary("v2", 100.0), force=False, dry_run=False).promote  # no worse
    rejected = decide(served, worse, force=False, dry_run=False)
    assert rejected.outcome == "rejected" and "worse" in rejected.reason
    forced = decide(served, worse, force=True, dry_run=False)
    assert forced.promote and forced.forced
    dry = decide(served, better, force=False, dry_run=True)
    assert dry.outcome == "dry_run" and not dry.promote and "would promote" in dry.reason
    assert not decide(served, worse, force=True, dry_run=True).promote
    flat = decide(served, summary("v2", 0.0, degenerate=True), force=False, dry_run=False)
    assert flat.outcome == "rejected" and "degenerate" in flat.reason


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
    assert report.candidate.false_alarms_per_day < report.served.false_alarms_per_day
    assert report.decision.outcome == "promoted" and current_version(root, "pumps") == "v0002"
    saved = json.loads((root / "pumps" / "v0002" / "retrain_report.json").read_text())
    assert saved["decision"]["promoted"] is True
    assert saved["held_out"]["served"]["version"] == "v0001"
    assert saved["history"]["rows"] == 4000 and saved["history"]["held_out_rows"] > 0
    assert (root / "pumps" / "v0002" / "retrain_scores.png").stat().st_size > 1000
    table = report.table()
    assert "false alarms/day" in table and "v0002" in table and "promoted" in table


def test_cli_dry_run_reports_without_promoting(workspace: tuple[Path, Path, list[Path]]) -> None:
    from daemon.cli import build_cli

    root, config, paths = workspace
    args = ["retrain", "--config", str(config), "--profile", "pumps", "--from-files"]
    args += [*map(str, paths), "--ignore-alerts", "--dry-run", "--no-progress"]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    assert "dry run: would promote" in result.output and "false alarms/day" in result.output
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
