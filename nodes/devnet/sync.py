"""Follower sync: one thread per follower keeps it on the leader's chain, round by round.

Each round forwards the follower's pool to the leader, then imports up to
IMPORT_BATCH leader blocks (:class:`~nodes.devnet.importer.BlockImporter`) or
checks that the follower is still on the leader's chain, and publishes what it
saw as the follower's sync status. A promotion pauses the rounds
(:class:`SyncRounds`): no follower may forward transactions to a leader that is
being replaced.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from errors import ChainDiverged, NodeError, NodeUnreachable, RpcError
from nodepool.rpc import RpcClient, to_int
from nodepool.spec import ROLE_LEADER, NodeSpec
from nodepool.sync import DIVERGED, SYNC_STOPPED, SYNCED, SYNCING, SyncStatus
from nodes.devnet.importer import BlockImporter

log = logging.getLogger(__name__)

#: Blocks a follower imports before it looks at its pool and the leader again.
IMPORT_BATCH = 64
#: Seconds between two rounds of a sync loop.
POLL_INTERVAL = 0.02
#: Seconds a promotion waits for the sync loops to finish the round they are in.
QUIESCE_TIMEOUT = 10.0


class SyncRounds:
    """Which sync loops are in a round, and the pause a promotion takes between two rounds."""

    def __init__(self, leader: Callable[[], str], stopping: threading.Event) -> None:
        self._leader = leader
        self._stopping = stopping
        self._cond = threading.Condition()
        self._busy: dict[str, str] = {}  # node id -> the leader its round uses
        self._held: set[str] = set()  # nodes whose loop may not start a round (being restarted)
        self._paused = 0

    def enter(self, node_id: str) -> str | None:
        """Wait out a pause, then mark ``node_id`` busy; returns the leader to sync from (None when stopping)."""
        with self._cond:
            while (self._paused or node_id in self._held) and not self._stopping.is_set():
                self._cond.wait(0.1)
            if self._stopping.is_set():
                return None
            leader = self._busy[node_id] = self._leader()
            return leader

    def leave(self, node_id: str) -> None:
        """``node_id``'s round is over."""
        with self._cond:
            self._busy.pop(node_id, None)
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every loop waiting out a pause (to see that the devnet is stopping)."""
        with self._cond:
            self._cond.notify_all()

    @contextmanager
    def held(self, node_id: str, timeout: float = QUIESCE_TIMEOUT) -> Iterator[None]:
        """Keep ``node_id``'s loop out of rounds, after the one it is in (bounded wait), until the block ends.

        A restart holds its node: a round begun on the old node must not import into the new one
        under the old generation (its blocks would count for neither).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._held.add(node_id)
            while node_id in self._busy and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            if node_id in self._busy:
                log.warning("%s: sync round still busy after %.0f s", node_id, timeout)
        try:
            yield
        finally:
            with self._cond:
                self._held.discard(node_id)
                self._cond.notify_all()

    @contextmanager
    def paused(self, timeout: float = QUIESCE_TIMEOUT) -> Iterator[None]:
        """Pause the sync loops between two rounds (bounded wait for those in a round)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._paused += 1
            while self._busy and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            if self._busy:
                log.warning("sync loops still busy after %.0f s: %s", timeout, sorted(self._busy))
        try:
            yield
        finally:
            with self._cond:
                self._paused -= 1
                self._cond.notify_all()


class Network(Protocol):
    """What a follower's sync loop needs of the devnet it belongs to."""

    @property
    def leader_id(self) -> str: ...

    def spec(self, node_id: str) -> NodeSpec: ...

    def client(self, node_id: str, *, timeout: float | None = None) -> RpcClient: ...

    def status_of(self, node_id: str) -> SyncStatus | None: ...

    def record_status(
        self,
        node_id: str,
        status: str,
        *,
        head: int | None = None,
        leader_head: int | None = None,
        error: str = "",
        generation: int | None = None,
        counters: tuple[int, int, int] | None = None,
    ) -> None: ...


class FollowerSync:
    """Keeps one follower on the leader's chain until it is promoted or the devnet stops (run it in a thread)."""

    def __init__(self, network: Network, node_id: str, *, rounds: SyncRounds, stopping: threading.Event) -> None:
        self.network = network
        self.node_id = node_id
        self.rounds = rounds
        self.stopping = stopping

    def run(self) -> None:
        """The loop: a round at a time, each under the pause a promotion can take."""
        node_id, network = self.node_id, self.network
        generation, diverged_in = -1, -1
        importer: BlockImporter | None = None
        forwarded_to = ""
        while not self.stopping.is_set():
            spec = network.spec(node_id)
            if spec.role == ROLE_LEADER:
                self._keep_undelivered(importer)
                return  # promoted: it mines now
            if spec.generation == diverged_in:
                self.stopping.wait(0.2)  # diverged: wait for a restart (a new generation)
                continue
            leader_id = self.rounds.enter(node_id)
            if leader_id is None:
                return
            try:
                spec = network.spec(node_id)
                if spec.role == ROLE_LEADER:
                    self._keep_undelivered(importer)
                    return
                if spec.generation != generation or importer is None:
                    generation, forwarded_to = spec.generation, leader_id
                    # Bytes dropped from the old generation's pool that no leader took yet still go to one.
                    carried = importer.undelivered if importer is not None else []
                    importer = BlockImporter(network.client(node_id), node_id=node_id)
                    importer.undelivered[:] = carried
                if forwarded_to != leader_id:
                    # A new leader has seen none of what we forwarded to the old one (a dead leader's
                    # pool is gone): the queued transactions here go to the new leader again.
                    importer.forget_forwarded()
                    forwarded_to = leader_id
                self.sync_round(leader_id, generation, importer)
            except ChainDiverged as exc:
                log.error("%s", exc)
                network.record_status(node_id, DIVERGED, error=str(exc), generation=generation)
                diverged_in = generation
                continue
            except (NodeUnreachable, RpcError) as exc:
                self._note_failure(leader_id, generation, exc)
                self.stopping.wait(0.2)
                continue
            except Exception as exc:  # a sync thread must outlive any surprise; it is logged with its traceback
                log.exception("%s: sync round failed", node_id)
                network.record_status(node_id, SYNC_STOPPED, error=f"sync failed: {exc!r}", generation=generation)
                self.stopping.wait(1.0)
                continue
            finally:
                self.rounds.leave(node_id)
            self.stopping.wait(POLL_INTERVAL)

    def _keep_undelivered(self, importer: BlockImporter | None) -> None:
        """Promoted: the bytes its last rounds dropped here and could not hand the old leader go to its own pool."""
        if importer is None or not importer.undelivered:
            return
        try:
            sent = importer.deliver(self.network.client(self.node_id))
        except (NodeUnreachable, RpcError) as exc:
            log.error("%s: %d transaction(s) dropped here for the old leader are lost: %s",
                      self.node_id, len(importer.undelivered), exc)
            return
        log.warning("%s: promoted with %d transaction(s) the old leader never took; now in its own pool", self.node_id, sent)

    def sync_round(self, leader_id: str, generation: int, importer: BlockImporter) -> None:
        """One round: forward our pool, then import up to IMPORT_BATCH leader blocks or check we are on its chain."""
        node_id, network = self.node_id, self.network
        leader = network.client(leader_id)
        latest = importer.follower.call("eth_getBlockByNumber", ["latest", False])
        head = to_int(latest["number"])
        importer.forward(leader)
        leader_head = to_int(leader.call("eth_blockNumber"))
        self._note_leader_head(leader_id, leader_head)
        if head > leader_head:
            importer.check_common_ancestor(leader, leader_head)
            raise ChainDiverged(
                f"{node_id}: block {head} exists here but not on the leader, whose head is {leader_head}", node_id=node_id
            )
        if (head, latest["hash"]) != importer.verified:
            # A head we did not import ourselves (the first round of this node's life, or a block
            # mined or replaced behind our back): it must be the leader's block at that height.
            importer.check_common_ancestor(leader, head)
        if head < leader_head:
            network.record_status(node_id, SYNCING, head=head, leader_head=leader_head, generation=generation, counters=importer.counters())
            head = importer.import_range(leader, head + 1, min(leader_head, head + IMPORT_BATCH))
            status = SYNCED if head == leader_head else SYNCING
            network.record_status(node_id, status, head=head, leader_head=leader_head, generation=generation, counters=importer.counters())
            return
        st = network.status_of(node_id)
        if st is None or st.status != SYNCED or st.head != head or st.leader_head != leader_head:
            network.record_status(node_id, SYNCED, head=head, leader_head=leader_head, generation=generation, counters=importer.counters())

    def _note_leader_head(self, leader_id: str, head: int) -> None:
        """Keep the leader's own status current from what its followers see."""
        st = self.network.status_of(leader_id)
        if leader_id == self.network.leader_id and st is not None and head > st.head:
            self.network.record_status(leader_id, SYNCED, head=head, leader_head=head)

    def _note_failure(self, leader_id: str, generation: int, exc: NodeError) -> None:
        """A failed round: this node is down, or the leader is (then this node only waits)."""
        node_id = self.node_id
        current = self.network.status_of(node_id)
        if exc.node_id == leader_id and leader_id != node_id:
            if current is not None:
                self.network.record_status(node_id, current.status, error=f"leader {leader_id}: {exc}", generation=generation)
            return
        if current is None or current.status != SYNCING or current.head >= 0:
            self.network.record_status(node_id, SYNC_STOPPED, error=str(exc), generation=generation)
