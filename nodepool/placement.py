"""Choosing a node for a piece of work: the balancer's policy over the newest snapshot.

The monitor writes the snapshot to Redis; every process that places work (the
API for reads, the Celery router for writes, a worker that must re-pick) reads
it through a Placement, which caches it for at most one monitor interval and
adds the live in-flight counts at decision time.

Besides the snapshot, a Placement honours two live sources, re-read with it:

- the recycler's status overrides (``esp:node-status``: node id -> "draining" or
  "recycling"): such a node takes no new work even before the next snapshot shows
  it (the recycler waits two monitor intervals before it trusts a drained count,
  so every Placement has seen the override by then);
- the node manager's sync status (``nodepool.sync``): with no snapshot, or a
  stale one, routing falls back to the registered nodes the manager last saw
  answering and in step with the leader (see ``fallback_ids``), never to zones
  that are too old to trust.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from balancer import (
    Choice,
    NoEligibleNode,
    PoolUnhealthy,
    Snapshot,
    TaskKind,
    admits,
    is_stale,
    make_policy,
    route,
)
from errors import NoHealthyNode
from nodepool.codec import as_text
from nodepool.pool import Pool
from nodepool.registry import NODES_KEY
from nodepool.snapshot import NODE_STATUS_KEY, SNAPSHOT_KEY, balancer_config
from nodepool.spec import NodeSpec
from nodepool.sync import SYNC_KEY, is_far_behind, is_sync_down, parse_sync_statuses
from nodepool.traffic import Traffic

# -- placement ----------------------------------------------------------------------------


class DispatchPaused(NoHealthyNode):
    """Raised while the pool's health index LBH < 0: dispatch waits until it is >= 0 again (thesis §3.2.4).

    A NoHealthyNode (HTTP 503 with Retry-After), so callers that do not wait keep
    working; those that may wait (ReadClient) retry for a bounded time instead,
    because the live LBH recovers as soon as work in flight finishes.
    """

    def __init__(self, message: str, *, lbh: float) -> None:
        super().__init__(message)
        self.lbh = lbh


@dataclass(frozen=True)
class PlacementView:
    """What one Placement refresh read from Redis (one round trip, at most once per monitor interval)."""

    snapshot: Snapshot | None
    specs: Mapping[str, NodeSpec]
    overrides: Mapping[str, str]
    sync: Mapping[str, Mapping[str, Any]]
    fetched_at: float = field(default=0.0)

    def fallback_ids(self, lag_scale: int) -> list[str]:
        """Registered nodes that may take work without a fresh snapshot.

        Not overridden by the recycler, not reported down, diverged or far behind by
        the node manager (for static pools, which have no manager record, every node);
        when the manager reports none usable, every node not overridden.
        """
        usable = [node_id for node_id in self.specs if node_id not in self.overrides]
        answering = [
            node_id for node_id in usable
            if not is_sync_down(self.sync.get(node_id)) and not is_far_behind(self.sync.get(node_id), lag_scale)
        ]
        # The manager reports every follower down while the leader does not answer (until it
        # promotes one): knowing nothing better then, let every node be tried (readers fail over).
        return sorted(answering or usable)


class Placement:
    """Picks nodes for work, in one process, from the shared snapshot and live counters."""

    def __init__(self, pool: Pool, *, rng: random.Random | None = None) -> None:
        self.pool = pool
        self.settings = pool.settings
        self.config = balancer_config(self.settings)
        self.policy = make_policy(self.settings.balancer_policy, self.config)
        self.traffic = Traffic(pool.redis)
        self.rng = rng or random.Random()  # load spreading, not security
        self._view: PlacementView | None = None
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()

    # -- what the placement knows -------------------------------------------------------

    def view(self) -> PlacementView:
        """Snapshot, registry, overrides and sync status, re-read from Redis at most once per monitor interval."""
        now = time.monotonic()
        view = self._view
        if view is not None and now - view.fetched_at < self.settings.monitor_interval:
            return view
        with self._refresh_lock:  # one reader refreshes; the others wait for its result
            view = self._view
            if view is not None and time.monotonic() - view.fetched_at < self.settings.monitor_interval:
                return view
            pipe = self.pool.redis.pipeline(transaction=False)
            pipe.get(SNAPSHOT_KEY)
            pipe.hgetall(NODES_KEY)
            pipe.hgetall(NODE_STATUS_KEY)
            pipe.hgetall(SYNC_KEY)
            raw_snapshot, raw_nodes, raw_overrides, raw_sync = pipe.execute()
            snapshot = Snapshot.from_dict(json.loads(raw_snapshot)) if raw_snapshot else None
            specs = {s.id: s for s in (NodeSpec.from_json(v) for v in (raw_nodes or {}).values())}
            overrides = {as_text(k): as_text(v) for k, v in (raw_overrides or {}).items()}
            view = PlacementView(snapshot, specs, overrides, parse_sync_statuses(raw_sync), fetched_at=time.monotonic())
            self._view = view
            return view

    def snapshot(self) -> Snapshot | None:
        """The snapshot, re-read from Redis at most once per monitor interval."""
        return self.view().snapshot

    def is_fresh(self, view: PlacementView | None = None) -> bool:
        """True when the cached snapshot exists and is younger than ``stale_after``."""
        view = view or self.view()
        return not is_stale(view.snapshot, time.time(), self.settings.stale_after)

    # -- choosing ----------------------------------------------------------------------

    def needs_refresh(self) -> bool:
        """True when the next ``view()`` reads Redis (callers on an event loop refresh it in a thread first)."""
        view = self._view
        return view is None or time.monotonic() - view.fetched_at >= self.settings.monitor_interval

    def choose(self, kind: TaskKind | str, *, exclude: frozenset[str] = frozenset(),
               inflight: Mapping[str, int] | None = None) -> Choice:
        """A node for work of ``kind``; NoHealthyNode when none may take it now.

        ``inflight``: live in-flight counts the caller already read (``Traffic.inflight_on``), else read here.
        """
        view = self.view()
        live = dict(inflight) if inflight is not None else self.traffic.inflight(view.specs)
        # Overridden nodes, and nodes the snapshot knows but the registry no longer has, never take work.
        blocked = set(exclude) | set(view.overrides)
        if view.snapshot is not None:
            blocked |= {n.id for n in view.snapshot.nodes if n.id not in view.specs}
        try:
            with self._lock:  # policies such as round robin keep state
                return route(
                    self.policy, view.snapshot, kind, now=time.time(), max_age=self.settings.stale_after,
                    inflight=live, rng=self.rng, exclude=frozenset(blocked),
                    answering=view.fallback_ids(self.settings.balancer_lag_scale),
                )
        except PoolUnhealthy as exc:
            raise DispatchPaused(f"dispatch paused: the pool's health index LBH is {exc.lbh:.3f} < 0", lbh=exc.lbh) from None
        except NoEligibleNode:
            raise NoHealthyNode(f"no node may take {TaskKind.parse(kind).value} work now") from None

    def spec(self, node_id: str) -> NodeSpec:
        """The node's current registry record (read live); NoHealthyNode when it left the registry."""
        spec = self.pool.registry.get(node_id)
        if spec is None:
            raise NoHealthyNode(f"node {node_id} is no longer registered")
        return spec

    def cached_spec(self, node_id: str) -> NodeSpec:
        """The node's registry record as of the last refresh (no Redis call), else read live."""
        spec = self.view().specs.get(node_id)
        return spec if spec is not None else self.spec(node_id)

    def ordered(self, kind: TaskKind | str, *, first: str | None = None) -> list[NodeSpec]:
        """Nodes to try in order: ``first`` (or the policy's choice), then every other registered one, best first.

        After the first come the nodes that may take work (serving in a fresh
        snapshot, nearest the origin first; or, without one, those the fallback
        allows), then the rest, so a caller that must reach *some* node still can.
        """
        specs = self.pool.nodes()
        if first is None:
            try:
                first = self.choose(kind).node_id
            except NoHealthyNode:
                first = None
        view = self.view()
        rank: dict[str, tuple[int, float]] = {}
        if self.is_fresh(view) and view.snapshot is not None:
            for node in view.snapshot.serving():
                if node.id not in view.overrides:
                    rank[node.id] = (0, node.distance)
        for node_id in view.fallback_ids(self.settings.balancer_lag_scale):
            rank.setdefault(node_id, (1, 0.0))
        return sorted(specs, key=lambda s: (s.id != first, rank.get(s.id, (2, 0.0)), s.id))

    def is_eligible(self, node_id: str, kind: TaskKind | str) -> bool:
        """Whether ``node_id`` may still take work of ``kind`` (override, zone, status, pause, free memory)."""
        view = self.view()
        if node_id not in view.specs or node_id in view.overrides:
            return False
        if not self.is_fresh(view) or view.snapshot is None:
            return node_id in view.fallback_ids(self.settings.balancer_lag_scale)
        node = view.snapshot.node(node_id)
        if node is None or not node.is_serving or view.snapshot.pool.paused:
            return False
        return admits(node.memory_free_bytes, self.config.memory_need(TaskKind.parse(kind)))
