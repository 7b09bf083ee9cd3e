"""What each light `seqae` command imports, each run in a fresh interpreter.

A command that needs no model must not import torch, pandas or matplotlib (3 s and 940 MB
before anything happens, once): the guard is on the modules loaded, not on a timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "pandas", "matplotlib", "numpy", "scipy", "sklearn")

# Runs the console entry point with `args`, then prints which top-level packages are loaded.
PROBE = """
import json, sys
from daemon.cli import main
sys.argv = ["seqae", *json.loads(sys.argv[1])]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
loaded = sorted({name.split(".")[0] for name in sys.modules})
print("\\n" + json.dumps({"code": code, "loaded": loaded}))
"""


def fake_store(root: Path) -> None:
    """A profile `p` with one version as `models list|show` read it: model.json and weights
    whose checksum matches (the bytes need not be a real model: neither command loads them)."""
    version = root / "p" / "v0001"
    version.mkdir(parents=True)
    weights = b"not loaded by list or show"
    (version / "weights.safetensors").write_bytes(weights)
    meta = {
        "format": "seqae-model/1",
        "profile": "p",
        "kind": "pca",
        "channels": ["a", "b"],
        "period_s": 1.0,
        "window": 10,
        "hop": 2,
        "baseline": {"threshold": 3.5, "score_kind": "mse", "info": {"windows": 40}},
        "created_at": "2026-01-01T00:00:00+00:00",
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    (version / "model.json").write_text(json.dumps(meta))
    (root / "p" / "CURRENT").write_text("v0001\n")


def run_probe(args: list[str], cwd: Path) -> tuple[int, set[str], str]:
    env = {**os.environ, "SEQAE_MODELS": str(cwd / "models")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    *output, last = done.stdout.rstrip("\n").split("\n")
    report = json.loads(last)
    return int(report["code"]), set(report["loaded"]), "\n".join(output)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imports")
    fake_store(root / "models")
    return root


LIGHT = [
    ["--help"],
    ["--version"],
    ["config", "check"],
    ["models", "list"],
    ["models", "show", "p"],
    ["train", "--help"],
    ["score", "--help"],
    ["evaluate", "--help"],
    ["calibrate", "--help"],
    ["retrain", "--help"],
    ["backtest", "--help"],
]


@pytest.mark.parametrize("args", LIGHT, ids=" ".join)
def test_light_commands_import_no_heavy_package(args: list[str], workdir: Path) -> None:
    code, loaded, output = run_probe(args, workdir)
    assert code == 0, output
    assert output.strip(), "the command printed nothing"
    assert not loaded & set(HEAVY), f"seqae {' '.join(args)} imported {sorted(loaded & set(HEAVY))}"


def test_the_probe_sees_a_heavy_import(workdir: Path) -> None:
    """The guard can fail: a command that loads a model is seen importing torch."""
    code, loaded, output = run_probe(["models", "promote", "p", "v0001"], workdir)
    assert code != 0  # the fake weights are no safetensors file
    assert "torch" in loaded, output


def test_models_list_and_show_print_the_store(workdir: Path) -> None:
    _, _, listing = run_probe(["models", "list"], workdir)
    assert listing.strip() == "* p/v0001  pca  2026-01-01T00:00:00+00:00  channels=2"
    _, _, shown = run_probe(["models", "show", "p"], workdir)
    meta = json.loads(shown)
    assert meta["baseline"] == {"threshold": 3.5, "score_kind": "mse", "windows": 40}


def test_the_light_copies_agree_with_the_library() -> None:
    """Names spelled out to keep torch out of the light commands match their sources."""
    from click import Command

    from daemon.cli import RETRAIN
    from daemon.retrain_cli import retrain
    from seqae import artifacts, cli_models
    from seqae.cli import VARIANT_CHOICES
    from seqae.model import VARIANTS

    assert VARIANT_CHOICES == VARIANTS
    assert cli_models.FORMAT == artifacts.FORMAT
    assert cli_models.VERSION_RE.pattern == artifacts.VERSION_RE.pattern
    assert cli_models.NAME_RE.pattern == artifacts.NAME_RE.pattern
    assert (cli_models.WEIGHTS, cli_models.META) == (artifacts.WEIGHTS, artifacts.META)
    assert isinstance(RETRAIN.load(), Command) and RETRAIN.load() is retrain
    for limit in (45, 80, 200):
        assert RETRAIN.get_short_help_str(limit) == retrain.get_short_help_str(limit)


def test_light_store_reading_matches_artifacts(tmp_path: Path) -> None:
    from seqae import artifacts, cli_models

    fake_store(tmp_path)
    (tmp_path / "p" / "v0002").mkdir()
    (tmp_path / "q").mkdir()
    assert cli_models.list_profiles(tmp_path) == artifacts.list_profiles(tmp_path) == ["p"]
    assert cli_models.list_versions(tmp_path, "p") == artifacts.list_versions(tmp_path, "p")
    assert cli_models.current_version(tmp_path, "p") == artifacts.current_version(tmp_path, "p")
    assert cli_models.read_meta(tmp_path / "p" / "v0001") == artifacts.read_meta(
        tmp_path / "p" / "v0001"
    )


def test_synth_needs_no_torch(workdir: Path) -> None:
    code, loaded, output = run_probe(
        ["synth", str(workdir / "plant"), "--assets", "1", "--samples", "120", "--normal"], workdir
    )
    assert code == 0 and "wrote" in output, output
    assert not loaded & {"torch", "matplotlib", "sklearn"}, sorted(loaded)


def test_the_entry_point_asks_mkl_for_reproducible_results() -> None:
    """`seqae` sets MKL's reproducible mode on import, before torch can compute anything: MKL
    reads it once, at its first call (without it a loaded machine's rerun of a backtest gave
    other last bits)."""
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    probe = "import os; from daemon.cli import main; print(os.environ.get('MKL_CBWR'))"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "AUTO,STRICT"
