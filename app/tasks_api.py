"""Task status: ``GET /api/v1/tasks/<id>`` (``?wait=<seconds>`` blocks until it is final)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from app.context import task_store
from app.validation import integer

bp = Blueprint("tasks", __name__, url_prefix="/api/v1/tasks")

#: The longest ?wait= a client may ask for; beyond it, poll.
MAX_WAIT = 60


@bp.get("/<task_id>")
def get_task(task_id: str) -> Response:
    """A write task's state, node, result or error."""
    wait = integer(request.args.get("wait", "0"), "wait", low=0, high=MAX_WAIT)
    record = task_store().wait(task_id, wait) if wait else task_store().get(task_id)
    return jsonify(record.public())
