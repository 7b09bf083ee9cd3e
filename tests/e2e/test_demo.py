"""README's first command, shortened: the demo runs end to end on the real local services."""

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from daemon.demo import LIVE_START
from daemon.settings import WindowSettings
from daemon.windows import is_window_end, window_phase

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_demo_trains_streams_alerts_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.demo",
            "--out",
            str(out),
            "--assets",
            "3",
            "--history-hours",
            "0.5",
            "--live-minutes",
            "15",
            "--epochs",
            "3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    # window 30, hop 5, 1 s slots: the ends each pump's phase puts on the grid, less the newest
    # `max_lateness_s` of the stream, which stays open
    first = pd.Timestamp(LIVE_START).value // 1_000_000_000
    open_from = first + 15 * 60 - 1 - math.ceil(WindowSettings().max_lateness_s)
    expected = sum(
        is_window_end(end, window_phase(f"pump-{i}", 5), 5)
        for i in (1, 2, 3)
        for end in range(first + 29, open_from)
    )
    assert f"{expected} of {expected} windows scored and written" in text
    assert "ALERT OPEN" in text and "ALERT CLOSED" in text
    assert "faults detected:" in text
    png = out / "scores.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert (out / "models" / "pumps" / "CURRENT").read_text().strip() == "v0001"
