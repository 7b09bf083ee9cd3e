#!/usr/bin/env python3
"""Deployment checks that run the real things (CI runs `all` after `devstack.py up`).

    python deploy/live_check.py image        build the CPU image, run it hardened, see it score
    python deploy/live_check.py compose      compose.yaml up with stand-in images, all healthy,
                                             scores in InfluxDB, Prometheus scrapes the daemon
    python deploy/live_check.py cuda         build cuda.Dockerfile if its recipe changed
                                             (--force: anyway)
    python deploy/live_check.py systemd      boot systemd in systemd-nspawn, install, operate
    python deploy/live_check.py all          all four (CI)
    python deploy/live_check.py self-test [image|compose|systemd]...
                                             each check against a deliberately broken file:
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

compose: builds Compose v2 from the Go module proxy once (cached in $SEQAE_CACHE/tools/bin),
builds stand-in images for Kafka, InfluxDB and Prometheus (deploy/compose/standins, tagged by
a hash of their build context, so they are built once), brings deploy/compose/compose.yaml up
under a project name of its own with those images, the CPU image and free loopback ports (the
compose file's variables; the devstack's ports are never touched), then checks health, scores,
Prometheus's scrape and the dashboards' metric names, and takes the project down with -v.

cuda: builds deploy/container/cuda.Dockerfile (base: the CI base image; torch from PyPI) when a
hash of its recipe differs from the last good build's ($SEQAE_CACHE/deploy/cuda-image.json), in
an engine of its own on a temporary data root that is removed afterwards.

systemd: boots a Debian bookworm with systemd (debootstrap, cached as a tarball) under
systemd-nspawn on the host network, runs deploy/systemd/install.sh inside, writes the config
and token, then: `systemctl start` returns only after READY=1 (Type=notify), scores land,
SIGSTOP makes the watchdog kill and restart it, `systemctl reload` swaps in a new model
version, `systemctl stop` ends it cleanly, and `systemd-analyze security` stays <= 2.0.

Everything it downloads or builds is cached under $SEQAE_CACHE/deploy (rootfs tarballs, the
Docker data root with the torch layers and the stand-in images, the Kafka jars, pip's wheels,
the CUDA recipe's marker) and $SEQAE_CACHE/tools/bin (Compose v2); images it builds are pruned
to the current ones. Needs root, the devstack running, and the venv of `make install`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import secrets
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


def train(models: Path, history: Path, seed: int = 0, profile: str = "pumps") -> None:
    """A small PCA profile, made readable by any account (see deploy/README.md)."""
    if not history.exists():
        seqae("synth", "--normal", "--assets", "3", "--samples", "3000", str(history))
    csvs = sorted(str(p) for p in history.glob("pump-*.csv"))
    seqae(
        "train", *csvs, "--profile", profile, "--kind", "pca", "--window", "20", "--hop", "5",
        "--epochs", "3", "--seed", str(seed), "--models", str(models),
    )  # fmt: skip
    # `seqae train` writes 0600/0700 today; the service account must read the models.
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def replay(stack: Stack, topic: str, plant: Path, *, recent: bool = False) -> int:
    """Replay a synthetic plant; `recent`: one made now, starting an hour ago (for a bucket
    with a retention period, which drops the default 2026-01-01 points)."""
    if recent or not plant.exists():
        start = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(time.time() - 3600))
        when = ["--start", start] if recent else []
        seqae(
            "synth", "--assets", "2", "--samples", "1200", "--seed", "1", *when, str(plant.parent)
        )
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
    """A Docker engine of our own: its own socket, data root (the cache) and run folder.

    `isolated=True` is one for builds only, beside the main one: no bridge, no iptables rules.
    """

    def __init__(
        self, name: str = "seqae-live-docker", data_root: Path | None = None, isolated: bool = False
    ) -> None:
        self.run_dir = Path("/run") / name
        self.data_root = data_root or WORK / "docker"
        self.isolated = isolated
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
        log = (WORK / f"{self.run_dir.name}.log").open("ab")
        isolation = (
            ["--bridge=none", "--iptables=false", "--ip-masq=false"] if self.isolated else []
        )
        self.proc = subprocess.Popen(
            [
                "/usr/sbin/dockerd",
                f"--host=unix://{self.socket}",
                f"--data-root={self.data_root}",
                f"--exec-root={self.run_dir / 'exec'}",
                f"--pidfile={self.run_dir / 'dockerd.pid'}",
                "--storage-driver=overlay2",
                "--exec-opt=native.cgroupdriver=cgroupfs",
                *isolation,
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


def build_cpu_image(engine: Engine, timings: dict[str, float]) -> None:
    with timed("base images", timings):
        ensure_base_images(engine)
    with timed("build cpu image", timings):
        build_image(
            engine, REPO / "deploy/container/cpu.Dockerfile", CPU_IMAGE, WORK / "build-cpu.log"
        )


def check_image(engine: Engine, stack: Stack, timings: dict[str, float]) -> dict[str, object]:
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        build_cpu_image(engine, timings)
        size = engine.docker("image", "inspect", "-f", "{{.Size}}", CPU_IMAGE).stdout.strip()
        with timed("run cpu image", timings):
            result = run_image(engine, stack, CPU_IMAGE, Path(tmp))
        result["image_gb"] = round(int(size) / 1e9, 2)
        prune(engine)
        return result


# --- the compose stack ------------------------------------------------------------------------


COMPOSE_VERSION = "v2.40.3"
COMPOSE_MODULE = "github.com/docker/compose/v2"
COMPOSE_BIN = CACHE / "tools" / "bin" / f"docker-compose-{COMPOSE_VERSION}"
COMPOSE_DIR = REPO / "deploy/compose"
STANDINS = COMPOSE_DIR / "standins"
DASHBOARDS = REPO / "deploy/grafana/dashboards"
# Grafana has no stand-in (no Debian package; its licence rules out building it here).
COMPOSE_SERVICES = ("kafka", "influxdb", "seqae", "prometheus")
COMPOSE_PORTS = (
    "SEQAE_KAFKA_HOST_PORT",
    "SEQAE_INFLUXDB_HOST_PORT",
    "SEQAE_METRICS_HOST_PORT",
    "SEQAE_PROMETHEUS_HOST_PORT",
    "SEQAE_GRAFANA_HOST_PORT",
)
KAFKA_TOOLS_DEPENDENCY = """  <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>{kafka}</version>
    </dependency>
  </dependencies>"""
# CI only: the models trained here, mounted where the compose file's models volume is.
CI_OVERRIDE = """services:
  seqae:
    volumes:
      - {models}:/var/lib/seqae/models:ro
"""
# Series Prometheus adds for every target itself; families expand to the series they export.
PROMETHEUS_SERIES = {"up"}
FAMILY_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def devstack() -> Any:
    """deploy/local/devstack.py as a module: its versions and its cached builds."""
    if "devstack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("devstack", REPO / "deploy/local/devstack.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["devstack"] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    return sys.modules["devstack"]


def go_command() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        raise CheckFailed("no Go toolchain (go) to build Compose v2 with")
    return go


def ensure_compose() -> Path:
    """Compose v2 from the Go module proxy, built once into the cache.

    `go install` refuses the module (its go.mod has exclude directives), so its folder is copied
    out of the module cache and built as the main module. Go's own caches are used.
    """
    if COMPOSE_BIN.exists():
        return COMPOSE_BIN
    go = go_command()
    env = dict(os.environ, GOFLAGS="-buildvcs=false", GOTOOLCHAIN="local", CGO_ENABLED="0")
    module = f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"
    info = json.loads(run([go, "mod", "download", "-json", module], env=env).stdout)
    COMPOSE_BIN.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        src = Path(tmp) / "compose"
        shutil.copytree(info["Dir"], src)
        run(["chmod", "-R", "u+w", str(src)])  # the module cache is read-only
        partial = COMPOSE_BIN.with_suffix(".partial")
        ldflags = f"-s -w -X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}"
        stream(
            [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(partial), "./cmd"],
            WORK / "build-compose.log",
            cwd=src,
            env=env,
        )
        partial.replace(COMPOSE_BIN)
    return COMPOSE_BIN


def kafka_standin_libs() -> Path:
    """The devstack's Kafka jars plus kafka-tools (the health check's command), from Maven."""
    ds = devstack()
    libs = WORK / "standins" / f"kafka-{ds.KAFKA_VERSION}" / "libs"
    if (libs / ".complete").exists():
        return libs
    pom = ds.KAFKA_POM.format(kafka=ds.KAFKA_VERSION, log4j=ds.LOG4J_VERSION).replace(
        "</dependencies>", KAFKA_TOOLS_DEPENDENCY.format(kafka=ds.KAFKA_VERSION)
    )
    libs.parent.mkdir(parents=True, exist_ok=True)
    (libs.parent / "pom.xml").write_text(pom)
    shutil.rmtree(libs, ignore_errors=True)
    stream(
        ["mvn", "-B", "-q", f"-Dmaven.repo.local={CACHE / 'maven-repo'}",
         "-f", str(libs.parent / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
        WORK / "maven-standin-kafka.log",
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    (libs / ".complete").write_text(ds.KAFKA_VERSION + "\n")
    return libs


def fill_kafka(ctx: Path) -> None:
    (ctx / "libs").mkdir()
    for jar in sorted(kafka_standin_libs().glob("*.jar")):
        shutil.copy(jar, ctx / "libs" / jar.name)


def fill_influxdb(ctx: Path) -> None:
    ds = devstack()
    binary = ds.ensure_influxdb2(ds.Paths(home=CACHE / "dev", cache=CACHE))
    shutil.copy(binary, ctx / "influxd")


STANDIN_FILLS: dict[str, Callable[[Path], None]] = {
    "kafka": fill_kafka,
    "influxdb": fill_influxdb,
    "prometheus": lambda ctx: None,
}


def tree_digest(root: Path, *extra: str) -> str:
    """SHA-256 over every file's path, mode and bytes under root (and `extra` strings)."""
    h = hashlib.sha256()
    for item in extra:
        h.update(item.encode() + b"\0")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root)}\0{path.stat().st_mode & 0o111:o}\0".encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def remove_other_tags(engine: Engine, repository: str, keep: str) -> None:
    tags = engine.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository)
    for tag in tags.stdout.split():
        if tag != keep:
            engine.docker("rmi", tag, check=False)


def ensure_standin(engine: Engine, service: str) -> str:
    """The stand-in image for `service`, tagged by a hash of its build context and base."""
    base_id = engine.docker("image", "inspect", "-f", "{{.Id}}", BASE_IMAGE).stdout.strip()
    repository = f"local/seqae-standin-{service}"
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        ctx = Path(tmp) / "context"
        shutil.copytree(STANDINS / service, ctx)
        STANDIN_FILLS[service](ctx)
        tag = f"{repository}:{tree_digest(ctx, base_id)[:12]}"
        if not engine.has_image(tag):
            stream(
                [DOCKER, "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                 "-t", tag, str(ctx)],
                WORK / f"build-standin-{service}.log",
                env=engine.env,
            )  # fmt: skip
    remove_other_tags(engine, repository, keep=tag)
    return tag


def prometheus_get(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{path}{query}", timeout=10) as resp:
        doc = json.loads(resp.read().decode())
    if doc.get("status") != "success":
        raise CheckFailed(f"Prometheus {path} {params}: {doc}")
    return doc["data"]


def dashboard_promql(dashboards: Path) -> list[str]:
    """Every PromQL expression of the Prometheus dashboards, panels and variables."""
    out = []
    for path in sorted((dashboards / "prometheus").glob("*.json")):
        doc = json.loads(path.read_text())
        for panel in doc["panels"]:
            out += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
        for var in doc.get("templating", {}).get("list", []):
            if var.get("type") == "query" and isinstance(var.get("query"), str):
                out.append(var["query"])
    return out


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in an expression: each of ours is written name{...} or label_values(name."""
    return set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{", expr)) | set(
        re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", expr)
    )


def prometheus_series_names(url: str) -> set[str]:
    """Series names Prometheus holds, plus those its scrapes declared (a labelled family may
    have no sample yet): the families' metadata expanded by type."""
    names = set(prometheus_get(url, "/api/v1/label/__name__/values"))
    for family, entries in prometheus_get(url, "/api/v1/metadata").items():
        names |= expand_family(family, {entry["type"] for entry in entries})
    return names | PROMETHEUS_SERIES


def expand_family(family: str, types: set[str]) -> set[str]:
    """The series names a metric family of these types can export (the name itself too: the
    text format declares counters with their _total)."""
    return {family} | {family + s for kind in types for s in FAMILY_SUFFIXES.get(kind, ())}


def missing_metrics(expressions: list[str], known: set[str]) -> dict[str, list[str]]:
    """expression -> the metric names in it that are not in `known` (only those with some)."""
    missing = {e: sorted(promql_metric_names(e) - known) for e in expressions}
    return {e: names for e, names in missing.items() if names}


def render_promql(expr: str, job: str) -> str:
    text = expr.replace("$__rate_interval", "1m").replace("$job", job).replace("$instance", ".*")
    return text


def declared_series(exposition: str) -> set[str]:
    """Series names a Prometheus text exposition declares (# TYPE), with or without samples."""
    names = set()
    for line in exposition.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            names |= expand_family(parts[2], {parts[3]})
    return names


def check_dashboards_on(url: str, metrics_url: str, dashboards: Path, job: str = "seqae") -> int:
    """Every dashboard metric is held by Prometheus or declared by the daemon it scrapes (a
    labelled counter never incremented has no series yet); every panel query evaluates."""
    expressions = dashboard_promql(dashboards)
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        declared = declared_series(resp.read().decode())
    missing = missing_metrics(expressions, prometheus_series_names(url) | declared)
    if missing:
        raise CheckFailed(f"dashboard queries on metrics the daemon does not export: {missing}")
    for expr in expressions:
        if not expr.startswith("label_values("):
            prometheus_get(url, "/api/v1/query", query=render_promql(expr, job))
    return len(expressions)


class ComposeProject:
    """One `docker compose` project of our own name: up with --wait, always down with -v."""

    def __init__(self, engine: Engine, files: list[Path], env: dict[str, str]) -> None:
        self.name = f"seqae-ci-{uuid.uuid4().hex[:8]}"
        self.engine = engine
        self.files = files
        self.env = engine.env | env

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = [a for f in self.files for a in ("-f", str(f))]
        cmd = [str(COMPOSE_BIN), "--project-name", self.name,
               "--project-directory", str(COMPOSE_DIR), *files, *args]  # fmt: skip
        return run(cmd, check=check, env=self.env)

    def services(self) -> dict[str, dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {row["Service"]: row for row in rows}

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "30", check=False).stdout[-6000:]

    def up(self, services: tuple[str, ...], timeout_s: int = 300) -> dict[str, str]:
        proc = self.compose(
            "up", "--detach", "--no-build", "--pull", "never", "--wait",
            "--wait-timeout", str(timeout_s), *services, check=False,
        )  # fmt: skip
        health = {name: row.get("Health") or row["State"] for name, row in self.services().items()}
        if proc.returncode != 0 or any(health.get(s) != "healthy" for s in services):
            raise CheckFailed(
                f"compose up: services {health}:\n{proc.stderr[-2000:]}\n{self.logs()}"
            )
        return health

    def __enter__(self) -> ComposeProject:
        return self

    def __exit__(self, *_: object) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)


def standin_images(engine: Engine, timings: dict[str, float]) -> dict[str, str]:
    with timed("compose v2 binary", timings):
        ensure_compose()
    with timed("stand-in images", timings):
        ensure_base_images(engine)
        images = {
            "SEQAE_KAFKA_IMAGE": ensure_standin(engine, "kafka"),
            "SEQAE_INFLUXDB_IMAGE": ensure_standin(engine, "influxdb"),
            "SEQAE_PROMETHEUS_IMAGE": ensure_standin(engine, "prometheus"),
        }
    if not engine.has_image(CPU_IMAGE):  # `compose` alone; `all` reuses the image step's
        build_cpu_image(engine, timings)
    return images | {"SEQAE_IMAGE": CPU_IMAGE}


def check_compose(
    engine: Engine,
    timings: dict[str, float],
    compose_file: Path = COMPOSE_DIR / "compose.yaml",
    dashboards: Path = DASHBOARDS,
) -> dict[str, object]:
    """compose.yaml up with stand-in images: every service healthy, scores land in InfluxDB,
    Prometheus scrapes the daemon and holds every metric the dashboards query; a clean stop."""
    images = standin_images(engine, timings)
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        models = Path(tmp) / "models"
        train(models, WORK / "history", profile="pump")  # compose's daemon.toml routes pump-*
        override = Path(tmp) / "compose.ci.yaml"
        override.write_text(CI_OVERRIDE.format(models=models))
        ports = {var: str(free_port()) for var in COMPOSE_PORTS}
        token = secrets.token_hex(16)
        secrets_env = {
            "SEQAE_INFLUX_TOKEN": token,
            "INFLUXDB_ADMIN_PASSWORD": secrets.token_hex(12),
            "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(12),
        }
        env = images | ports | secrets_env
        with ComposeProject(engine, [compose_file, override], env) as project:
            with timed("compose up", timings):
                t0 = time.monotonic()
                result["services"] = project.up(COMPOSE_SERVICES)
                result["healthy_after_s"] = round(time.monotonic() - t0, 1)
            with timed("compose scores and scrapes", timings):
                result |= scores_and_scrapes(project, ports, token, dashboards)
            project.compose("stop", "--timeout", "60", "seqae")
            code = project.services()["seqae"]["ExitCode"]
            if code != 0:
                raise CheckFailed(f"the daemon exited {code} on SIGTERM:\n{project.logs()}")
    prune(engine)
    return result


def scores_and_scrapes(
    project: ComposeProject, ports: dict[str, str], token: str, dashboards: Path
) -> dict[str, object]:
    stack = Stack(
        kafka=f"127.0.0.1:{ports['SEQAE_KAFKA_HOST_PORT']}",
        influx_url=f"http://127.0.0.1:{ports['SEQAE_INFLUXDB_HOST_PORT']}",
        org="seqae",
        token=token,
    )
    plant = WORK / "plant-recent" / "plant.csv"  # compose's bucket keeps 90 days
    result: dict[str, object] = {"messages": replay(stack, "sensors", plant, recent=True)}
    try:
        wait_for("scores in the stack's InfluxDB", lambda: stack.scores("seqae") > 0, 180, 2)
    except CheckFailed as exc:
        raise CheckFailed(f"{exc}\n{project.logs()}") from None
    result["windows_scored"] = stack.scores("seqae")
    prometheus = f"http://127.0.0.1:{ports['SEQAE_PROMETHEUS_HOST_PORT']}"

    def scraped_scores() -> bool:
        query = 'sum(seqae_windows_scored_total{job="seqae"})'
        rows = prometheus_get(prometheus, "/api/v1/query", query=query)["result"]
        return bool(rows) and float(rows[0]["value"][1]) > 0

    wait_for("Prometheus to scrape scored windows from the daemon", scraped_scores, 90, 3)
    up = prometheus_get(prometheus, "/api/v1/query", query='up{job="seqae"}')["result"]
    result["prometheus_up"] = [row["value"][1] for row in up]
    if result["prometheus_up"] != ["1"]:
        raise CheckFailed(f"Prometheus's target seqae: up = {result['prometheus_up']}")
    metrics_url = f"http://127.0.0.1:{ports['SEQAE_METRICS_HOST_PORT']}/metrics"
    result["dashboard_queries"] = check_dashboards_on(prometheus, metrics_url, dashboards)
    return result


# --- the CUDA image: built once per change of what goes into it ------------------------------


# What the CUDA build's steps depend on. The package source (seqae/, daemon/, README.md) is
# left out: cuda.Dockerfile installs it with the same steps as cpu.Dockerfile, which the image
# check builds and runs on every submission; with it, every change would cost a cold build.
CUDA_RECIPE = (
    "deploy/container/cuda.Dockerfile",
    "deploy/container/cuda.Dockerfile.dockerignore",
    "deploy/container/healthcheck.py",
    "pyproject.toml",
)
CUDA_MARKER = WORK / "cuda-image.json"
CUDA_IMAGE = "seqae-ci:cuda"


def cuda_recipe_digest(repo: Path = REPO) -> str:
    h = hashlib.sha256()
    for rel in CUDA_RECIPE:
        h.update(rel.encode() + b"\0" + (repo / rel).read_bytes() + b"\0")
    return h.hexdigest()


def check_cuda(timings: dict[str, float], *, force: bool = False) -> dict[str, object]:
    """Build cuda.Dockerfile when its recipe changed since the last good build.

    The build runs in an engine of its own on a temporary data root, removed afterwards: the
    ~12 GB it takes never pushes the CPU image's build cache out, and nothing of it stays.
    """
    digest = cuda_recipe_digest()
    if CUDA_MARKER.exists() and not force:
        last = json.loads(CUDA_MARKER.read_text())
        if last.get("digest") == digest:
            return {"built": False, "unchanged_since": last["built_at"], "digest": digest[:12]}
    data_root = WORK / "docker-cuda"
    shutil.rmtree(data_root, ignore_errors=True)
    try:
        with Engine("seqae-live-docker-cuda", data_root, isolated=True) as engine:
            with timed("cuda base images", timings):
                ensure_base_images(engine)
            with timed("build cuda image", timings):
                cmd = [
                    DOCKER, "build", "--network", "host",
                    "-f", str(REPO / "deploy/container/cuda.Dockerfile"),
                    "--build-arg", f"CUDA_IMAGE={CI_BASE_IMAGE}",
                    "--build-arg", f"TORCH_INDEX={PYPI}", "-t", CUDA_IMAGE, str(REPO),
                ]  # fmt: skip
                stream(cmd, WORK / "build-cuda.log", env=engine.env)
            size = engine.docker("image", "inspect", "-f", "{{.Size}}", CUDA_IMAGE).stdout
            with timed("cuda image imports", timings):
                probe = engine.docker(
                    "run", "--rm", "--network", "none", "--entrypoint", "python3", CUDA_IMAGE,
                    "-c", "import torch, seqae, daemon; print(torch.__version__)",
                ).stdout.strip()  # fmt: skip
    finally:
        with timed("cuda engine removed", timings):
            run(["rm", "-rf", str(data_root)])
    result: dict[str, object] = {
        "built": True,
        "digest": digest[:12],
        "image_gb": round(int(size) / 1e9, 2),
        "torch": probe,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": timings["build cuda image"],
    }
    CUDA_MARKER.write_text(json.dumps(result | {"digest": digest}) + "\n")
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


SELF_TEST_PARTS = ("image", "compose", "systemd")
BROKEN_PANEL = {
    "title": "self-test: a metric the daemon does not export",
    "type": "timeseries",
    "targets": [{"expr": 'sum(rate(seqae_e2e_latency_seconds_bucket{job=~"$job"}[1m]))'}],
}


def broken_compose_health(tmp: Path) -> Path:
    """compose.yaml with Prometheus's health check calling a command that does not exist."""
    text = (COMPOSE_DIR / "compose.yaml").read_text()
    health = '["CMD", "wget", "-q", "-O", "/dev/null", "http://localhost:9090/-/healthy"]'
    assert text.count(health) == 1, "compose.yaml's Prometheus healthcheck changed: update me"
    broken = tmp / "compose-wrong-health.yaml"
    broken.write_text(text.replace(health, health.replace('"wget"', '"no-such-wget"')))
    return broken


def broken_dashboards(tmp: Path) -> Path:
    """The dashboards with one more panel, on a metric the daemon does not export."""
    out = tmp / "dashboards"
    shutil.copytree(DASHBOARDS, out)
    path = out / "prometheus/seqae-daemon-health.json"
    doc = json.loads(path.read_text())
    doc["panels"].append(BROKEN_PANEL)
    path.write_text(json.dumps(doc))
    return out


def self_test_compose(engine: Engine, timings: dict[str, float]) -> dict[str, str]:
    results = {}
    with tempfile.TemporaryDirectory(dir=WORK) as tmp, timed("self-test compose", timings):
        results["compose: wrong health command"] = expect_failure(
            "compose file with a wrong health command",
            lambda: check_compose(engine, timings, compose_file=broken_compose_health(Path(tmp))),
        )
        results["compose: dashboard query on a metric that does not exist"] = expect_failure(
            "dashboard query on a metric that does not exist",
            lambda: check_compose(engine, timings, dashboards=broken_dashboards(Path(tmp))),
        )
    return results


def self_test(stack: Stack, timings: dict[str, float], parts: tuple[str, ...]) -> dict[str, str]:
    results: dict[str, str] = {}
    if "image" in parts:
        results |= self_test_image(stack, timings)
    if "compose" in parts:
        with Engine() as engine:
            results |= self_test_compose(engine, timings)
    if "systemd" in parts:
        results |= self_test_systemd(stack, timings)
    return results


def self_test_image(stack: Stack, timings: dict[str, float]) -> dict[str, str]:
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
    return results


def self_test_systemd(stack: Stack, timings: dict[str, float]) -> dict[str, str]:
    results = {}
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
    parser.add_argument("what", choices=["image", "compose", "cuda", "systemd", "all", "self-test"])
    parser.add_argument("parts", nargs="*", help=f"self-test: some of {SELF_TEST_PARTS}")
    parser.add_argument("--force", action="store_true", help="cuda: build even if unchanged")
    args = parser.parse_args(argv)
    if set(args.parts) - set(SELF_TEST_PARTS) or (args.parts and args.what != "self-test"):
        parser.error(f"parts: only after self-test, and only {', '.join(SELF_TEST_PARTS)}")
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
        if args.what in ("image", "compose", "all"):
            with Engine() as engine:
                if args.what in ("image", "all"):
                    report["image"] = check_image(engine, stack, timings)
                if args.what in ("compose", "all"):
                    report["compose"] = check_compose(engine, timings)
        if args.what in ("cuda", "all"):
            report["cuda"] = check_cuda(timings, force=args.force)
        if args.what in ("systemd", "all"):
            report["systemd"] = check_systemd(stack, timings)
        if args.what == "self-test":
            report["self-test"] = self_test(stack, timings, tuple(args.parts) or SELF_TEST_PARTS)
    except CheckFailed as exc:
        print(f"live_check: FAILED: {exc}", file=sys.stderr)
        return 1
    report["seconds"] = timings
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
