"""The offline commands of `seqae` through click's test runner, on a tiny synthetic plant."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
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
    assert (
        "saved pumps/v0001 (fused" in r.output
        and "the autoencoder explains" in r.output
        and "threshold" in r.output
    )
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


def test_score_takes_many_files_into_a_folder(plant: Path, tmp_path: Path) -> None:
    files = [plant / "test" / "pump-1.csv", plant / "test" / "pump-2.csv"]
    out = tmp_path / "scores"
    r = run("score", *files, "--profile", "pumps", "--models", plant / "models", "--out", out)
    assert r.exit_code == 0, r.output
    one = run(
        "score",
        files[1],
        "--profile",
        "pumps",
        "--models",
        plant / "models",
        "--out",
        tmp_path / "one.csv",
    )
    assert one.exit_code == 0, one.output
    assert sorted(p.name for p in out.iterdir()) == ["pump-1.csv", "pump-2.csv"]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "pump-2.csv"), pd.read_csv(tmp_path / "one.csv")
    )
    bad = run(
        "score", *files, "--profile", "pumps", "--models", plant / "models", "--out", out / "x.csv"
    )
    assert bad.exit_code == 2 and "give a folder" in bad.output


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


def test_calibrate_counts_expected_false_alerts_under_a_configs_rule(
    plant: Path, tmp_path: Path
) -> None:
    data = plant / "history" / "pump-1.csv"
    base = ["calibrate", data, "--profile", "pumps", "--asset", "pump-8", "--models"]
    shipped = run(*base, plant / "models")
    assert shipped.exit_code == 0, shipped.output
    assert "expected false alerts per day: " in shipped.output
    assert "held-out normal windows" in shipped.output
    eager = tmp_path / "eager.toml"
    eager.write_text("[alerts]\nenter_level = 0.01\nexit_level = 0.01\nmin_duration_s = 0\n")
    r = run(*base, plant / "models", "--alerts-from", eager)
    assert r.exit_code == 0, r.output

    def per_day(text: str) -> float:
        return float(text.split("expected false alerts per day: ")[1].split()[0])

    assert per_day(r.output) > per_day(shipped.output)
    bad = tmp_path / "bad.toml"
    bad.write_text("[alerts]\nenter_levle = 2\n")
    r = run(*base, plant / "models", "--alerts-from", bad)
    assert r.exit_code == 2 and "enter_levle" in r.output


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
    # window 10, hop 2: 20 windows plus a window's length (4 windows) between the two parts.
    assert "30 rows (after --skip 0, --rows 30) are too few" in line and "need 56" in line
    assert "need 56" in user_error(
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
            "55",
        )
    )


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


# --- explicit time ---------------------------------------------------------------------------


def write_plant_csv(path: Path, step_s: float, rows: int, seed: int = 0) -> Path:
    """A smooth 3-channel normal series sampled every `step_s` seconds."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    frame = pd.DataFrame(
        {
            "timestamp": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(t * step_s, unit="s"),
            "a": np.sin(t / 7) + rng.normal(0, 0.05, rows),
            "b": np.cos(t / 11) + rng.normal(0, 0.05, rows),
            "c": 0.5 * np.sin(t / 5) + rng.normal(0, 0.05, rows),
        }
    )
    frame.to_csv(path, index=False)
    return path


PCA = ["--kind", "pca", "--window", "10", "--hop", "2"]


def test_train_infers_the_period_from_the_timestamps(tmp_path: Path) -> None:
    data = write_plant_csv(tmp_path / "slow.csv", 180.0, 500)
    r = run("train", data, "--profile", "slow", "--models", tmp_path / "m", *PCA)
    assert r.exit_code == 0, r.output
    assert "period 180 s" in r.output
    meta = json.loads((tmp_path / "m" / "slow" / "v0001" / "model.json").read_text())
    assert meta["period_s"] == 180.0 and meta["training"]["train_windows"] < 500


def test_a_period_that_disagrees_with_the_timestamps_is_an_error(tmp_path: Path) -> None:
    data = write_plant_csv(tmp_path / "slow.csv", 180.0, 500)
    line = user_error(
        run("train", data, "--profile", "p", "--models", tmp_path / "m", "--period", "1", *PCA)
    )
    assert "--period is 1 s but the timestamps' median step is 180 s" in line
    assert not (tmp_path / "m").exists()
    r = run("train", data, "--profile", "p", "--models", tmp_path / "m", "--period", "185", *PCA)
    assert r.exit_code == 0, r.output  # within 5 %


def test_files_of_different_periods_are_an_error(tmp_path: Path) -> None:
    a = write_plant_csv(tmp_path / "a.csv", 1.0, 400)
    b = write_plant_csv(tmp_path / "b.csv", 2.0, 400)
    line = user_error(run("train", a, b, "--profile", "p", "--models", tmp_path / "m", *PCA))
    assert "b.csv: the timestamps' median step is 2 s but" in line and "a.csv's is 1 s" in line


def test_mostly_masked_training_data_is_refused_with_the_share(tmp_path: Path) -> None:
    """Bursts of 10 samples a second apart, then 30 s of nothing: the median step is 1 s, but
    most of the grid is empty."""
    path = write_plant_csv(tmp_path / "bursts.csv", 1.0, 4000)
    frame = pd.read_csv(path)
    frame[(np.arange(len(frame)) % 40) < 10].to_csv(path, index=False)
    line = user_error(run("train", path, "--profile", "p", "--models", tmp_path / "m", *PCA))
    assert "of its samples on the 1 s grid are missing" in line
    share = int(line.split("'bursts': ")[1].split("%")[0])
    assert 60 <= share <= 70  # 30 of every 40 slots, less the 3 forward-filled ones


def test_a_file_too_short_to_calibrate_fails_before_training(tmp_path: Path) -> None:
    """Window 10, hop 2 and the default fractions need 276 rows; 275 fail, naming the need."""
    short = write_plant_csv(tmp_path / "short.csv", 1.0, 275)
    line = user_error(run("train", short, "--profile", "p", "--models", tmp_path / "m", *PCA))
    assert "needs at least 276 samples" in line
    assert not (tmp_path / "m").exists()
    enough = write_plant_csv(tmp_path / "enough.csv", 1.0, 276)
    r = run("train", enough, "--profile", "p", "--models", tmp_path / "m", *PCA)
    assert r.exit_code == 0, r.output


def test_calibration_fraction_sets_the_held_out_share(tmp_path: Path) -> None:
    data = write_plant_csv(tmp_path / "d.csv", 1.0, 1200)
    windows = {}
    for fraction in ("0.2", "0.5"):
        models = tmp_path / fraction
        r = run(
            "train",
            data,
            "--profile",
            "p",
            "--models",
            models,
            "--calibration-fraction",
            fraction,
            *PCA,
        )
        assert r.exit_code == 0, r.output
        meta = json.loads((models / "p" / "v0001" / "model.json").read_text())
        assert meta["training"]["train_config"]["calib_fraction"] == float(fraction)
        windows[fraction] = meta["training"]["calib_windows"]
    assert windows["0.2"] == (240 - 10) // 2 + 1 - 4 and windows["0.5"] == (600 - 10) // 2 + 1 - 4
    assert (
        "--calibration-fraction"
        in run(
            "train",
            data,
            "--profile",
            "p",
            "--models",
            tmp_path / "x",
            "--calibration-fraction",
            "1",
        ).output
    )


def test_score_refuses_a_file_at_another_period(plant: Path, tmp_path: Path) -> None:
    data = write_plant_csv(tmp_path / "d.csv", 2.0, 300)
    frame = pd.read_csv(data)
    for i, ch in enumerate(CHANNELS):
        frame[ch] = frame[["a", "b", "c"][i % 3]]
    frame.drop(columns=["a", "b", "c"]).to_csv(data, index=False)
    line = user_error(
        run(
            "score",
            data,
            "--profile",
            "pumps",
            "--models",
            plant / "models",
            "--out",
            tmp_path / "o.csv",
        )
    )
    assert "the period of pumps/v0001 is 1 s but the timestamps' median step is 2 s" in line


# --- options a protocol needs ---------------------------------------------------------------


def test_score_hop_scores_every_sample(plant: Path, tmp_path: Path) -> None:
    out = tmp_path / "hop1.csv"
    args = [
        "score",
        plant / "test" / "pump-1.csv",
        "--profile",
        "pumps",
        "--models",
        plant / "models",
    ]
    r = run(*args, "--hop", "1", "--out", out)
    assert r.exit_code == 0, r.output
    every = pd.read_csv(out)
    assert len(every) == 900 - 10 + 1
    r = run(*args, "--out", tmp_path / "hop2.csv")
    default = pd.read_csv(tmp_path / "hop2.csv")
    # The windows of the model's hop are every second window of hop 1, scored alike.
    assert np.allclose(every["score"].to_numpy()[::2], default["score"].to_numpy(), rtol=1e-5)


def test_calibrate_skip_takes_rows_from_an_offset(plant: Path, tmp_path: Path) -> None:
    models = plant / "models"
    data = plant / "history" / "pump-1.csv"
    r = run(
        "calibrate",
        data,
        "--profile",
        "pumps",
        "--asset",
        "tail",
        "--models",
        models,
        "--skip",
        "800",
        "--rows",
        "600",
    )
    assert r.exit_code == 0, r.output
    part = tmp_path / "part.csv"
    pd.read_csv(data).iloc[800:1400].to_csv(part, index=False)
    r = run("calibrate", part, "--profile", "pumps", "--asset", "part", "--models", models)
    assert r.exit_code == 0, r.output
    read = lambda a: json.loads((models / "pumps" / "baselines" / f"{a}.json").read_text())  # noqa: E731
    assert read("tail")["baseline"] == read("part")["baseline"]
    assert "--skip 1500 leaves nothing of its 1500 rows" in user_error(
        run(
            "calibrate",
            data,
            "--profile",
            "pumps",
            "--asset",
            "x",
            "--models",
            models,
            "--skip",
            "1500",
        )
    )


def test_a_wrong_asset_is_an_error_not_a_fallback(plant: Path, tmp_path: Path) -> None:
    test_file = plant / "test" / "pump-1.csv"
    for command in (
        ["score", test_file, "--out", tmp_path / "o.csv"],
        ["evaluate", test_file, "--out", tmp_path / "eval"],
        ["impute", test_file, "--out", tmp_path / "i.csv"],
    ):
        line = user_error(
            run(*command, "--profile", "pumps", "--models", plant / "models", "--asset", "pump-77")
        )
        assert "--asset pump-77: no stored baseline for this asset of profile pumps" in line
    assert not (tmp_path / "o.csv").exists()


def test_a_baseline_of_another_model_version_is_an_error(plant: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    data = plant / "history" / "pump-1.csv"
    for _ in range(2):
        assert run("train", data, "--profile", "p", "--models", models, *PCA).exit_code == 0
    r = run(
        "calibrate", data, "--profile", "p", "--asset", "a", "--models", models, "--rows", "600"
    )
    assert r.exit_code == 0 and "on p/v0002" in r.output, r.output
    out = tmp_path / "o.csv"
    args = ["score", data, "--profile", "p", "--models", models, "--asset", "a", "--out", out]
    assert run(*args).exit_code == 0
    line = user_error(run(*args, "--version", "v0001"))
    assert "--asset a: its baseline was fitted for p/v0002" in line and "p/v0001" in line


def test_evaluate_uses_the_stored_asset_baseline(plant: Path, tmp_path: Path) -> None:
    """Two stored baselines, the profile's with its threshold divided or multiplied by 1e6:
    with the first every sample alarms, with the second none (ignoring --asset, both would
    alarm like the profile)."""
    from dataclasses import replace

    from seqae.artifacts import load_profile, save_baseline

    models = plant / "models"
    lp = load_profile(models, "pumps")
    for asset, factor in (("tiny", 1e-6), ("huge", 1e6)):
        stored = replace(lp.baseline, threshold=lp.baseline.threshold * factor)
        save_baseline(models, "pumps", asset, stored, lp.version)
    files = [plant / "test" / "pump-1.csv"]
    reports = {}
    for asset in ("tiny", "huge"):
        out = tmp_path / asset
        r = run(
            "evaluate",
            *files,
            "--profile",
            "pumps",
            "--models",
            models,
            "--out",
            out,
            "--asset",
            asset,
        )
        assert r.exit_code == 0, r.output
        reports[asset] = json.loads((out / "report.json").read_text())
        assert reports[asset]["baseline"] == f"asset {asset}"
    alarms = {k: v["overall"]["fp"] + v["overall"]["tp"] for k, v in reports.items()}
    assert alarms == {"tiny": reports["tiny"]["overall"]["n_samples"], "huge": 0}
    r = run(
        "evaluate",
        *files,
        "--profile",
        "pumps",
        "--models",
        models,
        "--asset",
        "low",
        "--baseline-rows",
        "300",
    )
    assert r.exit_code == 2 and "exclude each other" in r.output


# --- no nan, no warnings ---------------------------------------------------------------------


def test_evaluate_on_a_file_without_anomalies_says_why_instead_of_nan(
    plant: Path, tmp_path: Path
) -> None:
    normal = plant / "history" / "pump-1.csv"
    r = run(
        "evaluate", normal, "--profile", "pumps", "--models", plant / "models", "--out", tmp_path
    )
    assert r.exit_code == 0, r.output
    assert "nan" not in r.output.lower()
    assert (
        "VUS-PR, AUC-PR, MAR, event recall, median delay undefined: no labelled anomaly" in r.output
    )
    assert "FAR " in r.output.splitlines()[0]


def test_evaluate_short_baseline_rows_is_an_error_naming_the_rows(
    plant: Path, tmp_path: Path
) -> None:
    line = user_error(
        run(
            "evaluate",
            plant / "test" / "pump-1.csv",
            "--profile",
            "pumps",
            "--models",
            plant / "models",
            "--out",
            tmp_path,
            "--baseline-rows",
            "30",
        )
    )
    assert (
        "--baseline-rows 30 gives 30 rows" in line and "needs 38" in line
    )  # 20 + 9 windows - 1 + 10


def test_score_on_many_channels_builds_its_table_without_warnings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows, names = 400, [f"ch{i:02d}" for i in range(52)]
    frame = pd.DataFrame(rng.normal(size=(rows, 52)).cumsum(axis=0) * 0.01, columns=names)
    frame.insert(0, "timestamp", pd.date_range("2026-01-01", periods=rows, freq="s", tz="UTC"))
    data = tmp_path / "wide.csv"
    frame.to_csv(data, index=False)
    models = tmp_path / "m"
    assert run("train", data, "--profile", "w", "--models", models, *PCA).exit_code == 0
    out = tmp_path / "o.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = run("score", data, "--profile", "w", "--models", models, "--out", out)
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(out).columns) == 5 + 2 * 52


def test_evaluate_with_a_zero_threshold_is_a_one_line_error(plant: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from seqae.artifacts import load_profile, save_baseline

    models = plant / "models"
    lp = load_profile(models, "pumps")
    save_baseline(models, "pumps", "zero", replace(lp.baseline, threshold=0.0), lp.version)
    line = user_error(
        run(
            "evaluate",
            plant / "test" / "pump-1.csv",
            "--profile",
            "pumps",
            "--models",
            models,
            "--asset",
            "zero",
            "--out",
            tmp_path,
        )
    )
    assert "the baseline's threshold is 0; scores relative to it are undefined" in line
