import numpy as np
import pytest

from daemon.codec import Reading
from daemon.settings import WindowSettings
from daemon.windows import (
    AssetWindow,
    ReadyWindow,
    TopicPartitionId,
    WindowCounters,
    WindowGeometry,
    WindowStore,
    window_phase,
)

TP = ("sensors", 0)
GEO = WindowGeometry.of(["a", "b"], period_s=1.0, window=4, hop=2)
S = 1_000_000_000


def in_order(**options: float) -> WindowSettings:
    """Settings whose slots are final at the next reading: the grid alone, no lateness."""
    return WindowSettings(max_lateness_s=0, **options)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(
    store: WindowStore,
    slots: list[int],
    asset: str = "pump-b",
    start_offset: int = 0,
    values: dict[int, dict[str, float]] | None = None,
) -> list[ReadyWindow]:
    out = []
    for i, slot in enumerate(slots):
        v = (values or {}).get(slot, {"a": float(slot), "b": float(slot) * 10})
        out += store.add(Reading(asset, slot * S + 123, v), GEO, TP, start_offset + i)
    return out


def test_windows_end_on_absolute_grid_slots_and_are_whole() -> None:
    store = WindowStore(in_order(max_fill=1))
    ready = feed(store, list(range(5, 16)))
    ends = [w.end_ns // S for w in ready]
    # "pump-b" has phase 0: ends where slot % hop == hop-1; the first whole one needs 4 slots
    # from slot 5; slot 15 is not final
    assert ends == [9, 11, 13]
    assert ready[0].values[:, 0].tolist() == [6, 7, 8, 9]
    assert ready[0].offsets == {TP: 1}
    assert not any(w.gap for w in ready)


def test_window_ends_are_offset_per_asset_so_a_fleet_in_step_is_spread() -> None:
    assert window_phase("pump-b", 2) == 0 and window_phase("p1", 2) == 1
    store = WindowStore(in_order())
    ends = [w.end_ns // S for w in feed(store, list(range(5, 16)), asset="p1")]
    assert ends == [8, 10, 12, 14]  # one slot earlier than "pump-b"'s 9, 11, 13
    hop = 10
    phases = [window_phase(f"asset-{i}", hop) for i in range(1000)]
    assert min(np.bincount(phases, minlength=hop)) > 60  # about 100 windows per slot, not 1000


def test_last_value_in_slot_wins() -> None:
    store = WindowStore(in_order())
    store.add(Reading("pump-b", 0 * S, {"a": 1.0, "b": 1.0}), GEO, TP, 0)
    for slot in range(1, 4):
        store.add(Reading("pump-b", slot * S, {"a": 5.0, "b": 5.0}), GEO, TP, slot)
    store.add(Reading("pump-b", 3 * S + S // 2, {"a": 7.0}), GEO, TP, 10)
    (w,) = store.add(Reading("pump-b", 4 * S, {"a": 0.0, "b": 0.0}), GEO, TP, 11)
    assert w.values[-1].tolist() == [7.0, 5.0]


def test_forward_fill_up_to_max_fill_per_channel() -> None:
    store = WindowStore(in_order(max_fill=1))
    # channel b is missing at slots 2 and 3: filled once, then NaN
    values = {s: {"a": float(s)} for s in (2, 3)}
    ready = feed(store, [0, 1, 2, 3, 4], values=values)
    (w,) = ready
    assert w.values[:, 0].tolist() == [0, 1, 2, 3]
    assert w.values[:3, 1].tolist() == [0, 10, 10]
    assert np.isnan(w.values[3, 1])


def test_short_gap_is_filled_long_gap_resets_and_flags() -> None:
    store = WindowStore(in_order(max_fill=2))
    ready = feed(store, [0, 1, 2, 3, 6, 7, 8, 9])  # slots 4,5 missing: filled
    assert [w.end_ns // S for w in ready] == [3, 5, 7]
    assert ready[1].values[:, 0].tolist() == [2, 3, 3, 3]
    store = WindowStore(in_order(max_fill=2))
    ready = feed(store, [0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14])  # 3 empty slots: reset
    assert [(w.end_ns // S, w.gap) for w in ready] == [(3, False), (11, True), (13, False)]
    assert store.counters.gap_resets == 1


def test_late_readings_are_dropped_and_counted() -> None:
    store = WindowStore(WindowSettings(max_lateness_s=0))
    feed(store, [0, 1, 2, 3])
    assert feed(store, [1], start_offset=50) == []
    assert store.counters.late_dropped == 1
    lenient = WindowStore(WindowSettings(max_lateness_s=2))
    ready = feed(lenient, [0, 1, 2, 3, 5, 4, 6, 7])
    assert lenient.counters.late_dropped == 0
    assert [w.end_ns // S for w in ready] == [3]
    assert ready[0].values[:, 0].tolist() == [0, 1, 2, 3]


def test_hold_keeps_the_next_windows_first_reading() -> None:
    store = WindowStore(in_order(max_fill=0))
    ready = feed(store, list(range(0, 8)))  # offsets == slots
    assert [w.end_ns // S for w in ready] == [3, 5]
    # next window ends at 7 and starts at slot 4
    assert store.hold() == {TP: 4}


def test_hold_reaches_back_to_the_reading_that_fills_the_first_slot() -> None:
    store = WindowStore(in_order(max_fill=2))
    ready = feed(store, [0, 1, 2, 3, 5, 6, 7])  # slot 4 empty, next window starts at 4
    assert [w.end_ns // S for w in ready] == [3, 5]
    assert store.hold() == {TP: 3}  # slot 3 (offset 3) fills slot 4


def test_restart_from_hold_rebuilds_identical_windows() -> None:
    slots = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    full = feed(WindowStore(in_order(max_fill=2)), slots)
    first = WindowStore(in_order(max_fill=2))
    before = feed(first, slots[:8])
    hold = first.hold()[TP]
    restarted = WindowStore(in_order(max_fill=2))
    restarted.resume_after(first.last_ends())
    after = feed(restarted, slots[hold:], start_offset=hold)
    assert [w.end_ns for w in before + after] == [w.end_ns for w in full]
    for a, b in zip(before + after, full, strict=True):
        np.testing.assert_array_equal(a.values, b.values)


@pytest.mark.parametrize("seed", range(5))
def test_restart_from_hold_at_any_point_rebuilds_identical_windows(seed: int) -> None:
    """Random missing channels, short gaps and resets, many trips around the ring buffer."""
    rng = np.random.default_rng(seed)
    slots = np.cumsum(rng.choice([1, 1, 1, 1, 2, 3, 5], size=120)).tolist()
    values: dict[int, dict[str, float]] = {}
    for slot in slots:
        row = {"a": float(slot), "b": float(slot) * 10}
        if rng.random() < 0.3:
            row.pop(str(rng.choice(["a", "b"])))
        values[slot] = row
    full = feed(WindowStore(in_order(max_fill=2)), slots, values=values)
    for cut in range(10, len(slots), 7):
        first = WindowStore(in_order(max_fill=2))
        before = feed(first, slots[:cut], values=values)
        hold = first.hold().get(TP, cut)
        restarted = WindowStore(in_order(max_fill=2))
        restarted.resume_after(first.last_ends())
        after = feed(restarted, slots[hold:], start_offset=hold, values=values)
        assert [w.end_ns for w in before + after] == [w.end_ns for w in full], cut
        for a, b in zip(before + after, full, strict=True):
            np.testing.assert_array_equal(a.values, b.values)
            assert a.gap == b.gap


def test_pending_gap_is_held_so_a_restart_sees_it() -> None:
    store = WindowStore(in_order(max_fill=1))
    feed(store, [0, 1, 2, 3, 4, 10, 11])
    assert store.hold() == {TP: 4}  # the reading before the gap
    feed(store, [12, 13, 14, 15], start_offset=7)
    assert store.hold()[TP] > 4


def test_idle_eviction_releases_hold_and_remembers_last_end() -> None:
    clock = Clock()
    store = WindowStore(in_order(idle_eviction_s=60), clock=clock)
    feed(store, list(range(6)))
    feed(store, list(range(6)), asset="pump-a", start_offset=100)
    clock.now = 30
    feed(store, [6], asset="pump-a", start_offset=106)
    clock.now = 70
    assert store.evict_idle() == ["pump-b"]
    assert len(store) == 1 and store.hold() == {TP: 104}
    assert store.last_ends()["pump-b"] == 3 * S


def test_drop_partitions_forgets_their_assets() -> None:
    store = WindowStore(in_order())
    feed(store, list(range(6)))
    store.add(Reading("p9", 0, {"a": 1.0}), GEO, ("sensors", 1), 0)
    assert store.drop_partitions({TP}) == ["pump-b"]
    assert len(store) == 1


def test_geometry_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window geometry"):
        WindowGeometry.of(["a"], period_s=0, window=4, hop=2)


def test_default_lateness_places_a_plants_reordering_and_holds_windows_back_by_as_much() -> None:
    assert WindowSettings().max_lateness_s == 2.0
    store = WindowStore(WindowSettings())
    # slot 4 arrives after 6 (2 s late), slot 8 after 10: both placed, none dropped
    ready = feed(store, [0, 1, 2, 3, 5, 6, 4, 7, 9, 10, 8, 11, 12, 13, 14])
    assert store.counters.late_dropped == 0
    # slots up to the newest - 3 are final: windows end at 3..11 ("pump-b", hop 2)
    assert [w.end_ns // S for w in ready] == [3, 5, 7, 9, 11]
    assert ready[1].values[:, 0].tolist() == [2, 3, 4, 5]
    assert ready[3].values[:, 0].tolist() == [6, 7, 8, 9]
    assert all(w.late == 0 for w in ready)


def test_readings_later_than_max_lateness_are_counted_on_the_next_window() -> None:
    store = WindowStore(WindowSettings(max_lateness_s=1))
    ready = feed(store, [0, 1, 2, 3, 4, 5])  # slot 3 final once slot 5 arrives: window 0..3
    assert [(w.end_ns // S, w.late) for w in ready] == [(3, 0)]
    # 3 s late (slot 2 after slot 5) twice, and slot 3 once: dropped, counted
    assert feed(store, [2, 2, 3], start_offset=10) == []
    assert store.counters.late_dropped == 3
    # the asset's next window says so; the one after starts counting afresh
    ready = feed(store, [6, 7, 8, 9], start_offset=20)
    assert [(w.end_ns // S, w.late) for w in ready] == [(5, 3), (7, 0)]
    feed(store, [1], start_offset=30)
    (w,) = feed(store, [10, 11], start_offset=40)
    assert (w.end_ns // S, w.late) == (9, 1)


def test_late_count_is_per_asset() -> None:
    store = WindowStore(WindowSettings(max_lateness_s=0))
    feed(store, [0, 1, 2, 3], asset="pump-b")
    feed(store, [0, 1, 2, 3], asset="p1")
    feed(store, [0], asset="pump-b", start_offset=9)
    b = feed(store, [4, 5, 6], asset="pump-b")
    p1 = feed(store, [4, 5, 6], asset="p1")
    assert [w.late for w in b] == [1, 0]  # the window ending at 3, then afresh
    assert p1 and all(w.late == 0 for w in p1)


def test_late_field_is_written_only_when_readings_were_dropped() -> None:
    from daemon.engine import ScoredWindow

    def point(late: int) -> dict[str, object]:
        w = ScoredWindow(
            "pump-b", "pumps", "v1", ("a",), 3 * S, 1.0, 2.0, False, "ok", False,
            np.zeros(1), np.zeros(1), late=late,
        )  # fmt: skip
        return dict(w.to_point().fields)

    assert "late" not in point(0)
    assert point(4)["late"] == 4 and isinstance(point(4)["late"], int)


def covered(reported: dict, held: dict) -> bool:
    """Seeking back to `reported` re-reads every reading `held` names."""
    return all(tp in reported and reported[tp] <= off for tp, off in held.items())


@pytest.mark.parametrize(("window", "hop"), [(4, 2), (3, 5), (6, 1)])
@pytest.mark.parametrize("seed", range(4))
def test_a_window_not_flagged_unreported_is_rebuilt_from_the_offsets_last_reported(
    window: int, hop: int, seed: int
) -> None:
    """The changelog rewrites an asset's state only when its window completed or it is
    flagged `unreported`; in between, the offsets it last wrote must still cover its hold."""
    from daemon.windows import AssetWindow, WindowCounters

    geo = WindowGeometry.of(["a", "b"], period_s=1.0, window=window, hop=hop)
    rng = np.random.default_rng(seed)
    w = AssetWindow("pump-b", geo, max_fill=2, lateness_slots=1)
    counters = WindowCounters()
    reported: dict = {}
    offsets = {("sensors", 0): 0, ("sensors", 1): 0}
    slot, flagged = 0, 0
    for _ in range(400):
        slot += int(rng.choice([0, 1, 1, 1, 2, 5]))  # repeats, steps, fills and gaps
        late = slot - int(rng.integers(0, 3))
        tp = ("sensors", int(rng.random() < 0.1))  # now and then from another partition
        channels = ["a", "b"] if rng.random() < 0.7 else [str(rng.choice(["a", "b"]))]
        reading = Reading("pump-b", max(0, late) * S, {c: 1.0 for c in channels})
        ready = w.add(reading, tp, offsets[tp], counters)
        offsets[tp] += 1
        if not ready and not w.unreported:
            assert covered(reported, w.hold()), (reported, w.hold())
        if rng.random() < 0.3:  # a checkpoint: only changed or flagged assets are written
            flagged += w.unreported
            if ready or w.unreported:
                reported = w.report_hold()
        elif ready:
            reported = w.report_hold()  # a completed window is a change the core writes
    assert flagged  # the flag was exercised


def test_the_store_lists_an_asset_until_its_progress_is_reported() -> None:
    store = WindowStore(in_order())
    feed(store, [0, 1, 2])
    assert store.take_unreported() == {"pump-b"}  # new: no state names its readings yet
    assert store.take_unreported() == set()
    assert store.progress("pump-b")[1] == {TP: 0}
    feed(store, [3], start_offset=3)  # its partition, above the reported offset: covered
    assert store.take_unreported() == set()
    other = ("sensors", 1)
    store.add(Reading("pump-b", 4 * S, {"a": 1.0, "b": 2.0}), GEO, other, 0)
    assert store.take_unreported() == {"pump-b"}  # a partition no written state names
    assert other in store.progress("pump-b")[1]
    store.drop_partitions({TP})
    assert store.take_unreported() == set()


def test_an_asset_read_from_two_partitions_is_dropped_with_either() -> None:
    other = ("sensors", 1)
    for revoked in (TP, other):
        store = WindowStore(in_order())
        feed(store, [0, 1, 2])
        store.add(Reading("pump-b", 3 * S, {"a": 1.0, "b": 2.0}), GEO, other, 0)
        feed(store, [0, 1], asset="pump-c")
        assert store.drop_partitions({revoked}) == (
            ["pump-b", "pump-c"] if revoked == TP else ["pump-b"]
        )
    # a partition whose only reading was dropped as too late still names the asset
    store = WindowStore(in_order())
    feed(store, [0, 1, 2, 3])
    assert store.add(Reading("pump-b", 0, {"a": 1.0, "b": 2.0}), GEO, other, 7) == []
    assert store.counters.late_dropped == 1
    assert store.drop_partitions({other}) == ["pump-b"]


def test_one_assets_forward_fill_does_not_reach_anothers_window() -> None:
    """The fill counts of assets filling nothing are one shared array: an asset that fills
    must count on its own."""
    store = WindowStore(in_order(max_fill=1))
    missing_b = {s: {"a": float(s)} for s in (1, 2, 3)}
    (filled,) = feed(store, [0, 1, 2, 3, 4], asset="pump-b", values=missing_b)
    (whole,) = feed(store, [0, 1, 2, 3, 4], asset="pump-c")  # same window ends as pump-b
    assert filled.values[:2, 1].tolist() == [0.0, 0.0]  # filled once from slot 0
    assert np.isnan(filled.values[2:, 1]).all()  # then missing: max_fill reached
    assert whole.values[:, 1].tolist() == [0.0, 10.0, 20.0, 30.0]
    # after a whole row the filling asset counts afresh: slot 6 is filled again
    again = feed(store, [5, 6, 7, 8], asset="pump-b", start_offset=5, values={6: {"a": 6.0}})
    assert again[-1].values[:, 1].tolist() == [40.0, 50.0, 50.0, 70.0]


@pytest.mark.parametrize("seed", range(6))
def test_windows_mixing_whole_and_partial_readings_equal_the_forward_fill_of_each_slots_last_values(
    seed: int,
) -> None:
    """Rows read with every channel are final as read, the others forward-filled: over many
    turns of the ring, every window equals the forward fill computed from the readings."""
    rng = np.random.default_rng(seed)
    channels = ("a", "b", "c")
    geometry = WindowGeometry.of(channels, period_s=1.0, window=6, hop=2)
    max_fill = 2
    store = WindowStore(WindowSettings(max_lateness_s=1, max_fill=max_fill))
    last: dict[int, dict[str, float]] = {}  # per slot, the last value read of each channel
    ready = []
    for slot in range(200):
        for _ in range(int(rng.integers(1, 3))):  # a second reading of a slot replaces values
            if rng.random() < 0.6:
                values = {c: float(rng.normal()) for c in channels}
            else:
                values = {c: float(rng.normal()) for c in channels if rng.random() < 0.5}
            if values:
                last.setdefault(slot, {}).update(values)
                ready += store.add(Reading("pump", slot * S, values), geometry, TP, slot)
    assert len(ready) > 80
    expected: dict[int, list[float]] = {}
    since = dict.fromkeys(channels, 0)  # slots filled in a row, per channel
    for slot in range(200):
        row = []
        for i, c in enumerate(channels):
            if c in last.get(slot, {}):
                row.append(last[slot][c])
                since[c] = 0
            elif slot and since[c] < max_fill:
                row.append(expected[slot - 1][i])
                since[c] += 1
            else:
                row.append(float("nan"))
                since[c] += 1
        expected[slot] = row
    for w in ready:
        end = w.end_ns // S
        want = np.array([expected[s] for s in range(end - 5, end + 1)], np.float32)
        np.testing.assert_array_equal(w.values, want)


class _GeneralPathOnly(AssetWindow):
    """Every reading through `_add_any`: the reference for `add`'s fast path."""

    __slots__ = ()

    def add(
        self, reading: Reading, tp: TopicPartitionId, offset: int, counters: WindowCounters
    ) -> list[ReadyWindow]:
        slot = reading.ts_ns // self.geometry.period_ns
        return self._add_any(slot, reading.values, tp, offset, counters)


@pytest.mark.parametrize("seed", range(6))
def test_the_next_slot_fast_path_hands_out_what_the_general_path_does(seed: int) -> None:
    """Mostly whole readings in order (the fast path), mixed with partial, late, repeated and
    skipped slots, gaps and a second partition, after a restart: both give the same windows,
    offsets, holds and counters."""
    rng = np.random.default_rng(seed)
    geometry = WindowGeometry.of(["a", "b", "c"], period_s=1.0, window=6, hop=3)
    written = 110 + (2 - 110 - window_phase("pump-b", 3)) % 3  # a window end
    fast, slow = (
        # windows up to the one ending at `written` were written before a restart
        cls("pump-b", geometry, 2, int(seed % 3), resume_after_ns=written * S)
        for cls in (AssetWindow, _GeneralPathOnly)
    )
    counters = (WindowCounters(), WindowCounters())
    slot, out = 100, ([], [])
    for offset in range(600):
        r = rng.random()
        if r < 0.04:
            slot += int(rng.integers(2, 7))  # skipped slots: forward fill or a gap reset
        elif r < 0.08:
            slot -= int(rng.integers(0, 4))  # repeated or late
        else:
            slot += 1
        names = ["a", "b", "c"] if rng.random() > 0.1 else ["a", "c"]
        values = {n: float(rng.normal()) for n in names}
        # a second partition late on: from then on every reading takes the general path
        tp = ("sensors", 1) if offset > 450 and rng.random() < 0.05 else ("sensors", 0)
        for window, count, got in zip((fast, slow), counters, out, strict=True):
            got += window.add(Reading("pump-b", slot * S, dict(values)), tp, offset, count)
            if offset % 50 == 0:
                got.append(window.report_hold())  # type: ignore[arg-type]
    assert len(out[0]) > 100
    for a, b in zip(*out, strict=True):
        if isinstance(a, dict):
            assert a == b
            continue
        assert (a.end_ns, a.gap, a.offsets, a.late) == (b.end_ns, b.gap, b.offsets, b.late)
        np.testing.assert_array_equal(a.values, b.values)
    assert vars_of(counters[0]) == vars_of(counters[1])
    assert fast.hold() == slow.hold() and fast.unreported == slow.unreported


def vars_of(counters: WindowCounters) -> tuple[int, int, int]:
    return counters.late_dropped, counters.gap_resets, counters.evicted
