"""Kafka message bytes -> Reading, for the wide and narrow JSON formats of design.md.

`MessageDecoder.decode` is the one boundary every message crosses: whatever its bytes, it
returns a Reading or raises DecodeError with a reason, never anything else. Size and nesting
depth are checked before a parser sees the bytes, and a reading's time must be plausible
(not before `input.oldest_timestamp`, not more than `input.max_clock_skew_s` ahead of the
daemon's clock), so that no single message can move an asset's window into the far future.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from daemon.settings import InputSettings

# Epoch milliseconds outside [1970, 2300) are treated as a unit mistake, not a time.
_MAX_EPOCH_MS = 10_413_792_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A decimal integer with more digits than this is beyond float range (max ~1.8e308).
_FLOAT_DIGITS = 310


@dataclass(slots=True)
class Reading:
    """Some or all channels of one asset at one instant (epoch ns). Not frozen: a frozen
    dataclass sets each field through `object.__setattr__`, 3x the cost, once per message."""

    asset: str
    ts_ns: int
    values: dict[str, float]


class DecodeError(ValueError):
    """A message that cannot become a Reading; `reason` is a short metric label."""

    REASONS = (
        "not_json",
        "too_large",
        "too_deep",
        "missing_field",
        "bad_type",
        "non_finite",
        "unknown_asset",
        "bad_timestamp",
        "unknown_channel",
        "undecodable",
    )

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_timestamp(raw: object, field: str, fmt: str = "auto") -> int:
    """RFC 3339 string or epoch milliseconds (int/float) -> epoch nanoseconds."""
    if type(raw) is int and fmt != "rfc3339" and 0 <= raw < _MAX_EPOCH_MS:  # the common case
        return raw * 1_000_000
    if isinstance(raw, bool):
        raise DecodeError("bad_timestamp", f"{field} is a boolean")
    if isinstance(raw, int | float):
        if fmt == "rfc3339":
            raise DecodeError("bad_timestamp", f"{field} must be an RFC 3339 string")
        # no float() or isfinite() of an int: an int beyond float range raises OverflowError
        if not 0 <= raw < _MAX_EPOCH_MS:  # also False for NaN
            shown = f"{raw!r}"[:40] if isinstance(raw, float) or raw.bit_length() < 128 else ""
            raise DecodeError(
                "bad_timestamp", f"{field}={shown or 'a huge integer'} is not epoch milliseconds"
            )
        if isinstance(raw, int):
            return raw * 1_000_000
        return round(raw * 1_000_000)
    if isinstance(raw, str):
        if fmt != "rfc3339" and raw.isascii() and raw.isdigit() and len(raw) <= 20:
            return parse_timestamp(int(raw), field, "epoch_ms")
        if fmt == "epoch_ms":
            raise DecodeError("bad_timestamp", f"{field} must be epoch milliseconds")
        return _rfc3339_ns(raw, field)
    raise DecodeError("bad_timestamp", f"{field} has type {type(raw).__name__}")


def _rfc3339_ns(raw: str, field: str) -> int:
    shown = repr(raw[:40])
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise DecodeError("bad_timestamp", f"{field}={shown} is not RFC 3339") from None
    if when.tzinfo is None:
        raise DecodeError("bad_timestamp", f"{field}={shown} has no UTC offset")
    try:
        seconds = (when - _EPOCH) // timedelta(seconds=1)
    except OverflowError:  # an offset that takes year 1 or 9999 out of datetime's range
        raise DecodeError("bad_timestamp", f"{field}={shown} is out of range") from None
    if seconds < 0:
        raise DecodeError("bad_timestamp", f"{field}={shown} is before 1970")
    return seconds * 1_000_000_000 + when.microsecond * 1000


def _number(raw: object, where: str, name: str = "") -> float:
    """`raw` as a finite float; `where` (+ "." + `name`) names the field in errors."""
    if type(raw) is float and math.isfinite(raw):  # the common case, without the checks below
        return raw
    if name:
        where = f"{where}.{name}"
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise DecodeError("bad_type", f"{where} is {type(raw).__name__}, expected a number")
    try:
        value = float(raw)
    except OverflowError:
        raise DecodeError("non_finite", f"{where} is an integer beyond float range") from None
    if not math.isfinite(value):
        raise DecodeError("non_finite", f"{where} is {value!r}")
    return value


@functools.lru_cache(maxsize=64)
def _channel_set(channels: tuple[str, ...]) -> frozenset[str]:
    """A profile's channels as a set, once per channel tuple."""
    return frozenset(channels)


def _string(message: dict[str, Any], field: str) -> str:
    if field not in message:
        raise DecodeError("missing_field", f"no {field!r} field")
    value = message[field]
    if not isinstance(value, str) or not value:
        raise DecodeError("bad_type", f"{field} must be a non-empty string")
    return value


def _asset_id(message: dict[str, Any], field: str, max_chars: int) -> str:
    """The asset id, refused unless it can be an InfluxDB tag and a file name as it is."""
    asset = _string(message, field)
    if len(asset) > max_chars:
        raise DecodeError(
            "bad_type", f"{field} has {len(asset)} characters (input.max_asset_chars={max_chars})"
        )
    if not asset.isprintable():  # control characters, line breaks, lone surrogates
        raise DecodeError("bad_type", f"{field}={asset[:60]!r} has unprintable characters")
    if asset.endswith("\\"):  # line protocol cannot end a tag value with a backslash
        raise DecodeError("bad_type", f"{field}={asset[:60]!r} ends with a backslash")
    return asset


class MessageDecoder:
    """Decodes message values; `channels_for(asset)` returns the asset's channels or None.

    `clock` gives the daemon's time in epoch seconds (injectable for tests).
    """

    def __init__(
        self,
        settings: InputSettings,
        channels_for: Callable[[str], Sequence[str] | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = settings
        self._channels_for = channels_for
        self._clock = clock
        # per message, plain attributes: a pydantic model's cost ~50 ns each
        self._max_bytes = settings.max_message_bytes
        self._max_depth = settings.max_depth
        self._max_asset_chars = settings.max_asset_chars
        self._asset_field = settings.asset_field
        self._ts_field = settings.ts_field
        self._skew_s = settings.max_clock_skew_s
        self._oldest_ns = (settings.oldest_timestamp - _EPOCH) // timedelta(microseconds=1) * 1000

    def decode(self, value: bytes) -> Reading:
        """A Reading, or DecodeError with a reason: nothing else, whatever `value` holds."""
        try:
            return self._decode(value)
        except DecodeError:
            raise
        except Exception as exc:  # the boundary: a bug or an input nobody foresaw
            raise DecodeError("undecodable", f"{type(exc).__name__}: {str(exc)[:80]}") from None

    def _decode(self, value: bytes) -> Reading:
        message = _parse(value, self._max_bytes, self._max_depth)
        s = self._s
        asset = _asset_id(message, self._asset_field, self._max_asset_chars)
        channels = self._channels_for(asset)
        if channels is None:
            raise DecodeError("unknown_asset", f"no profile route matches asset {asset[:60]!r}")
        ts_field = self._ts_field
        if ts_field not in message:
            raise DecodeError("missing_field", f"no {ts_field!r} field")
        ts_ns = parse_timestamp(message[ts_field], ts_field, s.timestamp_format)
        ahead_s = ts_ns / 1e9 - self._clock()
        if ts_ns < self._oldest_ns or ahead_s > self._skew_s:
            raise self._implausible(ts_ns, ahead_s)
        if s.format == "wide":
            values = self._wide_values(message, channels)
        else:
            values = self._narrow_value(message, channels)
        return Reading(asset, ts_ns, values)

    def _implausible(self, ts_ns: int, ahead_s: float) -> DecodeError:
        s = self._s
        if ts_ns < self._oldest_ns:
            when = datetime.fromtimestamp(ts_ns // 1_000_000_000, UTC).isoformat()
            return DecodeError(
                "bad_timestamp",
                f"{s.ts_field}={when} is before input.oldest_timestamp "
                f"{s.oldest_timestamp.isoformat()}",
            )
        return DecodeError(
            "bad_timestamp",
            f"{s.ts_field} is {ahead_s:.0f} s ahead of the daemon's clock "
            f"(input.max_clock_skew_s={s.max_clock_skew_s:g})",
        )

    def _wide_values(self, message: dict[str, Any], channels: Sequence[str]) -> dict[str, float]:
        field = self._s.values_field
        if field not in message:
            raise DecodeError("missing_field", f"no {field!r} field")
        raw = message[field]
        if not isinstance(raw, dict):
            raise DecodeError("bad_type", f"{field} must be an object of channel -> number")
        if not raw:
            raise DecodeError("missing_field", f"{field} is empty")
        known = _channel_set(channels) if type(channels) is tuple else frozenset(channels)
        if raw.keys() <= known:  # the common case: one set comparison
            for reading in raw.values():
                if type(reading) is not float or reading - reading != 0.0:
                    break
            else:
                return raw
        for name, reading in raw.items():  # says why, in the message's order
            if name not in channels:
                raise DecodeError("unknown_channel", f"channel {name[:60]!r} not in the profile")
            # a finite float (x - x is 0.0 unless x is inf or NaN) stays; the rest is checked
            if type(reading) is not float or reading - reading != 0.0:
                raw[name] = _number(reading, field, name)
        return raw  # the parser's fresh dict, now of finite floats

    def _narrow_value(self, message: dict[str, Any], channels: Sequence[str]) -> dict[str, float]:
        s = self._s
        channel = _string(message, s.channel_field)
        if channel not in channels:
            raise DecodeError("unknown_channel", f"channel {channel[:60]!r} not in the profile")
        if s.value_field not in message:
            raise DecodeError("missing_field", f"no {s.value_field!r} field")
        return {channel: _number(message[s.value_field], s.value_field)}


def _parse(value: bytes, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """The message's JSON object; size and nesting are checked before any parser runs."""
    if len(value) > max_bytes:
        raise DecodeError("too_large", f"{len(value)} bytes (input.max_message_bytes={max_bytes})")
    # Every '[' or '{' (in any encoding JSON allows) holds the byte counted here, so the count
    # bounds the depth: the exact count below runs only for messages with many brackets.
    if value.count(b"[") + value.count(b"{") > max_depth:
        depth = nesting_depth(value)
        if depth > max_depth:
            raise DecodeError("too_deep", f"nested {depth} deep (input.max_depth={max_depth})")
    try:
        message = _loads(value)
    except _NonFiniteLiteral as exc:
        raise DecodeError("non_finite", f"literal {exc.args[0]} in message") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError("not_json", str(exc)[:80]) from None
    if not isinstance(message, dict):
        raise DecodeError("not_json", f"top level is {type(message).__name__}, not an object")
    return message


_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def nesting_depth(value: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text, strings skipped; linear in the
    length, vectorised, and exact for valid JSON (up to its first error for invalid text)."""
    encoding = json.detect_encoding(value)
    if encoding != "utf-8":
        try:
            value = value.decode(encoding).encode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return 0  # not JSON in any encoding: the parser says so
    data = np.frombuffer(value, np.uint8)
    if not data.size:
        return 0
    # A quote is escaped when an odd run of backslashes comes right before it.
    position = np.arange(data.size, dtype=np.int32)
    last_other = np.maximum.accumulate(np.where(data != _BACKSLASH, position, -1))
    run_before = np.empty(data.size, np.int32)
    run_before[0] = 0
    run_before[1:] = position[:-1] - last_other[:-1]
    quote = (data == _QUOTE) & (run_before % 2 == 0)
    outside = np.cumsum(quote, dtype=np.int32) % 2 == 0  # a closing quote counts as outside
    steps = np.where(outside, _STEP[data], 0)
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


class _NonFiniteLiteral(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _NonFiniteLiteral(name)


def _parse_int(text: str) -> int | float:
    """Integers beyond float range become +-inf (a value: non_finite; a time: bad_timestamp)
    instead of a 4,300-digit conversion or an OverflowError later."""
    if len(text) > _FLOAT_DIGITS:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def _loads(value: bytes) -> Any:
    try:
        return orjson.loads(value)  # strict RFC 8259, about 5x faster than json
    except orjson.JSONDecodeError:
        # Not plain UTF-8 JSON: the standard library reads the other encodings, and its
        # errors (and NaN/Infinity literals, refused above) give the reason. The depth is
        # already bounded, so its recursion is too.
        return json.loads(value, parse_constant=_reject_constant, parse_int=_parse_int)
