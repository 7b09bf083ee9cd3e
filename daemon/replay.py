"""Replay a CSV or Parquet file into Kafka as wide messages keyed by asset.

Each row becomes `{"asset": ..., "ts": <epoch ms>, "values": {channel: value}}`; missing
values (NaN) are left out of `values`. Numeric timestamps are epoch milliseconds, as in the
daemon's message format; strings are parsed as dates (RFC 3339 and the like, UTC if naive).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kafka import KafkaProducer
from kafka.errors import KafkaError
from tqdm import tqdm

from daemon.source import KafkaUnavailable, Reachability, connect

log = logging.getLogger(__name__)


class ReplayError(ValueError):
    """The file cannot be replayed (the message names the file and the reason)."""


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ReplayError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ReplayError(f"{path}: cannot be read as a table: {exc}") from exc


def _epoch_ms(column: pd.Series, path: Path, name: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column):
        ms = pd.to_numeric(column, errors="coerce")
        bad = ~np.isfinite(ms.to_numpy(dtype=float))
    else:
        parsed = pd.to_datetime(column, utc=True, errors="coerce", format="mixed")
        bad = parsed.isna().to_numpy()
        ms = pd.Series(parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64) // 1_000_000)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ReplayError(
            f"{path}: column {name!r} row {row}: unparseable timestamp {column.iloc[row]!r}"
        )
    return ms.to_numpy(dtype=np.int64)


def replay_file(
    path: Path | str,
    topic: str,
    bootstrap: str | Sequence[str],
    *,
    rate: float | None,
    asset_col: str = "asset",
    timestamp_col: str = "timestamp",
    asset: str | None = None,
    channels: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    progress: bool = True,
    connect_timeout_s: float = 30.0,
    send_timeout_s: float = 30.0,
    **producer_options: Any,
) -> int:
    """Send every row of `path` to `topic`; `rate` messages/s, or as fast as possible if None.

    `asset` names the asset of a file without an asset column. `channels` picks the value
    columns (default: every numeric column but the asset, timestamp and `exclude` ones).
    Returns the number of messages sent, all acknowledged by the broker. An unreachable broker
    (for `connect_timeout_s` at the start, or `send_timeout_s` later) is a ReplayError.
    """
    path = Path(path)
    if rate is not None and not rate > 0:
        raise ReplayError(f"rate must be positive, got {rate}")
    frame = _read_table(path)
    if timestamp_col not in frame.columns:
        raise ReplayError(f"{path}: no timestamp column {timestamp_col!r}")
    if asset is None and asset_col not in frame.columns:
        raise ReplayError(f"{path}: no asset column {asset_col!r} (pass asset= for one asset)")
    if channels is None:
        skip = {timestamp_col, asset_col, *exclude}
        channels = [
            c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])
        ]
    else:
        missing = [c for c in channels if c not in frame.columns]
        if missing:
            raise ReplayError(f"{path}: no channel column(s) {missing}")
        not_numeric = [c for c in channels if not pd.api.types.is_numeric_dtype(frame[c])]
        if not_numeric:
            raise ReplayError(f"{path}: channel column(s) {not_numeric} are not numeric")
    if not channels:
        raise ReplayError(f"{path}: no numeric channel columns")

    timestamps = _epoch_ms(frame[timestamp_col], path, timestamp_col)
    assets = [asset] * len(frame) if asset is not None else frame[asset_col].astype(str).tolist()
    values = frame[list(channels)].to_numpy(dtype=np.float64)
    names = [str(c) for c in channels]

    failures: list[BaseException] = []
    lock = threading.Lock()

    def failed(exc: BaseException) -> None:
        with lock:
            failures.append(exc)

    if isinstance(bootstrap, str):
        bootstrap = [bootstrap]
    options = {
        "bootstrap_servers": list(bootstrap),
        "acks": "all",
        "linger_ms": 20,
        "client_id": "seqae-replay",
        "max_block_ms": int(send_timeout_s * 1000),
    } | producer_options
    try:
        producer = connect(
            KafkaProducer,
            options,
            timeout_s=connect_timeout_s,
            what="replay",
            reachability=Reachability(),
        )
    except KafkaUnavailable as exc:
        raise ReplayError(str(exc)) from None
    sent = 0
    start = time.monotonic()
    try:
        with tqdm(total=len(frame), unit="msg", disable=not progress, desc=path.name) as bar:
            for i in range(len(frame)):
                row = values[i]
                reading = {n: float(v) for n, v in zip(names, row, strict=True) if math.isfinite(v)}
                message = {"asset": assets[i], "ts": int(timestamps[i]), "values": reading}
                body = json.dumps(message, separators=(",", ":")).encode("utf-8")
                producer.send(topic, key=assets[i].encode("utf-8"), value=body).add_errback(failed)
                sent += 1
                bar.update(1)
                if rate is not None:
                    ahead = start + sent / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
            producer.flush(timeout=send_timeout_s)
    except KafkaError as exc:
        raise ReplayError(
            f"{path}: Kafka stopped taking messages after {sent} of {len(frame)}: {exc}"
        ) from None
    finally:
        producer.close(timeout=5)
    if failures:
        raise ReplayError(f"{path}: {len(failures)} of {sent} messages failed: {failures[0]!r}")
    log.info("replayed %d messages from %s to %s", sent, path, topic)
    return sent
