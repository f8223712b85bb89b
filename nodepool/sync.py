"""The devnet's sync status of each node, as every process reads it.

The node manager's devnet (``nodes.devnet``) keeps followers on the leader's chain
and publishes what each sync loop last saw to ``esp:devnet:sync`` (node id ->
JSON ``SyncStatus``); the monitor, placement and recycler read it from here.
Static pools have none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from nodepool.codec import as_text

SYNC_KEY = "esp:devnet:sync"

#: A node's sync status as the devnet reports it (not the balancer's up/down: a node can answer and be DIVERGED).
SYNCED = "up"  # at the leader's head (or the leader itself)
SYNCING = "syncing"  # importing the leader's blocks, behind it
SYNC_STOPPED = "down"  # its sync loop stopped: the node does not answer, or import failed
DIVERGED = "diverged"  # it imported a block whose hash or state root differs from the leader's


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
    #: Counted since the node's last (re)start: blocks and transactions imported, imports redone.
    imported_blocks: int = 0
    imported_txs: int = 0
    rollbacks: int = 0

    @property
    def lag(self) -> int:
        return max(0, self.leader_head - self.head) if self.head >= 0 else -1


def parse_sync_statuses(raw: Mapping[Any, Any] | None) -> dict[str, dict[str, Any]]:
    """Decode the manager's ``esp:devnet:sync`` hash (node id -> JSON); bad entries are skipped."""
    result: dict[str, dict[str, Any]] = {}
    for key, value in (raw or {}).items():
        try:
            record = json.loads(value)
        except (TypeError, ValueError):
            continue
        if isinstance(record, dict):
            result[as_text(key)] = record
    return result


def sync_statuses(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """What the node manager last saw of each node's sync: status, head, leader_head (empty for static pools)."""
    return parse_sync_statuses(client.hgetall(SYNC_KEY))


def is_far_behind(record: Mapping[str, Any] | None, lag_scale: int) -> bool:
    """True for a follower the manager reports syncing more than ``lag_scale`` blocks behind the leader.

    Such a node answers but serves an old chain: it takes no work until it has
    caught up (the manager reports "up" then).
    """
    if not record or record.get("status") != SYNCING:
        return False
    head, leader_head = int(record.get("head", -1)), int(record.get("leader_head", -1))
    return head < 0 or leader_head - head > lag_scale


def is_sync_down(record: Mapping[str, Any] | None) -> bool:
    """True when the manager reports the node down or diverged from the leader's chain."""
    return record is not None and record.get("status") in (SYNC_STOPPED, DIVERGED)
