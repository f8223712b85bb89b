"""A local multi-node Ethereum network on ONE chain, built from anvil nodes.

anvil has no peer-to-peer sync, so ESP does what a real node does when it
imports a block: it re-executes the block's transactions. One node, the
*leader*, mines (interval mining by default). Every *follower* runs without
mining; for each new leader block it

1. takes the block's raw transactions from the leader (``eth_getRawTransactionByHash``),
2. sends them to its own pool and mines one block with the leader's timestamp,
3. checks that the block hash and state root are the leader's, and stops with
   :class:`ChainDiverged` if they ever differ.

Every node starts from the same genesis (timestamp, chain id, gas limit, dev
accounts) and orders its pool FIFO, so the same transactions on the same parent
give the same block (measured here: identical hashes and state roots). Base
fee, coinbase and gas limit follow from the shared genesis and history.

Transaction gossip: a raw transaction sent to a follower is forwarded to the
leader's pool and dropped from the follower's, so it is mined once, by the
leader. If one arrives between the follower's pool check and its import, it
lands in the imported block, whose hash then differs: the importer rolls that
block back (anvil keeps the last states in memory for this), forwards the
stray transaction and imports again.

Leader restart: the leader stops mining, the most up-to-date follower catches
up to its head, takes its pending transactions and is promoted; the old leader
comes back as a follower and imports the chain from genesis. No block is lost.
If the leader dies instead, the most advanced follower is promoted; a block the
dead leader mined in the last milliseconds and nobody imported is lost, and its
transactions are re-broadcast by the write path, which keeps every signed
transaction until it has a receipt.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from errors import ChainDiverged, NodeError, NodeUnreachable, RpcError
from nodes.base import ROLE_FOLLOWER, ROLE_LEADER, NodeBackend, NodeSpec
from nodes.registry import NodeRegistry
from nodes.rpc import RpcClient, to_int
from settings import Settings

log = logging.getLogger(__name__)

SYNC_KEY = "esp:devnet:sync"
#: Blocks a follower imports before it looks at its pool and the leader again.
IMPORT_BATCH = 64
POLL_INTERVAL = 0.02
#: Seconds the leader may not answer before the most advanced follower takes over.
LEADER_GRACE = 2.0

STATUS_UP = "up"
STATUS_SYNCING = "syncing"
STATUS_DOWN = "down"
STATUS_DIVERGED = "diverged"


@dataclass
class SyncStatus:
    """What a node's sync loop last saw; published to Redis for the monitor."""

    node_id: str
    role: str
    status: str
    head: int = -1
    leader_head: int = -1
    error: str = ""
    updated_at: float = 0.0

    @property
    def lag(self) -> int:
        return max(0, self.leader_head - self.head) if self.head >= 0 else -1


# -- block import ---------------------------------------------------------------------


def forward_pending(follower: RpcClient, leader: RpcClient, *, forwarded: set[str] | None = None) -> int:
    """Move the transactions waiting in a follower's pool to the leader's pool.

    Pending transactions are dropped here once the leader has them. anvil cannot
    drop *queued* ones (nonce gaps); they are forwarded once (``forwarded``
    remembers them) and, should one become executable during an import, the
    importer rolls it back out of the block. Returns how many were forwarded.
    """
    content = follower.call("txpool_content")
    pending = [tx["hash"] for by_nonce in (content.get("pending") or {}).values() for tx in by_nonce.values()]
    queued = [tx["hash"] for by_nonce in (content.get("queued") or {}).values() for tx in by_nonce.values()]
    if forwarded is not None:
        queued = [h for h in queued if h not in forwarded]
    hashes = pending + queued
    if not hashes:
        return 0
    raws = follower.batch_raw([("eth_getRawTransactionByHash", [h]) for h in hashes])
    sends = [("eth_sendRawTransaction", [r["result"]]) for r in raws if r.get("result")]
    for reply in leader.batch_raw(sends):
        err = (reply.get("error") or {}).get("message", "")
        if err and not _is_known(err):
            log.warning("leader refused a gossiped transaction: %s", err)
    if pending:
        follower.batch_raw([("anvil_dropTransaction", [h]) for h in pending])
    if forwarded is not None:
        if len(forwarded) > 100_000:
            forwarded.clear()
        forwarded.update(queued)
    return len(hashes)


def _is_known(message: str) -> bool:
    text = message.lower()
    return "already known" in text or "already imported" in text or "nonce too low" in text


def _in_pool(message: str) -> bool:
    text = message.lower()
    return "already known" in text or "already imported" in text


class BlockImporter:
    """Imports leader blocks into one follower by re-executing their transactions."""

    def __init__(self, follower: RpcClient, *, node_id: str) -> None:
        self.follower = follower
        self.node_id = node_id
        self.forwarded: set[str] = set()

    def head(self) -> int:
        return to_int(self.follower.call("eth_blockNumber"))

    def check_common_ancestor(self, leader: RpcClient, height: int) -> None:
        """Raise ChainDiverged unless the follower's block at ``height`` is the leader's."""
        if height <= 0:
            return
        mine, theirs = self.follower.call("eth_getBlockByNumber", [hex(height), False]), leader.call(
            "eth_getBlockByNumber", [hex(height), False]
        )
        if not mine or not theirs or mine["hash"] != theirs["hash"]:
            raise ChainDiverged(
                f"{self.node_id}: block {height} is {mine and mine['hash']} here but {theirs and theirs['hash']} on the leader",
                node_id=self.node_id,
            )

    def import_range(self, leader: RpcClient, start: int, end: int) -> int:
        """Import leader blocks ``start..end`` (inclusive); return the follower's new head."""
        blocks = leader.batch([("eth_getBlockByNumber", [hex(n), False]) for n in range(start, end + 1)])
        i = 0
        while i < len(blocks):
            block = blocks[i]
            if block is None:
                raise NodeUnreachable(f"leader has no block {start + i}", node_id=self.node_id)
            if not block["transactions"]:
                # Runs of empty blocks a fixed interval apart import in one call.
                run = _empty_run(blocks, i)
                if len(run) > 1:
                    self._mine_empty_run(run)
                    i += len(run)
                    continue
            self.import_block(leader, block)
            i += 1
        return start + len(blocks) - 1

    def import_block(self, leader: RpcClient, block: dict[str, Any], *, retries: int = 3) -> None:
        """Re-execute one leader block here and check the result is identical."""
        number = to_int(block["number"])
        hashes = block["transactions"]
        raws = leader.batch([("eth_getRawTransactionByHash", [h]) for h in hashes]) if hashes else []
        for attempt in range(retries + 1):
            forward_pending(self.follower, leader, forwarded=self.forwarded)
            if raws:
                for reply in self.follower.batch_raw([("eth_sendRawTransaction", [r]) for r in raws]):
                    err = (reply.get("error") or {}).get("message", "")
                    if err and not _in_pool(err):
                        raise ChainDiverged(
                            f"{self.node_id}: block {number}: a leader transaction was refused here: {err}", node_id=self.node_id
                        )
            self.follower.call("evm_mine", [to_int(block["timestamp"])])
            mined = self.follower.call("eth_getBlockByNumber", [hex(number), False])
            if mined and mined["hash"] == block["hash"] and mined["stateRoot"] == block["stateRoot"]:
                return
            if mined and len(mined["transactions"]) > len(hashes) and attempt < retries:
                # A transaction gossiped to us raced into the block: undo it and retry.
                stray = [h for h in mined["transactions"] if h not in set(hashes)]
                log.info("%s: block %d took %d stray transaction(s); rolling back", self.node_id, number, len(stray))
                stray_raws = self.follower.batch([("eth_getRawTransactionByHash", [h]) for h in stray])
                self.follower.call("anvil_rollback", [1])
                leader.batch_raw([("eth_sendRawTransaction", [r]) for r in stray_raws if r])
                continue
            raise ChainDiverged(
                f"{self.node_id}: imported block {number} is {mined and mined['hash']} (state {mined and mined['stateRoot']}) "
                f"but the leader's is {block['hash']} (state {block['stateRoot']})",
                node_id=self.node_id,
            )

    def _mine_empty_run(self, run: list[dict[str, Any]]) -> None:
        first, last = run[0], run[-1]
        step = to_int(run[1]["timestamp"]) - to_int(first["timestamp"])
        self.follower.call("evm_mine", [to_int(first["timestamp"])])
        if len(run) > 1:
            self.follower.call("anvil_mine", [hex(len(run) - 1), hex(step)])
        number = to_int(last["number"])
        mined = self.follower.call("eth_getBlockByNumber", [hex(number), False])
        if not mined or mined["hash"] != last["hash"]:
            raise ChainDiverged(
                f"{self.node_id}: imported empty block {number} is {mined and mined['hash']} but the leader's is {last['hash']}",
                node_id=self.node_id,
            )


def _empty_run(blocks: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    """The empty blocks from ``i`` on whose timestamps step by the same whole interval."""
    run = [blocks[i]]
    step: int | None = None
    for block in blocks[i + 1 :]:
        if block is None or block["transactions"]:
            break
        gap = to_int(block["timestamp"]) - to_int(run[-1]["timestamp"])
        if gap < 1 or (step is not None and gap != step):
            break
        step = gap
        run.append(block)
    return run


# -- the network ----------------------------------------------------------------------


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
        self._leader_unreachable_since: float | None = None
        self._clients: dict[tuple[str, float], RpcClient] = {}

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
                self._put(spec)
                if i == 0:
                    self._leader_id = spec.id
        except BaseException:
            for spec in started:
                self.backend.stop(spec)
            raise
        self._publish_pool()
        for spec in started:
            self._set_status(spec.id, STATUS_UP if spec.role == ROLE_LEADER else STATUS_SYNCING, head=0)
            if spec.role == ROLE_FOLLOWER:
                self._start_sync(spec.id)
        return started

    def close(self) -> None:
        """Stop syncing and stop every node."""
        self._stopping.set()
        for thread in list(self._threads.values()):
            thread.join(timeout=5)
        for spec in self.specs():
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
        self._set_status(node_id, STATUS_DOWN)

    def restart(self, node_id: str, *, wait: bool = True, timeout: float = 120.0) -> NodeSpec:
        """Restart a node; it comes back as a follower and is ready once it has caught up."""
        spec = self.spec(node_id)
        if node_id == self._leader_id:
            if len(self._specs) == 1:
                raise NodeError(f"{node_id} is the only node: restarting it would lose the chain", node_id=node_id)
            self.hand_over(node_id, timeout=timeout)
        self._set_status(node_id, STATUS_SYNCING, head=-1)
        new = self.backend.restart(spec.replace(role=ROLE_FOLLOWER))
        self._put(new.replace(role=ROLE_FOLLOWER))
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
            head = to_int(old.call("eth_blockNumber"))
        except NodeError:
            head = -1  # the leader is gone: promote what we have
        successor = self._best_follower(exclude=node_id)
        if head >= 0:
            self._wait_for_head(successor, head, timeout=timeout)
        self.promote(successor)
        if head >= 0:
            try:
                forward_pending(old, self.client(successor))
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
        self._set_status(node_id, STATUS_UP, head=to_int(latest["number"]))
        log.warning("%s is the devnet leader now (was %s), at block %d", node_id, previous, to_int(latest["number"]))

    def check_leader(self, *, now: float | None = None) -> str | None:
        """Promote a follower if the leader has not answered for LEADER_GRACE seconds."""
        now = time.monotonic() if now is None else now
        try:
            self.client(self._leader_id, timeout=1.0).call("eth_blockNumber")
            self._leader_unreachable_since = None
            return None
        except NodeError:
            if self._leader_unreachable_since is None:
                self._leader_unreachable_since = now
            if now - self._leader_unreachable_since < LEADER_GRACE or len(self._specs) < 2:
                return None
        dead = self._leader_id
        self._set_status(dead, STATUS_DOWN)
        successor = self._best_follower(exclude=dead)
        self.promote(successor)
        self._leader_unreachable_since = None
        return successor

    def wait_caught_up(self, node_id: str, *, timeout: float = 60.0) -> None:
        """Block until ``node_id`` has imported the leader's head (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self._status.get(node_id)
            if st and st.status == STATUS_UP:
                return
            if st and st.status == STATUS_DIVERGED:
                raise ChainDiverged(st.error, node_id=node_id)
            time.sleep(POLL_INTERVAL)
        raise NodeError(f"{node_id} did not catch up within {timeout:.0f} s", node_id=node_id)

    def wait_all_synced(self, *, timeout: float = 60.0) -> int:
        """Block until every node has the leader's head; return that head."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            heads = {}
            for spec in self.specs():
                try:
                    heads[spec.id] = to_int(self.client(spec.id, timeout=2.0).call("eth_blockNumber"))
                except NodeError:
                    heads[spec.id] = -1
            if len(set(heads.values())) == 1 and -1 not in heads.values():
                return next(iter(heads.values()))
            time.sleep(0.05)
        raise NodeError(f"nodes did not converge within {timeout:.0f} s: heads {heads}")

    # -- internals --------------------------------------------------------------------

    def _best_follower(self, *, exclude: str) -> str:
        best, best_head = "", -1
        for spec in self.specs():
            if spec.id == exclude:
                continue
            try:
                head = to_int(self.client(spec.id, timeout=1.0).call("eth_blockNumber"))
            except NodeError:
                continue
            st = self._status.get(spec.id)
            if st and st.status == STATUS_DIVERGED:
                continue
            if head > best_head:
                best, best_head = spec.id, head
        if not best:
            raise NodeError("no follower answers: cannot hand the chain over")
        return best

    def _wait_for_head(self, node_id: str, head: int, *, timeout: float) -> None:
        client = self.client(node_id, timeout=2.0)
        deadline = time.monotonic() + timeout
        while to_int(client.call("eth_blockNumber")) < head:
            if time.monotonic() > deadline:
                raise NodeError(f"{node_id} did not reach block {head} within {timeout:.0f} s", node_id=node_id)
            time.sleep(POLL_INTERVAL)

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

    def _set_status(self, node_id: str, status: str, *, head: int | None = None, leader_head: int | None = None, error: str = "") -> None:
        with self._lock:
            spec = self._specs.get(node_id)
            current = self._status.get(node_id) or SyncStatus(node_id=node_id, role="", status=status)
            current.role = spec.role if spec else current.role
            current.status = status
            current.error = error
            if head is not None:
                current.head = head
            if leader_head is not None:
                current.leader_head = leader_head
            current.updated_at = time.time()
            self._status[node_id] = current
            payload = json.dumps(asdict(current))
        if self.redis is not None:
            try:
                self.redis.hset(SYNC_KEY, node_id, payload)
            except redis.RedisError as exc:
                log.warning("could not publish sync status: %s", exc)

    def _start_sync(self, node_id: str) -> None:
        existing = self._threads.get(node_id)
        if existing is not None and existing.is_alive():
            return  # the running loop notices the restart (head goes back to 0)
        thread = threading.Thread(target=self._sync_loop, args=(node_id,), name=f"sync-{node_id}", daemon=True)
        self._threads[node_id] = thread
        thread.start()

    def _sync_loop(self, node_id: str) -> None:
        """Keep one follower on the leader's chain until it is promoted or the devnet stops."""
        generation, verified = -1, False
        while not self._stopping.is_set():
            spec = self.spec(node_id)
            if spec.role == ROLE_LEADER:
                return  # promoted: it mines now
            follower = self.client(node_id)
            leader = self.client(self._leader_id)
            if spec.generation != generation:
                generation, verified = spec.generation, False
                importer = BlockImporter(follower, node_id=node_id)
            try:
                head = importer.head()
                if not verified:
                    importer.check_common_ancestor(leader, head)
                    verified = True
                forward_pending(follower, leader, forwarded=importer.forwarded)
                leader_head = to_int(leader.call("eth_blockNumber"))
                if head > leader_head:
                    importer.check_common_ancestor(leader, leader_head)
                    raise ChainDiverged(f"{node_id} is at block {head}, ahead of the leader's {leader_head}", node_id=node_id)
                if head < leader_head:
                    self._set_status(node_id, STATUS_SYNCING, head=head, leader_head=leader_head)
                    head = importer.import_range(leader, head + 1, min(leader_head, head + IMPORT_BATCH))
                    self._set_status(node_id, STATUS_UP if head == leader_head else STATUS_SYNCING, head=head, leader_head=leader_head)
                    continue
                st = self._status.get(node_id)
                if st is None or st.status != STATUS_UP or st.head != head:
                    self._set_status(node_id, STATUS_UP, head=head, leader_head=leader_head)
            except ChainDiverged as exc:
                log.error("%s", exc)
                self._set_status(node_id, STATUS_DIVERGED, error=str(exc))
                # Wait for a restart (new generation) before trying again.
                while not self._stopping.is_set() and self.spec(node_id).generation == generation:
                    time.sleep(0.2)
                continue
            except (NodeUnreachable, RpcError) as exc:
                if self.spec(node_id).generation == generation:
                    current = self._status.get(node_id)
                    if current is None or current.status != STATUS_SYNCING or current.head >= 0:
                        self._set_status(node_id, STATUS_DOWN, error=str(exc))
                self._stopping.wait(0.2)
                continue
            self._stopping.wait(POLL_INTERVAL)
