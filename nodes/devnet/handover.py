"""What a change of leader needs: the old leader's settled head, its orphaned blocks re-sent, a dead leader's grace.

A leader being restarted stops mining; once its head has stopped moving, the
most up-to-date follower catches up to it and is promoted, and whatever the old
leader had mined above the successor's head or held in its pool goes to the
new leader (:meth:`nodes.devnet.devnet.Devnet.hand_over`). A leader that dies
instead is replaced once it has not answered for LEADER_GRACE seconds.
"""

from __future__ import annotations

import logging
import time

from errors import NodeError
from nodepool.rpc import RpcClient, to_int
from nodes.devnet.forwarding import send_raw

log = logging.getLogger(__name__)

#: Seconds the leader may not answer before the most advanced follower takes over.
LEADER_GRACE = 2.0
#: Seconds between two looks at a node's head while waiting for it.
HEAD_POLL_INTERVAL = 0.02


class LeaderWatch:
    """Tells when a leader that stopped answering has been silent for ``grace`` seconds."""

    def __init__(self, grace: float = LEADER_GRACE) -> None:
        self.grace = grace
        self.silent_since: float | None = None

    def answered(self) -> None:
        """The leader answered (or was replaced): its silence, if any, is over."""
        self.silent_since = None

    def is_dead(self, now: float) -> bool:
        """The leader did not answer at ``now`` (monotonic seconds): True once that has lasted ``grace`` seconds."""
        if self.silent_since is None:
            self.silent_since = now
        return now - self.silent_since >= self.grace


def settled_head(client: RpcClient, *, settle: float = 0.15, timeout: float = 3.0) -> int:
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


def wait_for_head(client: RpcClient, head: int, *, timeout: float) -> None:
    """Block until the node has block ``head``; NodeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while to_int(client.call("eth_blockNumber")) < head:
        if time.monotonic() > deadline:
            who = client.node_id or client.url
            raise NodeError(f"{who} did not reach block {head} within {timeout:.0f} s", node_id=client.node_id)
        time.sleep(HEAD_POLL_INTERVAL)


def resend_blocks_above(old: RpcClient, new: RpcClient, height: int) -> int:
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
    send_raw(new, [r for r in raws if r], what="a transaction of an orphaned block")
    log.warning("re-sent %d transaction(s) of %d block(s) the old leader mined after the hand-over point",
                len(hashes), old_head - height)
    return len(hashes)
