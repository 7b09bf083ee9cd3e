"""The offline commands of `seqae` through click's test runner, on a tiny synthetic plant."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from seqae.cli import cli

CHANNELS = ["pressure", "flow", "motor_current", "temperature", "vibration"]
TINY = ["--epochs", "2", "--hidden", "8", "--latent", "4", "--window", "10", "--hop", "2"]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def user_error(result: Result) -> str:
    """A bad input: exit code 2 and one line on the terminal, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """history/ (normal), test/ (faults), models/ with a trained profile `pumps` v0001."""
    root = tmp_path_factory.mktemp("cli")
    r = run("synth", root / "history", "--assets", "1", "--samples", "1500", "--normal")
    assert r.exit_code == 0, r.output
    r = run(
        "synth", root / "test", "--assets", "2", "--samples", "900", "--seed", "1", "--healthy", "0"
    )
    assert r.exit_code == 0, r.output
    r = run(
        "train",
        root / "history" / "pump-1.csv",
        "--profile",
        "pumps",
        "--models",
        root / "models",
        *TINY,
    )
    assert r.exit_code == 0, r.output
    assert "saved pumps/v0001 (lstm" in r.output and "threshold" in r.output
    return root


def test_synth_writes_a_plant(plant: Path) -> None:
    names = sorted(p.name for p in (plant / "test").iterdir())
    assert names == ["faults.json", "plant.csv", "pump-1.csv", "pump-2.csv"]
    faults = json.loads((plant / "test" / "faults.json").read_text())
    assert faults["channels"] == CHANNELS and len(faults["events"]) >= 2
    header = (plant / "history" / "pump-1.csv").read_text().splitlines()[0]
    assert header == "timestamp," + ",".join(CHANNELS) + ",label,fault"


def test_score_writes_the_documented_columns(plant: Path) -> None:
    out = plant / "scores.csv"
    r = run(
        "score",
        plant / "test" / "pump-1.csv",
        "--profile",
        "pumps",
        "--models",
        plant / "models",
        "--out",
        out,
    )
    assert r.exit_code == 0, r.output
    frame = pd.read_csv(out)
    expected = ["window_end", "score", "threshold", "anomalous", "shifted"]
    expected += [f"err_{c}" for c in CHANNELS] + [f"contrib_{c}" for c in CHANNELS]
    assert list(frame.columns) == expected
    assert len(frame) == (900 - 10) // 2 + 1
    assert f"{len(frame)} windows" in r.output
    assert frame["anomalous"].dtype == bool and (frame["threshold"] > 0).all()
    assert pd.to_datetime(frame["window_end"]).is_monotonic_increasing


def test_evaluate_writes_report_and_plots(plant: Path) -> None:
    out = plant / "eval"
    files = [plant / "test" / "pump-1.csv", plant / "test" / "pump-2.csv"]
    r = run("evaluate", *files, "--profile", "pumps", "--models", plant / "models", "--out", out)
    assert r.exit_code == 0, r.output
    assert "VUS-PR" in r.output
    report = json.loads((out / "report.json").read_text())
    assert report["profile"] == "pumps" and report["version"] == "v0001"
    assert set(report["files"]) == {str(f) for f in files}
    assert 0.0 <= report["overall"]["vus_pr"] <= 1.0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["test_pump-1.png", "test_pump-2.png"]
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_calibrate_writes_an_asset_baseline_used_by_score(plant: Path) -> None:
    models = plant / "models"
    data = plant / "history" / "pump-1.csv"
    r = run(
        "calibrate",
        data,
        "--profile",
        "pumps",
        "--asset",
        "pump-7",
        "--models",
        models,
        "--rows",
        "600",
    )
    assert r.exit_code == 0, r.output
    stored = json.loads((models / "pumps" / "baselines" / "pump-7.json").read_text())
    assert stored["asset"] == "pump-7" and stored["model_version"] == "v0001"
    threshold = stored["baseline"]["threshold"]
    assert f"threshold {threshold:.4g}" in r.output
    out = plant / "asset_scores.csv"
    r = run(
        "score", data, "--profile", "pumps", "--models", models, "--asset", "pump-7", "--out", out
    )
    assert r.exit_code == 0, r.output
    assert pd.read_csv(out)["threshold"].iloc[0] == pytest.approx(threshold, rel=1e-6)


def test_calibrate_refuses_too_little_data(plant: Path) -> None:
    line = user_error(
        run(
            "calibrate",
            plant / "history" / "pump-1.csv",
            "--profile",
            "pumps",
            "--asset",
            "x",
            "--models",
            plant / "models",
            "--rows",
            "30",
        )
    )
    assert "calibration windows are too few" in line


def test_models_list_show_promote_rollback(plant: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    data = plant / "history" / "pump-1.csv"
    for extra in ([], ["--no-promote"]):
        r = run(
            "train",
            data,
            "--profile",
            "p",
            "--models",
            models,
            "--kind",
            "pca",
            "--window",
            "10",
            *extra,
        )
        assert r.exit_code == 0, r.output
    listing = run("models", "list", "--models", models).output.splitlines()
    assert len(listing) == 2
    assert listing[0].startswith("* p/v0001  pca  ") and listing[0].endswith("channels=5")
    assert listing[1].startswith("  p/v0002  pca  ")
    shown = json.loads(run("models", "show", "p", "--models", models).output)
    assert shown["format"] == "seqae-model/1" and shown["channels"] == CHANNELS
    assert shown["baseline"]["threshold"] > 0 and "precision" not in shown["baseline"]
    assert (
        run("models", "promote", "p", "v0002", "--models", models).output.strip()
        == "p: serving v0002"
    )
    assert (models / "p" / "CURRENT").read_text().strip() == "v0002"
    assert run("models", "rollback", "p", "--models", models).output.strip() == "p: serving v0001"
    (models / "p" / "v0002" / "model.json").write_text("{")
    listing = run("models", "list", "--models", models).output.splitlines()
    assert listing[1].startswith("  p/v0002  unreadable: ") and "not valid JSON" in listing[1]
    assert "no earlier promoted version" in user_error(
        run("models", "rollback", "p", "--models", models)
    )
    assert "has no version 'v0042'" in user_error(
        run("models", "promote", "p", "v0042", "--models", models)
    )


def test_score_missing_channel_is_a_one_line_error(plant: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(plant / "test" / "pump-1.csv").drop(columns=["flow"])
    path = tmp_path / "no_flow.csv"
    frame.to_csv(path, index=False)
    line = user_error(
        run(
            "score",
            path,
            "--profile",
            "pumps",
            "--models",
            plant / "models",
            "--out",
            tmp_path / "o.csv",
        )
    )
    assert "no_flow.csv: missing channels ['flow']" in line
    assert not (tmp_path / "o.csv").exists()


def test_train_bad_input_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("ts,a\n1000,1\n1000,2\n")
    line = user_error(run("train", path, "--profile", "p", "--models", tmp_path / "m", *TINY))
    assert "dup.csv: duplicate timestamp at row 1" in line


def test_corrupt_model_is_a_one_line_error(plant: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    r = run(
        "train",
        plant / "history" / "pump-1.csv",
        "--profile",
        "p",
        "--models",
        models,
        "--kind",
        "pca",
        "--window",
        "10",
    )
    assert r.exit_code == 0, r.output
    weights = models / "p" / "v0001" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    test_file = plant / "test" / "pump-1.csv"
    for args in (
        ["score", test_file, "--profile", "p", "--out", tmp_path / "o.csv"],
        ["evaluate", test_file, "--profile", "p", "--out", tmp_path / "eval"],
        ["models", "show", "p"],
    ):
        line = user_error(run(*args, "--models", models))
        assert "weights.safetensors: checksum does not match" in line
