"""The dead leader's grace period, on a clock the test passes in."""

from __future__ import annotations

from nodes.devnet.handover import LEADER_GRACE, LeaderWatch


def test_a_leader_is_dead_only_after_the_grace_period_of_silence() -> None:
    watch = LeaderWatch(grace=2.0)
    assert not watch.is_dead(100.0)  # the first missed answer starts the clock
    assert not watch.is_dead(101.9)
    assert watch.is_dead(102.0)
    assert watch.is_dead(150.0)


def test_an_answer_ends_the_silence() -> None:
    watch = LeaderWatch(grace=2.0)
    assert not watch.is_dead(100.0)
    watch.answered()
    assert not watch.is_dead(101.5)  # silent again from 101.5, not from 100
    assert not watch.is_dead(103.0)
    assert watch.is_dead(103.5)


def test_the_default_grace_is_leader_grace() -> None:
    watch = LeaderWatch()
    assert not watch.is_dead(0.0)
    assert not watch.is_dead(LEADER_GRACE - 0.01)
    assert watch.is_dead(LEADER_GRACE)
