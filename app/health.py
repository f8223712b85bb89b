"""Liveness and readiness: ``GET /healthz`` and ``GET /readyz``."""

from __future__ import annotations

import time
from typing import Any

import redis
from flask import Blueprint, Response, jsonify

from app.context import pool, settings
from nodepool.probe import probe_all

bp = Blueprint("health", __name__)
_started = time.time()


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up (checks nothing else)."""
    return jsonify({"status": "ok", "checks": {"process": "up"}, "uptime_s": round(time.time() - _started, 3)})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready when Redis answers and at least one registered node answers eth_chainId."""
    checks: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        pool().redis.ping()
        checks["redis"] = {"ok": True, "url": _redact(settings().redis_url), "latency_ms": _ms(t0)}
        specs = pool().nodes()
    except redis.RedisError as exc:
        checks["redis"] = {"ok": False, "url": _redact(settings().redis_url), "error": str(exc)}
        specs = []
    checks["nodes"] = probe_all(pool(), specs, settings().probe_timeout)
    answering = sum(1 for n in checks["nodes"] if n["ok"])
    ready = checks["redis"]["ok"] and answering > 0
    body = {
        "status": "ready" if ready else "not ready",
        "checks": checks,
        "nodes_answering": answering,
        "nodes_registered": len(specs),
    }
    return jsonify(body), 200 if ready else 503


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def _redact(url: str) -> str:
    """Hide a password in a Redis URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
