"""replay_file against the real Kafka broker: rows become keyed wide messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kafka import KafkaConsumer

from daemon.replay import ReplayError, replay_file

pytestmark = pytest.mark.integration


def read_topic(bootstrap: str, topic: str, n: int) -> list[tuple[bytes, dict[str, Any]]]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10000,
    )
    out = []
    try:
        for message in consumer:
            out.append((message.key, json.loads(message.value)))
            if len(out) == n:
                break
    finally:
        consumer.close()
    return out


def test_multi_asset_csv(kafka_bootstrap: str, unique_topic: str, tmp_path: Path) -> None:
    csv = tmp_path / "plant.csv"
    csv.write_text(
        "timestamp,asset,pressure,flow,note,label\n"
        "2026-11-26T20:00:00.125Z,pump-1,2.5,30.0,ok,0\n"
        "2026-11-26T20:00:00.125Z,pump-2,2.6,,ok,0\n"
        "2026-11-26T20:00:01.125Z,pump-1,2.4,31.5,hm,1\n"
    )
    sent = replay_file(
        csv, unique_topic, kafka_bootstrap, rate=None, exclude=["label"], progress=False
    )
    assert sent == 3
    got = read_topic(kafka_bootstrap, unique_topic, 3)
    by_key: dict[bytes, list[dict[str, Any]]] = {}
    for key, value in got:
        by_key.setdefault(key, []).append(value)
    t0 = int(pd.Timestamp("2026-11-26T20:00:00.125Z").value // 1_000_000)
    assert by_key[b"pump-1"] == [
        {"asset": "pump-1", "ts": t0, "values": {"pressure": 2.5, "flow": 30.0}},
        {"asset": "pump-1", "ts": t0 + 1000, "values": {"pressure": 2.4, "flow": 31.5}},
    ]
    # A missing reading is left out of `values`, never sent as NaN.
    assert by_key[b"pump-2"] == [{"asset": "pump-2", "ts": t0, "values": {"pressure": 2.6}}]


def test_single_asset_parquet_at_a_rate(
    kafka_bootstrap: str, unique_topic: str, tmp_path: Path
) -> None:
    path = tmp_path / "pump.parquet"
    t0 = 1795723200125
    pd.DataFrame(
        {"time": [t0 + i * 100 for i in range(40)], "vib": [i * 0.5 for i in range(40)]}
    ).to_parquet(path)
    sent = replay_file(
        path,
        unique_topic,
        [kafka_bootstrap],
        rate=400.0,
        asset="pump-3",
        timestamp_col="time",
        progress=True,
    )
    assert sent == 40
    got = read_topic(kafka_bootstrap, unique_topic, 40)
    assert {key for key, _ in got} == {b"pump-3"}
    assert [v["ts"] for _, v in got] == [t0 + i * 100 for i in range(40)]
    assert [v["values"]["vib"] for _, v in got] == [i * 0.5 for i in range(40)]


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (None, {}, "no such file"),
        ("asset,x\na,1\n", {}, "no timestamp column 'timestamp'"),
        ("timestamp,x\n1,1\n", {}, "no asset column 'asset'"),
        ("timestamp,asset,x\nyesterday-ish,a,1\n", {}, "column 'timestamp' row 0"),
        ("timestamp,asset,x\n1,a,1\n", {"channels": ["y"]}, r"no channel column\(s\) \['y'\]"),
        ("timestamp,asset,note\n1,a,hi\n", {}, "no numeric channel columns"),
        ("timestamp,asset,x\n1,a,1\n", {"rate": 0.0}, "rate must be positive"),
    ],
)
def test_bad_input_is_refused_with_a_named_error(
    tmp_path: Path, content: str | None, kwargs: dict[str, Any], message: str
) -> None:
    path = tmp_path / "in.csv"
    if content is not None:
        path.write_text(content)
    options: dict[str, Any] = {"rate": None, "progress": False} | kwargs
    with pytest.raises(ReplayError, match=message):
        # Nothing listens on this port: the input is checked before connecting.
        replay_file(path, "unused", "127.0.0.1:1", **options)


def test_unreachable_broker_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("timestamp,asset,x\n1,a,1\n")
    with pytest.raises(ReplayError) as info:
        replay_file(path, "t", "127.0.0.1:1", rate=None, progress=False, connect_timeout_s=1.0)
    assert "\n" not in str(info.value)
    assert "Kafka at 127.0.0.1:1 unreachable for 1 s (replay)" in str(info.value)
