"""Transaction gossip: what waits in a follower's pool goes to the leader's, to be mined once, by the leader.

A raw transaction sent to a follower is forwarded to the leader's pool and
dropped from the follower's. anvil cannot drop a *queued* transaction (one
behind a nonce gap) by hash; it stays in the follower's pool until an import
makes it executable, and the importer drops it then, before the block is mined
(or rolls it back out of the block: see :mod:`nodes.devnet.importer`).

anvil's drop removes a transaction *and every later one of its sender* (measured:
dropping nonce 5 of ten pending left nonces 0-4). A transaction that reaches the
follower between the pool snapshot a relay forwards and the drop that follows is
therefore lost to this relay; the sync loop's relay drops right after reading the
bytes (two calls to the follower) and sends the leader what it holds afterwards,
but the devnet's gossip is still not lossless under bursts.
ESP's write path sends what a follower took to the leader too, and re-broadcasts
any transaction not mined (services.batch, services.receipts).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from nodepool.rpc import RpcClient

log = logging.getLogger(__name__)

#: Queued hashes remembered as forwarded before the memory is cleared (a bound, not a tuning knob).
FORWARDED_MAX = 100_000


def pool_hashes(content: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The (pending, queued) transaction hashes of a ``txpool_content`` answer."""

    def hashes(part: str) -> list[str]:
        return [tx["hash"] for by_nonce in (content.get(part) or {}).values() for tx in by_nonce.values()]

    return hashes("pending"), hashes("queued")


def is_duplicate(message: str) -> bool:
    """True for a send refused because the node has the transaction already, or a mined one with its nonce."""
    text = message.lower()
    return "already known" in text or "already imported" in text or "nonce too low" in text


def is_in_pool(message: str) -> bool:
    """True for a send refused because the transaction is already in the node's pool."""
    text = message.lower()
    return "already known" in text or "already imported" in text


def send_raw(leader: RpcClient, raws: Sequence[str], *, what: str = "a gossiped transaction") -> None:
    """Put raw transactions in the leader's pool (one batch); one it has already is no fault, others are logged."""
    for reply in leader.batch_raw([("eth_sendRawTransaction", [r]) for r in raws]):
        err = (reply.get("error") or {}).get("message", "")
        if err and not is_duplicate(err):
            log.warning("leader refused %s: %s", what, err)


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
    return forward_pool(follower, leader, forwarded=forwarded, keep=keep)[0]


def forward_pool(
    follower: RpcClient, leader: RpcClient, *, forwarded: set[str] | None, keep: set[str] | None,
    undelivered: list[str] | None = None,
) -> tuple[int, int]:
    """forward_pending; returns (forwarded, queued transactions left in the follower's pool).

    With ``undelivered`` (a list the caller keeps between calls: the sync loop's), the pending
    transactions are dropped as soon as their bytes are read, before the leader is sent
    anything: an arrival between the pool read and the drop is lost to it (see above), and the
    leader's answer, the slowest step, no longer falls in that window. What the leader could
    not be sent stays in ``undelivered`` and goes first next time (to whichever node leads then).
    Without it (a hand-over's one-off relay), nothing is dropped unless the leader took the batch.
    """
    keep = keep or set()
    pending_all, queued_all = pool_hashes(follower.call("txpool_content"))
    pending = [h for h in pending_all if h not in keep]
    queued = [h for h in queued_all if forwarded is None or h not in forwarded]
    # A pending transaction forwarded before (while it was queued) only needs dropping.
    hashes = [h for h in pending if forwarded is None or h not in forwarded] + queued
    raws = follower.batch_raw([("eth_getRawTransactionByHash", [h]) for h in hashes]) if hashes else []
    fresh = [r["result"] for r in raws if r.get("result")]
    dropped = False
    if undelivered is not None:
        if pending:
            follower.batch_raw([("anvil_dropTransaction", [h]) for h in pending])
        dropped = True
        undelivered[:] = dict.fromkeys([*undelivered, *fresh])  # a round retried while the leader was away reads them again
        fresh = list(undelivered)
    if fresh:
        # Raises NodeUnreachable when the leader is gone: the bytes stay in ``undelivered`` (or nothing was dropped).
        send_raw(leader, fresh)
        if undelivered is not None:
            undelivered.clear()
    if pending and not dropped:
        follower.batch_raw([("anvil_dropTransaction", [h]) for h in pending])
    if forwarded is not None:
        if len(forwarded) > FORWARDED_MAX:
            forwarded.clear()
        forwarded.update(queued)
    return len(hashes), len(queued_all)
