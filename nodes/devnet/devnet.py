"""The devnet: N anvil nodes on one chain, a mining leader and followers that import its blocks.

Leader restart: the leader stops mining, the most up-to-date follower catches
up to its head; the sync loops pause while that follower is promoted and the
old leader's pending transactions (its own and those followers forwarded to
it) move to the new leader; the old leader comes back as a follower and
imports the chain from genesis. No block is lost. A node being restarted must
be drained first (the recycler does): a transaction it accepts in the last
milliseconds before it stops is in no other pool.

If the leader dies instead, the most advanced follower is promoted once the
leader has not answered for LEADER_GRACE seconds. Lost then: blocks the dead
leader mined that no follower had imported yet, and every transaction that
was only in the dead leader's pool (sent to it, or forwarded to it by a
follower). The write path re-broadcasts them: it keeps every signed
transaction until it has a receipt.

Limits: a promoted follower mines through ``evm_setIntervalMining``, which
takes whole seconds, so a sub-second ESP_BLOCK_TIME becomes 1 s after a
promotion.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict

import redis

from errors import ChainDiverged, NodeError
from nodepool.registry import NodeRegistry
from nodepool.rpc import RpcClient, to_int
from nodepool.spec import ROLE_FOLLOWER, ROLE_LEADER, NodeSpec
from nodepool.sync import DIVERGED, SYNC_KEY, SYNC_STOPPED, SYNCED, SYNCING, SyncStatus
from nodes.base import NodeBackend
from nodes.devnet.forwarding import forward_pending
from nodes.devnet.handover import LeaderWatch, resend_blocks_above, settled_head, wait_for_head
from nodes.devnet.sync import POLL_INTERVAL, FollowerSync, SyncRounds
from settings import Settings

log = logging.getLogger(__name__)


class Devnet:
    """N anvil nodes on one chain: a mining leader and followers that import its blocks."""

    def __init__(
        self,
        settings: Settings,
        backend: NodeBackend,
        *,
        registry: NodeRegistry | None = None,
        redis_client: redis.Redis | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.registry = registry
        self.redis = redis_client
        self._specs: dict[str, NodeSpec] = {}
        self._status: dict[str, SyncStatus] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._leader_id = ""
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._leader_watch = LeaderWatch()
        self._clients: dict[tuple[str, float], RpcClient] = {}
        self._stopped: set[str] = set()  # stopped with stop_node and not restarted since
        # The role each node's process or container was launched with: its command line keeps it
        # (a leader's mining flags) even after a promotion or demotion changed its role here.
        self._launched_as: dict[str, str] = {}
        # Sync loops in a round, and a pause that promotions take: no follower may forward
        # transactions to a leader that is being replaced.
        self._rounds = SyncRounds(lambda: self._leader_id, self._stopping)

    # -- properties -------------------------------------------------------------------

    @property
    def leader_id(self) -> str:
        return self._leader_id

    def specs(self) -> list[NodeSpec]:
        with self._lock:
            return list(self._specs.values())

    def spec(self, node_id: str) -> NodeSpec:
        with self._lock:
            try:
                return self._specs[node_id]
            except KeyError:
                raise NodeError(f"no node {node_id!r} in the devnet", node_id=node_id) from None

    def status(self) -> dict[str, SyncStatus]:
        with self._lock:
            return {k: SyncStatus(**asdict(v)) for k, v in self._status.items()}

    def status_of(self, node_id: str) -> SyncStatus | None:
        """The node's sync status as recorded now (the live record, not a copy), None before its first."""
        return self._status.get(node_id)

    def client(self, node_id: str, *, timeout: float | None = None) -> RpcClient:
        """A pooled client for ``node_id`` (shared; RpcClient is thread-safe)."""
        spec = self.spec(node_id)
        timeout = timeout or self.settings.rpc_timeout
        key = (spec.url, timeout)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = RpcClient(spec.url, timeout=timeout, node_id=node_id)
            return client

    # -- lifecycle --------------------------------------------------------------------

    def start(self, count: int | None = None) -> list[NodeSpec]:
        """Start the leader and the followers, register them and begin syncing."""
        count = count or self.settings.node_count
        base = self.settings.node_port_base
        started: list[NodeSpec] = []
        try:
            for i in range(count):
                role = ROLE_LEADER if i == 0 else ROLE_FOLLOWER
                spec = self.backend.start(f"node-{i}", role=role, port=base + i if base else None)
                started.append(spec)
                self._launched_as[spec.id] = role
                self._put(spec)
                if i == 0:
                    self._leader_id = spec.id
        except BaseException:
            for spec in started:
                self.backend.stop(spec)
            raise
        self._begin(started)
        return started

    def attach(self, specs: Sequence[NodeSpec]) -> list[NodeSpec]:
        """Keep nodes ESP did not start on one chain: the first leads, the others import its blocks.

        For anvils run by other means (compose/devnet.yml): the followers must run
        with --no-mining from the same genesis. They cannot be restarted by ESP.
        """
        attached = [spec.replace(role=ROLE_LEADER if i == 0 else ROLE_FOLLOWER) for i, spec in enumerate(specs)]
        for spec in attached:
            self._launched_as[spec.id] = spec.role
            self._put(spec)
        self._leader_id = attached[0].id
        self._begin(attached)
        return attached

    def _begin(self, specs: Sequence[NodeSpec]) -> None:
        self._publish_pool()
        for spec in specs:
            self.record_status(spec.id, SYNCED if spec.role == ROLE_LEADER else SYNCING, head=0)
            if spec.role == ROLE_FOLLOWER:
                self._start_sync(spec.id)

    def close(self) -> None:
        """Stop syncing and stop every node."""
        self._stopping.set()
        self._rounds.wake()
        for thread in list(self._threads.values()):
            thread.join(timeout=5)
        for spec in self.specs():
            if self.backend.manages:  # attached nodes are not ours to stop
                try:
                    self.backend.stop(spec)
                except NodeError as exc:
                    log.warning("stopping %s: %s", spec.id, exc)
            if self.registry is not None:
                self.registry.remove(spec.id)
        if self.redis is not None:
            self.redis.delete(SYNC_KEY)
        for client in self._clients.values():
            client.close()
        self.backend.close()

    def stop_node(self, node_id: str) -> None:
        """Stop one node without restarting it (a crash, for tests and drills)."""
        self.backend.stop(self.spec(node_id))
        with self._lock:
            self._stopped.add(node_id)
        self.record_status(node_id, SYNC_STOPPED)

    def restart(self, node_id: str, *, wait: bool = True, timeout: float = 120.0) -> NodeSpec:
        """Restart a node; it comes back as a follower and is ready once it has caught up."""
        spec = self.spec(node_id)
        if node_id == self._leader_id:
            if len(self._specs) == 1:
                raise NodeError(f"{node_id} is the only node: restarting it would lose the chain", node_id=node_id)
            successor = self.hand_over(node_id, timeout=timeout)
            try:
                # Once more, as late as possible: what reached the old leader since the hand-over.
                forward_pending(self.client(node_id, timeout=2.0), self.client(successor))
            except NodeError as exc:
                log.warning("could not forward %s's pending transactions: %s", node_id, exc)
        self.record_status(node_id, SYNCING, head=-1)
        # No round runs on the node until the new one is on record: a round of the old generation
        # that reached the new node would import blocks its counters never show.
        with self._rounds.held(node_id):
            if self._launched_as.get(node_id) == ROLE_FOLLOWER:
                new = self.backend.restart(spec.replace(role=ROLE_FOLLOWER))
            else:
                # A container restart keeps the container's command line, a leader's mining flags
                # included: a node launched as leader comes back as a new follower process or container.
                self.backend.stop(spec)
                new = self.backend.start(node_id, role=ROLE_FOLLOWER, port=spec.port).replace(generation=spec.generation + 1)
            with self._lock:
                self._stopped.discard(node_id)
                self._launched_as[node_id] = ROLE_FOLLOWER
            self._put(new.replace(role=ROLE_FOLLOWER))
            # Again under the new generation: a round of the old one may have published "up" meanwhile.
            self.record_status(node_id, SYNCING, head=-1, leader_head=-1, counters=(0, 0, 0))
        self._start_sync(node_id)
        if wait:
            self.wait_caught_up(node_id, timeout=timeout)
        return self.spec(node_id)

    def hand_over(self, node_id: str, *, timeout: float = 60.0) -> str:
        """Make the most up-to-date follower leader in place of ``node_id``, losing no block."""
        old = self.client(node_id, timeout=2.0)
        try:
            old.call("evm_setIntervalMining", [0])
            old.call("evm_setAutomine", [False])
            # A block the interval miner had already started lands after the pause:
            # hand over at a head that has stopped moving, not at the first one read.
            head = settled_head(old)
        except NodeError:
            head = -1  # the leader is gone: promote what we have
        successor = self._best_follower(exclude=node_id)
        if head >= 0:
            wait_for_head(self.client(successor, timeout=2.0), head, timeout=timeout)
        with self._rounds.paused():
            new = self.client(successor)
            promoted_at = to_int(new.call("eth_blockNumber"))
            self.promote(successor)
            if head >= 0:
                # No sync loop runs now, so none forwards to the old leader after this.
                try:
                    resend_blocks_above(old, new, promoted_at)
                    forward_pending(old, new)
                except NodeError as exc:
                    log.warning("could not forward %s's pending transactions: %s", node_id, exc)
        return successor

    def promote(self, node_id: str) -> None:
        """Turn a follower into the leader: it starts mining where the chain stands."""
        client = self.client(node_id)
        latest = client.call("eth_getBlockByNumber", ["latest", False])
        with self._lock:
            previous = self._leader_id
            self._leader_id = node_id
            self._put(self._specs[node_id].replace(role=ROLE_LEADER))
            if previous and previous != node_id and previous in self._specs:
                self._put(self._specs[previous].replace(role=ROLE_FOLLOWER))
        client.call("evm_setNextBlockTimestamp", [to_int(latest["timestamp"]) + 1])
        if self.settings.block_time > 0:
            # The RPC takes whole seconds (the CLI flag takes fractions).
            client.call("evm_setIntervalMining", [max(1, math.ceil(self.settings.block_time))])
        else:
            client.call("evm_setAutomine", [True])
        self._publish_pool()
        self.record_status(node_id, SYNCED, head=to_int(latest["number"]), leader_head=to_int(latest["number"]))
        log.warning("%s is the devnet leader now (was %s), at block %d", node_id, previous, to_int(latest["number"]))

    def check_leader(self, *, now: float | None = None) -> str | None:
        """Promote a follower if the leader has not answered for LEADER_GRACE seconds."""
        now = time.monotonic() if now is None else now
        try:
            self.client(self._leader_id, timeout=1.0).call("eth_blockNumber")
            self._leader_watch.answered()
            return None
        except NodeError:
            if not self._leader_watch.is_dead(now) or len(self._specs) < 2:
                return None
        dead = self._leader_id
        self.record_status(dead, SYNC_STOPPED)
        # Let every import in flight finish first: a follower still importing a block fetched
        # before the crash would otherwise end up ahead of the one promoted.
        with self._rounds.paused():
            successor = self._best_follower(exclude=dead)
            self.promote(successor)
        self._leader_watch.answered()
        return successor

    def wait_caught_up(self, node_id: str, *, timeout: float = 60.0) -> None:
        """Block until ``node_id`` has imported the leader's head (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self._status.get(node_id)
            if st and st.status == SYNCED:
                return
            if st and st.status == DIVERGED:
                raise ChainDiverged(st.error, node_id=node_id)
            time.sleep(POLL_INTERVAL)
        raise NodeError(f"{node_id} did not catch up within {timeout:.0f} s", node_id=node_id)

    def wait_all_synced(self, *, timeout: float = 60.0) -> int:
        """Block until every running node has the leader's head; return that head.

        A follower counts once its sync status says it imported that head (a block it is still
        checking may be rolled back). Nodes stopped with stop_node, and not restarted since,
        are left out.
        """
        deadline = time.monotonic() + timeout
        heads: dict[str, int] = {}
        while time.monotonic() < deadline:
            heads = {}
            for spec in self.specs():
                if spec.id in self._stopped:
                    continue
                try:
                    heads[spec.id] = to_int(self.client(spec.id, timeout=2.0).call("eth_blockNumber"))
                except NodeError:
                    heads[spec.id] = -1
                if spec.id != self._leader_id:
                    st = self._status.get(spec.id)
                    if st is None or st.status != SYNCED or st.head != heads[spec.id]:
                        heads[spec.id] = -1
            if len(set(heads.values())) == 1 and -1 not in heads.values():
                return next(iter(heads.values()))
            time.sleep(0.05)
        raise NodeError(f"nodes did not converge within {timeout:.0f} s: heads {heads} (-1: down or still importing)")

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
    ) -> None:
        """Record and publish a node's sync status; with ``generation``, only if the node is still that one."""
        with self._lock:
            spec = self._specs.get(node_id)
            if generation is not None and (spec is None or spec.generation != generation):
                return  # a round of a node since restarted: its news is stale
            current = self._status.get(node_id) or SyncStatus(node_id=node_id, role="", status=status)
            current.role = spec.role if spec else current.role
            current.status = status
            current.error = error
            if head is not None:
                current.head = head
            if leader_head is not None:
                current.leader_head = leader_head
            if counters is not None:
                current.imported_blocks, current.imported_txs, current.rollbacks = counters
            current.updated_at = time.time()
            self._status[node_id] = current
            payload = json.dumps(asdict(current))
        if self.redis is not None:
            try:
                self.redis.hset(SYNC_KEY, node_id, payload)
            except redis.RedisError as exc:
                log.warning("could not publish sync status: %s", exc)

    # -- internals --------------------------------------------------------------------

    def _best_follower(self, *, exclude: str) -> str:
        best, best_head = "", -1
        for spec in self.specs():
            if spec.id == exclude or spec.id in self._stopped:
                continue
            try:
                head = to_int(self.client(spec.id, timeout=1.0).call("eth_blockNumber"))
            except NodeError:
                continue
            st = self._status.get(spec.id)
            if st and st.status == DIVERGED:
                continue
            if head > best_head:
                best, best_head = spec.id, head
        if not best:
            raise NodeError("no follower answers: cannot hand the chain over")
        return best

    def _put(self, spec: NodeSpec) -> None:
        with self._lock:
            self._specs[spec.id] = spec
        if self.registry is not None:
            self.registry.register(spec)

    def _publish_pool(self) -> None:
        if self.registry is not None:
            self.registry.set_pool(
                leader=self._leader_id, backend=self.backend.name, chain_id=self.settings.chain_id, devnet=True
            )

    def _start_sync(self, node_id: str) -> None:
        existing = self._threads.get(node_id)
        if existing is not None and existing.is_alive():
            return  # the running loop notices the restart (a new generation)
        follower = FollowerSync(self, node_id, rounds=self._rounds, stopping=self._stopping)
        thread = threading.Thread(target=follower.run, name=f"sync-{node_id}", daemon=True)
        self._threads[node_id] = thread
        thread.start()
