import math
from typing import Any

import numpy as np
import pytest

from daemon.lineprotocol import LineProtocolError, Point, encode, encode_batch


def test_types_and_layout() -> None:
    p = Point(
        "seqae_score",
        {"asset": "pump-7", "profile": "pumps"},
        {"score": 0.5, "count": 3, "anomalous": False, "state": "ok"},
        1795723200125000000,
    )
    assert encode(p) == (
        'seqae_score,asset=pump-7,profile=pumps score=0.5,count=3i,anomalous=false,state="ok" '
        "1795723200125000000"
    )


def test_escaping_of_every_part() -> None:
    p = Point(
        "my meas,x",
        {"tag key": "a=b,c d"},
        {"f=k ey": 'say "hi" \\ there'},
        1,
    )
    assert encode(p) == (
        r"my\ meas\,x,tag\ key=a\=b\,c\ d f\=k\ ey=" + '"say \\"hi\\" \\\\ there" 1'
    )


def test_tags_sorted_so_encoding_is_deterministic() -> None:
    a = Point("m", {"z": "1", "a": "2", "m": "3"}, {"v": 1.0}, 5)
    b = Point("m", {"m": "3", "z": "1", "a": "2"}, {"v": 1.0}, 5)
    assert encode(a) == encode(b) == "m,a=2,m=3,z=1 v=1.0 5"


def test_float_full_precision_and_numpy_scalars() -> None:
    x = 0.1 + 0.2
    fields: dict[str, Any] = {
        "x": x,
        "f32": np.float32(0.25),
        "i64": np.int64(-7),
        "b": np.bool_(True),
    }
    line = encode(Point("m", {}, fields, 0))
    assert line == f"m x={x!r},f32=0.25,i64=-7i,b=true 0"
    assert float(line.split("x=")[1].split(",")[0]) == x
    assert "1e-300" in encode(Point("m", {}, {"tiny": 1e-300}, 0))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_non_finite_floats_rejected(bad: float) -> None:
    with pytest.raises(LineProtocolError, match=r"'score'.*not finite"):
        encode(Point("m", {}, {"score": bad}, 0))


def test_empty_tag_value_is_omitted() -> None:
    assert encode(Point("m", {"a": "", "b": "x"}, {"v": 1}, 2)) == "m,b=x v=1i 2"


@pytest.mark.parametrize(
    ("point", "message"),
    [
        (Point("", {}, {"v": 1}, 0), "measurement is empty"),
        (Point("m", {}, {}, 0), "at least one field"),
        (Point("m", {"a": "x\ny"}, {"v": 1}, 0), "line break"),
        (Point("m", {}, {"s": "x\ny"}, 0), "line break"),
        (Point("m", {"a": "x\\"}, {"v": 1}, 0), "backslash"),
        (Point("m", {}, {"v": [1]}, 0), "unsupported type list"),  # type: ignore[dict-item]
        (Point("m", {}, {"v": 1}, 1.5), "not an integer"),  # type: ignore[arg-type]
    ],
)
def test_invalid_points_raise_named_errors(point: Point, message: str) -> None:
    with pytest.raises(LineProtocolError, match=message):
        encode(point)


def test_encode_batch_joins_lines() -> None:
    pts = [Point("m", {}, {"v": i}, i) for i in range(3)]
    assert encode_batch(pts) == "m v=0i 0\nm v=1i 1\nm v=2i 2"
