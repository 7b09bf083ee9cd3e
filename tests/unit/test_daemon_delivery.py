from daemon.delivery import CommitLedger

A = ("sensors", 0)
B = ("sensors", 1)


def test_nothing_pending_commits_last_consumed_plus_one() -> None:
    ledger = CommitLedger()
    for off in range(10):
        ledger.consumed(A, off)
    assert ledger.committable() == {A: 10}


def test_unacknowledged_ticket_holds_its_first_offset() -> None:
    ledger = CommitLedger()
    for off in range(10):
        ledger.consumed(A, off)
    t = ledger.new_ticket()
    ledger.track(t, {A: 4})
    assert ledger.committable() == {A: 4}
    ledger.acknowledge([t])
    assert ledger.committable() == {A: 10}


def test_window_hold_limits_the_commit() -> None:
    ledger = CommitLedger()
    for off in range(10):
        ledger.consumed(A, off)
        ledger.consumed(B, off)
    assert ledger.committable(hold={A: 7}) == {A: 7, B: 10}


def test_out_of_order_acknowledgements_step_by_step() -> None:
    ledger = CommitLedger()
    for off in range(30):
        ledger.consumed(A, off)
    t1, t2, t3 = ledger.new_ticket(), ledger.new_ticket(), ledger.new_ticket()
    ledger.track(t1, {A: 5})
    ledger.track(t2, {A: 12})
    ledger.track(t3, {A: 20})
    hold = {A: 25}
    assert ledger.committable(hold) == {A: 5}
    ledger.acknowledge([t3])  # the newest first: nothing moves
    assert ledger.committable(hold) == {A: 5}
    ledger.acknowledge([t1])
    assert ledger.committable(hold) == {A: 12}
    ledger.committed({A: 12})
    assert ledger.committable(hold) == {}  # no advance, nothing to commit
    ledger.acknowledge([t2])
    assert ledger.committable(hold) == {A: 25}


def test_commits_never_go_backwards() -> None:
    ledger = CommitLedger()
    for off in range(10):
        ledger.consumed(A, off)
    ledger.committed({A: 10})
    ledger.consumed(A, 3)  # re-read after a seek back
    t = ledger.new_ticket()
    ledger.track(t, {A: 2})
    assert ledger.committable() == {}


def test_mark_settles_when_its_tickets_are_acknowledged() -> None:
    ledger = CommitLedger()
    for off in range(10):
        ledger.consumed(A, off)
    t1 = ledger.new_ticket()
    ledger.track(t1, {A: 3})
    mark = ledger.mark(hold={A: 8})
    assert mark.offsets == {A: 8}
    t2 = ledger.new_ticket()  # later tickets do not delay the mark
    ledger.track(t2, {A: 8})
    assert not ledger.settled(mark)
    ledger.acknowledge([t1])
    assert ledger.settled(mark)


def test_forget_drops_revoked_partition_state() -> None:
    ledger = CommitLedger()
    ledger.consumed(A, 1)
    ledger.consumed(B, 1)
    t = ledger.new_ticket()
    ledger.track(t, {A: 0, B: 0})
    ledger.forget([A])
    assert ledger.committable() == {B: 0}
    assert ledger.pending == 1
    ledger.forget([B])
    assert ledger.pending == 0


def test_changelog_lag_counts_states_until_acknowledged_and_keeps_the_age_of_a_failure() -> None:
    from prometheus_client import REGISTRY

    from daemon.changelog import ChangelogLag

    def shown() -> tuple[float | None, float | None]:  # as /metrics shows them
        return (
            REGISTRY.get_sample_value("seqae_changelog_lag_states"),
            REGISTRY.get_sample_value("seqae_changelog_lag_seconds"),
        )

    now = [100.0]
    lag = ChangelogLag(clock=lambda: now[0])
    assert shown() == (0, 0)
    lag.taken(3)
    now[0] += 2.5
    lag.waiting(3)  # its points are not acknowledged yet
    assert shown() == (3, 2.5)
    lag.failed(3)  # the changelog refused: taken again by the next checkpoint, age kept
    lag.taken(4)
    now[0] += 1.0
    assert shown() == (4, 3.5)
    lag.acknowledged()
    assert shown() == (0, 0)
    lag.taken(0)  # nothing changed: nothing waits
    now[0] += 5
    assert shown() == (0, 0)
