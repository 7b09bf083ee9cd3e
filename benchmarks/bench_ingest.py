"""Ingest rate: the daemon's source + MessageDecoder against bare client loops, per client.

Every path reads the same topic from the start in a fresh consumer group. The bare loops:
kafka-python's `KafkaConsumer.poll` + `json.loads` (and `orjson.loads`, the daemon's parser),
and confluent-kafka's `Consumer.consume` + `orjson.loads`. The daemon paths: `Source.poll` +
`MessageDecoder.decode` with `kafka.client` = kafka-python and = confluent (the default).
Prints messages/s for each and the ratios: each daemon path against its own client's bare
loop, and the confluent daemon path against the kafka-python one. Needs a broker, e.g.:

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
from confluent_kafka import Consumer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from daemon.codec import MessageDecoder
from daemon.settings import InputSettings, KafkaSettings
from daemon.source import TopicPartitionId, open_source

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


def bare_confluent_rate(bootstrap: str, topic: str, messages: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-bare-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    seen = 0
    start = None
    while seen < messages:
        batch = consumer.consume(2000, 0.5)
        if start is None and batch:
            start = time.perf_counter()
        for m in batch:
            if m.error() is None:
                orjson.loads(m.value())  # type: ignore[arg-type]
                seen += 1
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    return seen / elapsed


class _NoRebalanceWork:
    def on_revoked(self, partitions: set[TopicPartitionId]) -> None:
        pass

    def on_assigned(self, partitions: set[TopicPartitionId]) -> None:
        pass


def daemon_rate(bootstrap: str, topic: str, messages: int, client: str) -> float:
    settings = KafkaSettings(
        bootstrap_servers=[bootstrap],
        topics=[topic],
        group_id=f"bench-daemon-{uuid.uuid4().hex[:6]}",
        client=client,  # type: ignore[arg-type]
    )
    source = open_source(settings, _NoRebalanceWork())
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
    paths: dict[str, Callable[[], float]] = {
        "bare kafka-python poll + json.loads     ": lambda: bare_rate(
            args.bootstrap, topic, args.messages
        ),
        "bare kafka-python poll + orjson.loads   ": lambda: bare_rate(
            args.bootstrap, topic, args.messages, orjson.loads
        ),
        "daemon source (kafka-python) + decoder  ": lambda: daemon_rate(
            args.bootstrap, topic, args.messages, "kafka-python"
        ),
        "bare confluent consume + orjson.loads   ": lambda: bare_confluent_rate(
            args.bootstrap, topic, args.messages
        ),
        "daemon source (confluent) + decoder     ": lambda: daemon_rate(
            args.bootstrap, topic, args.messages, "confluent"
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):  # alternate so no path always runs on a warm cache
        for name, run in paths.items():
            rates[name].append(run())
    print(f"messages: {args.messages}  assets: {args.assets}  partitions: {args.partitions}")
    print(f"rounds: {args.rounds}, each path once per round; msg/s median (best)")
    for name, got in rates.items():
        print(f"{name} : {statistics.median(got):10.0f} ({max(got):.0f})")
    bare_kp, bare_kp_orjson, ours_kp, bare_cf, ours_cf = (
        statistics.median(r) for r in rates.values()
    )
    print(f"ratio daemon/bare, kafka-python (json.loads), medians   : {ours_kp / bare_kp:6.2f}")
    print(
        f"ratio daemon/bare, kafka-python (orjson.loads), medians : {ours_kp / bare_kp_orjson:6.2f}"
    )
    print(f"ratio daemon/bare, confluent (orjson.loads), medians    : {ours_cf / bare_cf:6.2f}")
    print(f"ratio daemon confluent / daemon kafka-python, medians   : {ours_cf / ours_kp:6.2f}")


if __name__ == "__main__":
    main()
