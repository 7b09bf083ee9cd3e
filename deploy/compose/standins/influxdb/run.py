"""influxd with influxdb:2.7's DOCKER_INFLUXDB_INIT_* set-up, done once per data volume.

As upstream's entrypoint does, the set-up runs against a server on a loopback-only port, so
the real listener (and the health check) only opens on a server that is set up.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

INIT_ADDRESS = "127.0.0.1:9999"
UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def retention_s(text: str) -> int:
    """`90d`, `1w2d`, `0` (forever) -> seconds."""
    if text in ("", "0"):
        return 0
    parts = re.findall(r"(\d+)([smhdw])", text)
    if "".join(n + u for n, u in parts) != text:
        raise SystemExit(
            f"influxdb stand-in: DOCKER_INFLUXDB_INIT_RETENTION={text!r} is no duration"
        )
    return sum(int(n) * UNITS_S[u] for n, u in parts)


def call(method: str, path: str, doc: dict[str, object] | None = None) -> int:
    req = urllib.request.Request(
        f"http://{INIT_ADDRESS}{path}",
        data=json.dumps(doc).encode() if doc is not None else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def set_up(env: dict[str, str]) -> None:
    server = subprocess.Popen(["influxd", f"--http-bind-address={INIT_ADDRESS}"])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if call("GET", "/health") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("influxdb stand-in: influxd did not come up for the set-up")
            time.sleep(0.5)
        doc = {
            "username": env["DOCKER_INFLUXDB_INIT_USERNAME"],
            "password": env["DOCKER_INFLUXDB_INIT_PASSWORD"],
            "org": env["DOCKER_INFLUXDB_INIT_ORG"],
            "bucket": env["DOCKER_INFLUXDB_INIT_BUCKET"],
            "retentionPeriodSeconds": retention_s(env.get("DOCKER_INFLUXDB_INIT_RETENTION", "")),
        }
        if env.get("DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"):
            doc["token"] = env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
        status = call("POST", "/api/v2/setup", doc)
        if status != 201:
            raise SystemExit(f"influxdb stand-in: POST /api/v2/setup answered {status}")
        print("influxdb stand-in: set up org, bucket and token", file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    env = dict(os.environ)
    if env.get("DOCKER_INFLUXDB_INIT_MODE") == "setup" and not os.path.exists(
        env["INFLUXD_BOLT_PATH"]
    ):
        set_up(env)
    os.execvp("influxd", ["influxd"])


if __name__ == "__main__":
    main()
