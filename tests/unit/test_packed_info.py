"""A baseline's `info` packed as one array of numbers reads back exactly as the dict it was."""

from __future__ import annotations

import json

import numpy as np

from seqae.calibrate import Baseline
from seqae.packed_info import PackedInfo, pack_info

INFO = {
    "windows": 200,
    "stats_windows": 120,
    "threshold_method": "quantile",
    "quantile": 0.995,
    "pot_risk": 0.001,
    "held_out_exceedance": 0.0125,
    "refit_scaler": True,
    "note": None,
    "big": 2**53,
}


def test_a_packed_info_equals_its_dict_and_reads_back_the_same_types_and_json() -> None:
    packed = pack_info(dict(INFO))
    assert isinstance(packed, PackedInfo)
    assert packed == INFO
    assert INFO == packed  # noqa: SIM300 (the dict's own comparison, on the left)
    assert list(packed) == list(INFO) and len(packed) == len(INFO)
    for key, value in INFO.items():
        assert type(packed[key]) is type(value) and packed[key] == value
    assert json.dumps(dict(packed)) == json.dumps(INFO)
    assert packed.get("missing", "default") == "default"


def test_infos_of_one_layout_share_it_and_differ_in_their_numbers() -> None:
    a = pack_info(dict(INFO))
    b = pack_info(dict(INFO, windows=300))
    assert isinstance(a, PackedInfo) and isinstance(b, PackedInfo)
    assert a._layout is b._layout
    assert b["windows"] == 300 and a["windows"] == 200 and a != b


def test_what_a_float64_cannot_hold_exactly_stays_a_dict() -> None:
    for odd in ([1.0, 2.0], float("nan"), 2**53 + 1, np.arange(2), {"a": 1}):
        info = dict(INFO, odd=odd)
        kept = pack_info(info)
        assert type(kept) is dict and kept is not info
        assert kept.keys() == info.keys()


def test_a_baseline_round_trip_keeps_its_info_and_its_json_bytes() -> None:
    f = 3
    baseline = Baseline(
        center=np.zeros(f, np.float32),
        scale=np.ones(f, np.float32),
        err_mean=np.full(f, 0.5),
        err_sq_mean=np.full(f, 0.3),
        precision=np.eye(f),
        threshold=2.5,
        info=dict(INFO),
    )
    encoded = json.dumps(baseline.to_dict())
    restored = Baseline.from_dict(json.loads(encoded))
    assert isinstance(restored.info, PackedInfo)
    assert json.dumps(restored.to_dict()) == encoded
    moved = restored.moved(np.ones(f))
    assert moved.info["moved_by"] == [1.0, 1.0, 1.0] and moved.info["windows"] == 200
