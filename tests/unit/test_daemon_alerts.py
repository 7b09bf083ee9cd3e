import json

import numpy as np

from daemon.alerts import AlertBook
from daemon.settings import AlertSettings

S = 1_000_000_000
CH = ("pressure", "flow", "temp")


def run(
    book: AlertBook, ratios: list[float], start: int = 0, asset: str = "p1"
) -> list[tuple[int, str, str]]:
    events = []
    for i, r in enumerate(ratios):
        contrib = np.array([0.1, r, 0.2])
        for e in book.observe(asset, "pumps", (start + i) * S, r * 2.0, 2.0, contrib, CH):
            events.append((start + i, e.state, e.severity))
    return events


def test_hysteresis_opens_above_enter_and_closes_below_exit() -> None:
    book = AlertBook(AlertSettings(enter_level=1.0, exit_level=0.8, update_every_s=1000))
    ev = run(book, [0.5, 1.2, 0.9, 0.95, 0.7, 0.5])
    assert ev == [(1, "open", "warning"), (4, "closed", "warning")]


def test_min_duration_suppresses_short_excursions() -> None:
    book = AlertBook(AlertSettings(min_duration_s=2, update_every_s=1000))
    assert run(book, [1.5, 1.5, 0.5, 1.5, 1.5, 1.5, 0.5]) == [
        (5, "open", "warning"),
        (6, "closed", "warning"),
    ]


def test_cooldown_blocks_reopening() -> None:
    book = AlertBook(AlertSettings(cooldown_s=3, update_every_s=1000))
    ev = run(book, [1.5, 0.5, 1.5, 1.5, 1.5, 0.5])
    assert ev == [
        (0, "open", "warning"),
        (1, "closed", "warning"),
        (4, "open", "warning"),
        (5, "closed", "warning"),
    ]


def test_severity_escalation_and_periodic_updates() -> None:
    book = AlertBook(AlertSettings(critical_level=2.0, update_every_s=2))
    ev = run(book, [1.2, 1.3, 2.5, 1.5, 1.5, 1.5, 0.1])
    assert ev == [
        (0, "open", "warning"),
        (2, "update", "critical"),
        (4, "update", "critical"),
        (6, "closed", "critical"),
    ]


def test_event_fields_and_top_channels() -> None:
    book = AlertBook(AlertSettings(top_channels=2, update_every_s=1000))
    events = book.observe("p1", "pumps", 5 * S, 3.0, 2.0, np.array([0.5, 2.0, 0.5]), CH)
    (e,) = events
    assert e.top_channels == ("flow", "pressure")
    p = e.to_point()
    assert p.measurement == "seqae_alert" and p.tags == {
        "asset": "p1",
        "profile": "pumps",
        "severity": "warning",
    }
    assert p.fields["state"] == "open" and p.fields["top_channels"] == "flow,pressure"
    (closed,) = book.observe("p1", "pumps", 9 * S, 0.1, 2.0, np.array([0.0, 0.0, 0.1]), CH)
    assert closed.duration_s == 4.0 and closed.peak_score == 3.0
    assert closed.top_channels == ("flow", "pressure")  # those at the peak


def test_state_survives_a_restart_and_old_windows_are_ignored() -> None:
    settings = AlertSettings(update_every_s=1000)
    book = AlertBook(settings)
    run(book, [0.5, 1.5, 1.6])
    saved = json.loads(json.dumps(book.to_dict()))
    restored = AlertBook(settings)
    restored.restore(saved)
    assert restored.open_count == 1
    assert run(restored, [1.5, 1.6]) == []  # windows 0..1 re-read after a crash: no new events
    assert run(restored, [0.2], start=3) == [(3, "closed", "warning")]


def test_restore_rejects_bad_state_naming_the_asset() -> None:
    book = AlertBook(AlertSettings())
    try:
        book.restore({"p7": {"asset": "p7", "bogus": 1}})
    except ValueError as exc:
        assert "p7" in str(exc)
    else:
        raise AssertionError("bad state accepted")


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
