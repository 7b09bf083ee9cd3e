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
    python benchmarks/bench_group.py --parts-cost 200     # changelog bytes/CPU, in process

Writes benchmarks/results/group.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    owned_partitions,
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
            got = scrape(*(port for _, port, _ in members))["totals"]
            return got.get("seqae_messages_in_total", 0.0), got.get(
                "seqae_windows_scored_total", 0.0
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
        from daemon.changelog import PartWriter

        self.tickets: list[int] = []
        self.states = 0
        self.parts = PartWriter()  # what the changelog would send: records and new parts

    def submit(self, points: list[Any], ticket: int, completed_ms: int) -> None:
        self.tickets.append(ticket)

    def take_acknowledged(self) -> list[int]:
        done, self.tickets = self.tickets, []
        return done

    def write(self, states: dict[str, dict[str, Any]]) -> int:
        self.states += len(states)
        batch = self.parts.encode(states)
        self.parts.acknowledged(batch)
        return batch.part_bytes + batch.record_bytes

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


def parts_cost(count: int, warmup: int) -> dict[str, Any]:
    """In process: `count` assets of 8 channels at 10 Hz (window 50, hop 10: a window per asset
    per second, as bench_load), per-asset baselines with a `warmup`-window warm-up; one
    checkpoint per second of readings, each asset changed. Per checkpoint, the changelog bytes
    and CPU of the split (`changed_states` + `PartWriter.encode` + `acknowledged`) against what
    a checkpoint did before, on the same states in the same process: every state taken and
    encoded whole (`asset_state` as it was, baselines' JSON cached per asset, + `encode_state`)
    and every changed warm-up file rewritten with fsync (`snapshot` + `saved`)."""
    from bench_scoring import plant_series

    from daemon.backtest import readings
    from daemon.changelog import PartWriter, encode_state
    from daemon.codec import Reading
    from daemon.core import StreamCore
    from daemon.engine import ProfileRegistry
    from daemon.settings import DaemonSettings

    tmp = Path(tempfile.mkdtemp(prefix="bench-parts-"))
    train_small_profile(tmp / "models", kind="pca", window=50, hop=10)
    settings = DaemonSettings.model_validate(
        {
            "state_dir": str(tmp / "state"),
            "profiles": {
                "models_root": str(tmp / "models"),
                "routes": [{"pattern": "asset-*", "profile": "bench"}],
            },
            "baselines": {"mode": "per_asset", "warmup_windows": warmup},
            "engine": {"device": "cpu"},
        }
    )
    core = StreamCore(settings, ProfileRegistry(tmp / "models", ["bench"], "cpu", "never"))
    seconds = warmup + 12
    template = list(readings([plant_series("asset-0", 10 * seconds + 50, 0.1, seed=3)]))
    assets = [f"asset-{i}" for i in range(count)]
    writer = PartWriter()
    fed = 0
    rows: list[dict[str, Any]] = []

    def feed(upto: int) -> None:
        nonlocal fed
        for k in range(fed, upto):
            for i, asset in enumerate(assets):
                r = template[k]
                core.add(Reading(asset, r.ts_ns, r.values), ("bench", i % 6), k)
        fed = upto
        list(core.score(everything=True, wait=True))

    cache: dict[tuple[str, str], tuple[Any, Any, list[Any]]] = {}

    def old_asset_state(asset: str) -> dict[str, Any]:
        """`asset_state` as it was: the baselines' JSON cached per asset (the removed
        `_AssetCalibration.encoded`), warm-up and shift run encoded whole each time."""
        state = core._taken_state(asset)
        items = []
        for c in state["baselines"]:
            hit = cache.get((asset, c.profile))
            if hit is None or hit[0] is not c.baseline or hit[1] is not c.moved:
                encoded = [c.baseline_json(c.baseline), c.baseline_json(c.moved)]
                hit = cache[(asset, c.profile)] = (c.baseline, c.moved, encoded)
            items.append(
                {
                    "profile": c.profile,
                    "version": c.version,
                    "baseline": hit[2][0],
                    "moved": hit[2][1],
                    "warmup": c.warmup_json(),
                    "shift_run": c.shift_run_json(),
                    "shifted": c.shifted,
                }
            )
        return state | {"baselines": items}

    feed(50)
    writer.acknowledged(writer.encode(core.changed_states()))
    core.baselines.checkpoint()
    for second in range(1, seconds):
        feed(50 + 10 * second)
        changed = sorted(core._changed)
        t0 = time.process_time()
        states = core.changed_states()
        after_take_s = time.process_time() - t0
        batch = writer.encode(states)
        writer.acknowledged(batch)
        after_s = time.process_time() - t0
        warming = [a for a in changed if core.asset_state(a)["baselines"][0]["baseline"] is None]
        started = time.perf_counter(), time.process_time()
        inline = [encode_state(old_asset_state(a)) for a in changed]
        snapshot = core.baselines.snapshot()
        core.baselines.saved(snapshot)
        before_wall = time.perf_counter() - started[0]
        before_s = time.process_time() - started[1]
        rows.append(
            {
                "second": second,
                "warming": len(warming),
                "assets": len(changed),
                "after_bytes": batch.part_bytes + batch.record_bytes,
                "after_records": len(batch.records),
                "after_parts": sum(1 for m in batch.parts if m.value is not None),
                "after_cpu_s": after_s,
                "after_take_cpu_s": after_take_s,
                "before_bytes": sum(map(len, inline)),
                "before_files": sum(1 for _, data in snapshot.files if data is not None),
                "before_cpu_s": before_s,
                "before_wall_s": before_wall,
            }
        )
    core.close()
    print(f"{count} assets, warm-up {warmup} windows: per checkpoint (one window per asset)")
    print("second | warming | after: bytes, CPU ms | before: bytes, CPU ms, wall ms (fsync)")
    for r in rows:
        print(
            f"{r['second']:>6} | {r['warming']:>7} | {r['after_bytes']:>9} "
            f"{r['after_cpu_s'] * 1e3:7.1f} | {r['before_bytes']:>10} "
            f"{r['before_cpu_s'] * 1e3:7.1f} {r['before_wall_s'] * 1e3:8.1f} "
            f"(bytes x{r['before_bytes'] / max(1, r['after_bytes']):.0f}, "
            f"CPU x{r['before_cpu_s'] / max(1e-9, r['after_cpu_s']):.1f})",
            flush=True,
        )
    return {"assets": count, "warmup_windows": warmup, "rows": rows}


def plot_parts_cost(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["assets"]]
    seconds = [r["second"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    per = result["assets"]
    top.plot(seconds, [r["before_bytes"] / per / 1e3 for r in rows], label="before: whole states")
    top.plot(seconds, [r["after_bytes"] / per / 1e3 for r in rows], label="after: record + parts")
    top.set_ylabel("changelog kB per asset\nper checkpoint")
    top.legend()
    bottom.plot(seconds, [r["before_cpu_s"] * 1e3 for r in rows], label="before (+ fsync'd files)")
    bottom.plot(seconds, [r["after_cpu_s"] * 1e3 for r in rows], label="after")
    bottom.set_ylabel(f"checkpoint CPU ms\n({per} assets)")
    bottom.set_xlabel(
        f"seconds of readings (a window per asset per second; fit at window "
        f"{result['warmup_windows']})"
    )
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    parser.add_argument(
        "--parts-cost",
        type=int,
        metavar="ASSETS",
        help="instead: the changelog bytes and CPU of a checkpoint through a warm-up and after "
        "it, split into parts against whole states (in process, no Kafka)",
    )
    parser.add_argument("--warmup", type=int, default=64, help="with --parts-cost")
    args = parser.parse_args()
    if args.checkpoint_cost:
        checkpoint_cost(args.checkpoint_cost, args.changed)
        return
    if args.parts_cost:
        result = parts_cost(args.parts_cost, args.warmup)
        out = RESULTS / "changelog_parts.json"
        out.write_text(json.dumps(result | {"machine": platform.platform()}, indent=1))
        plot_parts_cost(result, out.with_suffix(".png"))
        print(f"wrote {out} and its .png")
        return
    # what daemon_config reads from bench_load's arguments
    args.max_poll_records, args.baselines, args.max_batch, args.max_wait_ms = 2000, "model", 256, 50
    args.commit_interval_s = None  # the daemon's own
    args.client = None
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
