"""Ingest rate: the daemon's KafkaSource + MessageDecoder against a bare kafka-python loop.

Both read the same topic from the start in a fresh consumer group; the bare loop does
`KafkaConsumer.poll` + `json.loads` (and again with `orjson.loads`, the daemon's parser), the
daemon path `KafkaSource.poll` + `MessageDecoder.decode`.
Prints messages/s for each and the ratio (daemon / bare). Needs a broker, e.g. the devstack one:

    python deploy/local/devstack.py up
    python benchmarks/bench_ingest.py --messages 100000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from daemon.codec import MessageDecoder
from daemon.settings import InputSettings, KafkaSettings
from daemon.source import KafkaSource, TopicPartitionId

CHANNELS = ["pressure", "flow", "temperature", "vibration"]


def fill_topic(bootstrap: str, topic: str, messages: int, assets: int, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20)
    t0 = 1795723200000
    for i in range(messages):
        asset = f"pump-{i % assets}"
        body = {
            "asset": asset,
            "ts": t0 + (i // assets) * 1000,
            "values": {c: 1.0 + 0.001 * i + k for k, c in enumerate(CHANNELS)},
        }
        producer.send(topic, key=asset.encode(), value=json.dumps(body).encode())
    producer.flush()
    producer.close()


def bare_rate(
    bootstrap: str, topic: str, messages: int, loads: Callable[[bytes], object] = json.loads
) -> float:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-bare-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
    )
    seen = 0
    start = None
    while seen < messages:
        batches = consumer.poll(timeout_ms=500)
        if start is None and batches:
            start = time.perf_counter()
        for records in batches.values():
            for r in records:
                loads(r.value)
                seen += 1
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    return seen / elapsed


class _NoRebalanceWork:
    def on_revoked(self, partitions: set[TopicPartitionId]) -> None:
        pass

    def on_assigned(self, partitions: set[TopicPartitionId]) -> None:
        pass


def daemon_rate(bootstrap: str, topic: str, messages: int) -> float:
    settings = KafkaSettings(
        bootstrap_servers=[bootstrap],
        topics=[topic],
        group_id=f"bench-daemon-{uuid.uuid4().hex[:6]}",
    )
    source = KafkaSource(settings, _NoRebalanceWork())
    decoder = MessageDecoder(InputSettings(), lambda asset: CHANNELS)
    seen = 0
    start = None
    while seen < messages:
        records = source.poll(0.5)
        if start is None and records:
            start = time.perf_counter()
        for r in records:
            decoder.decode(r.value)
            seen += 1
    elapsed = time.perf_counter() - (start or time.perf_counter())
    source.close()
    return seen / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("SEQAE_TEST_KAFKA", "127.0.0.1:19092")
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--assets", type=int, default=50)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    topic = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    fill_topic(args.bootstrap, topic, args.messages, args.assets, args.partitions)
    bare, bare_orjson, ours = [], [], []
    for _ in range(args.rounds):  # alternate so neither side always runs on a warm cache
        bare.append(bare_rate(args.bootstrap, topic, args.messages))
        bare_orjson.append(bare_rate(args.bootstrap, topic, args.messages, orjson.loads))
        ours.append(daemon_rate(args.bootstrap, topic, args.messages))
    print(f"messages: {args.messages}  assets: {args.assets}  partitions: {args.partitions}")
    print(f"rounds: {args.rounds}, each path once per round; msg/s median (best)")
    b, bo, d = (statistics.median(r) for r in (bare, bare_orjson, ours))
    for name, rates in (
        ("bare kafka-python poll + json.loads  ", bare),
        ("bare kafka-python poll + orjson.loads", bare_orjson),
        ("KafkaSource.poll + MessageDecoder    ", ours),
    ):
        print(f"{name} : {statistics.median(rates):10.0f} ({max(rates):.0f})")
    print(f"ratio daemon/bare (json.loads), medians   : {d / b:6.2f}")
    print(f"ratio daemon/bare (orjson.loads), medians : {d / bo:6.2f}")


if __name__ == "__main__":
    main()
