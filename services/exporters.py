"""Where Prometheus finds the Celery processes' metrics: each exporter registers its address here, with a TTL.

A write worker, the control worker and beat each serve their own ``/metrics`` (``tasks.exporter``),
on a free port by default, since scaled workers on one host would collide on a fixed one. Each
registers ``host:port`` and its role in one sorted set, scored by when the entry expires, and
registers again every HEARTBEAT seconds; one that died without saying so drops out TTL seconds
later. The API serves the live entries as Prometheus HTTP service discovery
(``GET /api/v1/metrics/targets``), grouped by role.

Only addresses and roles are stored: no key, no task, nothing a label should not carry.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

EXPORTERS_KEY = "esp:metrics:exporters"
#: Seconds an exporter stays listed after its last heartbeat.
TTL = 30.0
#: Seconds between two heartbeats of a live exporter (three per TTL: one lost heartbeat does not drop it).
HEARTBEAT = 10.0
#: The processes that register an exporter.
ROLE_WORKER = "worker"
ROLE_CONTROL = "control"
ROLE_BEAT = "beat"
ROLES = (ROLE_WORKER, ROLE_CONTROL, ROLE_BEAT)


@dataclass(frozen=True)
class Exporter:
    """One process's ``/metrics``: its role and the ``host:port`` it listens on."""

    role: str
    address: str

    def member(self) -> str:
        return json.dumps({"role": self.role, "address": self.address}, sort_keys=True)


class ExporterRegistry:
    """The live exporters, in Redis (EXPORTERS_KEY)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def register(self, exporter: Exporter, *, now: float | None = None, ttl: float = TTL) -> None:
        """List ``exporter`` (again) until ``ttl`` seconds from now."""
        if exporter.role not in ROLES:
            raise ValueError(f"unknown exporter role {exporter.role!r}")
        now = time.time() if now is None else now
        self.redis.zadd(EXPORTERS_KEY, {exporter.member(): now + ttl})

    def deregister(self, exporter: Exporter) -> None:
        self.redis.zrem(EXPORTERS_KEY, exporter.member())

    def live(self, *, now: float | None = None) -> list[Exporter]:
        """The exporters whose last heartbeat is younger than their TTL (the expired ones are dropped)."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(EXPORTERS_KEY, "-inf", now)
        pipe.zrangebyscore(EXPORTERS_KEY, now, "+inf")
        _, members = pipe.execute()
        exporters = []
        for raw in members:
            try:
                entry = json.loads(raw)
                exporters.append(Exporter(role=str(entry["role"]), address=str(entry["address"])))
            except (ValueError, KeyError, TypeError):
                continue  # not ours to read: skipped, and it expires as any entry
        return exporters


def http_sd(exporters: list[Exporter]) -> list[dict[str, Any]]:
    """Prometheus' HTTP service discovery document: one target group per role, labelled ``role``."""
    groups: dict[str, list[str]] = {}
    for exporter in sorted(exporters, key=lambda e: (e.role, e.address)):
        groups.setdefault(exporter.role, []).append(exporter.address)
    return [{"targets": targets, "labels": {"role": role}} for role, targets in groups.items()]
