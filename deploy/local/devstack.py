#!/usr/bin/env python3
"""Start and stop real Apache Kafka, InfluxDB 1.6, 1.8 and 2.7 and VictoriaMetrics on loopback.

    python deploy/local/devstack.py up [--export]   start (or reuse) the servers, print env lines
    python deploy/local/devstack.py status          show what runs
    python deploy/local/devstack.py env [--export]  print env lines for a running stack
    python deploy/local/devstack.py down [--purge]  stop what `up` started, remove its data

Kafka comes from Maven Central (org.apache.kafka:kafka_2.13, resolved with Maven into
$SEQAE_CACHE); InfluxDB 1.6 (v1 API) and VictoriaMetrics (the PromQL engine for the dashboard
tests) from Debian's `influxdb` and `victoria-metrics` packages; InfluxDB 1.8 (v1 API plus the
v2 compatibility endpoints) is built with `go install` from the Go module proxy; InfluxDB 2.7
(the v2 server: token auth, org, bucket, Flux) is built from the Go module proxy with its Flux
engine from crates.io (Rust's installed stable toolchain; nothing else is downloaded) and set
up with an operator token. Both builds are cached under $SEQAE_CACHE/influxdb. Every server runs in its own process session with its own config, data
directory and log file under $SEQAE_DEV_HOME, on 127.0.0.1 ports set by SEQAE_DEV_*_PORT.
Only pids recorded in state.json (and still matching their recorded start time) are signalled.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KAFKA_VERSION = os.environ.get("SEQAE_KAFKA_VERSION", "4.4.0")
# log4j-slf4j-impl binds Kafka's slf4j 1.7 logging to log4j2; same version as Kafka's log4j-core.
LOG4J_VERSION = "2.25.5"
KAFKA_JVM = ["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError"]
# binary -> Debian package that provides it; Kafka 4 needs Java 17 or newer.
DEBIAN_PACKAGES = {
    "java": "openjdk-17-jre-headless",
    "mvn": "maven",
    "influxd": "influxdb",
    "victoria-metrics": "victoria-metrics",
}
READY_TOPIC = "seqae-devstack-ready"
INFLUX_DATABASE = "seqae"
INFLUXDB18_VERSION = os.environ.get("SEQAE_INFLUXDB18_VERSION", "1.8.10")
INFLUXDB2_VERSION = os.environ.get("SEQAE_INFLUXDB2_VERSION", "2.7.12")
INFLUXDB2_ORG = "seqae"
INFLUXDB2_BUCKET = "seqae"
INFLUXDB2_USER = "seqae-devstack"
VM_BUCKET = "seqae"
VM_ORG = "seqae"
VM_TOKEN = "devstack"  # VictoriaMetrics runs without auth; influxdb-client wants some token.


class DevstackError(RuntimeError):
    """A server could not be obtained, started or verified."""


@dataclass(frozen=True)
class Paths:
    home: Path
    cache: Path

    @property
    def state_file(self) -> Path:
        return self.home / "state.json"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def service_dir(self, name: str) -> Path:
        return self.home / name

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    @property
    def kafka_libs(self) -> Path:
        return self.cache / "kafka" / KAFKA_VERSION / "libs"


@dataclass(frozen=True)
class Ports:
    kafka: int
    kafka_controller: int
    influx_http: int
    influx_rpc: int
    influx18_http: int
    influx18_rpc: int
    influx2_http: int
    victoria: int


def env_port(var: str, default: int) -> int:
    raw = os.environ.get(var, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise DevstackError(f"{var}={raw!r} is not a port number") from None
    if not 1024 <= port <= 65535:
        raise DevstackError(f"{var}={port} is outside 1024..65535")
    return port


def load_ports() -> Ports:
    ports = Ports(
        kafka=env_port("SEQAE_DEV_KAFKA_PORT", 19092),
        kafka_controller=env_port("SEQAE_DEV_KAFKA_CONTROLLER_PORT", 19093),
        influx_http=env_port("SEQAE_DEV_INFLUX_PORT", 18086),
        influx_rpc=env_port("SEQAE_DEV_INFLUX_RPC_PORT", 18088),
        influx18_http=env_port("SEQAE_DEV_INFLUX18_PORT", 18087),
        influx18_rpc=env_port("SEQAE_DEV_INFLUX18_RPC_PORT", 18089),
        influx2_http=env_port("SEQAE_DEV_INFLUX2_PORT", 18096),
        victoria=env_port("SEQAE_DEV_VM_PORT", 18428),
    )
    values = list(vars(ports).values())
    if len(set(values)) != len(values):
        raise DevstackError(f"the SEQAE_DEV_*_PORT settings must differ; got {vars(ports)}")
    return ports


def load_paths() -> Paths:
    user_cache = Path.home() / ".cache" / "seqae"
    home = Path(os.environ.get("SEQAE_DEV_HOME") or user_cache / "dev").expanduser()
    cache = Path(os.environ.get("SEQAE_CACHE") or user_cache).expanduser()
    return Paths(home=home.resolve(), cache=cache.resolve())


def say(msg: str) -> None:
    print(f"devstack: {msg}", file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------------------


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of pid (clock ticks since boot), None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces; the fields after the last ')' are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def is_ours(record: dict[str, Any]) -> bool:
    """True when the recorded pid still runs and is the very process we started."""
    pid = int(record["pid"])
    return proc_start_time(pid) == record.get("start_time")


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text[-lines:])


def spawn(cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n=== devstack {time.strftime('%F %T')}: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    return proc.pid


def stop_process(name: str, record: dict[str, Any], timeout_s: float = 30.0) -> None:
    pid = int(record["pid"])
    if not is_ours(record):
        say(f"{name}: pid {pid} no longer runs (or is not ours); nothing to stop")
        return
    # The server leads its own session (start_new_session), so its group is exactly ours.
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and is_ours(record):
        time.sleep(0.2)
    if is_ours(record):
        say(f"{name}: pid {pid} ignored SIGTERM for {timeout_s:.0f}s; sending SIGKILL")
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    say(f"{name}: stopped pid {pid}")


def wait_until(
    name: str, check: Callable[[], bool], timeout_s: float, record: dict[str, Any]
) -> None:
    log = Path(record["log"])
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if not is_ours(record):
            raise DevstackError(f"{name} exited during start-up; tail of {log}:\n{log_tail(log)}")
        try:
            if check():
                return
        except Exception as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise DevstackError(
        f"{name} not ready after {timeout_s:.0f}s (last check: {last_error or 'not ready'}); "
        f"tail of {log}:\n{log_tail(log)}"
    )


# --- state ---------------------------------------------------------------------------------


def read_state(paths: Paths) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(paths.state_file.read_text())
    except FileNotFoundError:
        return {"services": {}}
    except (OSError, json.JSONDecodeError) as exc:
        raise DevstackError(f"{paths.state_file}: unreadable state ({exc})") from exc
    state.setdefault("services", {})
    return state


def write_state(paths: Paths, state: dict[str, Any]) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    tmp = paths.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(paths.state_file)


@contextlib.contextmanager
def state_lock(paths: Paths) -> Iterator[None]:
    """Serialise concurrent `up`/`down` runs (parallel test sessions, two shells)."""
    paths.home.mkdir(parents=True, exist_ok=True)
    with (paths.home / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def claim_port(service: str, port: int, var: str) -> None:
    if port_answers(port):
        raise DevstackError(
            f"{service}: 127.0.0.1:{port} is already in use by a process devstack did not "
            f"start; set {var} to a free port"
        )


# --- HTTP ------------------------------------------------------------------------------------


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- Apache Kafka --------------------------------------------------------------------------

KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>seqae.devstack</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

KAFKA_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""


def ensure_kafka_jars(paths: Paths) -> Path:
    """Resolve kafka_2.13 and its runtime dependencies with Maven into the cache."""
    libs = paths.kafka_libs
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise DevstackError("Maven (mvn) is not installed; `apt-get install maven` first")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(KAFKA_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
    if libs.exists():
        shutil.rmtree(libs)  # a half-finished copy from an interrupted run
    log = paths.log_file("maven")
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"kafka: resolving org.apache.kafka:kafka_2.13:{KAFKA_VERSION} with Maven (log {log})")
    cmd = [
        "mvn",
        "-B",
        f"-Dmaven.repo.local={paths.cache / 'maven-repo'}",
        "-f",
        str(work / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        "-DincludeScope=runtime",
    ]
    with log.open("wb") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if rc != 0:
        raise DevstackError(f"Maven failed (exit {rc}); tail of {log}:\n{log_tail(log)}")
    if not (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        raise DevstackError(f"Maven finished but {libs} lacks kafka_2.13-{KAFKA_VERSION}.jar")
    marker.write_text(KAFKA_VERSION + "\n")
    return libs


def kafka_config(paths: Paths, ports: Ports) -> Path:
    d = paths.service_dir("kafka")
    d.mkdir(parents=True, exist_ok=True)
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{ports.kafka_controller}",
        "listeners": f"PLAINTEXT://127.0.0.1:{ports.kafka},CONTROLLER://127.0.0.1:{ports.kafka_controller}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{ports.kafka}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(d / "data"),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "log.retention.hours": "24",
    }
    (d / "log4j2.properties").write_text(KAFKA_LOG4J2)
    cfg = d / "server.properties"
    cfg.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return cfg


def java_cmd(paths: Paths, libs: Path, jvm: list[str], *args: str) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise DevstackError("java is not installed; `apt-get install default-jre-headless`")
    d = paths.service_dir("kafka")
    return [
        java,
        *jvm,
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={d / 'logs'}",
        "-cp",
        f"{libs}/*",
        *args,
    ]


def existing_cluster_id(paths: Paths) -> str | None:
    """Cluster id of a data directory left by an earlier broker that was killed, not stopped.

    Formatting it again with a fresh id would fail, so the broker restarts on its own data.
    """
    meta = paths.service_dir("kafka") / "data" / "meta.properties"
    if not meta.exists():
        return None
    for line in meta.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id" and value.strip():
            say(f"kafka: restarting on the data an earlier broker left in {meta.parent}")
            return value.strip()
    return None


def new_cluster_id() -> str:
    """A random cluster id as Kafka's `Uuid.randomUuid` makes one: never starting with "-",
    which the storage tool's argument parser would read as an option (1 id in 64)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def start_kafka(paths: Paths, ports: Ports) -> dict[str, Any]:
    libs = ensure_kafka_jars(paths)
    claim_port("kafka", ports.kafka, "SEQAE_DEV_KAFKA_PORT")
    claim_port("kafka controller", ports.kafka_controller, "SEQAE_DEV_KAFKA_CONTROLLER_PORT")
    cfg = kafka_config(paths, ports)
    log = paths.log_file("kafka")
    log.parent.mkdir(parents=True, exist_ok=True)
    cluster_id = existing_cluster_id(paths) or new_cluster_id()
    fmt = java_cmd(
        paths, libs, ["-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"], "kafka.tools.StorageTool", "format", "--ignore-formatted",
        "-t", cluster_id, "-c", str(cfg),
    )  # fmt: skip
    with log.open("ab") as out:
        rc = subprocess.call(fmt, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if rc != 0:
        raise DevstackError(
            f"kafka storage format failed (exit {rc}); tail of {log}:\n{log_tail(log)}"
        )
    pid = spawn(java_cmd(paths, libs, KAFKA_JVM, "kafka.Kafka", str(cfg)), log, cwd=cfg.parent)
    return {
        "pid": pid,
        "start_time": proc_start_time(pid),
        "port": ports.kafka,
        "controller_port": ports.kafka_controller,
        "version": KAFKA_VERSION,
        "endpoint": f"127.0.0.1:{ports.kafka}",
        "data_dir": str(paths.service_dir("kafka")),
        "log": str(log),
    }


def kafka_round_trip(bootstrap: str) -> bool:
    """Create the readiness topic, produce one record and consume it back."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(READY_TOPIC, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    token = uuid.uuid4().hex.encode()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5000)
    try:
        meta = producer.send(READY_TOPIC, value=token).get(timeout=10)
    finally:
        producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(READY_TOPIC, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                if any(r.value == token for r in records):
                    return True
    finally:
        consumer.close()
    return False


# --- Debian packages ---------------------------------------------------------------------


def ensure_debian_packages(paths: Paths, binaries: dict[str, str]) -> None:
    """Install the Debian package for each absent binary, without starting its service."""
    missing = sorted({pkg for binary, pkg in binaries.items() if shutil.which(binary) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise DevstackError(f"install {' '.join(missing)} (apt-get as root) and rerun")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log_path = paths.log_file("apt")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    say(f"installing Debian packages {', '.join(missing)} (log {log_path})")
    # policy-rc.d exit 101 keeps maintainer scripts from starting the distro services;
    # only placed (and removed) when no policy is already there.
    policy = Path("/usr/sbin/policy-rc.d")
    placed_policy = False
    if not policy.exists():
        policy.write_text(
            "#!/bin/sh\n# placed by seqae devstack during apt-get install\nexit 101\n"
        )
        policy.chmod(0o755)
        placed_policy = True
    try:
        with log_path.open("ab") as log:
            install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
            rc = subprocess.call(install, stdout=log, stderr=subprocess.STDOUT, env=env)
            if rc != 0:
                subprocess.call(["apt-get", "update", "-q"], stdout=log, stderr=log, env=env)
                rc = subprocess.call(install, stdout=log, stderr=subprocess.STDOUT, env=env)
    finally:
        if placed_policy:
            policy.unlink(missing_ok=True)
    if rc != 0:
        raise DevstackError(
            f"apt-get install {' '.join(missing)} failed; tail of {log_path}:\n{log_tail(log_path)}"
        )
    still = [b for b in binaries if shutil.which(b) is None]
    if still:
        raise DevstackError(f"after apt-get install, still missing: {', '.join(still)}")


# --- InfluxDB 1.x: Debian's 1.6 (v1 API) and 1.8 built from the Go module proxy (v2 API) ------


def go_binary(purpose: str) -> str:
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        raise DevstackError(f"the Go toolchain (go) is needed to build {purpose}; install Go first")
    return go


def run_logged(cmd: list[str], log: Path, cwd: Path, env: dict[str, str], what: str) -> str:
    """Run cmd, appending its stderr (and stdout) to log; returns stdout; raises on failure."""
    with log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%F %T')} {what}: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=out
        )
        out.write(proc.stdout)
    if proc.returncode != 0:
        raise DevstackError(
            f"{what} failed (exit {proc.returncode}); tail of {log}:\n{log_tail(log)}"
        )
    return proc.stdout.decode()


def ensure_influxdb18(paths: Paths) -> Path:
    """Build influxd 1.8 (pure Go, no libflux) with `go install` into the cache."""
    binary = paths.cache / "influxdb" / INFLUXDB18_VERSION / "bin" / "influxd"
    if binary.exists():
        return binary
    go = go_binary("InfluxDB 1.8")
    log = paths.log_file("go-build")
    log.parent.mkdir(parents=True, exist_ok=True)
    module = f"github.com/influxdata/influxdb/cmd/influxd@v{INFLUXDB18_VERSION}"
    say(f"influxdb18: building {module} with go install (log {log}); minutes on a cold cache")
    env = dict(
        os.environ,
        GOBIN=str(binary.parent),
        GOFLAGS="-buildvcs=false",
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
    )
    ldflags = f"-ldflags=-X main.version={INFLUXDB18_VERSION} -X main.branch=go-module-proxy"
    with log.open("wb") as out:
        rc = subprocess.call(
            [go, "install", ldflags, module],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    if rc != 0 or not binary.exists():
        raise DevstackError(
            f"go install {module} failed (exit {rc}); tail of {log}:\n{log_tail(log)}"
        )
    return binary


def influx_config(d: Path, http_port: int, rpc_port: int, flux: bool) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "influxdb.conf"
    # flux-enabled is unknown to 1.6 (ignored) and serves /api/v2/query on 1.8.
    cfg.write_text(
        f"""reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{d / "meta"}"

[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  query-log-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false
  flux-enabled = {"true" if flux else "false"}

[logging]
  level = "info"

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false
"""
    )
    return cfg


def launch_influxd(
    paths: Paths, name: str, binary: Path, http_port: int, rpc_port: int, flux: bool
) -> dict[str, Any]:
    d = paths.service_dir(name)
    cfg = influx_config(d, http_port, rpc_port, flux)
    log = paths.log_file(name)
    pid = spawn([str(binary), "run", "-config", str(cfg)], log, cwd=d)
    return {
        "pid": pid,
        "start_time": proc_start_time(pid),
        "port": http_port,
        "rpc_port": rpc_port,
        "endpoint": f"http://127.0.0.1:{http_port}",
        "database": INFLUX_DATABASE,
        "data_dir": str(d),
        "log": str(log),
    }


def start_influxdb(paths: Paths, ports: Ports) -> dict[str, Any]:
    claim_port("influxdb", ports.influx_http, "SEQAE_DEV_INFLUX_PORT")
    claim_port("influxdb rpc", ports.influx_rpc, "SEQAE_DEV_INFLUX_RPC_PORT")
    binary = Path(shutil.which("influxd") or "/usr/bin/influxd")
    return launch_influxd(paths, "influxdb", binary, ports.influx_http, ports.influx_rpc, False)


def start_influxdb18(paths: Paths, ports: Ports) -> dict[str, Any]:
    binary = ensure_influxdb18(paths)
    claim_port("influxdb18", ports.influx18_http, "SEQAE_DEV_INFLUX18_PORT")
    claim_port("influxdb18 rpc", ports.influx18_rpc, "SEQAE_DEV_INFLUX18_RPC_PORT")
    record = launch_influxd(
        paths, "influxdb18", binary, ports.influx18_http, ports.influx18_rpc, True
    )
    # The v2 compatibility API: bucket is "database/retention-policy", org is ignored,
    # token is "user:password" (empty here: auth is off).
    record.update(
        version=INFLUXDB18_VERSION, bucket=f"{INFLUX_DATABASE}/autogen", org="-", token=":"
    )
    return record


def create_database(url: str) -> bool:
    status, _ = http("GET", f"{url}/ping")
    if status != 204:
        return False
    q = urllib.parse.urlencode({"q": f'CREATE DATABASE "{INFLUX_DATABASE}"'})
    status, body = http("POST", f"{url}/query?{q}")
    if status != 200:
        raise DevstackError(f"CREATE DATABASE answered {status}: {body[:200]!r}")
    return True


def influxql_has(url: str, ts: int, token: str) -> bool:
    q = urllib.parse.urlencode(
        {"db": INFLUX_DATABASE, "q": f"SELECT token FROM devstack_ready WHERE time = {ts}"}
    )
    status, body = http("GET", f"{url}/query?{q}")
    return status == 200 and token in body.decode()


def influx_round_trip(url: str) -> bool:
    """CREATE DATABASE, write one point through /write and read it back through /query."""
    if not create_database(url):
        return False
    ts, token = time.time_ns(), uuid.uuid4().hex
    line = f'devstack_ready,check=up token="{token}" {ts}'.encode()
    status, body = http("POST", f"{url}/write?db={INFLUX_DATABASE}&precision=ns", line)
    if status != 204:
        raise DevstackError(f"/write answered {status}: {body[:200]!r}")
    return influxql_has(url, ts, token)


def influx_v2_round_trip(record: dict[str, Any]) -> bool:
    """CREATE DATABASE, write one point through /api/v2/write, read it back through /query."""
    url = record["endpoint"]
    if not create_database(url):
        return False
    ts, token = time.time_ns(), uuid.uuid4().hex
    line = f'devstack_ready,check=up token="{token}" {ts}'.encode()
    q = urllib.parse.urlencode(
        {"org": record["org"], "bucket": record["bucket"], "precision": "ns"}
    )
    auth = {"Authorization": f"Token {record['token']}"}
    status, body = http("POST", f"{url}/api/v2/write?{q}", line, auth)
    if status != 204:
        raise DevstackError(f"/api/v2/write answered {status}: {body[:200]!r}")
    return influxql_has(url, ts, token)


# --- InfluxDB 2.7: Go from the Go module proxy, its Flux engine (libflux) from crates.io -------

# cargo runs "$RUSTC_WRAPPER rustc ARGS...". flux-core says #![deny(warnings)] and newer rustc
# releases add lints, so lints are capped at warn: the published sources build unchanged.
# (RUSTFLAGS would not reach the build scripts' host dependencies.)
RUSTC_CAP_LINTS = """#!/bin/sh
exec "$@" --cap-lints=warn
"""


def influxdb2_build_env(paths: Paths, work: Path, wrapper: Path) -> dict[str, str]:
    env = dict(
        os.environ,
        # Modules, build cache and libflux's cargo target (inside the flux module) stay in the
        # build folder, removed once influxd is built: about 2 GB that only a rebuild needs.
        GOMODCACHE=str(work / "go-mod"),
        GOCACHE=str(work / "go-build"),
        GOFLAGS="-modcacherw -buildvcs=false",
        GOTOOLCHAIN="local",
        CGO_ENABLED="1",
        CARGO_HOME=str(paths.cache / "cargo"),  # crates.io index and sources
        RUSTUP_TOOLCHAIN="stable",  # libflux pins an older Rust; use the installed stable one
        RUSTUP_AUTO_INSTALL="0",  # never download a toolchain
        RUSTC_WRAPPER=str(wrapper),
    )
    env.pop("CARGO_TARGET_DIR", None)  # the pkg-config wrapper looks for libflux in its own
    return env


def ensure_influxdb2(paths: Paths) -> Path:
    """Build influxd 2.7 (no UI assets) into the cache: Go modules and crates from registries."""
    root = paths.cache / "influxdb" / INFLUXDB2_VERSION
    binary = root / "bin" / "influxd"
    if binary.exists():
        return binary
    go = go_binary(f"InfluxDB {INFLUXDB2_VERSION}")
    if shutil.which("cargo") is None:
        raise DevstackError(
            f"cargo (Rust's stable toolchain) is needed to build InfluxDB {INFLUXDB2_VERSION}'s "
            "Flux engine from crates.io; install it (rustup's `stable`) and rerun"
        )
    work = root / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    wrapper = work / "rustc-cap-lints"
    wrapper.write_text(RUSTC_CAP_LINTS)
    wrapper.chmod(0o755)
    env = influxdb2_build_env(paths, work, wrapper)
    log = paths.log_file("influxdb2-build")
    log.parent.mkdir(parents=True, exist_ok=True)
    module = f"github.com/influxdata/influxdb/v2@v{INFLUXDB2_VERSION}"
    say(f"influxdb2: building {module} (Go + Rust, log {log}); about 7 min on a cold cache")
    t0 = time.monotonic()
    info = json.loads(
        run_logged([go, "mod", "download", "-json", module], log, work, env, "go mod download")
    )
    src = work / "src"
    shutil.copytree(info["Dir"], src)  # a writable copy: the module cache is read-only
    for path in [src, *src.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    pkg_config = work / "bin" / "pkg-config"
    # InfluxData's pkg-config wrapper answers for flux.pc by building libflux with cargo.
    run_logged(
        [go, "build", "-o", str(pkg_config), "github.com/influxdata/pkg-config"],
        log, src, env, "go build pkg-config",
    )  # fmt: skip
    tmp = binary.with_suffix(".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    ldflags = f"-s -w -X main.version={INFLUXDB2_VERSION} -X main.commit=go-module-proxy"
    run_logged(
        [go, "build", "-tags", "sqlite_foreign_keys,sqlite_json", "-ldflags", ldflags,
         "-o", str(tmp), "./cmd/influxd"],
        log, src, env | {"PKG_CONFIG": str(pkg_config)}, "go build influxd",
    )  # fmt: skip
    tmp.replace(binary)
    shutil.rmtree(work, ignore_errors=True)
    say(f"influxdb2: built {binary} in {time.monotonic() - t0:.0f}s")
    return binary


def start_influxdb2(paths: Paths, ports: Ports) -> dict[str, Any]:
    binary = ensure_influxdb2(paths)
    claim_port("influxdb2", ports.influx2_http, "SEQAE_DEV_INFLUX2_PORT")
    d = paths.service_dir("influxdb2")
    d.mkdir(parents=True, exist_ok=True)
    # One operator token per data directory: a restart on old data keeps the token it set up.
    token_file = d / "operator-token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(32))
        token_file.chmod(0o600)
    log = paths.log_file("influxdb2")
    cmd = [
        str(binary),
        "run",
        f"--bolt-path={d / 'influxd.bolt'}",
        f"--engine-path={d / 'engine'}",
        f"--sqlite-path={d / 'influxd.sqlite'}",
        f"--http-bind-address=127.0.0.1:{ports.influx2_http}",
        "--reporting-disabled",
        "--ui-disabled",
        "--log-level=warn",
    ]
    # influxd reads config.{toml,yaml,json} from its working directory: d holds none.
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXD_")}
    pid = spawn(cmd, log, cwd=d, env=env)
    return {
        "pid": pid,
        "start_time": proc_start_time(pid),
        "port": ports.influx2_http,
        "version": INFLUXDB2_VERSION,
        "endpoint": f"http://127.0.0.1:{ports.influx2_http}",
        "org": INFLUXDB2_ORG,
        "bucket": INFLUXDB2_BUCKET,
        "token": token_file.read_text().strip(),
        "data_dir": str(d),
        "log": str(log),
    }


def influxdb2_set_up(record: dict[str, Any]) -> None:
    """POST /api/v2/setup once per data directory: user, org, bucket and the operator token."""
    url = record["endpoint"]
    status, body = http("GET", f"{url}/api/v2/setup")
    if status != 200:
        raise DevstackError(f"GET /api/v2/setup answered {status}: {body[:200]!r}")
    if not json.loads(body)["allowed"]:
        return  # set up before, on this data directory, with the token in its token file
    setup = {
        "username": INFLUXDB2_USER,
        "password": secrets.token_urlsafe(24),  # never used: the token is what clients send
        "org": record["org"],
        "bucket": record["bucket"],
        "token": record["token"],
        "retentionPeriodSeconds": 0,
    }
    status, body = http(
        "POST", f"{url}/api/v2/setup", json.dumps(setup).encode(),
        {"Content-Type": "application/json"},
    )  # fmt: skip
    if status != 201:
        raise DevstackError(f"POST /api/v2/setup answered {status}: {body[:200]!r}")


def flux_csv(record: dict[str, Any], flux: str) -> str:
    """Run a Flux query with the operator token; returns the annotated CSV."""
    q = urllib.parse.urlencode({"org": record["org"]})
    status, body = http(
        "POST",
        f"{record['endpoint']}/api/v2/query?{q}",
        flux.encode(),
        {"Authorization": f"Token {record['token']}", "Content-Type": "application/vnd.flux",
         "Accept": "application/csv"},
    )  # fmt: skip
    if status != 200:
        raise DevstackError(f"/api/v2/query answered {status}: {body[:300]!r}")
    return body.decode()


def influxdb2_round_trip(record: dict[str, Any]) -> bool:
    """Set up, write one point with the token through /api/v2/write, read it back with Flux."""
    url = record["endpoint"]
    status, _ = http("GET", f"{url}/health")
    if status != 200:
        return False
    influxdb2_set_up(record)
    ts, token = time.time_ns(), uuid.uuid4().hex
    line = f'devstack_ready,check=up token="{token}" {ts}'.encode()
    q = urllib.parse.urlencode(
        {"org": record["org"], "bucket": record["bucket"], "precision": "ns"}
    )
    auth = {"Authorization": f"Token {record['token']}"}
    status, body = http("POST", f"{url}/api/v2/write?{q}", line, auth)
    if status == 401:
        raise DevstackError(
            f"{record['data_dir']} was set up with another token than its operator-token file; "
            "`devstack.py down` removes the data"
        )
    if status != 204:
        raise DevstackError(f"/api/v2/write answered {status}: {body[:200]!r}")
    csv = flux_csv(
        record,
        f'from(bucket: "{record["bucket"]}") |> range(start: -1h)'
        ' |> filter(fn: (r) => r._measurement == "devstack_ready")'
        f' |> filter(fn: (r) => r._value == "{token}")',
    )
    return token in csv


# --- VictoriaMetrics (InfluxDB v2 write API) -----------------------------------------------


def start_victoria(paths: Paths, ports: Ports) -> dict[str, Any]:
    claim_port("victoria-metrics", ports.victoria, "SEQAE_DEV_VM_PORT")
    d = paths.service_dir("victoria-metrics")
    d.mkdir(parents=True, exist_ok=True)
    log = paths.log_file("victoria-metrics")
    binary = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    cmd = [
        binary,
        f"-storageDataPath={d / 'data'}",
        f"-httpListenAddr=127.0.0.1:{ports.victoria}",
        "-retentionPeriod=1y",
        "-search.latencyOffset=0s",
        "-memory.allowedBytes=256MB",
        "-loggerOutput=stderr",
    ]
    pid = spawn(cmd, log, cwd=d)
    return {
        "pid": pid,
        "start_time": proc_start_time(pid),
        "port": ports.victoria,
        "endpoint": f"http://127.0.0.1:{ports.victoria}",
        "org": VM_ORG,
        "bucket": VM_BUCKET,
        "token": VM_TOKEN,
        "data_dir": str(d),
        "log": str(log),
    }


def victoria_round_trip(url: str) -> bool:
    """Write one point through /api/v2/write, flush, read it back through /api/v1/export."""
    status, body = http("GET", f"{url}/health")
    if status != 200:
        return False
    ts_ms = int(time.time() * 1000)
    value = int.from_bytes(os.urandom(3), "big")
    line = f"devstack_ready,check=up token={value}i {ts_ms * 1_000_000}".encode()
    q = urllib.parse.urlencode({"org": VM_ORG, "bucket": VM_BUCKET, "precision": "ns"})
    status, body = http(
        "POST", f"{url}/api/v2/write?{q}", line, {"Authorization": f"Token {VM_TOKEN}"}
    )
    if status != 204:
        raise DevstackError(f"/api/v2/write answered {status}: {body[:200]!r}")
    # Ingestion is buffered for about a second before rows reach storage; poll for them.
    q = urllib.parse.urlencode({"match[]": '{__name__="devstack_ready_token"}'})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        http("GET", f"{url}/internal/force_flush")
        status, body = http("GET", f"{url}/api/v1/export?{q}")
        if status != 200:
            return False
        for row in body.decode().splitlines():
            series = json.loads(row)
            pairs = zip(series["timestamps"], series["values"], strict=True)
            if (ts_ms, float(value)) in ((t, float(v)) for t, v in pairs):
                return True
        time.sleep(0.2)
    return False


# --- the stack -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    name: str
    start: Callable[[Paths, Ports], dict[str, Any]]
    ready: Callable[[dict[str, Any]], bool]
    timeout_s: float


SERVICES = [
    Service("kafka", start_kafka, lambda r: kafka_round_trip(r["endpoint"]), 120),
    Service("influxdb", start_influxdb, lambda r: influx_round_trip(r["endpoint"]), 60),
    Service("influxdb18", start_influxdb18, influx_v2_round_trip, 60),
    Service("influxdb2", start_influxdb2, influxdb2_round_trip, 60),
    Service("victoria-metrics", start_victoria, lambda r: victoria_round_trip(r["endpoint"]), 60),
]


def env_lines(state: dict[str, Any], export: bool) -> list[str]:
    s = state["services"]
    pairs = {
        "SEQAE_TEST_KAFKA": s["kafka"]["endpoint"],
        "SEQAE_TEST_INFLUX_V1": s["influxdb"]["endpoint"],
        "SEQAE_TEST_INFLUX_V1_DB": s["influxdb"]["database"],
        "SEQAE_TEST_INFLUXDB18": s["influxdb18"]["endpoint"],
        "SEQAE_TEST_INFLUXDB18_BUCKET": s["influxdb18"]["bucket"],
        "SEQAE_TEST_INFLUX_V2": s["influxdb2"]["endpoint"],
        "SEQAE_TEST_INFLUX_V2_ORG": s["influxdb2"]["org"],
        "SEQAE_TEST_INFLUX_V2_BUCKET": s["influxdb2"]["bucket"],
        "SEQAE_TEST_INFLUX_V2_TOKEN": s["influxdb2"]["token"],
        "SEQAE_TEST_INFLUX_V2_VERSION": s["influxdb2"]["version"],
        # VictoriaMetrics stays as the PromQL engine that runs the daemon-health dashboard.
        "SEQAE_TEST_PROMQL": s["victoria-metrics"]["endpoint"],
    }
    prefix = "export " if export else ""
    return [f"{prefix}{k}={v}" for k, v in pairs.items()]


def up(paths: Paths) -> dict[str, Any]:
    ports = load_ports()
    t0 = time.monotonic()
    with state_lock(paths):
        state = read_state(paths)
        ensure_debian_packages(paths, DEBIAN_PACKAGES)
        started: list[str] = []
        waiting: list[tuple[Service, dict[str, Any]]] = []
        # Start everything that is not running first, then wait: the servers boot in parallel.
        for svc in SERVICES:
            record = state["services"].get(svc.name)
            if record and is_ours(record):
                try:
                    if svc.ready(record):
                        say(f"{svc.name}: reusing pid {record['pid']} at {record['endpoint']}")
                        continue
                except Exception as exc:
                    say(f"{svc.name}: running pid {record['pid']} failed its check ({exc})")
                # Alive but not answering yet: wait for it like a fresh start.
            else:
                record = svc.start(paths, ports)
                state["services"][svc.name] = record
                write_state(paths, state)
                started.append(svc.name)
            waiting.append((svc, record))
        for svc, record in waiting:
            wait_until(svc.name, functools.partial(svc.ready, record), svc.timeout_s, record)
            say(
                f"{svc.name}: ready at {record['endpoint']} (pid {record['pid']}, log {record['log']})"
            )
        state["ready_s"] = round(time.monotonic() - t0, 1)
        write_state(paths, state)
    say(
        f"up in {state['ready_s']}s ({'started ' + ', '.join(started) if started else 'all reused'})"
    )
    return state


def down(paths: Paths, purge: bool) -> None:
    with state_lock(paths):
        state = read_state(paths)
        for name, record in reversed(list(state["services"].items())):
            stop_process(name, record)
            data_dir = Path(record["data_dir"]).resolve()
            if data_dir.is_relative_to(paths.home) and data_dir != paths.home:
                shutil.rmtree(data_dir, ignore_errors=True)
            else:
                say(f"{name}: not removing {data_dir}: outside {paths.home}")
        paths.state_file.unlink(missing_ok=True)
        if purge:
            shutil.rmtree(paths.logs, ignore_errors=True)
    say("down")


def status(paths: Paths) -> int:
    state = read_state(paths)
    if not state["services"]:
        print("nothing started (no state in", paths.state_file, ")")
        return 1
    healthy = True
    for name, record in state["services"].items():
        alive = is_ours(record)
        answers = alive and port_answers(int(record["port"]))
        healthy &= answers
        what = "running" if answers else ("starting/unresponsive" if alive else "stopped")
        print(
            f"{name:17} {what:22} pid {record['pid']:>7}  {record['endpoint']}  log {record['log']}"
        )
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start or reuse the servers; print env lines")
    p_up.add_argument("--export", action="store_true", help="prefix env lines with 'export '")
    p_env = sub.add_parser("env", help="print env lines for the running stack")
    p_env.add_argument("--export", action="store_true")
    p_down = sub.add_parser("down", help="stop what up started and remove its data")
    p_down.add_argument("--purge", action="store_true", help="also remove the logs")
    sub.add_parser("status", help="show what runs")
    args = parser.parse_args(argv)
    paths = load_paths()
    try:
        if args.command == "up":
            state = up(paths)
            print("\n".join(env_lines(state, args.export)))
        elif args.command == "env":
            state = read_state(paths)
            if set(state["services"]) != {s.name for s in SERVICES}:
                raise DevstackError(f"no complete stack recorded in {paths.state_file}; run up")
            print("\n".join(env_lines(state, args.export)))
        elif args.command == "down":
            down(paths, args.purge)
        else:
            return status(paths)
    except DevstackError as exc:
        print(f"devstack: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
