"""devstack comes back up after its servers were killed rather than stopped (a reboot, a lost session)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import DEVSTACK, REPO

PORT_VARS = [
    "SEQAE_DEV_KAFKA_PORT",
    "SEQAE_DEV_KAFKA_CONTROLLER_PORT",
    "SEQAE_DEV_INFLUX_PORT",
    "SEQAE_DEV_INFLUX_RPC_PORT",
    "SEQAE_DEV_INFLUX18_PORT",
    "SEQAE_DEV_INFLUX18_RPC_PORT",
    "SEQAE_DEV_INFLUX2_PORT",
    "SEQAE_DEV_VM_PORT",
]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def devstack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEVSTACK), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )


def test_up_after_servers_were_killed_reuses_their_data(tmp_path: Path) -> None:
    env = dict(os.environ, SEQAE_DEV_HOME=str(tmp_path / "dev"))
    env.update(zip(PORT_VARS, map(str, free_ports(len(PORT_VARS))), strict=True))
    first = devstack(env, "up")
    assert first.returncode == 0, first.stderr[-4000:]
    try:
        state = json.loads((tmp_path / "dev" / "state.json").read_text())
        for record in state["services"].values():
            os.killpg(int(record["pid"]), signal.SIGKILL)
        for record in state["services"].values():
            deadline = time.monotonic() + 30
            while Path(f"/proc/{record['pid']}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)

        second = devstack(env, "up")
        assert second.returncode == 0, second.stderr[-4000:]
        assert "restarting on the data an earlier broker left" in second.stderr
        assert "all reused" not in second.stderr
        assert f"SEQAE_TEST_KAFKA=127.0.0.1:{env['SEQAE_DEV_KAFKA_PORT']}" in second.stdout
    finally:
        down = devstack(env, "down")
        assert down.returncode == 0, down.stderr[-4000:]
    assert not (tmp_path / "dev" / "kafka").exists()
