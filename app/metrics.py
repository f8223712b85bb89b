"""``GET /metrics``: the pool, the queues and the receipt backlog in Prometheus' text format.

Written by hand (the format is a few lines per metric) from what is already in
Redis: the balancer's snapshot, the queue lengths and the receipt watch set.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flask import Blueprint, Response

from app.context import pool, settings
from nodepool.snapshot import load_snapshot
from services.watch import ReceiptWatch
from tasks.routing import QUEUES

bp = Blueprint("metrics", __name__)

ZONES = ("I", "II", "III")


def _line(name: str, value: float | int | None, **labels: str) -> str | None:
    if value is None:
        return None
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{text}}} {value}" if text else f"{name} {value}"


def _family(name: str, kind: str, help_text: str, lines: Iterable[str | None]) -> list[str]:
    body = [line for line in lines if line is not None]
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *body] if body else []


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics of the pool, queues and receipt tracking."""
    redis = pool().redis
    out: list[str] = []
    snapshot = load_snapshot(pool())
    now = time.time()
    if snapshot is not None:
        nodes = snapshot.nodes
        out += _family("esp_node_up", "gauge", "1 when the node answered its last probe and is up",
                       (_line("esp_node_up", int(n.alive and n.status == "up"), node=n.id) for n in nodes))
        out += _family("esp_node_distance", "gauge", "distance of the node from the origin of the state space",
                       (_line("esp_node_distance", round(n.distance, 6), node=n.id) for n in nodes))
        out += _family("esp_node_zone", "gauge", "1 for the zone the node is in",
                       (_line("esp_node_zone", int(n.zone == z), node=n.id, zone=z) for n in nodes for z in ZONES))
        out += _family("esp_node_state", "gauge", "each normalised dimension of the node's state (0..1)",
                       (_line("esp_node_state", round(v, 6), node=n.id, dimension=d) for n in nodes for d, v in n.state.items()))
        out += _family("esp_node_inflight", "gauge", "requests and tasks in flight on the node",
                       (_line("esp_node_inflight", n.inflight, node=n.id) for n in nodes))
        out += _family("esp_node_head", "gauge", "the node's head block",
                       (_line("esp_node_head", n.head, node=n.id) for n in nodes))
        out += _family("esp_pool_lbh", "gauge", "the pool's health index LBH (< 0 pauses dispatch)",
                       [_line("esp_pool_lbh", round(snapshot.pool.lbh, 6))])
        out += _family("esp_pool_dis_ave", "gauge", "the zone boundary Dis_ave", [_line("esp_pool_dis_ave", round(snapshot.pool.dis_ave, 6))])
        out += _family("esp_snapshot_age_seconds", "gauge", "age of the newest pool snapshot",
                       [_line("esp_snapshot_age_seconds", round(now - snapshot.pool.taken_at, 3))])
    out += _family("esp_snapshot_stale", "gauge", "1 when routing falls back because the snapshot is stale or missing",
                   [_line("esp_snapshot_stale", int(snapshot is None or now - snapshot.pool.taken_at > settings().stale_after))])
    pipe = redis.pipeline(transaction=False)
    for queue in QUEUES:
        pipe.llen(queue)
    lengths = pipe.execute()
    out += _family("esp_queue_length", "gauge", "tasks waiting in each queue",
                   (_line("esp_queue_length", n, queue=q) for q, n in zip(QUEUES, lengths, strict=True)))
    out += _family("esp_receipts_watched", "gauge", "broadcast tasks waiting for their receipts",
                   [_line("esp_receipts_watched", ReceiptWatch(redis).count())])
    return Response("\n".join(out) + "\n", mimetype="text/plain; version=0.0.4")
