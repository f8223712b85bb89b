"""The node pool: ``GET /api/v1/nodes`` and ``GET /api/v1/nodes/events``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from app.context import pool
from errors import ValidationError
from nodes.events import recent_events

bp = Blueprint("nodes", __name__, url_prefix="/api/v1/nodes")


@bp.get("")
def list_nodes() -> Response:
    """Every node of the pool with its id and JSON-RPC url (and its state, once sampled)."""
    nodes: list[dict[str, Any]] = [
        {"id": s.id, "url": s.url, "backend": s.backend, "role": s.role} for s in pool().nodes()
    ]
    return jsonify({"nodes": nodes, "count": len(nodes)})


@bp.get("/events")
def node_events() -> Response:
    """Recent recycle and state-change events, newest first (``?limit=``, default 100)."""
    raw = request.args.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ValidationError("limit", "must be a whole number from 1 to 1000", status=400)
    return jsonify({"events": recent_events(pool().redis, int(raw))})
