"""A realistic load on this machine: the daemon as a service, fed at a fixed rate by producers.

`--assets` assets send one wide JSON message with `8` channels each at `--hz` (1,000 x 10 Hz =
10,000 messages/s by default) to a fresh topic, from `--producers` processes (confluent-kafka
when installed, else kafka-python). Every message carries its scheduled send time as its Kafka
timestamp, so a producer that falls behind shows up as latency too. The daemon runs as a
subprocess (`python -m daemon.cli daemon run`, CPU, one torch thread) with a small LSTM profile
trained here (window 50, hop 10: one window per asset per second), writing to InfluxDB 1.6
through its v1 API. Every `--sample-s` the script samples the daemon's RSS and CPU (psutil), the
CPU of the producers, Kafka and InfluxDB, and scrapes the daemon's /metrics: messages in, windows
scored, and the write-latency histogram (from the timestamp of the message that completed a
window to the acknowledged write), from which p50/p99 are interpolated per interval and overall.

    python deploy/local/devstack.py up
    python benchmarks/bench_load.py --minutes 10                  # 1,000 assets, 10,000 msg/s
    python benchmarks/bench_load.py --assets 500 --minutes 10 --tag a500
    python benchmarks/bench_load.py --compare-consumers 200000    # kafka-python vs confluent-kafka
    python benchmarks/bench_load.py --delivery-jitter 30          # ... their delivery latency

Writes benchmarks/results/load_<tag>.json, load_<tag>_latency.png and load_<tag>_rss.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from bench_scoring import CHANNELS, train_small_profile

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PERIOD_S = 0.1  # the profile's sampling period; --hz should match it
LATENCY = "seqae_write_latency_seconds"


class LoadError(RuntimeError):
    """The load could not be set up or the daemon failed; the message says which part."""


# -- producers -------------------------------------------------------------------------------


def _producer(bootstrap: str, lib: str) -> Any:
    if lib == "confluent":
        from confluent_kafka import Producer

        return Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 5,
                "acks": 1,
                "queue.buffering.max.messages": 2_000_000,
            }
        )
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)


def produce(
    worker: int,
    assets: list[str],
    hz: float,
    bootstrap: str,
    topic: str,
    lib: str,
    stop_at: float,
    sent: Synchronized,  # type: ignore[type-arg]
    behind_ms: Synchronized,  # type: ignore[type-arg]
) -> None:
    """Send one message per asset per tick until `stop_at` (wall clock), on schedule."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    producer = _producer(bootstrap, lib)
    rng = np.random.default_rng(worker)
    periods = np.linspace(20, 200, len(CHANNELS))
    keys = [a.encode() for a in assets]
    # one `%` per message (the shortest repr of each value, as an f-string join gave: 2 against
    # 5.5 us a message), so the load generator leaves the CPU to what it loads
    values = ",".join(f'"{c}":%r' for c in CHANNELS)
    templates = [f'{{"asset":"{a}","ts":%d,"values":{{{values}}}}}' for a in assets]
    offsets = rng.normal(0, 0.05, (len(assets), 1))
    step_ms = round(1000 / hz)
    tick_ms = (int(time.time() * 1000) // step_ms + 1) * step_ms  # on the sampling grid
    tick = 0
    count = 0
    while True:
        delay = tick_ms / 1000 - time.time()
        if delay > 0:
            time.sleep(delay)
        if tick_ms / 1000 >= stop_at:
            break
        base = 10 + 3 * np.sin(2 * np.pi * tick / periods)
        rows = np.round(base + offsets + rng.normal(0, 0.2, (len(assets), len(CHANNELS))), 4)
        for key, template, row in zip(keys, templates, rows.tolist(), strict=True):
            body = (template % (tick_ms, *row)).encode()
            if lib == "confluent":
                while True:
                    try:
                        producer.produce(topic, body, key, timestamp=tick_ms)
                        break
                    except BufferError:
                        producer.poll(0.01)
            else:
                producer.send(topic, key=key, value=body, timestamp_ms=tick_ms)
        if lib == "confluent":
            producer.poll(0)
        count += len(assets)
        sent.value = count
        behind_ms.value = max(0, int(time.time() * 1000) - tick_ms)
        tick += 1
        tick_ms += step_ms
    producer.flush()


# -- services ----------------------------------------------------------------------------------


def http(method: str, url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def influx_query(url: str, q: str, db: str | None = None) -> dict[str, Any]:
    params = {"q": q} | ({"db": db} if db else {})
    status, body = http("POST", f"{url}/query?" + urllib.parse.urlencode(params))
    if status != 200:
        raise LoadError(f"InfluxDB {url}: {q!r} failed with HTTP {status}: {body[:200]!r}")
    return json.loads(body)  # type: ignore[no-any-return]


def make_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def group_lag(bootstrap: str, topic: str, group: str) -> int:
    """Messages in `topic` not yet committed by `group`."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        ends = consumer.end_offsets(parts)
        return sum(ends[tp] - (consumer.committed(tp) or 0) for tp in parts)
    finally:
        consumer.close(autocommit=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_config(
    path: Path,
    *,
    tmp: Path,
    bootstrap: str,
    topic: str,
    influx: str,
    db: str,
    port: int,
    args: Any,
    state: str = "state",
) -> None:
    interval = args.commit_interval_s
    commit_line = f"commit_interval_s = {interval}\n" if interval is not None else ""
    client_line = f'client = "{args.client}"\n' if args.client is not None else ""
    path.write_text(
        f"""
state_dir = "{tmp / state}"
{commit_line}log_level = "INFO"
[kafka]
bootstrap_servers = ["{bootstrap}"]
topics = ["{topic}"]
group_id = "{topic}"
client_id = "bench-load"
auto_offset_reset = "earliest"
max_poll_records = {args.max_poll_records}
{client_line}[profiles]
models_root = "{tmp / "models"}"
routes = [{{ pattern = "asset-*", profile = "bench" }}]
[baselines]
mode = "{args.baselines}"
[engine]
device = "cpu"
max_batch = {args.max_batch}
max_wait_ms = {args.max_wait_ms}
[influx]
api = "v1"
url = "{influx}"
database = "{db}"
batch_points = 5000
[health]
port = {port}
"""
    )


def service_processes() -> dict[str, psutil.Process]:
    """Kafka and the InfluxDB servers of deploy/local, by command line."""
    found: dict[str, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "kafka.Kafka" in cmd:
            found["kafka"] = proc
        elif "influxd" in cmd and "influxdb18" in cmd:
            found["influxdb18"] = proc
        elif "influxd" in cmd and "influxdb2" in cmd:
            found["influxdb2"] = proc
        elif "influxd" in cmd:
            # the 1.x server the load writes to (until this was told apart from the 2.x one,
            # `influxdb16` showed the idle 2.x server's CPU)
            found["influxdb16"] = proc
    return found


# -- metrics -----------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(*ports: int) -> dict[str, Any]:
    """The /metrics of the daemons at `ports`, summed: counters, gauges, latency buckets."""
    buckets: dict[float, float] = {}
    totals: dict[str, float] = {}
    for port in ports:
        status, body = http("GET", f"http://127.0.0.1:{port}/metrics", timeout=5)
        if status != 200:
            raise LoadError(f"daemon /metrics answered HTTP {status}")
        _add_metrics(body.decode(), buckets, totals)
    return {"buckets": buckets, "totals": totals}


def _add_metrics(text: str, buckets: dict[float, float], totals: dict[str, float]) -> None:
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == f"{LATENCY}_bucket":
            le = re.search(r'le="([^"]+)"', labels)
            assert le is not None
            bound = math.inf if le.group(1) == "+Inf" else float(le.group(1))
            buckets[bound] = buckets.get(bound, 0.0) + value
        else:
            totals[name] = totals.get(name, 0.0) + value
            if name.startswith(("seqae_gc_pause_seconds_", "seqae_gc_collected")):  # by generation
                totals[name + labels] = totals.get(name + labels, 0.0) + value


def quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus-style quantile of a cumulative histogram: linear within the bucket."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return bounds[-2] if len(bounds) > 1 else math.nan


def delta(a: dict[float, float], b: dict[float, float]) -> dict[float, float]:
    return {k: b[k] - a.get(k, 0.0) for k in b}


@dataclass
class Sample:
    t: float  # seconds since the producers started
    rss_mb: float
    sent: int
    messages_in: float
    windows: float
    p50_ms: float  # this interval
    p99_ms: float
    behind_ms: int  # the producer furthest behind its schedule
    paused: float
    buffered: float
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core, this interval


@dataclass
class LoadResult:
    settings: dict[str, Any]
    machine: dict[str, Any]
    samples: list[Sample]
    summary: dict[str, Any]


# -- the run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def running_daemon(
    config: Path, log_path: Path, profile_to: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    profiler = ["-m", "cProfile", "-o", str(profile_to)] if profile_to else []
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                *profiler,
                "-m",
                "daemon.cli",
                "daemon",
                "run",
                "--config",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LoadError(f"daemon exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            ready = http("GET", f"http://127.0.0.1:{port}/readyz", timeout=2)[0] == 200
            if ready and "partitions assigned" in log_path.read_text(errors="replace"):
                return
        time.sleep(0.5)
    raise LoadError(f"daemon not ready after 90 s:\n{log_path.read_text()[-3000:]}")


def owned_partitions(log: Path) -> set[int]:
    """The partitions a member's log says it owns now (latest "ready in" line)."""
    owned: set[int] = set()
    for line in log.read_text(errors="replace").splitlines():
        if "ready in" in line:
            found = re.search(r"assigned now \S*\[([\d,]+)\]", line)
            owned = {int(p) for p in found.group(1).split(",")} if found else set()
    return owned


def wait_balanced(logs: list[Path], partitions: int, timeout_s: float = 90.0) -> None:
    """Until every member owns partitions and together they own all of them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        owned = [owned_partitions(log) for log in logs]
        if sum(map(len, owned)) == partitions and all(owned):
            return
        time.sleep(0.5)
    raise LoadError(f"the {len(logs)} instances did not share the partitions in {timeout_s:.0f} s")


def linear_slope(t: list[float], y: list[float]) -> float:
    if len(t) < 3:
        return math.nan
    return float(np.polyfit(np.asarray(t), np.asarray(y), 1)[0])


def run_load(args: argparse.Namespace) -> LoadResult:
    lib = args.producer_lib
    if lib == "auto":
        lib = "confluent" if _has_confluent() else "kafka-python"
    topic = f"bench-load-{uuid.uuid4().hex[:8]}"
    db = f"bench_load_{uuid.uuid4().hex[:8]}"
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    print(f"topic {topic}, database {db}, work dir {tmp}", flush=True)
    started = time.perf_counter()
    train_small_profile(tmp / "models", kind=args.kind, window=args.window, hop=args.hop)
    print(f"{args.kind} profile trained in {time.perf_counter() - started:.1f} s", flush=True)
    make_topic(args.bootstrap, topic, args.partitions)
    influx_query(args.influx, f'CREATE DATABASE "{db}"')
    # --instances: members of one consumer group, each with its own health port and state
    ports = [port] + [free_port() for _ in range(args.instances - 1)]
    names = ["daemon"] if args.instances == 1 else [f"daemon{k}" for k in range(args.instances)]
    configs, logs = [], []
    for k, name in enumerate(names):
        config = tmp / f"{name}.toml"
        daemon_config(
            config,
            tmp=tmp,
            bootstrap=args.bootstrap,
            topic=topic,
            influx=args.influx,
            db=db,
            port=ports[k],
            args=args,
            state="state" if k == 0 else f"state{k}",
        )
        configs.append(config)
        logs.append(tmp / f"{name}.log")
    services = service_processes()
    samples: list[Sample] = []
    try:
        with contextlib.ExitStack() as stack:
            procs = []
            for k in range(args.instances):
                proc = stack.enter_context(running_daemon(configs[k], logs[k], args.profile_daemon))
                wait_ready(proc, ports[k], logs[k])
                procs.append(proc)
            if args.instances > 1:
                wait_balanced(logs, args.partitions)
            daemons = {name: psutil.Process(p.pid) for name, p in zip(names, procs, strict=True)}
            assets = [f"asset-{i}" for i in range(args.assets)]
            duration = args.minutes * 60
            stop_at = time.time() + duration
            ctx = mp.get_context("spawn")
            counters = [(ctx.Value("q", 0), ctx.Value("q", 0)) for _ in range(args.producers)]
            producers = [
                ctx.Process(
                    target=produce,
                    args=(
                        w,
                        assets[w :: args.producers],
                        args.hz,
                        args.bootstrap,
                        topic,
                        lib,
                        stop_at,
                        *counters[w],
                    ),
                    daemon=True,
                )
                for w in range(args.producers)
            ]
            for p in producers:
                p.start()
            watched = daemons | services
            for w, p in enumerate(producers):
                watched[f"producer{w}"] = psutil.Process(p.pid)
            for ps in watched.values():
                ps.cpu_percent(None)
            t0 = time.time()
            last = scrape(*ports)
            first = last
            cumulative: list[dict[float, float]] = []  # latency buckets as of each sample
            next_print = t0 + 30
            while time.time() < stop_at:
                time.sleep(min(args.sample_s, max(0.0, stop_at - time.time())))
                for proc, log_path in zip(procs, logs, strict=True):
                    if proc.poll() is not None:
                        raise LoadError(
                            f"daemon exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
                        )
                now = scrape(*ports)
                d = delta(last["buckets"], now["buckets"])
                tot = now["totals"]
                cpu = {}
                for name, ps in watched.items():
                    with contextlib.suppress(psutil.Error):
                        cpu[name] = ps.cpu_percent(None)
                s = Sample(
                    t=time.time() - t0,
                    rss_mb=sum(ps.memory_info().rss for ps in daemons.values()) / 2**20,
                    sent=sum(c[0].value for c in counters),
                    messages_in=tot.get("seqae_messages_in_total", 0.0),
                    windows=tot.get("seqae_windows_scored_total", 0.0),
                    p50_ms=1000 * quantile(0.5, d),
                    p99_ms=1000 * quantile(0.99, d),
                    behind_ms=max(c[1].value for c in counters),
                    paused=tot.get("seqae_source_paused", 0.0),
                    buffered=tot.get("seqae_sink_buffered_points", 0.0),
                    cpu=cpu,
                )
                samples.append(s)
                cumulative.append(now["buckets"])
                last = now
                if time.time() >= next_print or time.time() >= stop_at:
                    next_print += 30
                    window = [x for x in samples if x.t > s.t - 30]
                    base = samples[-len(window) - 1] if len(window) < len(samples) else None
                    dt = s.t - (base.t if base else 0.0)
                    rate_in = (s.messages_in - (base.messages_in if base else 0)) / dt
                    rate_sent = (s.sent - (base.sent if base else 0)) / dt
                    rate_win = (s.windows - (base.windows if base else 0)) / dt
                    print(
                        f"[{s.t:6.0f} s] sent {rate_sent:7.0f}/s  in {rate_in:7.0f}/s  windows"
                        f" {rate_win:6.0f}/s  p50 {s.p50_ms:6.0f} ms  p99 {s.p99_ms:6.0f} ms"
                        f"  rss {s.rss_mb:6.0f} MB  producer behind {s.behind_ms} ms  cpu "
                        + " ".join(f"{k} {v:.0f}%" for k, v in cpu.items()),
                        flush=True,
                    )
            for p in producers:
                p.join(timeout=60)
            lag_end = group_lag(args.bootstrap, topic, topic)
            final = scrape(*ports)
            overall = delta(first["buckets"], final["buckets"])
            steady_from = min(args.warmup_s, duration / 2)
            steady = [x for x in samples if x.t >= steady_from]
            i = next((i for i, x in enumerate(samples) if x.t >= steady_from), 0)
            steady_buckets = delta(cumulative[i - 1] if i else first["buckets"], final["buckets"])
            summary = _summary(samples, steady, steady_from, overall, steady_buckets, lag_end)
            summary |= _loop_pauses(final["totals"])
    finally:
        with contextlib.suppress(LoadError, OSError):
            influx_query(args.influx, f'DROP DATABASE "{db}"')
    machine = {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }
    settings = {k: v for k, v in vars(args).items() if k not in ("compare_consumers",)} | {
        "producer_lib": lib,
        "topic": topic,
    }
    return LoadResult(settings, machine, samples, summary)


def _loop_pauses(totals: dict[str, float]) -> dict[str, Any]:
    """What stopped the run loop over the whole run: commit passes and garbage collections
    (the daemon's own histograms; means, since a histogram keeps no maximum)."""
    passes = totals.get("seqae_checkpoint_seconds_count", 0.0)
    collections = totals.get("seqae_gc_pause_seconds_count", 0.0)
    return {
        "checkpoint_passes": int(passes),
        "checkpoint_mean_ms": round(
            1000 * totals.get("seqae_checkpoint_seconds_sum", 0.0) / max(passes, 1), 1
        ),
        "gc_collections": int(collections),
        "gc_seconds_total": round(totals.get("seqae_gc_pause_seconds_sum", 0.0), 2),
        "gc_by_generation": {
            g: {
                "collections": int(
                    totals.get(f'seqae_gc_pause_seconds_count{{generation="{g}"}}', 0)
                ),
                "seconds": round(
                    totals.get(f'seqae_gc_pause_seconds_sum{{generation="{g}"}}', 0), 2
                ),
                "collected_objects": int(
                    totals.get(f'seqae_gc_collected_objects_total{{generation="{g}"}}', 0)
                ),
            }
            for g in ("0", "1", "2")
        },
    }


def _summary(
    samples: list[Sample],
    steady: list[Sample],
    steady_from: float,
    overall: dict[float, float],
    steady_buckets: dict[float, float],
    lag_end: int,
) -> dict[str, Any]:
    if not samples:
        return {}
    last = samples[-1]
    t = [s.t for s in steady]
    rss = [s.rss_mb for s in steady]
    mid = samples[len(samples) // 2]
    cpu_keys = sorted({k for s in steady for k in s.cpu})
    return {
        "duration_s": round(last.t, 1),
        "sent_per_s": round(last.sent / last.t, 1),
        "consumed_per_s": round(last.messages_in / last.t, 1),
        "windows_per_s": round(last.windows / last.t, 1),
        "steady_from_s": steady_from,
        "steady_consumed_per_s": round(
            (steady[-1].messages_in - steady[0].messages_in) / (steady[-1].t - steady[0].t), 1
        )
        if len(steady) > 1
        else math.nan,
        "latency_p50_ms": round(1000 * quantile(0.5, overall), 1),
        "latency_p99_ms": round(1000 * quantile(0.99, overall), 1),
        "steady_latency_p50_ms": round(1000 * quantile(0.5, steady_buckets), 1),
        "steady_latency_p99_ms": round(1000 * quantile(0.99, steady_buckets), 1),
        "latency_count": overall.get(math.inf, 0.0),
        "rss_mb_start": round(samples[0].rss_mb, 1),
        "rss_mb_mid": round(mid.rss_mb, 1),
        "rss_mb_end": round(last.rss_mb, 1),
        "rss_slope_mb_per_min_steady": round(60 * linear_slope(t, rss), 3),
        "read_lag_end_messages": last.sent - int(last.messages_in),
        "uncommitted_end_messages": lag_end,
        "producer_behind_ms_max": max(s.behind_ms for s in samples),
        "paused_samples": sum(1 for s in samples if s.paused),
        "cpu_mean_pct_steady": {
            k: round(float(np.mean([s.cpu.get(k, 0.0) for s in steady])), 1) for k in cpu_keys
        },
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def plot(result: LoadResult, tag: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.samples
    t = [x.t / 60 for x in s]
    title = (
        f"{result.settings['assets']} assets x {result.settings['hz']:g} Hz x {len(CHANNELS)} ch,"
        f" {result.settings['kind']} w{result.settings['window']}/h{result.settings['hop']}"
    )
    paths = []
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(t, [x.p50_ms for x in s], label="p50")
    ax.plot(t, [x.p99_ms for x in s], label="p99")
    ax.axhline(250, color="grey", linestyle="--", linewidth=0.8, label="p99 target 250 ms")
    ax.set_yscale("log")
    ax.set_xlabel("minutes")
    ax.set_ylabel("message -> acknowledged write (ms)")
    ax.set_title(f"write latency per {result.settings['sample_s']:g} s: {title}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(RESULTS / f"load_{tag}_latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(t, [x.rss_mb for x in s])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("minutes")
    ax.set_ylabel("daemon RSS (MB)")
    ax.set_title(f"resident memory: {title}", fontsize=9)
    fig.tight_layout()
    paths.append(RESULTS / f"load_{tag}_rss.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


# -- consumer comparison ---------------------------------------------------------------------


def compare_consumers(args: argparse.Namespace) -> None:
    """kafka-python vs confluent-kafka: consume + the daemon's decode of the same wide messages."""
    from kafka import KafkaConsumer, KafkaProducer

    from daemon.codec import MessageDecoder
    from daemon.settings import InputSettings

    topic = f"bench-consumers-{uuid.uuid4().hex[:8]}"
    make_topic(args.bootstrap, topic, args.partitions)
    n = args.compare_consumers
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks=1, linger_ms=20)
    t0 = 1795723200000
    for i in range(n):
        asset = f"asset-{i % args.assets}"
        values = ",".join(f'"{c}":{10 + 0.001 * i + k:.4f}' for k, c in enumerate(CHANNELS))
        body = f'{{"asset":"{asset}","ts":{t0 + (i // args.assets) * 100},"values":{{{values}}}}}'
        producer.send(topic, key=asset.encode(), value=body.encode())
    producer.flush()
    producer.close()
    decoder = MessageDecoder(InputSettings(), lambda asset: CHANNELS)

    def kafka_python(decode: bool) -> float:
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=args.bootstrap,
            group_id=f"cmp-kp-{uuid.uuid4().hex[:6]}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=2000,
        )
        seen, start = 0, None
        while seen < n:
            batches = consumer.poll(timeout_ms=500)
            if start is None and batches:
                start = time.perf_counter()
            for records in batches.values():
                for r in records:
                    if decode:
                        decoder.decode(r.value)
                    seen += 1
        elapsed = time.perf_counter() - (start or time.perf_counter())
        consumer.close()
        return seen / elapsed

    def confluent(decode: bool) -> float:
        from confluent_kafka import Consumer

        consumer = Consumer(
            {
                "bootstrap.servers": args.bootstrap,
                "group.id": f"cmp-ck-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([topic])
        seen, start = 0, None
        while seen < n:
            msgs = consumer.consume(num_messages=2000, timeout=0.5)
            if start is None and msgs:
                start = time.perf_counter()
            for m in msgs:
                if m.error():
                    continue
                if decode:
                    decoder.decode(m.value() or b"")
                seen += 1
        elapsed = time.perf_counter() - (start or time.perf_counter())
        consumer.close()
        return seen / elapsed

    rows = []
    for decode in (False, True):
        kp = max(kafka_python(decode) for _ in range(2))
        ck = max(confluent(decode) for _ in range(2))
        rows.append((decode, kp, ck))
    print(f"{n} wide messages, {len(CHANNELS)} channels, {args.partitions} partitions")
    print(f"{'':28} {'kafka-python':>13} {'confluent-kafka':>16} {'ratio':>6}")
    for decode, kp, ck in rows:
        what = "consume + MessageDecoder" if decode else "consume only"
        print(f"{what:28} {kp:>11.0f}/s {ck:>14.0f}/s {ck / kp:>6.2f}")


def _jsonable(value: object) -> Any:
    return str(value) if isinstance(value, Path) else float(value)  # type: ignore[arg-type]


def delivery_jitter(args: argparse.Namespace) -> None:
    """Message timestamp -> bare consumer's receipt, under the load's producers, per client."""
    lib = "confluent" if _has_confluent() else "kafka-python"
    for consumer_lib in ("kafka-python", "confluent"):
        topic = f"bench-jitter-{uuid.uuid4().hex[:8]}"
        make_topic(args.bootstrap, topic, args.partitions)
        ctx = mp.get_context("spawn")
        stop_at = time.time() + args.delivery_jitter
        counters = [(ctx.Value("q", 0), ctx.Value("q", 0)) for _ in range(args.producers)]
        assets = [f"asset-{i}" for i in range(args.assets)]
        producers = [
            ctx.Process(
                target=produce,
                args=(w, assets[w :: args.producers], args.hz, args.bootstrap, topic, lib, stop_at)
                + counters[w],
                daemon=True,
            )
            for w in range(args.producers)
        ]
        for p in producers:
            p.start()
        delays: list[float] = []
        group = f"jitter-{uuid.uuid4().hex[:6]}"
        if consumer_lib == "kafka-python":
            from kafka import KafkaConsumer

            kc = KafkaConsumer(
                topic,
                bootstrap_servers=args.bootstrap,
                group_id=group,
                auto_offset_reset="earliest",
                max_poll_records=2000,
            )
            while time.time() < stop_at:
                for records in kc.poll(timeout_ms=50).values():
                    now = time.time() * 1000
                    delays.extend(now - r.timestamp for r in records)
            kc.close()
        else:
            from confluent_kafka import Consumer

            cc = Consumer(
                {
                    "bootstrap.servers": args.bootstrap,
                    "group.id": group,
                    "auto.offset.reset": "earliest",
                }
            )
            cc.subscribe([topic])
            while time.time() < stop_at:
                msgs = cc.consume(2000, 0.05)
                now = time.time() * 1000
                delays.extend(now - m.timestamp()[1] for m in msgs if not m.error())
            cc.close()
        for p in producers:
            p.join(timeout=30)
        tail = np.asarray(delays[len(delays) // 3 :])  # after the group join
        p50, p90, p99 = np.percentile(tail, [50, 90, 99])
        print(
            f"{consumer_lib:>12}: {len(tail)} messages, timestamp -> consumer"
            f" p50 {p50:.0f} ms  p90 {p90:.0f} ms  p99 {p99:.0f} ms",
            flush=True,
        )


def _has_confluent() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("SEQAE_TEST_KAFKA", "127.0.0.1:19092")
    )
    parser.add_argument(
        "--influx", default=os.environ.get("SEQAE_TEST_INFLUX_V1", "http://127.0.0.1:18086")
    )
    parser.add_argument("--assets", type=int, default=1000)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--hop", type=int, default=10)
    parser.add_argument("--kind", choices=["lstm", "pca"], default="lstm")
    parser.add_argument("--baselines", choices=["per_asset", "model"], default="per_asset")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="daemons in the consumer group (each its own process, health port and state_dir)",
    )
    parser.add_argument(
        "--producer-lib", choices=["auto", "confluent", "kafka-python"], default="auto"
    )
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--max-wait-ms", type=float, default=50.0)
    parser.add_argument(
        "--commit-interval-s", type=float, default=None, help="default: the daemon's own"
    )
    parser.add_argument("--max-poll-records", type=int, default=2000)
    parser.add_argument(
        "--client",
        choices=["confluent", "kafka-python"],
        default=None,
        help="the daemon's kafka.client (default: the daemon's own)",
    )
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument(
        "--warmup-s", type=float, default=90.0, help="left out of the steady-state figures"
    )
    parser.add_argument(
        "--profile-daemon", type=Path, default=None, help="run the daemon under cProfile, to here"
    )
    parser.add_argument("--tag", default=None, help="name of the output files (default: a<assets>)")
    parser.add_argument(
        "--compare-consumers",
        type=int,
        default=0,
        metavar="N",
        help="instead of the load: N messages through kafka-python and confluent-kafka",
    )
    parser.add_argument(
        "--delivery-jitter",
        type=float,
        default=0.0,
        metavar="S",
        help="instead of the load: S seconds of it into bare kafka-python, then confluent-kafka "
        "consumers; prints message timestamp -> receipt percentiles",
    )
    args = parser.parse_args()
    if args.delivery_jitter:
        delivery_jitter(args)
        return
    if args.compare_consumers:
        compare_consumers(args)
        return
    result = run_load(args)
    tag = args.tag or f"a{args.assets}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"load_{tag}.json"
    out.write_text(json.dumps(asdict(result), indent=1, default=_jsonable))
    paths = plot(result, tag)
    print(json.dumps(result.summary, indent=1))
    print("wrote", out, *paths)


if __name__ == "__main__":
    main()
