import json

import numpy as np
import pytest
from pydantic import ValidationError

from daemon.alerts import AlertBook, AlertEvent, alert_point
from daemon.lineprotocol import encode
from daemon.settings import AlertSettings

S = 1_000_000_000
CH = ("pressure", "flow", "temp")


def feed(
    book: AlertBook, ratios: list[float], start: int = 0, asset: str = "p1"
) -> list[tuple[int, AlertEvent]]:
    """One window per second from `start`, score = ratio * threshold; (second, event) pairs."""
    events = []
    for i, r in enumerate(ratios):
        contrib = np.array([0.1, r, 0.2])
        for e in book.observe(asset, "pumps", (start + i) * S, r * 2.0, 2.0, contrib, CH):
            events.append((start + i, e))
    return events


def run(
    book: AlertBook, ratios: list[float], start: int = 0, asset: str = "p1"
) -> list[tuple[int, str, str]]:
    return [(t, e.state, e.severity) for t, e in feed(book, ratios, start, asset)]


def test_hysteresis_opens_above_enter_and_closes_below_exit() -> None:
    book = AlertBook(
        AlertSettings(enter_level=1.0, exit_level=0.8, clear_duration_s=0, update_every_s=1000)
    )
    ev = run(book, [0.5, 1.2, 0.9, 0.95, 0.7, 0.5])
    assert ev == [(1, "open", "warning"), (4, "closed", "warning")]


def test_min_duration_suppresses_short_excursions() -> None:
    book = AlertBook(AlertSettings(min_duration_s=2, clear_duration_s=0, update_every_s=1000))
    assert run(book, [1.5, 1.5, 0.5, 1.5, 1.5, 1.5, 0.5]) == [
        (5, "open", "warning"),
        (6, "closed", "warning"),
    ]


def test_severity_escalation_and_periodic_updates() -> None:
    book = AlertBook(AlertSettings(critical_level=2.0, clear_duration_s=0, update_every_s=2))
    ev = run(book, [1.2, 1.3, 2.5, 1.5, 1.5, 1.5, 0.1])
    assert ev == [
        (0, "open", "warning"),
        (2, "update", "critical"),
        (4, "update", "critical"),
        (6, "closed", "critical"),
    ]


# --- alert ids --------------------------------------------------------------------------------


def test_one_alert_keeps_one_id_across_open_updates_and_close() -> None:
    book = AlertBook(AlertSettings(min_duration_s=1, clear_duration_s=0, update_every_s=1))
    events = [e for _, e in feed(book, [0.5, 1.5, 1.6, 1.7, 0.2, 0.3, 1.5, 1.5, 0.1], start=10)]
    assert [e.state for e in events] == ["open", "update", "closed", "open", "closed"]
    first, second = {e.alert_id for e in events[:3]}, {e.alert_id for e in events[3:]}
    assert first == {"p1@11000000000"}  # the opening time: the excursion's first window
    assert second == {"p1@16000000000"}
    assert all(not e.reopened for e in events)


def test_alert_ids_are_deterministic_for_the_same_stream() -> None:
    ratios = [0.5, 1.5, 1.6, 0.2, 0.4, 2.5, 2.6, 0.1, 0.1]

    def ids(asset: str) -> list[tuple[int, str, str]]:
        book = AlertBook(AlertSettings(clear_duration_s=0, update_every_s=1))
        return [(t, e.state, e.alert_id) for t, e in feed(book, ratios, asset=asset)]

    first, replay = ids("p1"), ids("p1")
    assert first == replay and len({i for _, _, i in first}) == 2
    other = {i for _, _, i in ids("p2")}
    assert other.isdisjoint({i for _, _, i in first})  # another asset: other ids


def test_event_fields_and_top_channels() -> None:
    book = AlertBook(AlertSettings(top_channels=2, clear_duration_s=0, update_every_s=1000))
    events = book.observe("p1", "pumps", 5 * S, 3.0, 2.0, np.array([0.5, 2.0, 0.5]), CH)
    (e,) = events
    assert e.top_channels == ("flow", "pressure")
    p = alert_point(e)
    assert p.measurement == "seqae_alert" and p.tags == {
        "asset": "p1",
        "profile": "pumps",
        "severity": "warning",
    }
    assert p.fields["state"] == "open" and p.fields["top_channels"] == "flow,pressure"
    assert p.fields["alert_id"] == "p1@5000000000" and p.fields["reopened"] is False
    (closed,) = book.observe("p1", "pumps", 9 * S, 0.1, 2.0, np.array([0.0, 0.0, 0.1]), CH)
    assert closed.duration_s == 4.0 and closed.peak_score == 3.0
    assert closed.top_channels == ("flow", "pressure")  # those at the peak
    assert closed.alert_id == e.alert_id


def test_line_protocol_and_json_carry_the_alert_id() -> None:
    book = AlertBook(AlertSettings(clear_duration_s=0, cooldown_s=10, update_every_s=1000))
    events = [e for _, e in feed(book, [1.5, 0.1, 1.5], start=7, asset="pump 7")]
    opened, _, reopened = events
    line = encode(alert_point(opened))
    assert line.startswith("seqae_alert,asset=pump\\ 7,profile=pumps,severity=warning ")
    assert 'alert_id="pump 7@7000000000"' in line and "reopened=false" in line
    assert "reopened=true" in encode(alert_point(reopened))
    doc = json.loads(json.dumps(reopened.to_json()))
    assert doc["alert_id"] == "pump 7@7000000000" and doc["reopened"] is True
    assert doc["state"] == "open" and doc["top_channels"] == ["flow", "temp", "pressure"]


# --- closing needs the exit level held -------------------------------------------------------


def test_one_window_below_exit_does_not_close() -> None:
    book = AlertBook(AlertSettings(clear_duration_s=2, update_every_s=1000))
    assert run(book, [1.5, 0.5, 1.5, 1.5]) == [(0, "open", "warning")]
    assert book.open_count == 1


def test_a_dip_shorter_than_clear_duration_keeps_the_alert_open() -> None:
    book = AlertBook(AlertSettings(clear_duration_s=3, update_every_s=1000))
    # below exit at 1..2 (2 s), back at exactly exit_level at 3, below from 4: closes at 7
    events = feed(book, [1.5, 0.5, 0.5, 0.8, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert [(t, e.state) for t, e in events] == [(0, "open"), (7, "closed")]
    closed = events[-1][1]
    assert closed.duration_s == 7.0 and closed.alert_id == events[0][1].alert_id


def test_a_window_between_exit_and_enter_also_restarts_the_clearing() -> None:
    book = AlertBook(AlertSettings(clear_duration_s=2, update_every_s=1000))
    assert run(book, [1.5, 0.5, 0.9, 0.5, 0.5, 0.5]) == [
        (0, "open", "warning"),
        (5, "closed", "warning"),
    ]


def test_clear_duration_is_a_setting_with_a_checked_range() -> None:
    assert AlertSettings().clear_duration_s > 0  # by default a single window never closes
    with pytest.raises(ValidationError, match="clear_duration_s"):
        AlertSettings(clear_duration_s=-1)


# --- a fault that continues through the cooldown -----------------------------------------------


def test_a_fault_back_within_the_cooldown_reopens_the_same_alert() -> None:
    book = AlertBook(AlertSettings(cooldown_s=3, clear_duration_s=0, update_every_s=1000))
    events = feed(book, [1.5, 0.5, 1.5, 1.5, 0.5, 0.5, 0.5, 1.5, 0.5])
    assert [(t, e.state, e.reopened) for t, e in events] == [
        (0, "open", False),
        (1, "closed", False),
        (2, "open", True),  # within 3 s of the close: the same alert
        (4, "closed", False),
        (7, "open", False),  # 3 s after the close at 4: a new alert
        (8, "closed", False),
    ]
    ids = [e.alert_id for _, e in events]
    assert ids[:4] == ["p1@0"] * 4 and ids[4:] == ["p1@7000000000"] * 2
    assert events[2][1].duration_s == 2.0 and events[3][1].duration_s == 4.0
    assert book.open_count == 0


def test_a_reopen_needs_the_minimum_duration_too() -> None:
    book = AlertBook(
        AlertSettings(min_duration_s=2, cooldown_s=10, clear_duration_s=0, update_every_s=1000)
    )
    events = feed(book, [1.5, 1.5, 1.5, 0.5, 1.5, 0.5, 1.5, 1.5, 1.5])
    assert [(t, e.state, e.reopened) for t, e in events] == [
        (2, "open", False),
        (3, "closed", False),
        (8, "open", True),  # the one-window excursion at 4 re-opened nothing
    ]
    assert {e.alert_id for _, e in events} == {"p1@0"}
    assert events[-1][1].duration_s == 8.0


def test_a_reopened_alert_keeps_its_peak_and_raises_it_when_the_fault_grows() -> None:
    settings = AlertSettings(cooldown_s=100, clear_duration_s=0, critical_level=2.5)
    book = AlertBook(settings)
    events = [e for _, e in feed(book, [3.0, 0.1, 1.5, 0.1, 4.0, 0.1])]
    assert [(e.state, e.peak_score, e.severity) for e in events] == [
        ("open", 6.0, "critical"),
        ("closed", 6.0, "critical"),
        ("open", 6.0, "critical"),  # back at 1.5: the alert's peak (3.0 * 2.0) stays
        ("closed", 6.0, "critical"),
        ("open", 8.0, "critical"),  # back at 4.0: a new peak
        ("closed", 8.0, "critical"),
    ]
    assert events[-1].top_channels == ("flow", "temp", "pressure")


def test_an_excursion_outside_the_cooldown_does_not_inherit_the_old_peak() -> None:
    book = AlertBook(AlertSettings(cooldown_s=2, clear_duration_s=0, critical_level=2.5))
    events = [e for _, e in feed(book, [3.0, 0.1, 0.1, 0.1, 1.5, 0.1])]
    assert [(e.state, e.peak_score, e.severity) for e in events][2:] == [
        ("open", 3.0, "warning"),
        ("closed", 3.0, "warning"),
    ]


# --- state across restarts --------------------------------------------------------------------


def test_state_survives_a_restart_and_old_windows_are_ignored() -> None:
    settings = AlertSettings(clear_duration_s=0, update_every_s=1000)
    book = AlertBook(settings)
    run(book, [0.5, 1.5, 1.6])
    saved = json.loads(json.dumps(book.to_dict()))
    restored = AlertBook(settings)
    restored.restore(saved)
    assert restored.open_count == 1
    assert run(restored, [1.5, 1.6]) == []  # windows 0..1 re-read after a crash: no new events
    assert run(restored, [0.2], start=3) == [(3, "closed", "warning")]


def test_a_restart_while_clearing_or_in_cooldown_continues_where_it_was() -> None:
    settings = AlertSettings(clear_duration_s=2, cooldown_s=5, update_every_s=1000)
    ratios = [1.5, 0.5, 0.5, 0.5, 1.5, 0.5, 0.5, 0.5]
    straight = [(t, e.to_json()) for t, e in feed(AlertBook(settings), ratios)]
    for cut in range(1, len(ratios)):
        book = AlertBook(settings)
        events = feed(book, ratios[:cut])
        restored = AlertBook(settings)
        restored.restore(json.loads(json.dumps(book.to_dict())))
        events += feed(restored, ratios[cut:], start=cut)
        assert [(t, e.to_json()) for t, e in events] == straight, f"restart after window {cut}"
    assert [(t, e["state"], e["reopened"]) for t, e in straight] == [
        (0, "open", False),
        (3, "closed", False),
        (4, "open", True),
        (7, "closed", False),
    ]


def test_restore_accepts_state_written_before_alert_ids_and_clearing() -> None:
    """A state dict as the previous version wrote it: an open alert and a pending excursion."""
    old_open = {
        "asset": "p1",
        "profile": "pumps",
        "phase": "open",
        "above_since_ns": 1 * S,
        "opened_ns": 1 * S,
        "peak_score": 3.2,
        "peak_ratio": 1.6,
        "peak_channels": ["flow", "temp", "pressure"],
        "last_event_ns": 1 * S,
        "severity": "warning",
        "cooldown_until_ns": -1,
        "last_ts_ns": 2 * S,
    }
    old_pending = {
        **old_open,
        "asset": "p2",
        "phase": "pending",
        "above_since_ns": 2 * S,
        "opened_ns": 0,
        "peak_score": 5.0,
        "peak_ratio": 2.5,
        "peak_channels": ["temp", "flow", "pressure"],
        "last_event_ns": 0,
    }
    settings = AlertSettings(min_duration_s=1, clear_duration_s=1, update_every_s=1000)
    book = AlertBook(settings)
    book.restore({"p1": old_open, "p2": old_pending})
    assert book.open_count == 1
    (closed,) = [e for _, e in feed(book, [0.5, 0.5], start=3)]
    assert (closed.state, closed.time_ns, closed.alert_id) == ("closed", 4 * S, "p1@1000000000")
    assert closed.peak_score == 3.2 and closed.duration_s == 3.0
    (opened,) = [e for _, e in feed(book, [1.5], start=3, asset="p2")]
    assert (opened.state, opened.alert_id, opened.reopened) == ("open", "p2@2000000000", False)
    assert opened.peak_score == 5.0 and opened.severity == "critical"  # the pending peak kept
    assert {"clear_since_ns", "pending_peak_ratio"} <= set(book.to_dict()["p1"])


def test_restore_rejects_bad_state_naming_the_asset() -> None:
    book = AlertBook(AlertSettings())
    for bad in ({"asset": "p7", "bogus": 1}, ["not", "a", "dict"]):
        with pytest.raises(ValueError, match="p7"):
            book.restore({"p7": bad})


def test_a_window_without_observed_samples_changes_nothing() -> None:
    book = AlertBook(AlertSettings(update_every_s=1000))
    run(book, [1.5])
    assert book.observe("p1", "pumps", 5 * S, float("nan"), 2.0, np.full(3, np.nan), CH) == []
    assert book.open_count == 1
    idle = AlertBook(AlertSettings())
    assert idle.observe("p2", "pumps", S, float("nan"), 2.0, np.full(3, np.nan), CH) == []
    assert idle.open_count == 0


def test_forget_drops_a_revoked_assets_state() -> None:
    book = AlertBook(AlertSettings(update_every_s=1000))
    run(book, [1.5], asset="p1")
    run(book, [1.5], asset="p2")
    book.forget(["p1"])
    assert set(book.to_dict()) == {"p2"}


def test_a_tracker_that_never_ranked_channels_writes_them_as_empty_lists() -> None:
    """A quiet asset's tracker holds no channel lists of its own; its state is as before."""
    book = AlertBook(AlertSettings(update_every_s=1000))
    run(book, [0.5], asset="quiet")
    state = book.tracker_state("quiet")
    assert state is not None
    assert state["peak_channels"] == [] and state["pending_peak_channels"] == []
    assert json.loads(json.dumps(state)) == state
    book.restore_tracker("quiet", state)
    assert book.tracker_state("quiet") == state
    assert run(book, [1.5], start=1, asset="quiet") == [(1, "open", "warning")]
