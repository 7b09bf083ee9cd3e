import json

import pytest

from daemon.codec import DecodeError, MessageDecoder, Reading, parse_timestamp
from daemon.settings import InputSettings

CHANNELS = {"pump-7": ("pressure", "flow")}


def decoder(**kw: object) -> MessageDecoder:
    return MessageDecoder(InputSettings(**kw), CHANNELS.get)


def wide(**kw: object) -> bytes:
    msg = {"asset": "pump-7", "ts": "2026-11-26T20:00:00.125Z", "values": {"pressure": 2.31}}
    msg.update(kw)
    return json.dumps(msg).encode()


def test_wide_rfc3339() -> None:
    r = decoder().decode(wide())
    assert r == Reading("pump-7", 1795723200_125_000_000, {"pressure": 2.31})


def test_narrow_epoch_ms_and_configured_names() -> None:
    d = decoder(format="narrow", asset_field="id", ts_field="t", channel_field="c", value_field="v")
    msg = {"id": "pump-7", "c": "flow", "t": 1795723200125, "v": 31.9}
    assert d.decode(json.dumps(msg).encode()) == Reading(
        "pump-7", 1795723200125_000_000, {"flow": 31.9}
    )


def test_rfc3339_offsets_and_epoch_strings_agree() -> None:
    a = parse_timestamp("2026-11-26T21:00:00.125+01:00", "ts")
    b = parse_timestamp(1795723200125, "ts")
    c = parse_timestamp("1795723200125", "ts")
    assert a == b == c


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[1, 2]", "not_json"),
        (json.dumps({"ts": 1, "values": {"flow": 1}}).encode(), "missing_field"),
        (json.dumps({"asset": "pump-7", "values": {"flow": 1}}).encode(), "missing_field"),
        (json.dumps({"asset": "pump-7", "ts": 1795723200125}).encode(), "missing_field"),
        (wide(values={}), "missing_field"),
        (wide(asset=7), "bad_type"),
        (wide(values=[1, 2]), "bad_type"),
        (wide(values={"flow": "high"}), "bad_type"),
        (wide(values={"flow": True}), "bad_type"),
        (b'{"asset": "pump-7", "ts": 1795723200125, "values": {"flow": NaN}}', "non_finite"),
        (b'{"asset": "pump-7", "ts": 1795723200125, "values": {"flow": Infinity}}', "non_finite"),
        (b'{"asset": "pump-7", "ts": 1795723200125, "values": {"flow": 1e999}}', "non_finite"),
        (wide(asset="boiler-1"), "unknown_asset"),
        (wide(ts="yesterday"), "bad_timestamp"),
        (wide(ts="2026-11-26T20:00:00"), "bad_timestamp"),
        (wide(ts=-5), "bad_timestamp"),
        (wide(ts=1795723200125000000), "bad_timestamp"),
        (wide(ts=True), "bad_timestamp"),
        (wide(values={"torque": 1.0}), "unknown_channel"),
    ],
)
def test_every_malformed_kind_has_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decoder().decode(raw)
    assert info.value.reason == reason


def test_narrow_malformed() -> None:
    d = decoder(format="narrow")
    base = {"asset": "pump-7", "channel": "flow", "ts": 1795723200125, "value": 1.0}
    for change, reason in [
        ({"channel": "torque"}, "unknown_channel"),
        ({"value": None}, "bad_type"),
        ({"channel": 3}, "bad_type"),
    ]:
        with pytest.raises(DecodeError) as info:
            d.decode(json.dumps(base | change).encode())
        assert info.value.reason == reason
    no_value = dict(base)
    del no_value["value"]
    with pytest.raises(DecodeError) as info:
        d.decode(json.dumps(no_value).encode())
    assert info.value.reason == "missing_field"


def test_timestamp_format_is_enforced() -> None:
    with pytest.raises(DecodeError, match="bad_timestamp"):
        decoder(timestamp_format="epoch_ms").decode(wide())
    with pytest.raises(DecodeError, match="bad_timestamp"):
        decoder(timestamp_format="rfc3339").decode(wide(ts=1795723200125))


# -- hostile input: every one ends as a DecodeError with its reason ---------------------------

NOW_S = 1795723200.0  # the daemon's clock in these tests: 2026-11-26T20:00:00Z


def at_now(**kw: object) -> MessageDecoder:
    return MessageDecoder(InputSettings(**kw), CHANNELS.get, clock=lambda: NOW_S)


def reason_of(d: MessageDecoder, raw: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        d.decode(raw)
    return info.value.reason


def test_size_and_depth_are_checked_before_parsing() -> None:
    d = at_now(max_message_bytes=1000, max_depth=8)
    assert reason_of(d, wide(note="x" * 1000)) == "too_large"
    poison = b"[" * 50_000 + b"]" * 50_000  # made the fallback json.loads raise RecursionError
    assert reason_of(at_now(), poison) == "too_deep"
    assert reason_of(d, wide(extra=[[[[[[[[[1]]]]]]]]])) == "too_deep"
    # brackets inside strings, escaped quotes among them, do not count
    r = d.decode(wide(note='[[[[[[[[[[\\"{{{{{{{{{{', more=[[1], [2], [3], [4], [5], [6]]))
    assert r.values == {"pressure": 2.31}


def test_nesting_depth_skips_strings_and_reads_other_encodings() -> None:
    from daemon.codec import nesting_depth

    text = json.dumps({"a": [[["]]]]\\\\", {"b": '"[[[['}]]], "c": '\\"[['})
    assert nesting_depth(text.encode()) == 5
    assert nesting_depth(text.encode("utf-16")) == 5
    assert nesting_depth(b"") == 0


def test_integers_beyond_float_range() -> None:
    d = at_now()
    huge = "9" * 401
    value = f'{{"asset": "pump-7", "ts": 1795723200125, "values": {{"flow": {huge}}}}}'
    assert reason_of(d, value.encode()) == "non_finite"
    beyond_int_parser = "-" + "9" * 5000  # more digits than Python's int() accepts
    value = f'{{"asset": "pump-7", "ts": 1795723200125, "values": {{"flow": {beyond_int_parser}}}}}'
    assert reason_of(d, value.encode()) == "non_finite"
    stamp = f'{{"asset": "pump-7", "ts": {huge}, "values": {{"flow": 1.0}}}}'
    assert reason_of(d, stamp.encode()) == "bad_timestamp"
    assert reason_of(d, wide(ts="1" * 400)) == "bad_timestamp"
    assert reason_of(d, wide(ts="²³")) == "bad_timestamp"  # str.isdigit() but not int()


@pytest.mark.parametrize(
    "ts",
    [
        "9999-12-31T23:59:59Z",
        10_000_000_000_000,  # epoch ms in year 2286
        "2026-11-26T20:05:01Z",  # 301 s ahead of the clock
        "1999-12-31T23:59:59Z",
        946684799999,  # 1999-12-31T23:59:59.999Z
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-23:59",
    ],
)
def test_implausible_times_are_bad_timestamps(ts: object) -> None:
    assert reason_of(at_now(), wide(ts=ts)) == "bad_timestamp"


def test_plausible_times_and_the_configured_horizon() -> None:
    assert at_now().decode(wide(ts="2026-11-26T20:04:59Z")).ts_ns == (NOW_S + 299) * 1e9
    assert at_now().decode(wide(ts="2000-01-01T00:00:00Z")).ts_ns == 946684800 * 10**9
    anything_ahead = at_now(max_clock_skew_s=float("inf"))
    assert anything_ahead.decode(wide(ts="2200-01-01T00:00:00Z")).asset == "pump-7"
    later_horizon = at_now(oldest_timestamp="2026-01-01T00:00:00Z")
    assert reason_of(later_horizon, wide(ts="2025-12-31T23:59:59Z")) == "bad_timestamp"


def test_the_clock_is_read_per_message() -> None:
    now = [NOW_S - 3600.0]
    d = MessageDecoder(InputSettings(), CHANNELS.get, clock=lambda: now[0])
    assert reason_of(d, wide()) == "bad_timestamp"  # an hour ahead of this clock
    now[0] = NOW_S
    assert d.decode(wide()).asset == "pump-7"


@pytest.mark.parametrize(
    ("asset", "reason"),
    [
        ("pump\n7", "bad_type"),
        ("pump-7\\", "bad_type"),
        ("p" * 201, "bad_type"),
        ("\u0000", "bad_type"),
    ],
)
def test_asset_ids_that_cannot_be_a_tag_or_file_name(asset: str, reason: str) -> None:
    assert reason_of(at_now(), wide(asset=asset)) == reason


def test_lone_surrogate_asset_id_is_refused() -> None:
    raw = b'{"asset": "pump\\ud800", "ts": 1795723200125, "values": {"flow": 1.0}}'
    assert reason_of(at_now(), raw) == "bad_type"


def test_unicode_asset_ids_are_readings() -> None:
    channels = {"насос-7": ("flow",), "泵-7": ("flow",)}
    d = MessageDecoder(InputSettings(), channels.get, clock=lambda: NOW_S)
    for asset in channels:
        assert d.decode(wide(asset=asset, values={"flow": 1.0})).asset == asset


def test_anything_unforeseen_is_undecodable_with_its_type() -> None:
    def broken_routes(asset: str) -> tuple[str, ...]:
        raise KeyError(asset)

    d = MessageDecoder(InputSettings(), broken_routes, clock=lambda: NOW_S)
    with pytest.raises(DecodeError) as info:
        d.decode(wide())
    assert info.value.reason == "undecodable" and "KeyError" in info.value.detail
