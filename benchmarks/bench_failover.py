"""Failover time of a consumer-group member on the real Kafka of deploy/local: SIGKILL a daemon
and start it again at once (as systemd's Restart=always does), and time from the kill to its
partitions being ready again, with dynamic and with static membership (`group_instance_id`).

    python benchmarks/bench_failover.py [--session-timeout-ms 45000]

Needs `deploy/local/devstack.py up`. Prints one line per mode.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration")]

from conftest import http_request  # noqa: E402
from test_daemon_service import (  # noqa: E402
    DaemonProcess,
    free_port,
    interleave,
    make_topic,
    produce,
    stream,
    train_pumps,
    write_config,
)


def ready_times(log: Path) -> list[float]:
    lines = [ln for ln in log.read_text().splitlines() if "ready in" in ln]
    return [datetime.strptime(ln[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() for ln in lines]


def wait_ready(log: Path, count: int, timeout_s: float = 300) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        times = ready_times(log)
        if len(times) >= count:
            return times[count - 1]
        time.sleep(0.1)
    raise SystemExit(f"no assignment in {timeout_s} s:\n{log.read_text()[-3000:]}")


def measure(root: Path, models: Path, static: bool, session_ms: int, env0: dict) -> float:
    topic = f"bench-failover-{uuid.uuid4().hex[:8]}"
    make_topic(env0["bootstrap"], topic, 2)
    assets = ("pump-1", "pump-3")
    produce(env0["bootstrap"], topic, interleave(*(stream(a)[:300] for a in assets), assets=assets))
    name = "static" if static else "dynamic"
    config = write_config(
        root,
        name,
        bootstrap=env0["bootstrap"],
        topic=topic,
        influx_url=env0["influx"],
        database="bench_failover",
        models_root=models,
        group=f"g-{topic}",
        health_port=free_port(),
    )
    env = {
        "SEQAE_KAFKA__SESSION_TIMEOUT_MS": str(session_ms),
        "SEQAE_KAFKA__HEARTBEAT_INTERVAL_MS": str(min(3000, session_ms // 3)),
    }
    if static:
        env["SEQAE_KAFKA__GROUP_INSTANCE_ID"] = "bench-host-1"
    log = root / f"{name}.log"
    daemon = DaemonProcess(config, log, env).start()
    try:
        wait_ready(log, 1)
        time.sleep(2)  # a steady member with committed work
        daemon.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        daemon.proc.wait()  # type: ignore[union-attr]
        killed = time.time()
        daemon = DaemonProcess(config, log, env).start()
        return wait_ready(log, 2) - killed
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--session-timeout-ms", type=int, default=45_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092", help="devstack's Kafka")
    parser.add_argument(
        "--influx", default="http://127.0.0.1:18086", help="devstack's InfluxDB 1.x"
    )
    args = parser.parse_args()
    env0 = {"bootstrap": args.bootstrap, "influx": args.influx}
    http_request("POST", f"{args.influx}/query?q=CREATE%20DATABASE%20bench_failover")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = root / "models"
        train_pumps(models)
        for static in (False, True):
            seconds = measure(root, models, static, args.session_timeout_ms, env0)
            mode = "static (group_instance_id)" if static else "dynamic"
            print(
                f"{mode:28s} SIGKILL + immediate restart -> partitions ready: {seconds:5.1f} s "
                f"(session timeout {args.session_timeout_ms / 1000:g} s)"
            )


if __name__ == "__main__":
    main()
