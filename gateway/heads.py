"""Where each node's head is, and the pool's head: the highest head a quorum of healthy nodes has.

Three sources, the highest recent one wins for a node: the devnet's sync status (``nodepool.sync``,
written by the node manager as each follower imports a block: the freshest shared source), the
monitor's snapshot (once per interval, for pools without a devnet), and what this process saw
nodes answer (``eth_blockNumber``, a block, a receipt) in the last ``OBSERVED_FOR`` seconds.

The pool's head is not the highest head of any node: one node ahead of the rest (the block
producer, a moment before its followers import) would make every other node look behind. A
quorum (more than half of the healthy nodes) having reached it is what makes it the pool's.
Reads at ``latest`` then go only to nodes at or above it (``at_least``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from balancer import Snapshot
from nodepool.sync import is_sync_down

#: How long what a node answered counts as its head (a restarted chain starts again from 0).
OBSERVED_FOR = 2.0


class Heads:
    """Heads this process knows of, per node (thread-safe)."""

    def __init__(self, *, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._observed: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def observe(self, node_id: str, head: int) -> None:
        """``node_id`` answered with block ``head`` (or later) just now."""
        now = self._clock()
        with self._lock:
            known = self._observed.get(node_id)
            if known is None or head >= known[0] or now - known[1] > OBSERVED_FOR:
                self._observed[node_id] = (head, now)

    def known(self, node_ids: Iterable[str], snapshot: Snapshot | None,
              sync: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        """Each node's head as far as anyone here knows (-1 when unknown)."""
        now = self._clock()
        heads: dict[str, int] = {}
        with self._lock:
            observed = dict(self._observed)
        for node_id in node_ids:
            best = -1
            record = sync.get(node_id)
            if record is not None:
                best = max(best, int(record.get("head", -1)))
            if snapshot is not None:
                view = snapshot.node(node_id)
                if view is not None and view.head is not None and record is None:
                    best = max(best, int(view.head))  # a devnet's sync record is fresher than the snapshot
            seen = observed.get(node_id)
            if seen is not None and now - seen[1] <= OBSERVED_FOR:
                best = max(best, seen[0])
            heads[node_id] = best
        return heads


def healthy(node_ids: Iterable[str], snapshot: Snapshot | None, sync: Mapping[str, Mapping[str, Any]],
            *, exclude: Iterable[str] = ()) -> list[str]:
    """Nodes that count towards the quorum: not excluded (open breaker, recycling), not reported down."""
    out = []
    excluded = set(exclude)
    for node_id in node_ids:
        if node_id in excluded or is_sync_down(sync.get(node_id)):
            continue
        view = snapshot.node(node_id) if snapshot is not None else None
        if view is not None and sync.get(node_id) is None and not view.is_answering:
            continue
        out.append(node_id)
    return out


def pool_head(heads: Mapping[str, int], healthy_ids: Iterable[str]) -> int | None:
    """The highest head that more than half of the healthy nodes have reached; None when none is known."""
    known = sorted((heads[n] for n in healthy_ids if heads.get(n, -1) >= 0), reverse=True)
    if not known:
        return None
    quorum = len(known) // 2 + 1
    return known[quorum - 1]


def at_least(heads: Mapping[str, int], block: int) -> set[str]:
    """Nodes known to have block ``block``."""
    return {node_id for node_id, head in heads.items() if head >= block}
