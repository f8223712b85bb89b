"""The pause a promotion takes: sync loops enter and leave rounds; a pause waits for those in one and holds the rest.

Real threads and a real condition variable; every wait is bounded by an event or a timeout.
"""

from __future__ import annotations

import threading
import time

from nodes.devnet.sync import SyncRounds


def make_rounds(leader: str = "node-0") -> tuple[SyncRounds, threading.Event, list[str]]:
    stopping = threading.Event()
    current = [leader]
    return SyncRounds(lambda: current[0], stopping), stopping, current


def test_a_round_uses_the_leader_of_the_moment_it_starts() -> None:
    rounds, _, current = make_rounds()
    assert rounds.enter("node-1") == "node-0"
    rounds.leave("node-1")
    current[0] = "node-2"
    assert rounds.enter("node-1") == "node-2"
    rounds.leave("node-1")


def test_a_pause_waits_for_the_round_in_progress_and_holds_new_ones() -> None:
    rounds, _, current = make_rounds()
    assert rounds.enter("node-1") == "node-0"
    paused, release, entered = threading.Event(), threading.Event(), threading.Event()
    got: list[str | None] = []

    def promote() -> None:
        with rounds.paused(timeout=10):
            paused.set()
            current[0] = "node-2"  # what a promotion changes while no round runs
            release.wait(10)

    def next_round() -> None:
        got.append(rounds.enter("node-3"))
        entered.set()
        rounds.leave("node-3")

    promoter = threading.Thread(target=promote)
    promoter.start()
    assert not paused.wait(0.3), "the pause began while node-1 was in a round"
    rounds.leave("node-1")
    assert paused.wait(5), "the pause did not begin once the round was over"
    follower = threading.Thread(target=next_round)
    follower.start()
    assert not entered.wait(0.3), "a round began during the pause"
    release.set()
    promoter.join(5)
    assert entered.wait(5), "the held round did not begin after the pause"
    follower.join(5)
    assert got == ["node-2"]  # it syncs from the new leader, never the old one


def test_a_pause_gives_up_waiting_after_its_timeout() -> None:
    rounds, _, _ = make_rounds()
    rounds.enter("node-1")  # a round that never ends
    started = time.monotonic()
    with rounds.paused(timeout=0.2):
        waited = time.monotonic() - started
    assert 0.2 <= waited < 5


def test_stopping_releases_a_loop_held_by_a_pause() -> None:
    rounds, stopping, _ = make_rounds()
    got: list[str | None] = ["unset"]
    done = threading.Event()

    def next_round() -> None:
        got[0] = rounds.enter("node-1")
        done.set()

    with rounds.paused(timeout=1):
        loop = threading.Thread(target=next_round)
        loop.start()
        assert not done.wait(0.2)
        stopping.set()
        rounds.wake()
        assert done.wait(5), "a stopping devnet left a sync loop waiting"
    loop.join(5)
    assert got == [None]
