"""Block import by re-execution: a leader block made again in one follower, checked to be identical.

For each new leader block the importer

1. checks that the block's parent is the follower's head (else :class:`ChainDiverged`),
2. takes the block's raw transactions from the leader (``eth_getRawTransactionByHash``),
3. sends them to the follower's pool in block order and mines one block with the leader's timestamp,
4. checks that the block hash and state root are the leader's, and stops with
   :class:`ChainDiverged` if they ever differ.

Base fee, coinbase and gas limit follow from the shared genesis and history. A
JSON-RPC batch does not keep FIFO order for large blocks (measured: a
300-transaction batch came out reordered from the 171st on), so an import whose
block holds the right transactions in another order is rolled back and redone
with one call per transaction.

A gossiped transaction that arrives in the moment between the importer's last
look at the pool and the mining lands in the imported block, whose hash then
differs: the importer rolls that block back (anvil keeps the last states in
memory for this, and does not put a rolled-back block's transactions back in
the pool; it does keep the next base fee it computed, so the redone block gets
the leader's explicitly), forwards the stray transaction and imports again. A
follower's head may therefore show a block for a moment that is then undone:
its sync status (``head``) only ever counts blocks it has checked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from errors import ChainDiverged, NodeUnreachable
from nodepool.rpc import RpcClient, to_int
from nodes.anvil import KEPT_STATES
from nodes.devnet.forwarding import forward_pool, is_in_pool, send_raw

log = logging.getLogger(__name__)

#: Longest run of empty blocks mined in one call; a stray transaction undoes the run, and
#: anvil can roll back only the states it keeps (nodes.anvil.KEPT_STATES).
EMPTY_RUN_MAX = KEPT_STATES - 1
#: Blocks smaller than this are always first sent in one JSON-RPC batch (60 kept their order here).
BATCH_ORDER_FLOOR = 32


class BlockImporter:
    """Imports leader blocks into one follower by re-executing their transactions."""

    def __init__(self, follower: RpcClient, *, node_id: str) -> None:
        self.follower = follower
        self.node_id = node_id
        self.forwarded: set[str] = set()
        self.undelivered: list[str] = []  # raw transactions dropped here that the leader has not taken yet
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
        if (not self.undelivered and to_int(status.get("pending")) == len(keep or ())
                and to_int(status.get("queued")) == self._queued_forwarded):
            return 0
        count, self._queued_forwarded = forward_pool(self.follower, leader, forwarded=self.forwarded, keep=keep,
                                                     undelivered=self.undelivered)
        return count

    def deliver(self, leader: RpcClient) -> int:
        """Send ``leader`` what earlier rounds dropped here and could not hand over; returns how many."""
        raws = list(self.undelivered)
        if raws:
            send_raw(leader, raws)  # NodeUnreachable leaves them undelivered
            self.undelivered.clear()
        return len(raws)

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
                run = empty_run(blocks, i)
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
        refused = [(h, err) for h, err in refused if err and not is_in_pool(err)]
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


def empty_run(blocks: Sequence[dict[str, Any] | None], i: int, *, limit: int = EMPTY_RUN_MAX) -> list[dict[str, Any]]:
    """The empty blocks from ``i`` on (at most ``limit``) whose timestamps step by the same whole interval."""
    first = blocks[i]
    assert first is not None
    run = [first]
    step: int | None = None
    for block in blocks[i + 1 :]:
        if block is None or block["transactions"] or len(run) >= limit:
            break
        gap = to_int(block["timestamp"]) - to_int(run[-1]["timestamp"])
        if gap < 1 or (step is not None and gap != step):
            break
        step = gap
        run.append(block)
    return run
