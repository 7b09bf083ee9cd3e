"""Kafka message bytes -> Reading, for the wide and narrow JSON formats of design.md."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from daemon.settings import InputSettings

# Epoch milliseconds outside [1970, 2300) are treated as a unit mistake, not a time.
_MAX_EPOCH_MS = 10_413_792_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Reading:
    """Some or all channels of one asset at one instant (epoch ns)."""

    asset: str
    ts_ns: int
    values: dict[str, float]


class DecodeError(ValueError):
    """A message that cannot become a Reading; `reason` is a short metric label."""

    REASONS = (
        "not_json",
        "missing_field",
        "bad_type",
        "non_finite",
        "unknown_asset",
        "bad_timestamp",
        "unknown_channel",
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
        if not math.isfinite(raw) or not 0 <= raw < _MAX_EPOCH_MS:
            raise DecodeError("bad_timestamp", f"{field}={raw!r} is not epoch milliseconds")
        if isinstance(raw, int):
            return raw * 1_000_000
        return round(raw * 1_000_000)
    if isinstance(raw, str):
        if fmt != "rfc3339" and raw.isdigit():
            return parse_timestamp(int(raw), field, "epoch_ms")
        if fmt == "epoch_ms":
            raise DecodeError("bad_timestamp", f"{field} must be epoch milliseconds")
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            raise DecodeError("bad_timestamp", f"{field}={raw[:40]!r} is not RFC 3339") from None
        if when.tzinfo is None:
            raise DecodeError("bad_timestamp", f"{field}={raw[:40]!r} has no UTC offset")
        seconds = (when - _EPOCH) // timedelta(seconds=1)
        if seconds < 0:
            raise DecodeError("bad_timestamp", f"{field}={raw[:40]!r} is before 1970")
        return seconds * 1_000_000_000 + when.microsecond * 1000
    raise DecodeError("bad_timestamp", f"{field} has type {type(raw).__name__}")


def _number(raw: object, where: str, name: str = "") -> float:
    """`raw` as a finite float; `where` (+ "." + `name`) names the field in errors."""
    if type(raw) is float and math.isfinite(raw):  # the common case, without the checks below
        return raw
    if name:
        where = f"{where}.{name}"
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise DecodeError("bad_type", f"{where} is {type(raw).__name__}, expected a number")
    value = float(raw)
    if not math.isfinite(value):
        raise DecodeError("non_finite", f"{where} is {raw!r}")
    return value


def _string(message: dict[str, Any], field: str) -> str:
    if field not in message:
        raise DecodeError("missing_field", f"no {field!r} field")
    value = message[field]
    if not isinstance(value, str) or not value:
        raise DecodeError("bad_type", f"{field} must be a non-empty string")
    return value


class MessageDecoder:
    """Decodes message values; `channels_for(asset)` returns the asset's channels or None."""

    def __init__(
        self, settings: InputSettings, channels_for: Callable[[str], Sequence[str] | None]
    ) -> None:
        self._s = settings
        self._channels_for = channels_for

    def decode(self, value: bytes) -> Reading:
        try:
            # parse_constant turns NaN/Infinity literals into a clear reason instead of floats.
            message = _loads(value)
        except _NonFiniteLiteral as exc:
            raise DecodeError("non_finite", f"literal {exc.args[0]} in message") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError("not_json", str(exc)[:80]) from None
        if not isinstance(message, dict):
            raise DecodeError("not_json", f"top level is {type(message).__name__}, not an object")
        s = self._s
        asset = _string(message, s.asset_field)
        channels = self._channels_for(asset)
        if channels is None:
            raise DecodeError("unknown_asset", f"no profile route matches asset {asset[:60]!r}")
        if s.ts_field not in message:
            raise DecodeError("missing_field", f"no {s.ts_field!r} field")
        ts_ns = parse_timestamp(message[s.ts_field], s.ts_field, s.timestamp_format)
        if s.format == "wide":
            values = self._wide_values(message, channels)
        else:
            values = self._narrow_value(message, channels)
        return Reading(asset, ts_ns, values)

    def _wide_values(self, message: dict[str, Any], channels: Sequence[str]) -> dict[str, float]:
        field = self._s.values_field
        if field not in message:
            raise DecodeError("missing_field", f"no {field!r} field")
        raw = message[field]
        if not isinstance(raw, dict):
            raise DecodeError("bad_type", f"{field} must be an object of channel -> number")
        if not raw:
            raise DecodeError("missing_field", f"{field} is empty")
        for name, reading in raw.items():
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


class _NonFiniteLiteral(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _NonFiniteLiteral(name)


def _loads(value: bytes) -> Any:
    try:
        return orjson.loads(value)  # strict RFC 8259, about 5x faster than json
    except orjson.JSONDecodeError:
        # Not plain UTF-8 JSON: the standard library reads the other encodings, and its
        # errors (and NaN/Infinity literals, refused above) give the reason.
        return json.loads(value, parse_constant=_reject_constant)
