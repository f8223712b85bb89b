"""The pool's snapshot in Redis: what the monitor last measured, and the recycler's overrides.

The monitor (a beat task) writes ``esp:snapshot`` (the balancer's ``Snapshot``
plus its own fields), a capped history and the learned calibration; the recycler
marks nodes draining or recycling in ``esp:node-status``. Every process that
places work reads them here.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from balancer import STATUS_DRAINING, STATUS_RECYCLING, BalancerConfig, Snapshot, is_stale, parse_weights
from nodepool.codec import as_text
from nodepool.pool import Pool
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


def load_fresh_snapshot(client: redis.Redis, *, now: float, stale_after: float) -> tuple[dict[str, Any], Snapshot] | None:
    """The newest snapshot as stored and as a Snapshot; None when there is none or it is older than ``stale_after``."""
    document = load_snapshot_document(client)
    if document is None:
        return None
    snapshot = Snapshot.from_dict(document)
    return None if is_stale(snapshot, now, stale_after) else (document, snapshot)


# -- the recycler's status overrides ------------------------------------------------------


def status_overrides(client: redis.Redis) -> dict[str, str]:
    """Nodes the recycler has taken out of service: id -> "draining" or "recycling"."""
    return {as_text(k): as_text(v) for k, v in (client.hgetall(NODE_STATUS_KEY) or {}).items()}


def set_status_override(client: redis.Redis, node_id: str, status: str) -> None:
    """Mark ``node_id`` draining or recycling: no new work goes to it until cleared."""
    if status not in OVERRIDE_STATUSES:
        raise ValueError(f"override status must be one of {', '.join(OVERRIDE_STATUSES)}, not {status!r}")
    client.hset(NODE_STATUS_KEY, node_id, status)


def clear_status_override(client: redis.Redis, node_id: str) -> None:
    """Return ``node_id`` to the status its samples give it."""
    client.hdel(NODE_STATUS_KEY, node_id)
