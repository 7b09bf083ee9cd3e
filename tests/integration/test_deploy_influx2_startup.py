"""The daemon against InfluxDB 2.7 with token auth: a missing or wrong token, or a bucket that
does not exist, stops the start-up with an error that names the setting (never the token);
an unreachable InfluxDB does not (an outage is a state on /readyz, not an exit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import InfluxV2

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def start_daemon(
    tmp_path: Path, kafka: str, server: InfluxV2, token: str | None, bucket: str
) -> subprocess.CompletedProcess[str]:
    models = tmp_path / "models"
    models.mkdir()
    from test_daemon_service import train_pumps

    train_pumps(models)
    config = tmp_path / "daemon.toml"
    config.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[kafka]
bootstrap_servers = ["{kafka}"]
topics = ["it-startup"]
group_id = "it-startup"
[profiles]
models_root = "{models}"
routes = [{{ pattern = "pump-*", profile = "pumps" }}]
[engine]
device = "cpu"
[influx]
api = "v2"
url = "{server.url}"
org = "{server.org}"
bucket = "{bucket}"
[health]
enabled = false
"""
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    if token is not None:
        env["SEQAE_INFLUX__TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "daemon", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )


@pytest.mark.parametrize(
    "token,bucket,says",
    [
        (None, "", "influx.token"),
        ("not-the-token", "", "influx.token"),
        ("<the token>", "no-such-bucket", "influx.bucket"),
    ],
    ids=["missing-token", "wrong-token", "unknown-bucket"],
)
def test_bad_influx_credentials_stop_the_start_up_with_a_clear_error(
    tmp_path: Path,
    kafka_bootstrap: str,
    influx_v2: InfluxV2,
    token: str | None,
    bucket: str,
    says: str,
) -> None:
    real = token == "<the token>"
    proc = start_daemon(
        tmp_path,
        kafka_bootstrap,
        influx_v2,
        influx_v2.token if real else token,
        bucket or influx_v2.bucket,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error and says in error[-1], proc.stderr[-3000:]
    assert influx_v2.url in error[-1]
    assert influx_v2.token not in proc.stderr + proc.stdout
