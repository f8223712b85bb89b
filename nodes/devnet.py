"""A local multi-node Ethereum network on ONE chain, built from anvil nodes.

anvil has no peer-to-peer sync, so ESP does what a real node does when it
imports a block: it re-executes the block's transactions. One node, the
*leader*, mines (interval mining by default). Every *follower* runs without
mining; for each new leader block it

1. checks that the block's parent is its own head (else :class:`ChainDiverged`),
2. takes the block's raw transactions from the leader (``eth_getRawTransactionByHash``),
3. sends them to its own pool in block order and mines one block with the leader's timestamp,
4. checks that the block hash and state root are the leader's, and stops with
   :class:`ChainDiverged` if they ever differ.

Every node starts from the same genesis (timestamp, chain id, gas limit, dev
accounts) and orders its pool FIFO, so the same transactions sent one after
the other on the same parent give the same block (measured here: identical
hashes and state roots). Base fee, coinbase and gas limit follow from the
shared genesis and history. A JSON-RPC batch does not keep FIFO order for
large blocks (measured: a 300-transaction batch came out reordered from the
171st on), so an import whose block holds the right transactions in another
order is rolled back and redone with one call per transaction.

Transaction gossip: a raw transaction sent to a follower is forwarded to the
leader's pool and dropped from the follower's, so it is mined once, by the
leader. anvil cannot drop a *queued* transaction (one behind a nonce gap) by
hash; it stays in the follower's pool until an import makes it executable,
and is dropped then, before the block is mined. One that arrives in the
moment between that check and the mining lands in the imported block, whose
hash then differs: the importer rolls that block back (anvil keeps the last
states in memory for this, and does not put a rolled-back block's
transactions back in the pool; it does keep the next base fee it computed,
so the redone block gets the leader's explicitly), forwards the stray
transaction and imports again. A follower's head may therefore show a block
for a moment that is then undone: its sync status (``head``) only ever
counts blocks it has checked.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import redis

from errors import ChainDiverged, NodeError, NodeUnreachable, RpcError
from nodepool.registry import NodeRegistry
from nodepool.rpc import RpcClient, to_int
from nodepool.spec import ROLE_FOLLOWER, ROLE_LEADER, NodeSpec
from nodepool.sync import DIVERGED, SYNC_KEY, SYNC_STOPPED, SYNCED, SYNCING, SyncStatus
from nodes.anvil import KEPT_STATES
from nodes.base import NodeBackend
from settings import Settings

log = logging.getLogger(__name__)

#: Blocks a follower imports before it looks at its pool and the leader again.
IMPORT_BATCH = 64
POLL_INTERVAL = 0.02
#: Seconds the leader may not answer before the most advanced follower takes over.
LEADER_GRACE = 2.0
#: Longest run of empty blocks mined in one call; a stray transaction undoes the run, and
#: anvil can roll back only the states it keeps (nodes.anvil.KEPT_STATES).
EMPTY_RUN_MAX = KEPT_STATES - 1
#: Blocks smaller than this are always first sent in one JSON-RPC batch (60 kept their order here).
BATCH_ORDER_FLOOR = 32
#: Seconds a promotion waits for the sync loops to finish the round they are in.
QUIESCE_TIMEOUT = 10.0

# -- block import ---------------------------------------------------------------------


def forward_pending(
    follower: RpcClient, leader: RpcClient, *, forwarded: set[str] | None = None, keep: set[str] | None = None
) -> int:
    """Move the transactions waiting in a follower's pool to the leader's pool.

    Pending transactions are dropped here once the leader has them. anvil cannot
    drop *queued* ones (nonce gaps); they are forwarded once (``forwarded``
    remembers them) and, should one become executable during an import, the
    importer drops it then (or rolls it back out of the block). Transactions in
    ``keep`` (the block being imported) stay. Returns how many were forwarded.
    """
    return _forward(follower, leader, forwarded=forwarded, keep=keep)[0]


def _forward(
    follower: RpcClient, leader: RpcClient, *, forwarded: set[str] | None, keep: set[str] | None
) -> tuple[int, int]:
    """forward_pending; returns (forwarded, queued transactions left in the follower's pool)."""
    content = follower.call("txpool_content")
    keep = keep or set()
    pending = [tx["hash"] for by_nonce in (content.get("pending") or {}).values() for tx in by_nonce.values()]
    pending = [h for h in pending if h not in keep]
    queued_all = [tx["hash"] for by_nonce in (content.get("queued") or {}).values() for tx in by_nonce.values()]
    queued = [h for h in queued_all if forwarded is None or h not in forwarded]
    # A pending transaction forwarded before (while it was queued) only needs dropping.
    hashes = [h for h in pending if forwarded is None or h not in forwarded] + queued
    if hashes:
        raws = follower.batch_raw([("eth_getRawTransactionByHash", [h]) for h in hashes])
        sends = [("eth_sendRawTransaction", [r["result"]]) for r in raws if r.get("result")]
        # Raises NodeUnreachable when the leader is gone: then nothing is dropped here.
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
    return len(hashes), len(queued_all)


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
        self.imported_blocks = 0
        self.imported_txs = 0
        self.rollbacks = 0
        # anvil_rollback leaves the base fee anvil computed for the block after the undone one:
        # the next block mined must get the leader's base fee explicitly (measured: 0.875 gwei, not 1).
        self._base_fee_stale = False
        self._batch_limit = math.inf  # blocks with this many transactions or more are sent one call each
        self._queued_forwarded = 0  # queued transactions in our pool, all forwarded, at the last forward
        #: (number, hash) of the latest block known to be the leader's block too ((-1, ""): none yet).
        self.verified: tuple[int, str] = (-1, "")

    def forward(self, leader: RpcClient, *, keep: set[str] | None = None) -> int:
        """forward_pending, skipped when the pool's counts show nothing new (txpool_content is costly when many wait).

        Expected at rest: no pending transaction but ``keep`` (the block being imported), and
        only the queued ones already forwarded. Anything arriving changes a count.
        """
        status = self.follower.call("txpool_status")
        if to_int(status.get("pending")) == len(keep or ()) and to_int(status.get("queued")) == self._queued_forwarded:
            return 0
        count, self._queued_forwarded = _forward(self.follower, leader, forwarded=self.forwarded, keep=keep)
        return count

    def forget_forwarded(self) -> None:
        """Forward every transaction in our pool again on the next round (the leader changed)."""
        self.forwarded.clear()
        self._queued_forwarded = -1

    def counters(self) -> tuple[int, int, int]:
        """(blocks imported, transactions imported, imports redone) so far."""
        return self.imported_blocks, self.imported_txs, self.rollbacks

    def head(self) -> int:
        """The follower's current block number."""
        return to_int(self.follower.call("eth_blockNumber"))

    def check_common_ancestor(self, leader: RpcClient, height: int) -> None:
        """Raise ChainDiverged unless the follower's block at ``height`` is the leader's."""
        if height < 0:
            return
        mine, theirs = self.follower.call("eth_getBlockByNumber", [hex(height), False]), leader.call(
            "eth_getBlockByNumber", [hex(height), False]
        )
        if not mine or not theirs or mine["hash"] != theirs["hash"]:
            raise ChainDiverged(
                f"{self.node_id}: block {height} is {mine and mine['hash']} here but {theirs and theirs['hash']} on the leader",
                node_id=self.node_id,
            )
        self.verified = (height, mine["hash"])

    def import_range(self, leader: RpcClient, start: int, end: int) -> int:
        """Import leader blocks ``start..end`` (inclusive); return the follower's new head."""
        blocks = leader.batch([("eth_getBlockByNumber", [hex(n), False]) for n in range(start, end + 1)])
        if blocks and blocks[0] is not None and start > 0:
            self._check_parent(blocks[0], start - 1)
        i = 0
        while i < len(blocks):
            block = blocks[i]
            if block is None:
                raise NodeUnreachable(f"leader has no block {start + i}", node_id=self.node_id)
            if not block["transactions"]:
                # Runs of empty blocks a fixed interval apart import in one call.
                run = _empty_run(blocks, i)
                if len(run) > 1 and self._mine_empty_run(leader, run):
                    i += len(run)
                    continue
            self.import_block(leader, block)
            i += 1
        return start + len(blocks) - 1

    def import_block(self, leader: RpcClient, block: dict[str, Any], *, retries: int = 3) -> None:
        """Re-execute one leader block here and check the result is identical."""
        number = to_int(block["number"])
        hashes: list[str] = list(block["transactions"])
        wanted = set(hashes)
        raws = leader.batch([("eth_getRawTransactionByHash", [h]) for h in hashes]) if hashes else []
        one_by_one = len(hashes) >= self._batch_limit
        for attempt in range(retries + 1):
            self.forward(leader)
            if raws:
                if not self._send_block_transactions(leader, number, hashes, raws, one_by_one=one_by_one):
                    continue  # a conflicting transaction was evicted from the pool: send the block again
                # Queued transactions of ours that the block made executable would slip into it: drop them
                # now (pending ones can be dropped; the leader has them already).
                self.forward(leader, keep=wanted)
            self._mine_like(block)
            mined = self.follower.call("eth_getBlockByNumber", [hex(number), False])
            if mined and mined["hash"] == block["hash"] and mined["stateRoot"] == block["stateRoot"]:
                self.imported_blocks += 1
                self.imported_txs += len(hashes)
                self.verified = (number, block["hash"])
                return
            if mined and mined["transactions"] != hashes and attempt < retries:
                # Either a transaction from our own pool became executable and slipped in (a stray: the
                # leader gets it), or the block's transactions came out in another order (a large batch
                # does not keep FIFO order, or a queued one arrived here before its predecessors).
                # Undo the block; anvil does not put its transactions back into the pool.
                stray = [h for h in mined["transactions"] if h not in wanted]
                stray_raws = self.follower.batch([("eth_getRawTransactionByHash", [h]) for h in stray]) if stray else []
                self._rollback(1)
                if stray_raws:
                    leader.batch_raw([("eth_sendRawTransaction", [r]) for r in stray_raws if r])
                    self.forwarded.update(stray)
                reordered = [h for h in mined["transactions"] if h in wanted] != hashes
                log.info("%s: block %d: %d stray transaction(s), order %s; rolled back", self.node_id, number, len(stray),
                         "changed" if reordered else "kept")
                if reordered and not one_by_one:
                    # Send blocks this large one call per transaction from now on (a floor keeps a
                    # reorder that queued transactions caused from slowing small blocks down).
                    self._batch_limit = min(self._batch_limit, max(BATCH_ORDER_FLOOR, len(hashes)))
                one_by_one = True
                continue
            raise ChainDiverged(
                f"{self.node_id}: imported block {number} is {mined and mined['hash']} (state {mined and mined['stateRoot']}) "
                f"but the leader's is {block['hash']} (state {block['stateRoot']})",
                node_id=self.node_id,
            )
        raise ChainDiverged(f"{self.node_id}: block {number} could not be imported in {retries + 1} attempts", node_id=self.node_id)

    # -- helpers ------------------------------------------------------------------

    def _mine_like(self, block: dict[str, Any]) -> None:
        """Mine one block here with the leader block's timestamp (and base fee after a rollback)."""
        if self._base_fee_stale and block.get("baseFeePerGas"):
            self.follower.call("anvil_setNextBlockBaseFeePerGas", [block["baseFeePerGas"]])
        self._base_fee_stale = False
        self.follower.call("evm_mine", [to_int(block["timestamp"])])

    def _rollback(self, blocks: int) -> None:
        self.follower.call("anvil_rollback", [blocks])
        self.rollbacks += 1
        self._base_fee_stale = True

    def _check_parent(self, block: dict[str, Any], height: int) -> None:
        """The leader block on top of ``height`` must build on our block ``height``."""
        mine = self.follower.call("eth_getBlockByNumber", [hex(height), False])
        if not mine or mine["hash"] != block["parentHash"]:
            raise ChainDiverged(
                f"{self.node_id}: block {height} is {mine and mine['hash']} here but {block['parentHash']} on the leader",
                node_id=self.node_id,
            )

    def _send_block_transactions(
        self, leader: RpcClient, number: int, hashes: list[str], raws: list[str], *, one_by_one: bool
    ) -> bool:
        """Put the block's transactions into our pool in block order; False when a conflict had to be evicted first."""
        calls = [("eth_sendRawTransaction", [r]) for r in raws]
        if one_by_one:
            # One call each keeps FIFO order exactly (measured); a batch may not.
            replies = [self.follower.batch_raw([c])[0] for c in calls]
        else:
            replies = self.follower.batch_raw(calls)
        refused = [(h, (r.get("error") or {}).get("message", "")) for h, r in zip(hashes, replies, strict=True)]
        refused = [(h, err) for h, err in refused if err and not _in_pool(err)]
        if not refused:
            return True
        tx_hash, err = refused[0]
        if "underpriced" in err.lower() and self._evict_conflict(leader, tx_hash):
            return False
        raise ChainDiverged(f"{self.node_id}: block {number}: leader transaction {tx_hash} was refused here: {err}", node_id=self.node_id)

    def _evict_conflict(self, leader: RpcClient, tx_hash: str) -> bool:
        """Remove our pool's transaction with the same sender and nonce as the leader's ``tx_hash``.

        It is one a client sent here that lost to another with its nonce on the leader. anvil
        can drop only a whole sender's pool: its other transactions go to the leader first.
        """
        tx = leader.call("eth_getTransactionByHash", [tx_hash])
        if not tx:
            return False
        sender = tx["from"]
        content = self.follower.call("txpool_content")
        mine = [
            t["hash"]
            for part in ("pending", "queued")
            for addr, by_nonce in (content.get(part) or {}).items()
            if addr.lower() == sender.lower()
            for t in by_nonce.values()
        ]
        raws = self.follower.batch([("eth_getRawTransactionByHash", [h]) for h in mine]) if mine else []
        leader.batch_raw([("eth_sendRawTransaction", [r]) for r in raws if r])
        self.follower.call("anvil_removePoolTransactions", [sender])
        log.info("%s: evicted %d pooled transaction(s) of %s that conflict with leader transaction %s", self.node_id, len(mine), sender, tx_hash)
        return True

    def _mine_empty_run(self, leader: RpcClient, run: list[dict[str, Any]]) -> bool:
        """Mine a run of empty blocks in a few calls; False (run undone) when our pool slipped transactions in."""
        first, last = run[0], run[-1]
        step = to_int(run[1]["timestamp"]) - to_int(first["timestamp"])
        self.forward(leader)
        self._mine_like(first)
        # A fixed timestamp interval, not anvil_mine's own interval argument: that one moves anvil's
        # clock offset, and a wall-clock second passing during the call then skews a timestamp.
        self.follower.call("anvil_setBlockTimestampInterval", [step])
        try:
            self.follower.call("anvil_mine", [hex(len(run) - 1)])
        finally:
            self.follower.call("anvil_removeBlockTimestampInterval")
        number = to_int(last["number"])
        mined = self.follower.batch([("eth_getBlockByNumber", [hex(to_int(b["number"])), False]) for b in run])
        if all(m and m["hash"] == b["hash"] for m, b in zip(mined, run, strict=True)):
            self.imported_blocks += len(run)
            self.verified = (number, last["hash"])
            return True
        if any(m and m["transactions"] for m in mined):
            # A transaction reached our pool after the forward: undo the run, import block by block.
            self._rollback(len(run))
            return False
        raise ChainDiverged(
            f"{self.node_id}: imported empty block {number} is {mined[-1] and mined[-1]['hash']} but the leader's is {last['hash']}",
            node_id=self.node_id,
        )


def _settled_head(client: RpcClient, *, settle: float = 0.15, timeout: float = 3.0) -> int:
    """The node's head once it has not moved for ``settle`` seconds (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    head = to_int(client.call("eth_blockNumber"))
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = to_int(client.call("eth_blockNumber"))
        if now == head:
            return head
        head = now
    return head


def _resend_blocks_above(old: RpcClient, new: RpcClient, height: int) -> int:
    """Send ``new`` the transactions of every block ``old`` has above ``height``; returns how many.

    A leader handing over may have mined a block its successor never imported;
    that block is not on the new chain, so its transactions go back to a pool.
    """
    old_head = to_int(old.call("eth_blockNumber"))
    if old_head <= height:
        return 0
    blocks = old.batch([("eth_getBlockByNumber", [hex(n), False]) for n in range(height + 1, old_head + 1)])
    hashes = [h for block in blocks if block for h in block["transactions"]]
    if not hashes:
        return 0
    raws = old.batch([("eth_getRawTransactionByHash", [h]) for h in hashes])
    for reply in new.batch_raw([("eth_sendRawTransaction", [r]) for r in raws if r]):
        err = (reply.get("error") or {}).get("message", "")
        if err and not _is_known(err):
            log.warning("new leader refused a transaction of an orphaned block: %s", err)
    log.warning("re-sent %d transaction(s) of %d block(s) the old leader mined after the hand-over point",
                len(hashes), old_head - height)
    return len(hashes)


def _empty_run(blocks: list[dict[str, Any] | None], i: int) -> list[dict[str, Any]]:
    """The empty blocks from ``i`` on whose timestamps step by the same whole interval."""
    first = blocks[i]
    assert first is not None
    run = [first]
    step: int | None = None
    for block in blocks[i + 1 :]:
        if block is None or block["transactions"] or len(run) >= EMPTY_RUN_MAX:
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
        self._stopped: set[str] = set()  # stopped with stop_node and not restarted since
        # The role each node's process or container was launched with: its command line keeps it
        # (a leader's mining flags) even after a promotion or demotion changed its role here.
        self._launched_as: dict[str, str] = {}
        # Sync loops in a round (node id -> the leader it uses), and a pause that promotions take:
        # no follower may forward transactions to a leader that is being replaced.
        self._rounds = threading.Condition()
        self._busy: dict[str, str] = {}
        self._paused = 0

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
            self._set_status(spec.id, SYNCED if spec.role == ROLE_LEADER else SYNCING, head=0)
            if spec.role == ROLE_FOLLOWER:
                self._start_sync(spec.id)

    def close(self) -> None:
        """Stop syncing and stop every node."""
        self._stopping.set()
        with self._rounds:
            self._rounds.notify_all()
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
        self._set_status(node_id, SYNC_STOPPED)

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
        self._set_status(node_id, SYNCING, head=-1)
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
        self._set_status(node_id, SYNCING, head=-1, leader_head=-1, counters=(0, 0, 0))
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
            head = _settled_head(old)
        except NodeError:
            head = -1  # the leader is gone: promote what we have
        successor = self._best_follower(exclude=node_id)
        if head >= 0:
            self._wait_for_head(successor, head, timeout=timeout)
        with self._quiesced():
            new = self.client(successor)
            promoted_at = to_int(new.call("eth_blockNumber"))
            self.promote(successor)
            if head >= 0:
                # No sync loop runs now, so none forwards to the old leader after this.
                try:
                    _resend_blocks_above(old, new, promoted_at)
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
        self._set_status(node_id, SYNCED, head=to_int(latest["number"]), leader_head=to_int(latest["number"]))
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
        self._set_status(dead, SYNC_STOPPED)
        # Let every import in flight finish first: a follower still importing a block fetched
        # before the crash would otherwise end up ahead of the one promoted.
        with self._quiesced():
            successor = self._best_follower(exclude=dead)
            self.promote(successor)
        self._leader_unreachable_since = None
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

    # -- internals --------------------------------------------------------------------

    @contextmanager
    def _quiesced(self, timeout: float = QUIESCE_TIMEOUT) -> Iterator[None]:
        """Pause the sync loops between two rounds (bounded wait for those in a round)."""
        deadline = time.monotonic() + timeout
        with self._rounds:
            self._paused += 1
            while self._busy and time.monotonic() < deadline:
                self._rounds.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            if self._busy:
                log.warning("sync loops still busy after %.0f s: %s", timeout, sorted(self._busy))
        try:
            yield
        finally:
            with self._rounds:
                self._paused -= 1
                self._rounds.notify_all()

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

    def _set_status(
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

    def _start_sync(self, node_id: str) -> None:
        existing = self._threads.get(node_id)
        if existing is not None and existing.is_alive():
            return  # the running loop notices the restart (a new generation)
        thread = threading.Thread(target=self._sync_loop, args=(node_id,), name=f"sync-{node_id}", daemon=True)
        self._threads[node_id] = thread
        thread.start()

    def _enter_round(self, node_id: str) -> str | None:
        """Wait out a pause, then mark ``node_id`` busy; returns the leader to sync from (None when stopping)."""
        with self._rounds:
            while self._paused and not self._stopping.is_set():
                self._rounds.wait(0.1)
            if self._stopping.is_set():
                return None
            self._busy[node_id] = self._leader_id
            return self._leader_id

    def _leave_round(self, node_id: str) -> None:
        with self._rounds:
            self._busy.pop(node_id, None)
            self._rounds.notify_all()

    def _sync_loop(self, node_id: str) -> None:
        """Keep one follower on the leader's chain until it is promoted or the devnet stops."""
        generation, diverged_in = -1, -1
        importer: BlockImporter | None = None
        forwarded_to = ""
        while not self._stopping.is_set():
            spec = self.spec(node_id)
            if spec.role == ROLE_LEADER:
                return  # promoted: it mines now
            if spec.generation == diverged_in:
                self._stopping.wait(0.2)  # diverged: wait for a restart (a new generation)
                continue
            leader_id = self._enter_round(node_id)
            if leader_id is None:
                return
            try:
                spec = self.spec(node_id)
                if spec.role == ROLE_LEADER:
                    return
                if spec.generation != generation or importer is None:
                    generation, forwarded_to = spec.generation, leader_id
                    importer = BlockImporter(self.client(node_id), node_id=node_id)
                if forwarded_to != leader_id:
                    # A new leader has seen none of what we forwarded to the old one (a dead leader's
                    # pool is gone): the queued transactions here go to the new leader again.
                    importer.forget_forwarded()
                    forwarded_to = leader_id
                self._sync_round(node_id, leader_id, generation, importer)
            except ChainDiverged as exc:
                log.error("%s", exc)
                self._set_status(node_id, DIVERGED, error=str(exc), generation=generation)
                diverged_in = generation
                continue
            except (NodeUnreachable, RpcError) as exc:
                self._note_failure(node_id, leader_id, generation, exc)
                self._stopping.wait(0.2)
                continue
            except Exception as exc:  # a sync thread must outlive any surprise; it is logged with its traceback
                log.exception("%s: sync round failed", node_id)
                self._set_status(node_id, SYNC_STOPPED, error=f"sync failed: {exc!r}", generation=generation)
                self._stopping.wait(1.0)
                continue
            finally:
                self._leave_round(node_id)
            self._stopping.wait(POLL_INTERVAL)

    def _sync_round(self, node_id: str, leader_id: str, generation: int, importer: BlockImporter) -> None:
        """One round: forward our pool, then import up to IMPORT_BATCH leader blocks or check we are on its chain."""
        leader = self.client(leader_id)
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
            self._set_status(node_id, SYNCING, head=head, leader_head=leader_head, generation=generation, counters=importer.counters())
            head = importer.import_range(leader, head + 1, min(leader_head, head + IMPORT_BATCH))
            status = SYNCED if head == leader_head else SYNCING
            self._set_status(node_id, status, head=head, leader_head=leader_head, generation=generation, counters=importer.counters())
            return
        st = self._status.get(node_id)
        if st is None or st.status != SYNCED or st.head != head or st.leader_head != leader_head:
            self._set_status(node_id, SYNCED, head=head, leader_head=leader_head, generation=generation, counters=importer.counters())

    def _note_leader_head(self, leader_id: str, head: int) -> None:
        """Keep the leader's own status current from what its followers see."""
        st = self._status.get(leader_id)
        if leader_id == self._leader_id and st is not None and head > st.head:
            self._set_status(leader_id, SYNCED, head=head, leader_head=head)

    def _note_failure(self, node_id: str, leader_id: str, generation: int, exc: NodeError) -> None:
        """A failed round: this node is down, or the leader is (then this node only waits)."""
        current = self._status.get(node_id)
        if exc.node_id == leader_id and leader_id != node_id:
            if current is not None:
                self._set_status(node_id, current.status, error=f"leader {leader_id}: {exc}", generation=generation)
            return
        if current is None or current.status != SYNCING or current.head >= 0:
            self._set_status(node_id, SYNC_STOPPED, error=str(exc), generation=generation)
