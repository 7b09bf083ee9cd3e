"""Property-based fuzzing of the message boundary: whatever the bytes, `MessageDecoder.decode`
returns a plausible Reading or raises DecodeError with a known reason; nothing else."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.codec import DecodeError, MessageDecoder, Reading
from daemon.settings import InputSettings

NOW_S = 1795723200.0  # 2026-11-26T20:00:00Z
CHANNELS = {"pump-7": ("pressure", "flow"), "насос-1": ("flow",), "泵🚰": ("pressure",)}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis folder in the tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def decoders() -> list[MessageDecoder]:
    return [
        MessageDecoder(InputSettings(format=f), CHANNELS.get, clock=lambda: NOW_S)  # type: ignore[arg-type]
        for f in ("wide", "narrow")
    ]


WIDE, NARROW = decoders()


def check_boundary(decoder: MessageDecoder, raw: bytes) -> None:
    """The property: a Reading that the windows can take, or a DecodeError; nothing else."""
    try:
        reading = decoder.decode(raw)
    except DecodeError as exc:
        assert exc.reason in DecodeError.REASONS
        return
    assert isinstance(reading, Reading)
    channels = CHANNELS[reading.asset]
    assert reading.values and set(reading.values) <= set(channels)
    assert all(type(v) is float and math.isfinite(v) for v in reading.values.values())
    assert 946_684_800 * 10**9 <= reading.ts_ns <= (NOW_S + 300) * 1e9


huge_ints = st.integers(min_value=10**300, max_value=10**450) | st.integers(max_value=-(10**300))
numbers = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | huge_ints
)
scalars = st.none() | st.booleans() | numbers | st.text(max_size=40)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
assets = st.sampled_from(sorted(CHANNELS)) | st.text(max_size=300) | json_values
timestamps = (
    st.integers(min_value=-(10**20), max_value=10**20)
    | huge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
    | st.datetimes().map(lambda d: d.isoformat())  # no offset
    | st.sampled_from(["9999-12-31T23:59:59Z", "10000000000000", "²", "0" * 30])
    | st.just(1795723200125)
    | json_values
)
channel_names = st.sampled_from(["pressure", "flow", "torque"]) | st.text(max_size=10)


@st.composite
def wide_messages(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {
        "asset": draw(assets),
        "ts": draw(timestamps),
        "values": draw(
            st.dictionaries(channel_names, numbers | json_values, max_size=4) | json_values
        ),
    }
    for name in draw(st.sets(st.sampled_from(sorted(message)), max_size=2)):
        del message[name]  # missing fields
    return message


@st.composite
def narrow_messages(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {
        "asset": draw(assets),
        "ts": draw(timestamps),
        "channel": draw(channel_names | json_values),
        "value": draw(numbers | json_values),
    }
    for name in draw(st.sets(st.sampled_from(sorted(message)), max_size=2)):
        del message[name]
    return message


def encode(message: object) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass")


@FUZZ
@given(wide_messages())
def test_wide_messages_of_every_shape(message: dict[str, Any]) -> None:
    check_boundary(WIDE, encode(message))


@FUZZ
@given(narrow_messages())
def test_narrow_messages_of_every_shape(message: dict[str, Any]) -> None:
    check_boundary(NARROW, encode(message))


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(raw: bytes) -> None:
    check_boundary(WIDE, raw)
    check_boundary(NARROW, raw)


@FUZZ
@given(wide_messages(), st.data())
def test_mutated_bytes(message: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    check_boundary(WIDE, bytes(raw))


@FUZZ
@given(
    st.integers(min_value=1, max_value=200_000),
    st.sampled_from([b"[", b"{", b'{"a":']),
    st.booleans(),
)
def test_deep_nesting(depth: int, opener: bytes, inside_a_message: bool) -> None:
    closer = b"]" if opener == b"[" else b"}"
    body = opener * depth + (b"1" if opener != b"{" else b"") + closer * depth
    if inside_a_message:
        body = (
            b'{"asset": "pump-7", "ts": 1795723200125, "values": {"flow": 1.0}, "x": ' + body + b"}"
        )
    check_boundary(WIDE, body)


@FUZZ
@given(st.integers(min_value=1, max_value=3 << 20), st.sampled_from(["asset", "note", "ts"]))
def test_huge_strings(size: int, field: str) -> None:
    message: dict[str, Any] = {"asset": "pump-7", "ts": 1795723200125, "values": {"flow": 1.0}}
    message[field] = "x" * size
    check_boundary(WIDE, encode(message))


@FUZZ
@given(st.text(min_size=1, max_size=60), st.sampled_from(["utf-8", "utf-16", "utf-32"]))
def test_unicode_asset_ids_in_every_json_encoding(asset: str, encoding: str) -> None:
    message = {"asset": asset, "ts": 1795723200125, "values": {"flow": 1.0}}
    check_boundary(WIDE, json.dumps(message).encode(encoding))


def test_the_poison_pills_of_issue_11() -> None:
    pills = [
        b"[" * 50_000 + b"]" * 50_000,
        (
            '{"asset": "pump-7", "ts": 1795723200125, "values": {"flow": ' + "9" * 401 + "}}"
        ).encode(),
        ('{"asset": "pump-7", "ts": ' + "9" * 401 + ', "values": {"flow": 1.0}}').encode(),
        encode({"asset": "pump-7", "ts": "9999-12-31T23:59:59Z", "values": {"flow": 1.0}}),
        encode({"asset": "pump-7", "ts": 10_000_000_000_000, "values": {"flow": 1.0}}),
    ]
    reasons = []
    for raw in pills:
        try:
            WIDE.decode(raw)
        except DecodeError as exc:
            reasons.append(exc.reason)
    assert reasons == ["too_deep", "non_finite", "bad_timestamp", "bad_timestamp", "bad_timestamp"]
