"""The pool as an operator changes it (admin only; ``esp node …`` calls these).

    POST   /api/v1/nodes                      add a static node (``url``, optional ``id``) on the pool's chain: 201
    DELETE /api/v1/nodes/<id>                 remove a static node
    POST   /api/v1/nodes/<id>/drain           no new work for the node; held drained until undrained or recycled
    POST   /api/v1/nodes/<id>/recycle         drain it, restart it through the node manager, wait until caught up
    POST   /api/v1/nodes/<id>/undrain         give a drained node back to the pool

Drain, recycle and undrain are requests to the recycler (202): the control worker's next beat
starts them, and their progress is the node's events (``GET /api/v1/nodes/events``).
"""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, Response, jsonify, request

from app.auth import admin_required
from app.context import pool
from app.validation import json_body
from services.fields import required
from services.recycler import ACTION_DRAIN, ACTION_RECYCLE, ACTION_UNDRAIN, request_operation
from services.static_nodes import add_static_node, check_node_id, remove_static_node

bp = Blueprint("node_admin", __name__, url_prefix="/api/v1/nodes")


@bp.post("")
@admin_required
def add_node() -> tuple[Response, int]:
    """Add a static node (``url``, optional ``id``) once it answers on the pool's chain; 201 with its record."""
    data = json_body(request)
    spec = add_static_node(pool(), required(data, "url"), data.get("id"))
    response = jsonify(asdict(spec))
    response.headers["Location"] = f"/api/v1/nodes/{spec.id}"
    return response, 201


@bp.delete("/<node_id>")
@admin_required
def remove_node(node_id: str) -> Response:
    """Remove a static node from the pool (never a managed one, nor the last serving one)."""
    return jsonify(asdict(remove_static_node(pool(), check_node_id(node_id, "node_id"))))


def _operation(node_id: str, action: str) -> tuple[Response, int]:
    return jsonify(request_operation(pool(), check_node_id(node_id, "node_id"), action)), 202


@bp.post("/<node_id>/drain")
@admin_required
def drain_node(node_id: str) -> tuple[Response, int]:
    """Drain the node at the recycler's next step: no new work; it stays drained until undrained or recycled."""
    return _operation(node_id, ACTION_DRAIN)


@bp.post("/<node_id>/recycle")
@admin_required
def recycle_node(node_id: str) -> tuple[Response, int]:
    """Recycle the node at the recycler's next step: drain, restart through the node manager, catch up."""
    return _operation(node_id, ACTION_RECYCLE)


@bp.post("/<node_id>/undrain")
@admin_required
def undrain_node(node_id: str) -> tuple[Response, int]:
    """Give a node drained by an operator back to the pool."""
    return _operation(node_id, ACTION_UNDRAIN)
