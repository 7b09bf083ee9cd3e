#!/usr/bin/env python3
"""Deployment checks that run the real things (CI runs `all` after `devstack.py up`).

    python deploy/live_check.py image        build the CPU image, run it hardened, see it score
    python deploy/live_check.py systemd      boot systemd in systemd-nspawn, install, operate
    python deploy/live_check.py all          both
    python deploy/live_check.py self-test    each check against a deliberately broken file:
                                             every one of them must fail

image: installs Debian's docker.io and starts a Docker engine of its own (socket, data and
run folders of its own; stopped afterwards), makes the base image with debootstrap (there is
no registry: `docker import` of a Debian bookworm minbase), adds a CI-only layer with this
host's certificate authorities (so that pip inside reaches PyPI exactly as the host does; the
shipped Dockerfiles never copy one), builds deploy/container/cpu.Dockerfile with
TORCH_INDEX=PyPI, trains a profile with `seqae train`, runs the image against the devstack
Kafka and InfluxDB 2.7 with --network host --read-only --tmpfs /tmp --cap-drop ALL
--security-opt no-new-privileges:true, waits for its HEALTHCHECK to report healthy, replays a
plant into Kafka and waits for the scores in InfluxDB, then stops it (exit 0 expected).

systemd: boots a Debian bookworm with systemd (debootstrap, cached as a tarball) under
systemd-nspawn on the host network, runs deploy/systemd/install.sh inside, writes the config
and token, then: `systemctl start` returns only after READY=1 (Type=notify), scores land,
SIGSTOP makes the watchdog kill and restart it, `systemctl reload` swaps in a new model
version, `systemctl stop` ends it cleanly, and `systemd-analyze security` stays <= 2.0.

Everything it downloads or builds is cached under $SEQAE_CACHE/deploy (rootfs tarballs, the
Docker data root with the torch layers, pip's wheels); images it builds are pruned to the
current ones. Needs root, the devstack running, and the venv of `make install`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SEQAE_CACHE") or Path.home() / ".cache" / "seqae").expanduser()
VENV = Path(os.environ.get("SEQAE_VENV") or CACHE / "venv")
WORK = CACHE / "deploy"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
SYSTEMD_PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates,procps,iproute2"
BASE_IMAGE = f"local/debian:{DEBIAN_SUITE}"
CI_BASE_IMAGE = f"local/seqae-ci-base:{DEBIAN_SUITE}"
CPU_IMAGE = "seqae-ci:cpu"
PYPI = "https://pypi.org/simple"
TORCH_VERSION = "2.5.1"  # as deploy/container/*.Dockerfile pin it
# TMPDIR: nspawn mounts a small tmpfs on /tmp, too small for the torch wheel.
CONTAINER_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "TMPDIR=/var/tmp",
)
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
DOCKER = "/usr/bin/docker"  # Debian's docker.io client, whatever else is on PATH
EXPOSURE_LIMIT = 2.0
DEBS = {
    "/usr/sbin/dockerd": "docker.io",
    "/usr/sbin/debootstrap": "debootstrap",
    "/usr/bin/systemd-nspawn": "systemd-container",
    "/usr/sbin/iptables": "iptables",
}


class CheckFailed(RuntimeError):
    """A deployment check saw the wrong thing; the message says what."""


def say(msg: str) -> None:
    print(f"live_check: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if check and proc.returncode != 0:
        raise CheckFailed(
            f"{' '.join(cmd)[:300]} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
        )
    return proc


def stream(cmd: list[str], log: Path, **kw: Any) -> None:
    """Run a long command with its output in a log file; on failure show the log's tail."""
    with log.open("ab") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    if rc != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise CheckFailed(f"{' '.join(cmd)[:300]} exited {rc}; tail of {log}:\n{tail}")


def wait_for(what: str, predicate: Callable[[], bool], timeout_s: float, step: float = 1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise CheckFailed(f"timed out after {timeout_s:.0f}s waiting for {what}")


@contextlib.contextmanager
def timed(step: str, timings: dict[str, float]) -> Iterator[None]:
    t0 = time.monotonic()
    say(f"{step} ...")
    yield
    timings[step] = round(time.monotonic() - t0, 1)
    say(f"{step}: {timings[step]}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_debs() -> None:
    missing = sorted({pkg for path, pkg in DEBS.items() if not Path(path).exists()})
    if not missing:
        return
    say(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.call(cmd, env=env, stdout=subprocess.DEVNULL) != 0:
        run(["apt-get", "update", "-q"], env=env)
        run(cmd, env=env)


# --- the stack the checks run against ---------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    kafka: str
    influx_url: str
    org: str
    token: str

    @classmethod
    def from_devstack(cls) -> Stack:
        out = run([str(VENV / "bin" / "python"), str(REPO / "deploy/local/devstack.py"), "env"])
        env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        return cls(
            kafka=env["SEQAE_TEST_KAFKA"],
            influx_url=env["SEQAE_TEST_INFLUX_V2"],
            org=env["SEQAE_TEST_INFLUX_V2_ORG"],
            token=env["SEQAE_TEST_INFLUX_V2_TOKEN"],
        )

    def _call(self, method: str, path: str, body: bytes | None, content_type: str) -> str:
        req = urllib.request.Request(
            f"{self.influx_url}{path}",
            data=body,
            method=method,
            headers={"Authorization": f"Token {self.token}", "Content-Type": content_type},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read().decode()  # type: ignore[no-any-return]

    def api(self, method: str, path: str, doc: dict[str, object] | None = None) -> Any:
        text = self._call(
            method, path, json.dumps(doc).encode() if doc else None, "application/json"
        )
        return json.loads(text) if text else None

    def flux(self, query: str) -> list[dict[str, str]]:
        q = urllib.parse.urlencode({"org": self.org})
        csv = self._call("POST", f"/api/v2/query?{q}", query.encode(), "application/vnd.flux")
        rows = [line.split(",") for line in csv.splitlines() if line and not line.startswith("#")]
        return [dict(zip(rows[0], r, strict=False)) for r in rows[1:]] if rows else []

    @contextlib.contextmanager
    def bucket(self, name: str) -> Iterator[str]:
        org_id = self.api("GET", f"/api/v2/orgs?org={self.org}")["orgs"][0]["id"]
        made = self.api("POST", "/api/v2/buckets", {"orgID": org_id, "name": name})
        try:
            yield name
        finally:
            with contextlib.suppress(urllib.error.URLError):
                self.api("DELETE", f"/api/v2/buckets/{made['id']}")

    def scores(self, bucket: str, version: str | None = None) -> int:
        """How many windows were scored into `bucket` (optionally by one model version)."""
        where = f' and r.model_version == "{version}"' if version else ""
        rows = self.flux(
            f'from(bucket: "{bucket}") |> range(start: 0)'
            f' |> filter(fn: (r) => r._measurement == "seqae_score" and r._field == "score"{where})'
            " |> group() |> count()"
        )
        return int(rows[0]["_value"]) if rows else 0


def seqae(*args: str, env: dict[str, str] | None = None) -> None:
    run([str(VENV / "bin" / "seqae"), *args], env=dict(os.environ) | (env or {}))


def train(models: Path, history: Path, seed: int = 0) -> None:
    """A small PCA profile `pumps`, made readable by any account (see deploy/README.md)."""
    if not history.exists():
        seqae("synth", "--normal", "--assets", "3", "--samples", "3000", str(history))
    csvs = sorted(str(p) for p in history.glob("pump-*.csv"))
    seqae(
        "train", *csvs, "--profile", "pumps", "--kind", "pca", "--window", "20", "--hop", "5",
        "--epochs", "3", "--seed", str(seed), "--models", str(models),
    )  # fmt: skip
    # `seqae train` writes 0600/0700 today; the service account must read the models.
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def replay(stack: Stack, topic: str, plant: Path) -> int:
    if not plant.exists():
        seqae("synth", "--assets", "2", "--samples", "1200", "--seed", "1", str(plant.parent))
    seqae("replay", str(plant), "--topic", topic, "--bootstrap", stack.kafka, "--no-progress")
    return sum(1 for _ in plant.open()) - 1


def daemon_toml(stack: Stack, *, topic: str, bucket: str, port: int, host: str) -> str:
    return f"""
commit_interval_s = 1.0
[kafka]
bootstrap_servers = ["{stack.kafka}"]
topics = ["{topic}"]
group_id = "live-{topic}"
[profiles]
routes = [{{ pattern = "pump-*", profile = "pumps" }}]
reload_poll_s = 3600.0
[engine]
device = "cpu"
[influx]
api = "v2"
url = "{stack.influx_url}"
org = "{stack.org}"
bucket = "{bucket}"
[health]
host = "{host}"
port = {port}
"""


# --- the container image ----------------------------------------------------------------------


class Engine:
    """A Docker engine of our own: its own socket, data root (the cache) and run folder."""

    def __init__(self) -> None:
        self.run_dir = Path("/run/seqae-live-docker")
        self.socket = self.run_dir / "docker.sock"
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.socket}", DOCKER_BUILDKIT="1")
        self.proc: subprocess.Popen[bytes] | None = None

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([DOCKER, *args], check=check, env=self.env)

    def answers(self) -> bool:
        return (
            self.docker("version", "--format", "{{.Server.Version}}", check=False).returncode == 0
        )

    def __enter__(self) -> Engine:
        if self.answers():
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = (WORK / "dockerd.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "/usr/sbin/dockerd",
                f"--host=unix://{self.socket}",
                f"--data-root={WORK / 'docker'}",
                f"--exec-root={self.run_dir / 'exec'}",
                f"--pidfile={self.run_dir / 'dockerd.pid'}",
                "--storage-driver=overlay2",
                "--exec-opt=native.cgroupdriver=cgroupfs",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for("dockerd to answer", self.answers, 60, 0.5)
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def has_image(self, name: str) -> bool:
        return self.docker("image", "inspect", name, check=False).returncode == 0


def rootfs_tarball(name: str, packages: str) -> Path:
    """A Debian minbase root file system made by debootstrap, cached as a tarball."""
    tarball = WORK / "rootfs" / f"{name}-{DEBIAN_SUITE}.tar"
    if tarball.exists():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent) as tmp:
        root = Path(tmp) / "root"
        stream(
            ["debootstrap", "--variant=minbase", f"--include={packages}", DEBIAN_SUITE,
             str(root), DEBIAN_MIRROR],
            WORK / f"debootstrap-{name}.log",
        )  # fmt: skip
        run(["rm", "-rf", *map(str, (root / "var/cache/apt/archives").glob("*.deb"))])
        partial = tarball.with_suffix(".partial")
        run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."])
        partial.replace(tarball)
    return tarball


def ensure_base_images(engine: Engine) -> None:
    if not engine.has_image(BASE_IMAGE):
        tarball = rootfs_tarball("minbase", BASE_PACKAGES)
        with tarball.open("rb") as f:
            run([DOCKER, "import", "-", BASE_IMAGE], stdin=f, env=engine.env)
    # CI only: this host's certificate authorities, so that pip reaches PyPI as the host does.
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy(HOST_CA, Path(ctx) / "ca-certificates.crt")
        (Path(ctx) / "Dockerfile").write_text(
            f"FROM {BASE_IMAGE}\n"
            "COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n"
            "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt\n"
        )
        engine.docker("build", "-q", "-t", CI_BASE_IMAGE, ctx)


def build_image(engine: Engine, dockerfile: Path, tag: str, log: Path) -> None:
    cmd = [
        DOCKER, "build", "--network", "host", "-f", str(dockerfile),
        "--build-arg", f"PYTHON_IMAGE={CI_BASE_IMAGE}", "--build-arg", f"TORCH_INDEX={PYPI}",
        "-t", tag, str(REPO),
    ]  # fmt: skip
    stream(cmd, log, env=engine.env)


def container_health(engine: Engine, name: str) -> str:
    out = engine.docker(
        "inspect", "-f", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
        name, check=False,
    )  # fmt: skip
    return out.stdout.strip()


def run_image(
    engine: Engine, stack: Stack, image: str, tmp: Path, *, health_flags: tuple[str, ...] = ()
) -> dict[str, object]:
    """Run `image` hardened against the devstack; healthy, scores land, clean stop."""
    models = tmp / "models"
    train(models, WORK / "history")
    topic = f"live-image-{uuid.uuid4().hex[:8]}"
    port = free_port()
    name = f"seqae-live-{uuid.uuid4().hex[:8]}"
    (tmp / "daemon.toml").write_text(
        daemon_toml(stack, topic=topic, bucket=f"live_{topic}", port=port, host="127.0.0.1")
    )
    token = tmp / "influx-token"
    token.write_text(stack.token)
    for f in (tmp / "daemon.toml", token):
        f.chmod(0o644)  # uid 10001 reads them through the bind mounts
    result: dict[str, object] = {}
    with stack.bucket(f"live_{topic}") as bucket:
        engine.docker(
            "run", "-d", "--name", name,
            "--network", "host", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges:true",
            "-v", f"{models}:/var/lib/seqae/models:ro",
            "-v", f"{tmp / 'daemon.toml'}:/etc/seqae/daemon.toml:ro",
            "-v", f"{token}:/run/secrets/influx-token:ro",
            "-e", "SEQAE_INFLUX__TOKEN_FILE=/run/secrets/influx-token",
            "-e", f"SEQAE_HEALTH__PORT={port}", "-e", "SEQAE_HEALTH__HOST=127.0.0.1",
            *health_flags, image,
        )  # fmt: skip
        try:
            t0 = time.monotonic()

            def healthy() -> bool:
                state = container_health(engine, name)
                if state.split()[0] != "running" or state.endswith("unhealthy"):
                    logs = engine.docker("logs", "--tail", "40", name, check=False)
                    raise CheckFailed(f"container {state}:\n{logs.stdout}{logs.stderr}")
                return state == "running healthy"

            wait_for("the HEALTHCHECK to report healthy", healthy, 240)
            result["healthy_after_s"] = round(time.monotonic() - t0, 1)
            result["messages"] = replay(stack, topic, WORK / "plant" / "plant.csv")
            wait_for("scores in InfluxDB", lambda: stack.scores(bucket) > 0, 120, 2)
            time.sleep(3)
            result["windows_scored"] = stack.scores(bucket)
            engine.docker("stop", "-t", "60", name)
            code = engine.docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
            if code != "0":
                logs = engine.docker("logs", "--tail", "40", name, check=False)
                raise CheckFailed(f"container exited {code} on SIGTERM:\n{logs.stderr}")
        finally:
            engine.docker("rm", "-f", "-v", name, check=False)
    return result


def prune(engine: Engine) -> None:
    """Keep the current images and the build cache that makes a warm build fast; drop the rest."""
    engine.docker("container", "prune", "-f", check=False)
    engine.docker("image", "prune", "-f", check=False)
    engine.docker("builder", "prune", "-f", "--keep-storage", "12gb", check=False)


def check_image(stack: Stack, timings: dict[str, float]) -> dict[str, object]:
    with Engine() as engine, tempfile.TemporaryDirectory(dir=WORK) as tmp:
        with timed("base images", timings):
            ensure_base_images(engine)
        with timed("build cpu image", timings):
            build_image(
                engine, REPO / "deploy/container/cpu.Dockerfile", CPU_IMAGE, WORK / "build-cpu.log"
            )
        size = engine.docker("image", "inspect", "-f", "{{.Size}}", CPU_IMAGE).stdout.strip()
        with timed("run cpu image", timings):
            result = run_image(engine, stack, CPU_IMAGE, Path(tmp))
        result["image_gb"] = round(int(size) / 1e9, 2)
        prune(engine)
        return result


# --- systemd under systemd-nspawn -------------------------------------------------------------


class Machine:
    """A Debian with systemd as PID 1 under systemd-nspawn, on the host's network."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root, self.log = root, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def __enter__(self) -> Machine:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit", "--console=pipe",
             f"--machine=seqae-live-{uuid.uuid4().hex[:6]}", "-D", str(self.root),
             f"--bind={WORK / 'pip-cache'}:/root/.cache/pip"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

        def booted() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise CheckFailed(f"systemd-nspawn exited: {self.log.read_text()[-3000:]}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if not pids:
                return False
            self.leader = int(pids[0])
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            return state in ("running", "degraded")

        wait_for("systemd in the container to reach running", booted, 120, 0.5)
        return self

    def command(self, *argv: str) -> list[str]:
        """argv run inside the container, with a clean environment (not this host's)."""
        return ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *CONTAINER_ENV, *argv]

    def sh(self, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.command("/bin/sh", "-c", script), check=check)

    def __exit__(self, *_: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def show(self, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show seqae.service -p {','.join(props)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def copy_source(dest: Path) -> None:
    files = run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"]).stdout.split()
    for rel in files:
        if rel.split("/")[0] in ("seqae", "daemon", "deploy", "configs") or rel in (
            "pyproject.toml",
            "README.md",
        ):
            src = REPO / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)


def install(machine: Machine, stack: Stack, topic: str, bucket: str, port: int) -> None:
    root = machine.root
    shutil.copy(HOST_CA, root / "etc/ssl/certs/ca-certificates.crt")  # CI only, as above
    # CI only: the torch the images pin (PyPI's latest pulls CUDA 13 wheels, 3 GB more).
    (root / "etc/pip-constraints.txt").write_text(f"torch=={TORCH_VERSION}\n")
    (root / "etc/pip.conf").write_text(
        "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
        "constraint = /etc/pip-constraints.txt\n"
    )
    copy_source(root / "opt/seqae-src")
    stream(
        machine.command("/bin/bash", "/opt/seqae-src/deploy/systemd/install.sh"),
        WORK / "install-sh.log",
    )
    (root / "etc/seqae/daemon.toml").write_text(
        daemon_toml(stack, topic=topic, bucket=bucket, port=port, host="127.0.0.1")
    )
    (root / "etc/seqae/seqae.env").write_text(f"SEQAE_INFLUX__TOKEN={stack.token}\n")
    models = root / "var/lib/seqae/models"
    train(models, WORK / "history")
    machine.sh(
        "chown root:seqae /etc/seqae/daemon.toml /etc/seqae/seqae.env"
        " && chmod 0640 /etc/seqae/daemon.toml /etc/seqae/seqae.env"
    )


def journal(machine: Machine) -> str:
    return machine.sh("journalctl -u seqae.service --no-pager -o cat", check=False).stdout


def check_unit(machine: Machine, stack: Stack, bucket: str, topic: str) -> dict[str, object]:
    """Start (READY), score, watchdog restart, reload a new model, stop; then the exposure."""
    result: dict[str, object] = {}
    machine.sh("systemctl start seqae.service")  # returns once the daemon sent READY=1
    props = machine.show("Type", "ActiveState", "SubState", "MainPID", "NRestarts")
    if props["Type"] != "notify":
        raise CheckFailed(f"seqae.service is Type={props['Type']}: READY=1 is not awaited")
    if (props["ActiveState"], props["SubState"]) != ("active", "running"):
        raise CheckFailed(f"after start: {props}\n{journal(machine)[-3000:]}")
    result["messages"] = replay(stack, topic, WORK / "plant" / "plant.csv")
    wait_for("scores from the unit", lambda: stack.scores(bucket) > 0, 120, 2)
    result["windows_scored"] = stack.scores(bucket)

    first_pid, restarts = props["MainPID"], int(props["NRestarts"])
    machine.sh(f"kill -STOP {first_pid}")
    t0 = time.monotonic()

    def restarted() -> bool:
        now = machine.show("ActiveState", "SubState", "MainPID", "NRestarts")
        return (
            int(now["NRestarts"]) > restarts
            and now["MainPID"] not in ("0", first_pid)
            and (now["ActiveState"], now["SubState"]) == ("active", "running")
        )

    wait_for("the watchdog to restart the stopped daemon", restarted, 120)
    result["watchdog_restart_s"] = round(time.monotonic() - t0, 1)
    restarted_pid = machine.show("MainPID")["MainPID"]
    if "Watchdog timeout" not in journal(machine):
        raise CheckFailed("restarted, but not by the watchdog:\n" + journal(machine)[-3000:])

    train(machine.root / "var/lib/seqae/models", WORK / "history", seed=1)  # promotes v0002
    machine.sh("systemctl reload seqae.service")
    wait_for(
        "the reload to serve v0002",
        lambda: "now serving v0002" in journal(machine),
        60,
    )
    after = machine.show("MainPID", "NRestarts")
    if after != {"MainPID": restarted_pid, "NRestarts": str(restarts + 1)}:
        raise CheckFailed(f"reload restarted the daemon instead of reloading it: {after}")

    machine.sh("systemctl stop seqae.service")
    final = machine.show("ActiveState", "Result", "ExecMainStatus")
    if final != {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}:
        raise CheckFailed(f"after stop: {final}\n{journal(machine)[-3000:]}")

    out = machine.sh("systemd-analyze security --no-pager seqae.service", check=False).stdout
    match = re.search(r"Overall exposure level for seqae\.service: ([0-9.]+)", out)
    if not match or float(match.group(1)) > EXPOSURE_LIMIT:
        raise CheckFailed(f"systemd-analyze security: {out[-800:]}")
    result["exposure"] = float(match.group(1))
    return result


@contextlib.contextmanager
def booted_machine(timings: dict[str, float]) -> Iterator[Machine]:
    with timed("systemd rootfs", timings):
        tarball = rootfs_tarball("systemd", SYSTEMD_PACKAGES)
    (WORK / "pip-cache").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        run(["tar", "-C", str(root), "--numeric-owner", "-xf", str(tarball)])
        machine = Machine(root, WORK / "nspawn.log")
        with timed("boot", timings):
            machine.__enter__()
        try:
            yield machine
        finally:
            machine.__exit__()


def check_systemd(stack: Stack, timings: dict[str, float]) -> dict[str, object]:
    topic = f"live-unit-{uuid.uuid4().hex[:8]}"
    with booted_machine(timings) as machine, stack.bucket(f"live_{topic}") as bucket:
        with timed("install.sh", timings):
            install(machine, stack, topic, bucket, free_port())
        with timed("unit lifecycle", timings):
            return check_unit(machine, stack, bucket, topic)


# --- self-test: each check on a deliberately broken file must fail ----------------------------


def expect_failure(what: str, check: Callable[[], object]) -> str:
    try:
        check()
    except CheckFailed as exc:
        first = str(exc).splitlines()[0]
        say(f"self-test: {what}: failed as it must: {first}")
        return first
    raise SystemExit(f"live_check: self-test: {what}: the check PASSED on a broken file")


def self_test(stack: Stack, timings: dict[str, float]) -> dict[str, str]:
    results = {}
    with Engine() as engine, tempfile.TemporaryDirectory(dir=WORK) as tmp:
        ensure_base_images(engine)
        broken = Path(tmp) / "cpu-wrong-health.Dockerfile"
        text = (REPO / "deploy/container/cpu.Dockerfile").read_text()
        health = 'CMD ["python", "/opt/seqae/healthcheck.py"]'
        assert health in text, "cpu.Dockerfile's HEALTHCHECK changed: update the self-test"
        broken.write_text(text.replace(health, 'CMD ["python", "/opt/seqae/no-such-check.py"]'))
        (Path(tmp) / "cpu-wrong-health.Dockerfile.dockerignore").write_text(
            (REPO / "deploy/container/cpu.Dockerfile.dockerignore").read_text()
        )
        with timed("self-test image", timings):
            build_image(engine, broken, "seqae-ci:broken", WORK / "build-broken.log")
            fast = ("--health-interval=5s", "--health-start-period=0s", "--health-retries=2")
            results["wrong health command"] = expect_failure(
                "image with a wrong HEALTHCHECK",
                lambda: run_image(engine, stack, "seqae-ci:broken", Path(tmp), health_flags=fast),
            )
        engine.docker("rmi", "seqae-ci:broken", check=False)
        prune(engine)
    topic = f"live-broken-{uuid.uuid4().hex[:8]}"
    with (
        booted_machine(timings) as machine,
        stack.bucket(f"live_{topic}") as bucket,
        timed("self-test unit", timings),
    ):
        install(machine, stack, topic, bucket, free_port())
        unit = machine.root / "etc/systemd/system/seqae.service"
        unit.write_text(unit.read_text().replace("Type=notify", "Type=simple"))
        machine.sh("systemctl daemon-reload")
        results["unit without Type=notify"] = expect_failure(
            "unit without Type=notify", lambda: check_unit(machine, stack, bucket, topic)
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("what", choices=["image", "systemd", "all", "self-test"])
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "live_check: needs root (a Docker engine, debootstrap, systemd-nspawn)", file=sys.stderr
        )
        return 1
    WORK.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    report: dict[str, object] = {}
    try:
        with timed("packages", timings):
            ensure_debs()
        stack = Stack.from_devstack()
        if args.what in ("image", "all"):
            report["image"] = check_image(stack, timings)
        if args.what in ("systemd", "all"):
            report["systemd"] = check_systemd(stack, timings)
        if args.what == "self-test":
            report["self-test"] = self_test(stack, timings)
    except CheckFailed as exc:
        print(f"live_check: FAILED: {exc}", file=sys.stderr)
        return 1
    report["seconds"] = timings
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
