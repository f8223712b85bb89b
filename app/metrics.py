"""``GET /metrics``: the pool, the queues and the receipt backlog, plus every process metric, in Prometheus' text format.

``GET /api/v1/metrics/targets`` (admin): where the workers', control worker's and beat's own
``/metrics`` are, as Prometheus' HTTP service discovery reads them (``services.exporters``).

Two sources, one page, written out by ``prometheus_client``:

- ``PoolCollector`` reads, at scrape time, what is already in Redis: the balancer's
  snapshot, the queue lengths and the receipt watch set (every process sees the same).
- Metrics other modules declare with ``prometheus_client`` (a module-level ``Counter``,
  ``Histogram``... in the default registry). Under gunicorn (``gunicorn.conf.py`` sets
  PROMETHEUS_MULTIPROC_DIR before any worker imports them) they live in files, one per
  worker, and ``MultiProcessCollector`` sums them; otherwise (``flask run``, the test
  client) the default registry is in this process and is shown as it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.auth import admin_required
from app.context import pool, settings
from nodepool.pool import Pool
from nodepool.snapshot import load_snapshot
from services.exporters import ExporterRegistry, http_sd
from services.watch import ReceiptWatch
from tasks.metrics_dir import is_multiprocess
from tasks.routing import QUEUES

bp = Blueprint("metrics", __name__)

ZONES = ("I", "II", "III")


class PoolCollector(Collector):
    """The pool's snapshot, the queue lengths and the receipts watched, read from Redis on each scrape."""

    def __init__(self, pool: Pool, *, stale_after: float) -> None:
        self.pool = pool
        self.stale_after = stale_after

    def collect(self) -> Iterator[Metric]:
        snapshot = load_snapshot(self.pool)
        now = time.time()
        if snapshot is not None:
            nodes = snapshot.nodes
            yield _by_node("esp_node_up", "1 when the node answered its last probe and is up",
                           {n.id: int(n.alive and n.status == "up") for n in nodes})
            yield _by_node("esp_node_distance", "distance of the node from the origin of the state space",
                           {n.id: round(n.distance, 6) for n in nodes})
            zone = GaugeMetricFamily("esp_node_zone", "1 for the zone the node is in", labels=["node", "zone"])
            for n in nodes:
                for z in ZONES:
                    zone.add_metric([n.id, z], int(n.zone == z))
            yield zone
            state = GaugeMetricFamily("esp_node_state", "each normalised dimension of the node's state (0..1)",
                                      labels=["node", "dimension"])
            for n in nodes:
                for dimension, value in n.state.items():
                    state.add_metric([n.id, dimension], round(value, 6))
            yield state
            yield _by_node("esp_node_inflight", "requests and tasks in flight on the node", {n.id: n.inflight for n in nodes})
            yield _by_node("esp_node_head", "the node's head block", {n.id: n.head for n in nodes})
            yield GaugeMetricFamily("esp_pool_lbh", "the pool's health index LBH (< 0 pauses dispatch)",
                                    value=round(snapshot.pool.lbh, 6))
            yield GaugeMetricFamily("esp_pool_dis_ave", "the zone boundary Dis_ave", value=round(snapshot.pool.dis_ave, 6))
            yield GaugeMetricFamily("esp_snapshot_age_seconds", "age of the newest pool snapshot",
                                    value=round(now - snapshot.pool.taken_at, 3))
        stale = snapshot is None or now - snapshot.pool.taken_at > self.stale_after
        yield GaugeMetricFamily("esp_snapshot_stale", "1 when routing falls back because the snapshot is stale or missing",
                                value=int(stale))
        pipe = self.pool.redis.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.llen(queue)
        queues = GaugeMetricFamily("esp_queue_length", "tasks waiting in each queue", labels=["queue"])
        for queue, length in zip(QUEUES, pipe.execute(), strict=True):
            queues.add_metric([queue], length)
        yield queues
        yield GaugeMetricFamily("esp_receipts_watched", "broadcast tasks waiting for their receipts",
                                value=ReceiptWatch(self.pool.redis).count())


def _by_node(name: str, help_text: str, values_by_node: dict[str, float | None]) -> GaugeMetricFamily:
    """One gauge labelled by node; a node whose value is unknown (None: no head yet) has no sample."""
    family = GaugeMetricFamily(name, help_text, labels=["node"])
    for node, value in values_by_node.items():
        if value is not None:
            family.add_metric([node], value)
    return family


def scrape_registry(collector: Collector) -> CollectorRegistry:
    """``collector`` plus the process metrics: summed over gunicorn's workers, or this process's default registry."""
    registry = CollectorRegistry()
    registry.register(collector)
    if is_multiprocess():
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)
    return registry


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics of the pool, queues and receipt tracking, and of ESP's processes."""
    collector = PoolCollector(pool(), stale_after=settings().stale_after)
    return Response(generate_latest(scrape_registry(collector)), content_type=CONTENT_TYPE_PLAIN_0_0_4)


@bp.get("/api/v1/metrics/targets")
@admin_required
def targets() -> Response:
    """Prometheus HTTP service discovery: the live Celery exporters, one target group per role (worker, control, beat)."""
    return jsonify(http_sd(ExporterRegistry(pool().redis).live()))
