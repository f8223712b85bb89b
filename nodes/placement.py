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
- the node manager's sync status (``esp:devnet:sync``): with no snapshot, or a
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

import redis

from balancer import (
    STATUS_DRAINING,
    STATUS_RECYCLING,
    BalancerConfig,
    Choice,
    NoEligibleNode,
    PoolUnhealthy,
    Snapshot,
    TaskKind,
    admits,
    is_stale,
    make_policy,
    parse_weights,
    route,
)
from errors import NoHealthyNode
from nodes.base import NodeSpec
from nodes.devnet import STATUS_DIVERGED, STATUS_DOWN, STATUS_SYNCING, SYNC_KEY
from nodes.pool import Pool
from nodes.registry import NODES_KEY
from nodes.traffic import Traffic
from settings import Settings

SNAPSHOT_KEY = "esp:snapshot"
SNAPSHOT_HISTORY_KEY = "esp:snapshot:history"
CALIBRATION_KEY = "esp:calibration"
#: The recycler's overrides: node id -> "draining" | "recycling".
NODE_STATUS_KEY = "esp:node-status"
OVERRIDE_STATUSES = (STATUS_DRAINING, STATUS_RECYCLING)


def balancer_config(settings: Settings) -> BalancerConfig:
    """The BalancerConfig the ESP_BALANCER_* settings describe."""
    common: dict[str, Any] = {
        "latency_target_ms": settings.balancer_latency_target_ms,
        "lag_scale": settings.balancer_lag_scale,
        "inflight_scale": settings.balancer_inflight_scale,
        "recycle_distance": settings.balancer_recycle_distance,
        "dis_ave_min": float(settings.balancer_dis_ave_min) if settings.balancer_dis_ave_min else None,
        "dis_ave_max": float(settings.balancer_dis_ave_max) if settings.balancer_dis_ave_max else None,
    }
    if settings.balancer_model == "thesis":
        return BalancerConfig.thesis(**common)
    return BalancerConfig(weights=parse_weights(settings.balancer_weights), **common)


def load_snapshot(pool: Pool) -> Snapshot | None:
    """The newest snapshot in Redis, or None."""
    raw = pool.redis.get(SNAPSHOT_KEY)
    return Snapshot.from_dict(json.loads(raw)) if raw else None


def load_snapshot_document(client: redis.Redis) -> dict[str, Any] | None:
    """The newest snapshot as stored: ``Snapshot.to_dict()`` plus the monitor's extra fields (role, sync, raw)."""
    raw = client.get(SNAPSHOT_KEY)
    return json.loads(raw) if raw else None


# -- the recycler's status overrides ------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def status_overrides(client: redis.Redis) -> dict[str, str]:
    """Nodes the recycler has taken out of service: id -> "draining" or "recycling"."""
    return {_text(k): _text(v) for k, v in (client.hgetall(NODE_STATUS_KEY) or {}).items()}


def set_status_override(client: redis.Redis, node_id: str, status: str) -> None:
    """Mark ``node_id`` draining or recycling: no new work goes to it until cleared."""
    if status not in OVERRIDE_STATUSES:
        raise ValueError(f"override status must be one of {', '.join(OVERRIDE_STATUSES)}, not {status!r}")
    client.hset(NODE_STATUS_KEY, node_id, status)


def clear_status_override(client: redis.Redis, node_id: str) -> None:
    """Return ``node_id`` to the status its samples give it."""
    client.hdel(NODE_STATUS_KEY, node_id)


# -- the node manager's sync status -------------------------------------------------------


def parse_sync_statuses(raw: Mapping[Any, Any] | None) -> dict[str, dict[str, Any]]:
    """Decode the manager's ``esp:devnet:sync`` hash (node id -> JSON); bad entries are skipped."""
    result: dict[str, dict[str, Any]] = {}
    for key, value in (raw or {}).items():
        try:
            record = json.loads(value)
        except (TypeError, ValueError):
            continue
        if isinstance(record, dict):
            result[_text(key)] = record
    return result


def sync_statuses(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """What the node manager last saw of each node's sync: status, head, leader_head (empty for static pools)."""
    return parse_sync_statuses(client.hgetall(SYNC_KEY))


def is_far_behind(record: Mapping[str, Any] | None, lag_scale: int) -> bool:
    """True for a follower the manager reports syncing more than ``lag_scale`` blocks behind the leader.

    Such a node answers but serves an old chain: it takes no work until it has
    caught up (the manager reports "up" then).
    """
    if not record or record.get("status") != STATUS_SYNCING:
        return False
    head, leader_head = int(record.get("head", -1)), int(record.get("leader_head", -1))
    return head < 0 or leader_head - head > lag_scale


def is_sync_down(record: Mapping[str, Any] | None) -> bool:
    """True when the manager reports the node down or diverged from the leader's chain."""
    return record is not None and record.get("status") in (STATUS_DOWN, STATUS_DIVERGED)


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
            overrides = {_text(k): _text(v) for k, v in (raw_overrides or {}).items()}
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

    def choose(self, kind: TaskKind | str, *, exclude: frozenset[str] = frozenset()) -> Choice:
        """A node for work of ``kind``; NoHealthyNode when none may take it now."""
        view = self.view()
        live = self.traffic.inflight(view.specs)
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
