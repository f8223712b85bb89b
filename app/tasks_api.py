"""Task status: ``GET /api/v1/tasks/<id>`` (``?wait=<seconds>`` blocks until it is final)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from app.auth import require_caller
from app.context import task_store
from errors import Forbidden
from services.fields import integer

bp = Blueprint("tasks", __name__, url_prefix="/api/v1/tasks")

#: The longest ?wait= a client may ask for; beyond it, poll.
MAX_WAIT = 60


@bp.get("/<task_id>")
def get_task(task_id: str) -> Response:
    """A write task's state, node, result or error."""
    wait = integer(request.args.get("wait", "0"), "wait", low=0, high=MAX_WAIT)
    check_task_reader(task_id)
    record = task_store().wait(task_id, wait) if wait else task_store().get(task_id)
    return jsonify(record.public())


def check_task_reader(task_id: str) -> None:
    """Refuse anyone but the key that submitted the task, or an admin (401 without a key, 403 with another's)."""
    caller = require_caller()
    record = task_store().get(task_id)
    if not caller.is_admin and record.owner != caller.key_id:
        raise Forbidden(f"task {task_id} was submitted with another API key", field="task_id")
