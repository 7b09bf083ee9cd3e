"""A fitted baseline's `info` (how its threshold was set: window counts, quantiles, expected
false alerts), held as one array of numbers per baseline.

A fleet holds one fitted baseline per asset, and as a dict each `info` costs about 900 bytes:
the dict, a float object per number, and the objects a decoded changelog record left behind.
Every asset's `info` has the same names and the same few texts, so those are shared (a
`_Layout`), and the numbers are one `array('d')`: about 250 bytes.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Iterator, Mapping
from typing import Any

# Layouts shared at most: past this many, a new one's `info` stays a plain dict.
MAX_LAYOUTS = 256
_EXACT_INT = 2**53  # an int beyond this does not survive a float64


class _Layout:
    """The names of an `info`, in order, and per name how its value is read back: a number's
    type (int, float, bool) with its position in the numbers, or the value itself (a text or
    None, the same in every `info` of this layout)."""

    __slots__ = ("constants", "keys", "numbers")

    def __init__(self, keys: tuple[str, ...], kinds: tuple[Any, ...]) -> None:
        self.keys = keys
        self.numbers: dict[str, tuple[int, Any]] = {}  # name -> (position, type)
        self.constants: dict[str, Any] = {}
        for key, kind in zip(keys, kinds, strict=True):
            if kind in (int, float, bool):
                self.numbers[key] = (len(self.numbers), kind)
            else:
                self.constants[key] = kind[0]


_layouts: dict[tuple[tuple[str, ...], tuple[Any, ...]], _Layout] = {}


class PackedInfo(Mapping[str, Any]):
    """A read-only `info`: equal to the dict it packs, and read back the same (numbers as
    Python int, float or bool)."""

    __slots__ = ("_layout", "_numbers")

    def __init__(self, layout: _Layout, numbers: array[float]) -> None:
        self._layout = layout
        self._numbers = numbers

    def __getitem__(self, key: str) -> Any:
        number = self._layout.numbers.get(key)
        if number is None:
            return self._layout.constants[key]
        slot, kind = number
        return kind(self._numbers[slot])

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout.keys)

    def __len__(self) -> int:
        return len(self._layout.keys)

    def __repr__(self) -> str:
        return f"PackedInfo({dict(self)!r})"


def _kind(value: Any) -> Any:
    """How `value` is packed: int, float or bool (a number), (value,) (shared by the layout),
    or None (it cannot be: the dict is kept)."""
    if isinstance(value, bool):
        return bool
    if isinstance(value, int):
        return int if abs(value) <= _EXACT_INT else None
    if isinstance(value, float):
        return float if math.isfinite(value) else None  # NaN is not equal to itself
    if value is None or isinstance(value, str):
        return (sys.intern(value) if isinstance(value, str) else None,)
    return None


def pack_info(info: Mapping[str, Any]) -> Mapping[str, Any]:
    """`info` packed, or as a dict of its own where it holds something else than numbers and
    texts (a list, say) or too many layouts are known already (its names and texts interned:
    a decoded record gives each baseline its own copy of them otherwise)."""
    if isinstance(info, PackedInfo):
        return info
    kinds = tuple(_kind(v) for v in info.values())
    if None in kinds or not all(isinstance(k, str) for k in info):
        return _interned(info)
    keys = tuple(sys.intern(k) for k in info)
    layout = _layouts.get((keys, kinds))
    if layout is None:
        if len(_layouts) >= MAX_LAYOUTS:
            return _interned(info)
        layout = _layouts[(keys, kinds)] = _Layout(keys, kinds)
    numbers = array("d", (float(v) for k, v in info.items() if k in layout.numbers))
    return PackedInfo(layout, numbers)


def _interned(info: Mapping[str, Any]) -> dict[str, Any]:
    return {
        (sys.intern(k) if isinstance(k, str) else k): (sys.intern(v) if isinstance(v, str) else v)
        for k, v in info.items()
    }
