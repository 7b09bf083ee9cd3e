"""seqae.inject: each fault kind changes only its channel and span, by its size, reproducibly."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import seqae.inject
from seqae.inject import (
    DEFAULT_SIZES,
    FAULT_KINDS,
    InjectedFault,
    InjectError,
    inject,
    plan_faults,
)

T, C = 400, 3
SCALE = np.array([1.0, 0.5, 4.0])
START, END, CH = 100, 160, 1


def normal(seed: int = 0) -> np.ndarray:
    """Three correlated channels: a slow wave shared by all, plus noise."""
    rng = np.random.default_rng(seed)
    wave = np.sin(np.arange(T) / 15.0)
    return (wave[:, None] * [1.0, 0.5, 4.0] + rng.normal(0, 0.1, (T, C)) * SCALE).astype(np.float32)


def run(
    kind: str, size: float, seed: int = 3, values: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, InjectedFault]:
    base = normal() if values is None else values
    out, fault = inject(
        base, kind, start=START, end=END, channel=CH, size=size, scale=SCALE, seed=seed
    )
    return base, out, fault


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_kind_changes_only_its_channel_and_span(kind: str) -> None:
    base, out, fault = run(kind, 2.0)
    assert fault.kind == kind and fault.channel == CH and fault.size == 2.0
    assert START <= fault.start < fault.end <= END
    changed = np.argwhere(out != base)
    assert len(changed) > 0
    assert set(changed[:, 1]) == {CH}  # no other channel
    assert changed[:, 0].min() >= fault.start and changed[:, 0].max() < fault.end  # only the span
    assert base is not out and np.array_equal(base, normal())  # the input is untouched


def test_spike_moves_one_sample_by_size_spreads_and_labels_that_row() -> None:
    for size in (3.0, 12.0):
        base, out, fault = run("spike", size)
        assert fault.end == fault.start + 1
        delta = out[:, CH] - base[:, CH]
        assert np.count_nonzero(delta) == 1
        assert abs(delta[fault.start]) == pytest.approx(size * SCALE[CH], rel=1e-5)


def test_drift_ramps_from_zero_to_size_spreads() -> None:
    for size in (2.0, 8.0):
        base, out, _ = run("drift", size)
        delta = (out[:, CH] - base[:, CH]).astype(np.float64)
        assert delta[START] == pytest.approx(0.0, abs=1e-6)
        assert abs(delta[END - 1]) == pytest.approx(size * SCALE[CH], rel=1e-5)
        steps = np.diff(delta[START:END])
        assert np.allclose(steps, steps[0], atol=1e-5)  # a straight ramp


def test_stuck_holds_the_reading_at_the_start_offset_by_size() -> None:
    base, out, _ = run("stuck", 0.0)
    assert np.all(out[START:END, CH] == base[START, CH])
    base, out, _ = run("stuck", 4.0)
    held = out[START:END, CH]
    assert np.all(held == held[0])
    assert abs(held[0] - base[START, CH]) == pytest.approx(4.0 * SCALE[CH], rel=1e-5)
    # a missing reading at the start: the last finite one before it is held
    gappy = normal()
    gappy[START - 2 : START + 1, CH] = np.nan
    _, out, _ = run("stuck", 0.0, values=gappy)
    assert np.all(out[START:END, CH] == gappy[START - 3, CH])


def test_noise_spread_grows_with_size() -> None:
    long_end = 380
    spreads = []
    for size in (0.5, 2.0):
        base = normal()
        out, _ = inject(
            base, "noise", start=20, end=long_end, channel=CH, size=size, scale=SCALE, seed=1
        )
        spreads.append(float(np.std(out[20:long_end, CH] - base[20:long_end, CH])))
    assert spreads[0] == pytest.approx(0.5 * SCALE[CH], rel=0.15)
    assert spreads[1] == pytest.approx(2.0 * SCALE[CH], rel=0.15)


def test_decouple_takes_the_channels_own_readings_from_another_stretch() -> None:
    base, out, _ = run("decouple", 0.0)
    seg = out[START:END, CH]
    length = END - START
    sources = [
        s
        for s in range(T - length + 1)
        if (s + length <= START or s >= END) and np.array_equal(base[s : s + length, CH], seg)
    ]
    assert len(sources) == 1  # the channel's own values, from a stretch apart from the span
    assert not np.array_equal(seg, base[START:END, CH])
    # its relation to a partner channel is broken: the shared wave no longer lines up
    partner = base[START:END, 0]
    assert np.corrcoef(seg, partner)[0, 1] < np.corrcoef(base[START:END, CH], partner)[0, 1]
    _, shifted, _ = run("decouple", 4.0)
    offset = shifted[START:END, CH] - base[sources[0] : sources[0] + length, CH]
    assert np.allclose(np.abs(offset), 4.0 * SCALE[CH], rtol=1e-5)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_the_same_seed_gives_the_same_fault(kind: str) -> None:
    _, a, fa = run(kind, 2.0, seed=7)
    _, b, fb = run(kind, 2.0, seed=7)
    assert fa == fb and np.array_equal(a, b, equal_nan=True)


def test_another_seed_gives_another_fault() -> None:
    _, a, _ = run("noise", 2.0, seed=1)
    _, b, _ = run("noise", 2.0, seed=2)
    assert not np.array_equal(a, b)


def test_bad_arguments_name_the_field() -> None:
    v = normal()
    good = {"start": 10, "end": 20, "channel": 0, "size": 1.0, "scale": SCALE, "seed": 0}
    cases = [
        ("kind", "melt", {}),
        ("start, end", "drift", {"end": T + 1}),
        ("start, end", "drift", {"start": 20}),
        ("channel", "drift", {"channel": 3}),
        ("size", "drift", {"size": -1.0}),
        ("scale", "drift", {"scale": np.array([1.0, 0.0, 1.0])}),
        ("decouple", "decouple", {"start": 100, "end": 300}),
    ]
    for field, kind, change in cases:
        with pytest.raises(InjectError, match=f"^{field}"):
            inject(v, kind, **(good | change))  # type: ignore[arg-type]
    with pytest.raises(InjectError, match=r"^values"):
        inject(v[:, 0], "drift", **good)  # type: ignore[arg-type]


def test_plan_covers_every_kind_and_size_in_the_allowed_rows_reproducibly() -> None:
    starts = [range(0), range(50, 60), range(10, 200)]
    plan = plan_faults(starts, span=30, n_channels=C, seed=5, repeats=3)
    cells = {(f.kind, f.size) for f in plan}
    assert cells == {(k, float(s)) for k in FAULT_KINDS for s in DEFAULT_SIZES[k]}
    assert len(plan) == 3 * len(cells)
    assert all(f.piece in (1, 2) and f.start in starts[f.piece] for f in plan)
    assert all(f.end == f.start + 30 and 0 <= f.channel < C for f in plan)
    assert {f.piece for f in plan} == {1, 2}
    assert plan == plan_faults(starts, span=30, n_channels=C, seed=5, repeats=3)
    with pytest.raises(InjectError, match="starts"):
        plan_faults([range(0)], span=30, n_channels=C, seed=5)


def test_module_example_runs() -> None:
    result = doctest.testmod(seqae.inject, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
