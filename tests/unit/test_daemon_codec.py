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
