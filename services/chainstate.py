"""Forgetting a previous devnet's chain: what ESP keeps in Redis about one chain no longer holds on a new one.

A devnet started from genesis (``make up`` on a fresh run folder, behind a Redis
that outlived the old devnet) invalidates nonces, signed transactions waiting to be
re-sent, watched receipts and the platform's addresses. The node manager calls
``reset_chain_state`` before it starts such a devnet. Each key pattern comes from the
module that owns it.
"""

from __future__ import annotations

import redis

from gateway.cache import CACHE_PREFIX
from gateway.kept import KEPT_KEY, KEPT_SET
from gateway.shown import SEEN_KEY
from services.platform import DEPLOY_LOCK_KEY, PLATFORM_KEY
from services.records import FAILED, TaskStore
from services.watch import WATCH_KEY, WATCH_SET, ReceiptWatch
from wallet.broadcast import PREPARED_PREFIX
from wallet.nonces import PREFIX as NONCE_PREFIX

#: How long the failed records of tasks from the old chain are kept.
FAILED_RECORD_TTL = 86400


def chain_state_patterns(chain_id: int) -> tuple[str, ...]:
    """Redis key patterns of what ESP keeps about chain ``chain_id``."""
    return (f"{NONCE_PREFIX}:{chain_id}:*", f"{PREPARED_PREFIX}*", WATCH_KEY.format("*"),
            # /rpc's: answers about the old chain's blocks, raw transactions for it, the blocks callers were shown.
            f"{CACHE_PREFIX}*", KEPT_KEY.format("*"), SEEN_KEY.format("*"))


def reset_chain_state(client: redis.Redis, chain_id: int) -> int:
    """Forget a previous devnet's chain state before a new one starts; returns keys deleted.

    Tasks still waiting for receipts from the old chain are failed (their
    transactions cannot be mined: that chain is gone), rather than re-broadcast
    onto the new chain by the receipt tracker.
    """
    store = TaskStore(client, ttl=FAILED_RECORD_TTL)
    for task_id, _ in ReceiptWatch(client).entries(limit=1_000_000):
        if store.find(task_id) is not None:
            store.update(task_id, state=FAILED, error={"type": "chain-reset", "message": "the devnet was restarted from genesis"})
    deleted = 0
    for pattern in chain_state_patterns(chain_id):
        batch = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 500):
            deleted += int(client.delete(*batch[i : i + 500]))
    deleted += int(client.delete(WATCH_SET, PLATFORM_KEY, DEPLOY_LOCK_KEY, KEPT_SET))
    return deleted
