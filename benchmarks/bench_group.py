"""Throughput of a consumer group with 1, 2 and 3 daemons on this machine, on the real Kafka and
InfluxDB of deploy/local.

One backlog is produced once into a topic of `--partitions` partitions (6: an even split for 1,
2 and 3 members): `--assets` assets x `--samples` wide JSON messages of 8 channels on a 10 Hz
grid (kafka-python, before any daemon runs). Then, for each group size in `--members`, that many
daemons (subprocesses, CPU, one torch thread each; the LSTM profile of bench_load.py, window 50,
hop 10; baselines `model` so no warm-up fit runs mid-measure) join a new group on that topic
from its start, each writing to its own InfluxDB database. Once the group has settled (every
partition assigned, by the members' logs), the members' `seqae_messages_in_total` and
`seqae_windows_scored_total` are sampled every 0.5 s until `--fraction` of what was left at that
moment is consumed; throughput is the messages and windows over that span per second, so the
join and the drained tail are left out. CPU per member (psutil), Kafka's CPU and the load
average are reported alongside. The first group size is the baseline: each row prints its ratio
to it, and the baseline is run again last to show how much the shared machine drifted.

    python deploy/local/devstack.py up
    python benchmarks/bench_group.py                        # 1000 assets x 600 samples, 1-3
    python benchmarks/bench_group.py --members 1 2 3 1 --assets 500
    python benchmarks/bench_group.py --checkpoint-cost 1000 10000 100000   # in process

Writes benchmarks/results/group.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from bench_load import (  # noqa: E402
    CHANNELS,
    REPO,
    RESULTS,
    daemon_config,
    free_port,
    influx_query,
    make_topic,
    scrape,
    service_processes,
)
from bench_scoring import train_small_profile  # noqa: E402


def produce_backlog(bootstrap: str, topic: str, assets: int, samples: int) -> int:
    """`assets` x `samples` messages on a 10 Hz grid ending now; returns how many were sent."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=1 << 18)
    rng = np.random.default_rng(0)
    start_ms = (int(time.time() * 1000) // 100 - samples) * 100
    offsets = rng.normal(0, 0.05, (assets, 1))
    keys = [f"asset-{i}".encode() for i in range(assets)]
    for k in range(samples):
        ts = start_ms + 100 * k
        rows = np.round(10 + offsets + rng.normal(0, 0.2, (assets, len(CHANNELS))), 4).tolist()
        for i, row in enumerate(rows):
            values = ",".join(f'"{c}":{v}' for c, v in zip(CHANNELS, row, strict=True))
            body = f'{{"asset":"asset-{i}","ts":{ts},"values":{{{values}}}}}'.encode()
            producer.send(topic, key=keys[i], value=body, timestamp_ms=ts)
    producer.flush()
    producer.close()
    return assets * samples


def owned_partitions(log: Path) -> set[int]:
    """The partitions a member's log says it owns now (latest "ready in" line)."""
    owned: set[int] = set()
    for line in log.read_text(errors="replace").splitlines():
        if "ready in" in line:
            found = re.search(r"assigned now \S*\[([\d,]+)\]", line)
            owned = {int(p) for p in found.group(1).split(",")} if found else set()
    return owned


def run_group(
    size: int, run: int, tmp: Path, topic: str, produced: int, args: argparse.Namespace
) -> dict[str, Any]:
    group = f"{topic}-run{run}"
    db = f"bench_group_{uuid.uuid4().hex[:8]}"
    influx_query(args.influx, f'CREATE DATABASE "{db}"')
    members = []
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for m in range(size):
        home = tmp / f"run{run}-m{m}"
        home.mkdir()
        (home / "models").symlink_to(tmp / "models")
        port = free_port()
        config = home / "daemon.toml"
        daemon_config(
            config,
            tmp=home,
            bootstrap=args.bootstrap,
            topic=topic,
            influx=args.influx,
            db=db,
            port=port,
            args=args,
        )
        log = home / "daemon.log"
        member_env = env | {"SEQAE_KAFKA__GROUP_ID": group, "SEQAE_KAFKA__CLIENT_ID": f"m{m}"}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "daemon", "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=member_env,
            )
        members.append((proc, port, log))
    try:
        deadline = time.monotonic() + 180
        while True:
            owned = [owned_partitions(log) for _, _, log in members]
            if sum(map(len, owned)) == args.partitions and all(owned):
                break
            for proc, _, log in members:
                if proc.poll() is not None:
                    raise SystemExit(f"a member exited:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit("the group did not settle in 180 s")
            time.sleep(0.2)
        procs = [psutil.Process(p.pid) for p, _, _ in members]
        kafka = service_processes().get("kafka")
        for p in [*procs, *([kafka] if kafka else [])]:
            p.cpu_percent(None)
        load_before = os.getloadavg()

        def totals() -> tuple[float, float]:
            got = [scrape(port)["totals"] for _, port, _ in members]
            return (
                sum(t.get("seqae_messages_in_total", 0.0) for t in got),
                sum(t.get("seqae_windows_scored_total", 0.0) for t in got),
            )

        t0 = time.monotonic()
        m0, w0 = totals()
        goal = m0 + args.fraction * (produced - m0)
        if produced - m0 < 0.3 * produced:
            raise SystemExit(f"only {produced - m0:.0f} messages left at settle: a larger backlog")
        while True:
            time.sleep(0.5)
            m1, w1 = totals()
            if m1 >= goal:
                break
            if time.monotonic() - t0 > 600:
                raise SystemExit("not drained in 600 s")
        seconds = time.monotonic() - t0
        cpu = [p.cpu_percent(None) for p in procs]
        row = {
            "members": size,
            "messages_per_s": (m1 - m0) / seconds,
            # what the members did with the CPU they got: on a shared machine the share the
            # scheduler gives grows with the number of processes, the work per CPU-second not
            "messages_per_cpu_s": (m1 - m0) / seconds / max(1e-9, sum(cpu) / 100),
            "windows_per_s": (w1 - w0) / seconds,
            "measured_s": seconds,
            "messages_measured": m1 - m0,
            "cpu_percent_per_member": cpu,
            "kafka_cpu_percent": kafka.cpu_percent(None) if kafka else None,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        }
    finally:
        for proc, _, _ in members:
            proc.terminate()
        for proc, _, _ in members:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return row


class _Acknowledger:
    """InfluxDB, Kafka and the changelog for `checkpoint_cost`: everything acknowledged at once;
    states are encoded as the changelog would, not sent."""

    def __init__(self) -> None:
        self.tickets: list[int] = []
        self.states = 0

    def submit(self, points: list[Any], ticket: int, completed_ms: int) -> None:
        self.tickets.append(ticket)

    def take_acknowledged(self) -> list[int]:
        done, self.tickets = self.tickets, []
        return done

    def write(self, states: dict[str, dict[str, Any]]) -> int:
        from daemon.changelog import encode_state

        self.states += len(states)
        return sum(len(encode_state(s)) for s in states.values())

    def commit(self, offsets: dict[Any, int]) -> bool:
        return True


def checkpoint_cost(counts: list[int], changed: int) -> None:
    """In process: a daemon holding `count` assets with a partial window each; time one
    checkpoint cycle (mark, then commit) when `changed` assets changed (their states built and
    encoded) and when only readings arrived (none completing a window), against the passes over
    every asset that a checkpoint made before (every window's hold, the full state file)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    train_small_profile(tmp / "models", kind="pca", window=50, hop=10)
    print(f"assets | checkpoint, none changed | {changed} changed | before: passes over all")
    for count in counts:
        _checkpoint_row(tmp, count, changed)


def _checkpoint_row(tmp: Path, count: int, changed: int) -> None:
    from daemon.app import Daemon
    from daemon.codec import Reading
    from daemon.settings import DaemonSettings

    values = dict.fromkeys(CHANNELS, 1.0)
    start_ns = (time.time_ns() // 10**9 - 3600) * 10**9
    settings = DaemonSettings.model_validate(
        {
            "state_dir": str(tmp / f"state-{count}"),
            "profiles": {
                "models_root": str(tmp / "models"),
                "routes": [{"pattern": "asset-*", "profile": "bench"}],
            },
            "baselines": {"mode": "model"},
            "engine": {"device": "cpu"},
        }
    )
    daemon = Daemon(settings)
    fake = _Acknowledger()
    daemon.sink = daemon.changelog = daemon.source = fake  # type: ignore[assignment]
    assets = [f"asset-{i}" for i in range(count)]
    offset = dict.fromkeys(range(6), 0)

    def readings(who: list[str], k: int) -> None:
        for i, asset in enumerate(who):
            tp = ("bench", i % 6)
            reading = Reading(asset, start_ns + k * 100_000_000, values)
            daemon.core.add(reading, tp, offset[i % 6])
            daemon.ledger.consumed(tp, offset[i % 6])
            offset[i % 6] += 1

    def cycle() -> float:
        started = time.perf_counter()
        for _ in range(2):
            daemon._take_acks()
            daemon._advance_checkpoint()
        return (time.perf_counter() - started) / 2

    for k in range(5):  # a partial window each (window 50)
        readings(assets, k)
    cycle()
    cycle()  # every asset written once: the states now name their windows' readings
    readings(assets[:changed], 5)  # readings, no window completed: nothing to write
    quiet = min(cycle() for _ in range(3))
    daemon.core.mark_changed(assets[:changed])
    busy = cycle()
    started = time.perf_counter()
    daemon.core.windows.hold()
    daemon._state_bytes()
    before = time.perf_counter() - started
    print(
        f"{count:>7} | {quiet * 1e3:8.2f} ms | {busy * 1e3:8.2f} ms | {before * 1e3:9.1f} ms "
        f"(x{before / max(busy, 1e-9):.0f})",
        flush=True,
    )
    daemon.core.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:19092", help="devstack's Kafka")
    parser.add_argument("--influx", default="http://127.0.0.1:18086", help="devstack's InfluxDB")
    parser.add_argument("--assets", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=600, help="messages per asset (10 Hz)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 3, 1])
    parser.add_argument("--fraction", type=float, default=0.6)
    parser.add_argument(
        "--checkpoint-cost",
        type=int,
        nargs="*",
        metavar="ASSETS",
        help="instead: time a checkpoint in process at these asset counts (no Kafka)",
    )
    parser.add_argument("--changed", type=int, default=100, help="with --checkpoint-cost")
    args = parser.parse_args()
    if args.checkpoint_cost:
        checkpoint_cost(args.checkpoint_cost, args.changed)
        return
    # what daemon_config reads from bench_load's arguments
    args.max_poll_records, args.baselines, args.max_batch, args.max_wait_ms = 2000, "model", 256, 50
    tmp = Path(tempfile.mkdtemp(prefix="bench-group-"))
    train_small_profile(tmp / "models", kind="lstm", window=50, hop=10)
    topic = f"bench-group-{uuid.uuid4().hex[:8]}"
    make_topic(args.bootstrap, topic, args.partitions)
    started = time.perf_counter()
    produced = produce_backlog(args.bootstrap, topic, args.assets, args.samples)
    print(
        f"{produced} messages ({args.assets} assets x {args.samples}) into {topic} "
        f"({args.partitions} partitions) in {time.perf_counter() - started:.1f} s; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = []
    for run, size in enumerate(args.members):
        row = run_group(size, run, tmp, topic, produced, args)
        rows.append(row)
        base = rows[0]
        cpu = "+".join(f"{c:.0f}" for c in row["cpu_percent_per_member"])
        print(
            f"{size} member(s): {row['messages_per_s']:8.0f} msg/s ({row['windows_per_s']:6.0f} "
            f"windows/s), x{row['messages_per_s'] / base['messages_per_s']:.2f} of the first "
            f"row; CPU % per member {cpu} ({row['messages_per_cpu_s']:.0f} msg per daemon "
            f"CPU-second), Kafka {row['kafka_cpu_percent'] or 0:.0f} %; load "
            f"average {row['load_average_before'][0]:.2f} -> {row['load_average_after'][0]:.2f} "
            f"over {row['measured_s']:.1f} s",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "group.json"
    meta = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    out.write_text(json.dumps({"args": vars(args), "meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
