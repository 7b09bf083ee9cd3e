"""`seqae retrain`: recent normal history in, a compared (and maybe promoted) candidate out.

1. read the profile's recent history (files, a Kafka replay, or a raw-readings measurement);
2. drop the spans that had alerts (`seqae_alert`, open -> closed) plus a margin, and check that
   what is left can train a candidate and hold out enough recent data to judge it;
3. train a candidate with the served model's geometry on the older part of the history;
4. run both models, each with its default baseline, on the newest part (which neither trained
   on) through the daemon's alert rule: false alert episodes per day on the normal data, and
   recall of faults injected into it (`daemon.retrain_gate`);
5. promote the candidate only if it alerts no more often and catches no fewer faults.

The raw-readings measurement is not written by the daemon: it comes from the plant historian
(or Telegraf consuming the same Kafka topics), with tag `asset` and one field per channel.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import urllib3
from tqdm.auto import tqdm

from daemon.codec import DecodeError, MessageDecoder, parse_timestamp
from daemon.retrain_gate import (
    FAULT_SEED,
    GateData,
    GateFigures,
    Geometry,
    evaluate,
    fault_starts,
    gate_data,
    min_gate_rows,
    verdict,
)
from daemon.settings import DaemonSettings, InfluxSettings
from seqae.artifacts import LoadedProfile
from seqae.calibrate import MIN_CALIBRATION_WINDOWS, ThresholdPolicy
from seqae.data import DataError, Series, frame_to_series
from seqae.score import Scorer
from seqae.train import FittedProfile, TrainConfig, fit_profile

REPORT_JSON = "retrain_report.json"
REPORT_PNG = "retrain_scores.png"
SECONDS_PER_DAY = 86400.0


class RetrainError(Exception):
    """Retraining cannot go on; the message names the source or field and the reason."""


@dataclass(frozen=True)
class Span:
    """A closed time interval [start_ns, end_ns] of one asset."""

    asset: str
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class AlertEventRow:
    asset: str
    time_ns: int
    state: str


# -- history sources -----------------------------------------------------------------------


def parse_duration(text: str, what: str) -> float:
    """'90s', '10m', '24h', '7d' or a plain number of seconds -> seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": SECONDS_PER_DAY}
    raw = text.strip().lower()
    try:
        value = float(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else float(raw)
    except ValueError:
        raise RetrainError(f"{what}: {text!r} is not a duration like 90s, 10m, 24h or 7d") from None
    if not math.isfinite(value) or value < 0:
        raise RetrainError(f"{what}: {text!r} must be a non-negative duration")
    return value


def parse_since(text: str, now_ns: int) -> int:
    """RFC 3339, epoch milliseconds, or a duration back from now ('7d') -> epoch ns."""
    raw = text.strip()
    if raw and raw[-1].lower() in "smhd" and raw[:-1].replace(".", "", 1).isdigit():
        return now_ns - int(parse_duration(raw, "--since") * 1e9)
    try:
        return parse_timestamp(raw, "--since")
    except DecodeError as exc:
        raise RetrainError(
            f"--since: {exc.detail}; give RFC 3339, epoch milliseconds or a duration like 7d"
        ) from None


def series_from_rows(
    rows: dict[str, dict[int, dict[str, float]]], channels: Sequence[str]
) -> list[Series]:
    """Per asset {ts_ns: {channel: value}} -> Series in time order, NaN where a channel is absent."""
    out = []
    for asset in sorted(rows):
        by_ts = rows[asset]
        stamps = np.array(sorted(by_ts), dtype=np.int64)
        values = np.full((len(stamps), len(channels)), np.nan, np.float32)
        index = {c: i for i, c in enumerate(channels)}
        for r, ts in enumerate(stamps):
            for name, value in by_ts[int(ts)].items():
                if name in index:
                    values[r, index[name]] = value
        out.append(Series(stamps, values, list(channels), None, asset))
    return out


def asset_tables(paths: Sequence[Path]) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(where, asset, table) of CSV/Parquet files: one asset per file, named by the file (and
    its folder when two files share a name), or one per value of an `asset` column."""
    from seqae.data import _read_table

    stems = [Path(p).stem for p in paths]
    unique = len(set(stems)) == len(stems)
    for path in map(Path, paths):
        frame = _read_table(path, None)
        asset_col = next((c for c in frame.columns if str(c).lower() == "asset"), None)
        if asset_col is None:
            yield str(path), path.stem if unique else f"{path.parent.name}-{path.stem}", frame
            continue
        for asset, part in frame.groupby(asset_col, sort=True):
            table = part.drop(columns=[asset_col]).reset_index(drop=True)
            yield f"{path} (asset {asset})", str(asset), table


def history_from_files(paths: Sequence[Path], channels: Sequence[str]) -> list[Series]:
    """CSV/Parquet files (see `asset_tables`) as series of these channels."""
    return [
        frame_to_series(table, where=where, channels=channels, asset=asset)
        for where, asset, table in asset_tables(paths)
    ]


@dataclass
class KafkaReadStats:
    messages: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # decode reason -> count


def history_from_kafka(
    settings: DaemonSettings,
    profile: str,
    channels: Sequence[str],
    since_ns: int,
    *,
    progress: bool = True,
    stall_timeout_s: float = 30.0,
) -> tuple[list[Series], KafkaReadStats]:
    """Replay the daemon's input topics from `since` (Kafka record time) up to the end offsets
    seen at start, with no consumer group: nothing is committed, the daemon's group is untouched."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from daemon.source import kafka_client_options

    def channels_for(asset: str) -> Sequence[str] | None:
        return channels if settings.profiles.profile_for(asset) == profile else None

    decoder = MessageDecoder(settings.input, channels_for)
    options = kafka_client_options(settings.kafka) | {"client_id": "seqae-retrain"}
    stats = KafkaReadStats()
    rows: dict[str, dict[int, dict[str, float]]] = {}
    try:
        consumer = KafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    except KafkaError as exc:
        raise RetrainError(f"kafka {settings.kafka.bootstrap_servers}: {exc}") from exc
    try:
        partitions = []
        for topic in settings.kafka.topics:
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                raise RetrainError(f"kafka topic {topic!r}: not found (kafka.topics)")
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        end = consumer.end_offsets(partitions)
        starts = consumer.offsets_for_times({tp: since_ns // 1_000_000 for tp in partitions})
        todo: dict[Any, int] = {}
        for tp in partitions:
            found = starts.get(tp)
            if found is not None and found.offset < end[tp]:
                consumer.seek(tp, found.offset)
                todo[tp] = end[tp]
        total = sum(end[tp] - consumer.position(tp) for tp in todo)
        bar = tqdm(total=total, desc="kafka", unit="msg", disable=not progress)
        last_progress = time.monotonic()
        while todo:
            batch = consumer.poll(timeout_ms=500, max_records=5000)
            if not batch:
                if time.monotonic() - last_progress > stall_timeout_s:
                    raise RetrainError(
                        f"kafka: no messages for {stall_timeout_s:.0f}s with "
                        f"{sum(todo[tp] - consumer.position(tp) for tp in todo)} still to read"
                    )
                continue
            last_progress = time.monotonic()
            for tp, records in batch.items():
                stop = todo.get(tp)
                for record in records:
                    if stop is None or record.offset >= stop:
                        continue
                    stats.messages += 1
                    bar.update(1)
                    try:
                        reading = decoder.decode(record.value)
                    except DecodeError as exc:
                        stats.skipped[exc.reason] = stats.skipped.get(exc.reason, 0) + 1
                        continue
                    rows.setdefault(reading.asset, {}).setdefault(reading.ts_ns, {}).update(
                        reading.values
                    )
                if stop is not None and consumer.position(tp) >= stop:
                    del todo[tp]
                    consumer.pause(tp)
        bar.close()
    except KafkaError as exc:
        raise RetrainError(f"kafka {settings.kafka.bootstrap_servers}: {exc}") from exc
    finally:
        consumer.close()
    return series_from_rows(rows, channels), stats


class InfluxReader:
    """Read-only queries: InfluxQL on the v1 `/query` API, Flux on the v2 API."""

    def __init__(self, settings: InfluxSettings) -> None:
        self.s = settings

    def influxql(self, query: str) -> list[dict[str, Any]]:
        """The first statement's series: [{"tags": {...}, "columns": [...], "values": [...]}]."""
        headers = {}
        if self.s.username is not None:
            password = self.s.password.get_secret_value() if self.s.password else ""
            pair = f"{self.s.username}:{password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        http = urllib3.PoolManager(timeout=urllib3.Timeout(total=self.s.timeout_s), retries=False)
        try:
            resp = http.request(
                "POST",
                f"{self.s.url}/query",
                fields={"db": self.s.database, "q": query, "epoch": "ns"},
                headers=headers,
                encode_multipart=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise RetrainError(f"influx {self.s.url}: unreachable ({exc})") from exc
        finally:
            http.clear()
        if resp.status != 200:
            raise RetrainError(
                f"influx {self.s.url}: query answered {resp.status}: {resp.data[:200]!r}"
            )
        results = json.loads(resp.data).get("results", [{}])
        if "error" in results[0]:
            raise RetrainError(f"influx {self.s.url}: query failed: {results[0]['error']}")
        return list(results[0].get("series", []))

    def flux(self, query: str) -> pd.DataFrame:
        from influxdb_client import InfluxDBClient

        token = self.s.token.get_secret_value() if self.s.token else ""
        try:
            with InfluxDBClient(
                url=self.s.url, token=token, org=self.s.org, timeout=int(self.s.timeout_s * 1000)
            ) as client:
                frames = client.query_api().query_data_frame(query, org=self.s.org)
        except Exception as exc:  # influxdb-client raises ApiException and urllib3 errors alike
            raise RetrainError(f"influx {self.s.url}: flux query failed ({exc})") from exc
        if isinstance(frames, list):
            return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return frames


def _quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def history_from_influx(
    settings: DaemonSettings,
    profile: str,
    channels: Sequence[str],
    measurement: str,
    since_ns: int,
) -> list[Series]:
    """A raw-readings measurement (tag `asset`, one field per channel) since `since_ns`."""
    reader = InfluxReader(settings.influx)
    rows: dict[str, dict[int, dict[str, float]]] = {}
    if settings.influx.api == "v1":
        fields = ", ".join(_quote_ident(c) for c in channels)
        q = (
            f"SELECT {fields} FROM {_quote_ident(measurement)} WHERE time >= {since_ns} "
            'GROUP BY "asset"'
        )
        for s in reader.influxql(q):
            asset = s.get("tags", {}).get("asset", "")
            if settings.profiles.profile_for(asset) != profile:
                continue
            cols = s["columns"]
            for row in s["values"]:
                values = {
                    c: float(v) for c, v in zip(cols[1:], row[1:], strict=True) if v is not None
                }
                rows.setdefault(asset, {})[int(row[0])] = values
    else:
        start = datetime.fromtimestamp(since_ns / 1e9, UTC).isoformat()
        q = (
            f'from(bucket: "{settings.influx.bucket}") |> range(start: {start}) '
            f'|> filter(fn: (r) => r._measurement == "{measurement}") '
            '|> pivot(rowKey: ["_time", "asset"], columnKey: ["_field"], valueColumn: "_value")'
        )
        frame = reader.flux(q)
        if not frame.empty:
            for asset, part in frame.groupby("asset"):
                if settings.profiles.profile_for(str(asset)) != profile:
                    continue
                stamps = pd.to_datetime(part["_time"], utc=True).astype("int64")
                for ts, (_, rec) in zip(stamps, part.iterrows(), strict=True):
                    values = {c: float(rec[c]) for c in channels if c in rec and pd.notna(rec[c])}
                    rows.setdefault(str(asset), {})[int(ts)] = values
    return series_from_rows(rows, channels)


# -- alert spans ---------------------------------------------------------------------------


def read_alert_events(
    settings: DaemonSettings, profile: str, start_ns: int, end_ns: int
) -> list[AlertEventRow]:
    """`seqae_alert` events of the profile between start_ns and end_ns."""
    reader = InfluxReader(settings.influx)
    events = []
    if settings.influx.api == "v1":
        q = (
            f'SELECT "state" FROM "seqae_alert" WHERE "profile" = {_quote_str(profile)} '
            f'AND time >= {start_ns} AND time <= {end_ns} GROUP BY "asset"'
        )
        for s in reader.influxql(q):
            asset = s.get("tags", {}).get("asset", "")
            events += [AlertEventRow(asset, int(t), str(state)) for t, state in s["values"]]
    else:
        start = datetime.fromtimestamp(start_ns / 1e9, UTC).isoformat()
        stop = datetime.fromtimestamp(end_ns / 1e9 + 1, UTC).isoformat()
        q = (
            f'from(bucket: "{settings.influx.bucket}") |> range(start: {start}, stop: {stop}) '
            '|> filter(fn: (r) => r._measurement == "seqae_alert" and r._field == "state" '
            f'and r.profile == "{profile}")'
        )
        frame = reader.flux(q)
        if not frame.empty:
            stamps = pd.to_datetime(frame["_time"], utc=True).astype("int64")
            events = [
                AlertEventRow(str(a), int(t), str(v))
                for a, t, v in zip(frame["asset"], stamps, frame["_value"], strict=True)
            ]
    return sorted(events, key=lambda e: (e.asset, e.time_ns))


def alert_spans(events: Iterable[AlertEventRow], now_ns: int) -> list[Span]:
    """Pair open -> closed per asset; an alert still open lasts until now. An update or close
    without a preceding open (its open lies before the query range) starts at that event."""
    spans: list[Span] = []
    open_since: dict[str, int] = {}
    for e in sorted(events, key=lambda e: (e.asset, e.time_ns)):
        if e.state in ("open", "update"):
            open_since.setdefault(e.asset, e.time_ns)
        elif e.state == "closed":
            spans.append(Span(e.asset, open_since.pop(e.asset, e.time_ns), e.time_ns))
    spans += [Span(a, t, now_ns) for a, t in open_since.items()]
    return sorted(spans, key=lambda s: (s.asset, s.start_ns))


@dataclass
class Exclusion:
    kept: list[Series]
    spans: int
    rows_before: int
    rows_dropped: int


def exclude_spans(
    series: Sequence[Series], spans: Sequence[Span], margin_ns: int, *, min_rows: int = 1
) -> Exclusion:
    """Drop each asset's rows within an alert span ± margin, and rows labelled anomalous (with
    the same margin); what remains is split into contiguous pieces of at least `min_rows` rows,
    so that no window straddles a removed span."""
    kept: list[Series] = []
    before = dropped = 0
    for s in series:
        before += len(s)
        drop = np.zeros(len(s), dtype=bool)
        for sp in spans:
            if sp.asset != s.asset:
                continue
            lo = np.searchsorted(s.timestamps, sp.start_ns - margin_ns, side="left")
            hi = np.searchsorted(s.timestamps, sp.end_ns + margin_ns, side="right")
            drop[lo:hi] = True
        if s.labels is not None and s.labels.any():
            labelled = s.timestamps[s.labels > 0]
            # distance from each row to the nearest labelled row
            i = np.clip(np.searchsorted(labelled, s.timestamps), 1, len(labelled) - 1)
            if len(labelled) == 1:
                near = np.abs(s.timestamps - labelled[0])
            else:
                near = np.minimum(
                    np.abs(s.timestamps - labelled[i - 1]), np.abs(s.timestamps - labelled[i])
                )
            drop |= near <= margin_ns
        dropped += int(drop.sum())
        clean = replace(s, labels=None)
        edges = np.flatnonzero(np.diff(np.concatenate([[1], drop.astype(np.int8), [1]])))
        for a, b in zip(edges[::2], edges[1::2], strict=True):  # runs of kept rows
            if b - a >= min_rows:
                kept.append(clean.slice(int(a), int(b)))
            else:
                dropped += int(b - a)
    n_spans = sum(1 for sp in spans if any(sp.asset == s.asset for s in series))
    return Exclusion(kept, n_spans, before, dropped)


# -- split, train, compare -----------------------------------------------------------------


def split_recent(
    series: Sequence[Series], holdout_fraction: float
) -> tuple[list[Series], list[Series], int]:
    """(older parts, newest parts, cutoff ns): one cutoff time for every asset, so the held-out
    data is the most recent stretch of the whole history."""
    if not 0.0 < holdout_fraction < 1.0:
        raise RetrainError(f"--holdout must be between 0 and 1, got {holdout_fraction}")
    if not series:
        return [], [], 0
    start = min(int(s.timestamps[0]) for s in series)
    end = max(int(s.timestamps[-1]) for s in series)
    cutoff = start + int((end - start) * (1.0 - holdout_fraction))
    older, newer = [], []
    for s in series:
        i = int(np.searchsorted(s.timestamps, cutoff, side="left"))
        if i > 0:
            older.append(s.slice(0, i))
        if i < len(s):
            newer.append(s.slice(i))
    return older, newer, cutoff


def model_recipe(served: LoadedProfile) -> dict[str, Any]:
    """The served model's architecture without the geometry fit_profile sets itself."""
    return {k: v for k, v in served.meta.config.items() if k not in ("n_channels", "window")}


def threshold_policy(served: LoadedProfile) -> ThresholdPolicy:
    info = served.baseline.info
    defaults = ThresholdPolicy()
    return ThresholdPolicy(
        method=info.get("threshold_method", defaults.method),
        quantile=float(info.get("quantile", defaults.quantile)),
        pot_risk=float(info.get("pot_risk", defaults.pot_risk)),
    )


def grid_rows(s: Series, period_s: float) -> int:
    """Rows of `s` on the model's sampling grid (what `regularize` makes of it)."""
    period_ns = round(period_s * 1e9)
    return int(s.timestamps[-1] // period_ns - s.timestamps[0] // period_ns) + 1


@dataclass(frozen=True)
class PieceWindows:
    """The windows `seqae.train.prepare` makes of one piece: training, validation (early
    stopping), and the calibration windows for the error statistics and for the threshold."""

    train: int
    val: int
    calib: int
    stats: int
    threshold: int

    @property
    def usable(self) -> bool:  # prepare needs a whole window in each part
        return self.train > 0 and self.val > 0 and self.calib > 0


def piece_windows(rows: int, window: int, hop: int) -> PieceWindows:
    cfg = TrainConfig()
    n_fit = int(rows * (1.0 - cfg.calib_fraction))
    n_train = int(n_fit * (1.0 - cfg.val_fraction))

    def count(n: int) -> int:
        return (n - window) // hop + 1 if n >= window else 0

    calib = count(rows - n_fit)
    gap = -(-window // hop) - 1
    half = (calib - gap) // 2
    return PieceWindows(
        train=count(n_train),
        val=count(n_fit - n_train),
        calib=calib,
        stats=len(range(calib)[:half]),
        threshold=len(range(calib)[half + gap :]),
    )


CALIBRATION_PART_WINDOWS = MIN_CALIBRATION_WINDOWS // 2  # fit_baseline's least per part


def min_train_rows(window: int, hop: int) -> int:
    """The fewest contiguous grid rows one piece needs to train and calibrate a candidate alone."""
    rows = window
    while True:
        w = piece_windows(rows, window, hop)
        if w.usable and min(w.stats, w.threshold) >= CALIBRATION_PART_WINDOWS:
            return rows
        rows += 1


def usable_pieces(older: Sequence[Series], window: int, hop: int, period_s: float) -> list[Series]:
    return [s for s in older if piece_windows(grid_rows(s, period_s), window, hop).usable]


def check_trainable(
    older: Sequence[Series], meta: Any, exclusion: Exclusion, opts: RetrainOptions
) -> None:
    """Fail before training, saying what is left, what is needed and which option to change."""
    usable = usable_pieces(older, meta.window, meta.hop, meta.period_s)
    counts = [piece_windows(grid_rows(s, meta.period_s), meta.window, meta.hop) for s in usable]
    stats, threshold = sum(c.stats for c in counts), sum(c.threshold for c in counts)
    if counts and min(stats, threshold) >= CALIBRATION_PART_WINDOWS:
        return
    kept = exclusion.rows_before - exclusion.rows_dropped
    longest = max((len(s) for s in exclusion.kept), default=0)
    left = f"the history holds {exclusion.rows_before} rows"
    if exclusion.rows_dropped:
        what = (
            "labelled rows"
            if opts.ignore_alerts
            else f"{exclusion.spans} alert spans (and any labelled rows)"
        )
        left = f"excluding {what} ± {opts.margin_s:g}s left {kept} of {exclusion.rows_before} rows"
    raise RetrainError(
        f"too little history to train a candidate: {left} in {len(exclusion.kept)} pieces "
        f"(the longest {longest} rows); their older {100 * (1 - opts.holdout):g}% gives "
        f"{len(usable)} pieces long enough to train on, with {stats} + {threshold} calibration "
        f"windows where {CALIBRATION_PART_WINDOWS} + {CALIBRATION_PART_WINDOWS} are needed "
        f"(one piece of {min_train_rows(meta.window, meta.hop)} contiguous rows at "
        f"{meta.period_s:g}s holds them; window {meta.window}, hop {meta.hop}). "
        + more_history_hint(opts, excluded=exclusion.rows_dropped > 0)
    )


def check_held_out(
    newer: Sequence[Series], meta: Any, exclusion: Exclusion, opts: RetrainOptions
) -> None:
    """The gate needs one held-out piece with room for a fault; fail before training if not."""
    g = Geometry(meta.window, meta.hop, meta.period_s)
    rows = [grid_rows(s, meta.period_s) for s in newer]
    if any(fault_starts(r, g) for r in rows):
        return
    hint = more_history_hint(opts, excluded=exclusion.rows_dropped > 0)
    raise RetrainError(
        f"too little held-out history for the gate: the newest {100 * opts.holdout:g}% "
        f"(--holdout {opts.holdout:g}) holds {sum(rows)} rows in {len(rows)} pieces (the "
        f"longest {max(rows, default=0)}); the gate needs one piece of {min_gate_rows(g)} "
        f"contiguous rows at {meta.period_s:g}s (a window of lead-in, a fault of {g.span} rows "
        f"and a window after it). Raise --holdout, or {hint[0].lower()}{hint[1:]}"
    )


def more_history_hint(opts: RetrainOptions, *, excluded: bool) -> str:
    """Which options give more rows, as a sentence."""
    options = [
        "give more or longer files"
        if opts.source == "files"
        else f"read a longer history (--since, now {opts.since})"
    ]
    if excluded:
        options.append(f"leave less around each excluded span (--margin, now {opts.margin_s:g}s)")
    if excluded and not opts.ignore_alerts:
        options.append("keep the alert spans in training (--ignore-alerts)")
    text = options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]
    return text[0].upper() + text[1:] + "."


def train_candidate(
    older: Sequence[Series],
    served: LoadedProfile,
    *,
    epochs: int,
    seed: int,
    device: str,
    max_fill: int,
    progress: bool = True,
) -> FittedProfile:
    """Fit a candidate with the served model's channels, window, hop, period, kind and
    architecture on the older part of the history (pieces too short to train on are left out;
    `check_trainable` has made sure enough remain)."""
    m = served.meta
    usable = usable_pieces(older, m.window, m.hop, m.period_s)
    if not usable:
        raise RetrainError(
            f"no history piece is long enough to train on (need {min_train_rows(m.window, m.hop)} "
            f"rows of period {m.period_s}s per asset piece; got {[len(s) for s in older]})"
        )
    try:
        return fit_profile(
            usable,
            profile=m.profile,
            window=m.window,
            hop=m.hop,
            period_s=m.period_s,
            kind=m.kind,  # type: ignore[arg-type]
            model_cfg=model_recipe(served),
            train_cfg=TrainConfig(epochs=epochs, seed=seed, device=device, max_fill=max_fill),
            score_kind=served.baseline.score_kind,
            policy=threshold_policy(served),
            progress=progress,
        )
    except (DataError, ValueError) as exc:
        raise RetrainError(f"training the candidate failed: {exc}") from exc


@dataclass
class ScoreSummary:
    """How one model's scores of the held-out windows are distributed."""

    version: str
    windows: int
    threshold: float
    p50: float
    p90: float
    p99: float
    max: float
    exceedance: float  # share of windows above the threshold
    alarmed_windows_per_day: float  # exceedance x windows per day: windows, not alert episodes
    degenerate: bool  # no spread, or non-finite scores: not a usable model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_scores(
    version: str, scores: np.ndarray, threshold: float, period_s: float, hop: int
) -> ScoreSummary:
    finite = scores[np.isfinite(scores)]
    degenerate = len(finite) < len(scores) or len(finite) == 0 or float(np.ptp(finite)) <= 0.0
    if len(finite) == 0:
        finite = np.zeros(1)
    exceed = float((scores > threshold).mean()) if len(scores) else 0.0
    windows_per_day = SECONDS_PER_DAY / (period_s * hop)
    q50, q90, q99 = (float(v) for v in np.quantile(finite, [0.5, 0.9, 0.99]))
    return ScoreSummary(
        version=version,
        windows=len(scores),
        threshold=float(threshold),
        p50=q50,
        p90=q90,
        p99=q99,
        max=float(finite.max()),
        exceedance=exceed,
        alarmed_windows_per_day=exceed * windows_per_day,
        degenerate=degenerate,
    )


@dataclass
class Evaluation:
    """One model on the held-out data: its score distribution and its gate figures."""

    scores: ScoreSummary
    gate: GateFigures


def evaluate_model(
    version: str,
    detector: Any,
    baseline: Any,
    data: GateData,
    settings: DaemonSettings,
    channels: Sequence[str],
    device: str,
) -> Evaluation:
    scorer = Scorer(detector, device=device)
    gate = evaluate(version, scorer, baseline, data, settings.alerts, channels)
    g = data.geometry
    return Evaluation(
        summarize_scores(version, gate.scores, baseline.threshold, g.period_s, g.hop), gate
    )


# -- decision and report -------------------------------------------------------------------

Outcome = Literal["promoted", "rejected", "dry_run"]


@dataclass
class Decision:
    outcome: Outcome
    reason: str
    forced: bool = False

    @property
    def promote(self) -> bool:
        return self.outcome == "promoted"


def decide(served: Evaluation, candidate: Evaluation, *, force: bool, dry_run: bool) -> Decision:
    """Promote when the candidate's scores are not degenerate, it opens no more false alerts per
    day on the held-out normal data than the served model (+ the largest of 0.5/day, 10 % and
    one episode over the held-out days) and catches no fewer injected faults (- 0.05); `force`
    overrides, `dry_run` only reports."""
    if candidate.scores.degenerate:
        passes, reason = False, "candidate scores are degenerate (no spread or non-finite)"
    else:
        passes, reason = verdict(served.gate, candidate.gate)
    if dry_run:
        would = "would promote" if passes or force else "would not promote"
        return Decision("dry_run", f"dry run: {would} ({reason})", forced=force and not passes)
    if passes:
        return Decision("promoted", reason)
    if force:
        return Decision("promoted", f"forced: {reason}", forced=True)
    return Decision("rejected", reason)


def gate_rule(settings: DaemonSettings) -> dict[str, Any]:
    """What the gate measured with, for the report."""
    from daemon import retrain_gate as rg
    from seqae.inject import DEFAULT_SIZES

    return {
        "false_alerts": "alert episodes (open events) per day on the held-out normal windows",
        "recall": "share of injected faults for which an alert opens at a window overlapping "
        "the fault's span, and none opens there on the same data without the fault",
        "false_alert_slack": {
            "per_day": rg.FALSE_ALERT_SLACK_PER_DAY,
            "share_of_served": rg.FALSE_ALERT_SLACK_SHARE,
            "episodes_over_held_out": 1,
        },
        "recall_slack": rg.RECALL_SLACK,
        "alerts": settings.alerts.model_dump(),
        "faults": {
            "sizes_in_robust_spreads": {k: list(v) for k, v in DEFAULT_SIZES.items()},
            "repeats": rg.FAULT_REPEATS,
            "span_windows": rg.FAULT_SPAN_WINDOWS,
            "seed": FAULT_SEED,
        },
    }


@dataclass
class RetrainReport:
    profile: str
    served_version: str
    candidate_version: str
    created_at: str
    source: dict[str, Any]
    history: dict[str, Any]
    served: Evaluation
    candidate: Evaluation
    decision: Decision
    training: dict[str, Any] = field(default_factory=dict)
    rule: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "served_version": self.served_version,
            "candidate_version": self.candidate_version,
            "created_at": self.created_at,
            "source": self.source,
            "history": self.history,
            "held_out": {
                "served": self.served.scores.to_dict(),
                "candidate": self.candidate.scores.to_dict(),
            },
            "gate": {
                "rule": self.rule,
                "served": self.served.gate.to_dict(),
                "candidate": self.candidate.gate.to_dict(),
            },
            "decision": {
                "outcome": self.decision.outcome,
                "promoted": self.decision.promote,
                "forced": self.decision.forced,
                "reason": self.decision.reason,
            },
            "training": self.training,
        }

    def table(self) -> str:
        """The comparison as a fixed-width table, with the decision underneath."""
        s, c = self.served, self.candidate
        sg, cg = s.gate, c.gate

        def row(name: str, fmt: str, a: Any, b: Any) -> tuple[str, str, str]:
            return name, format(a, fmt), format(b, fmt)

        rows = [
            ("version", s.scores.version, c.scores.version),
            row("held-out windows", "d", s.scores.windows, c.scores.windows),
            row("held-out days", ".3g", sg.days, cg.days),
            row("threshold", ".4g", s.scores.threshold, c.scores.threshold),
            row("score p50", ".4g", s.scores.p50, c.scores.p50),
            row("score p99", ".4g", s.scores.p99, c.scores.p99),
            row("above threshold %", ".2f", 100 * s.scores.exceedance, 100 * c.scores.exceedance),
            row("alarmed windows/day", ".1f", s.scores.alarmed_windows_per_day,
                c.scores.alarmed_windows_per_day),
            row("alert episodes", "d", sg.alert_episodes, cg.alert_episodes),
            row("false alerts/day", ".1f", sg.false_alerts_per_day, cg.false_alerts_per_day),
            (f"injected recall ({sg.injected})", f"{sg.recall:.2f}", f"{cg.recall:.2f}"),
        ]  # fmt: skip
        rows += [
            row(f"  {kind}", ".2f", sg.recall_by_kind[kind], cg.recall_by_kind[kind])
            for kind in sg.recall_by_kind
        ]
        if sg.labelled_spans:
            rows.append(
                row(f"labelled recall ({sg.labelled_spans})", ".2f", sg.labelled_recall,
                    cg.labelled_recall)
            )  # fmt: skip
        width = max(len(r[0]) for r in rows)
        lines = [f"{'':{width}}  {'served':>12}  {'candidate':>12}"]
        lines += [f"{a:{width}}  {b:>12}  {c:>12}" for a, b, c in rows]
        h = self.history
        lines.append(
            f"history: {h.get('assets', 0)} assets, {h.get('rows', 0)} rows, "
            f"{h.get('alert_spans', 0)} alert spans -> {h.get('rows_excluded', 0)} rows excluded"
        )
        lines.append(f"decision: {self.decision.outcome} ({self.decision.reason})")
        return "\n".join(lines)


def save_report(report: RetrainReport, folder: Path) -> tuple[Path, Path]:
    """Write retrain_report.json and a PNG: both held-out score distributions, and the recall
    of each fault kind for both models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / REPORT_JSON
    json_path.write_text(json.dumps(report.to_dict(), indent=2))
    png_path = folder / REPORT_PNG
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    models = ((report.served, "tab:red"), (report.candidate, "tab:blue"))
    finite = [e.gate.scores[np.isfinite(e.gate.scores) & (e.gate.scores > 0)] for e, _ in models]
    thresholds = [e.scores.threshold for e, _ in models]
    both = np.concatenate([*finite, thresholds])
    both = both[both > 0]
    log_scale = len(both) > 1 and both.min() < both.max()
    hist_bins: Any = np.geomspace(both.min(), both.max(), 60) if log_scale else 30
    for (e, color), scores in zip(models, finite, strict=True):
        ax.hist(scores, bins=hist_bins, alpha=0.5, color=color, label=e.scores.version)
        ax.axvline(e.scores.threshold, color=color, linestyle="--")
    if log_scale:
        ax.set_xscale("log")
    ax.set_xlabel("held-out window score (dashed: threshold)")
    ax.set_ylabel("windows")
    ax.set_title(f"{report.profile}: served {report.served_version} vs candidate")
    ax.legend()
    kinds = list(report.served.gate.recall_by_kind)
    x = np.arange(len(kinds) + 1)
    for k, (e, color) in enumerate(models):
        values = [e.gate.recall_by_kind[kind] for kind in kinds] + [e.gate.recall]
        label = f"{e.scores.version}: {e.gate.false_alerts_per_day:.1f} false alerts/day"
        bars.bar(x + (k - 0.5) * 0.4, values, 0.4, color=color, alpha=0.7, label=label)
    bars.set_xticks(x, [*kinds, "all"])
    bars.set_ylim(0, 1.05)
    bars.set_ylabel("injected-fault recall")
    bars.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return json_path, png_path


# -- the whole run -------------------------------------------------------------------------


@dataclass
class RetrainOptions:
    profile: str
    source: Literal["files", "kafka", "influx"]
    paths: tuple[Path, ...] = ()
    measurement: str | None = None
    since: str = "7d"
    margin_s: float = 600.0
    holdout: float = 0.2
    epochs: int = 20
    seed: int = 0
    device: str = "auto"
    force: bool = False
    dry_run: bool = False
    progress: bool = True
    ignore_alerts: bool = False


def run_retrain(
    settings: DaemonSettings,
    opts: RetrainOptions,
    echo: Callable[[str], None] = print,
    now_ns: int | None = None,
) -> RetrainReport:
    """Every stage of a retraining run; returns the report (already saved and acted on)."""
    from seqae.artifacts import ArtifactError, load_profile, promote, save_model

    now_ns = now_ns if now_ns is not None else time.time_ns()
    root = settings.profiles.models_root
    try:
        served = load_profile(root, opts.profile)
    except ArtifactError as exc:
        raise RetrainError(f"served model: {exc}") from exc
    meta = served.meta
    max_fill = settings.windows.max_fill
    since_ns = parse_since(opts.since, now_ns)

    echo(f"[1/5] reading history of profile {opts.profile!r} from {opts.source}")
    source: dict[str, Any] = {"kind": opts.source}
    try:
        if opts.source == "files":
            if not opts.paths:
                raise RetrainError("--from-files needs at least one file")
            history = history_from_files(opts.paths, meta.channels)
            source["paths"] = [str(p) for p in opts.paths]
        elif opts.source == "kafka":
            history, kstats = history_from_kafka(
                settings, opts.profile, meta.channels, since_ns, progress=opts.progress
            )
            source |= {
                "since_ns": since_ns,
                "topics": settings.kafka.topics,
                "messages": kstats.messages,
                "skipped": kstats.skipped,
            }
        else:
            if not opts.measurement:
                raise RetrainError("--from-influx needs --measurement NAME")
            history = history_from_influx(
                settings, opts.profile, meta.channels, opts.measurement, since_ns
            )
            source |= {"since_ns": since_ns, "measurement": opts.measurement}
    except DataError as exc:
        raise RetrainError(str(exc)) from exc
    if not history:
        raise RetrainError(f"no history found for profile {opts.profile!r} in {opts.source}")
    rows = sum(len(s) for s in history)
    echo(f"      {len(history)} assets, {rows} rows")

    margin_ns = int(opts.margin_s * 1e9)
    if opts.ignore_alerts:
        echo("[2/5] alert spans: ignored (--ignore-alerts)")
        spans: list[Span] = []
    else:
        start = min(int(s.timestamps[0]) for s in history) - margin_ns - 7 * 86400 * 10**9
        end = max(int(s.timestamps[-1]) for s in history) + margin_ns
        events = read_alert_events(settings, opts.profile, start, end)
        spans = alert_spans(events, now_ns)
        echo(f"[2/5] excluding {len(spans)} alert spans ± {opts.margin_s:g}s")
    exclusion = exclude_spans(history, spans, margin_ns, min_rows=meta.window)
    echo(f"      {exclusion.rows_dropped} of {exclusion.rows_before} rows excluded")
    older, newer, cutoff = split_recent(exclusion.kept, opts.holdout)
    check_trainable(older, meta, exclusion, opts)
    check_held_out(newer, meta, exclusion, opts)

    echo(f"[3/5] training a candidate ({meta.kind}, window {meta.window}, hop {meta.hop})")
    fitted = train_candidate(
        older,
        served,
        epochs=opts.epochs,
        seed=opts.seed,
        device=opts.device,
        max_fill=max_fill,
        progress=opts.progress,
    )
    fitted.meta.training["retrain"] = {"from_version": served.version, **source}
    version = save_model(root, opts.profile, fitted.detector, fitted.baseline, fitted.meta, False)
    echo(f"      saved candidate {opts.profile}/{version} (not yet served)")

    geometry = Geometry(meta.window, meta.hop, meta.period_s)
    try:
        data = gate_data(newer, history, geometry, max_fill)
    except DataError as exc:
        raise RetrainError(f"held-out data: {exc}") from exc
    echo(
        f"[4/5] both models on {data.windows} held-out windows ({data.days:.3g} days), "
        f"{len(data.trials)} injected faults and {len(data.labelled)} labelled spans"
    )
    evals = [
        evaluate_model(v, d, b, data, settings, meta.channels, opts.device)
        for v, d, b in (
            (served.version, served.detector, served.baseline),
            (version, fitted.detector, fitted.baseline),
        )
    ]
    decision = decide(*evals, force=opts.force, dry_run=opts.dry_run)
    echo(f"[5/5] decision: {decision.outcome}")
    if decision.promote:
        try:
            promote(root, opts.profile, version)
        except ArtifactError as exc:
            raise RetrainError(f"promoting {version}: {exc}") from exc
    report = RetrainReport(
        profile=opts.profile,
        served_version=served.version,
        candidate_version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        source=source,
        history={
            "assets": len(history),
            "rows": rows,
            "alert_spans": exclusion.spans,
            "margin_s": opts.margin_s,
            "rows_excluded": exclusion.rows_dropped,
            "pieces": len(exclusion.kept),
            "holdout_fraction": opts.holdout,
            "cutoff_ns": cutoff,
            "train_rows": sum(len(s) for s in older),
            "held_out_rows": sum(len(s) for s in newer),
        },
        served=evals[0],
        candidate=evals[1],
        decision=decision,
        training={k: v for k, v in fitted.meta.training.items() if k != "retrain"},
        rule=gate_rule(settings),
    )
    save_report(report, root / opts.profile / version)
    return report
