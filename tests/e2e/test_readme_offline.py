"""README's "Offline work with the `seqae` command" block runs as written, in order, in bash.

Each line of the block is one shell command, run with the installed `seqae` in a fresh folder;
it must exit 0 and print neither a traceback, a warning nor a bare `nan`. The only changes are
the sizes in `SMALLER`, each of which must appear in the block verbatim: a tenth of the
synthetic history, and the calibration span within it, keep the run short.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Offline work with the `seqae` command"
SMALLER = {
    "--samples 14400": "--samples 1440",
    "--skip 10800 --rows 3600": "--skip 1080 --rows 360",
}


def offline_block(text: str) -> list[str]:
    """The command lines of the first ```bash block of README's offline section."""
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```bash\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert match, f"no bash block under {SECTION!r}"
    return [line for line in match.group(1).splitlines() if line.strip()]


def shortened(lines: list[str]) -> list[str]:
    block = "\n".join(lines)
    for original in SMALLER:
        assert original in block, f"{original!r} is no longer in the README block: update SMALLER"
    out = []
    for line in lines:
        for original, small in SMALLER.items():
            line = line.replace(original, small)
        out.append(line)
    return out


def test_the_block_is_one_real_command_a_line() -> None:
    lines = offline_block(README.read_text())
    assert len(lines) >= 10
    for line in lines:
        command = line.split("#", 1)[0]
        assert command.startswith("seqae "), line
        assert "|" not in command and "..." not in command, f"not runnable as written: {line}"


def test_readme_offline_block_runs_in_order(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",  # the suite's one torch thread, in each command's process
        "PYTHONWARNINGS": "default",
    }
    env.pop("SEQAE_MODELS", None)
    for line in shortened(offline_block(README.read_text())):
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", line],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        shown = f"$ {line}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        assert done.returncode == 0, shown
        # Progress bars go to stderr; what else lands there must be no traceback or warning.
        assert "Traceback" not in done.stderr and "Warning" not in done.stderr, shown
        assert not re.search(r"\bnan\b", done.stdout, re.IGNORECASE), shown

    models = tmp_path / "models"
    assert (models / "pump" / "CURRENT").read_text().strip() == "v0002"
    assert (
        json.loads((models / "pump" / "baselines" / "pump-2.json").read_text())["model_version"]
        == "v0001"
    )
    report = json.loads((tmp_path / "out" / "eval" / "report.json").read_text())
    assert len(report["files"]) == 3 and report["overall"]["n_anomalous"] > 0
    assert (tmp_path / "out" / "eval-pump-2" / "report.json").exists()
    for name in ("scores.csv", "scores-hop1.csv", "scores-pump-2.csv", "filled.csv", "codes.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert len((tmp_path / "synthetic.csv").read_text().splitlines()) == 1 + 100 * 30
