"""Task status: ``GET /api/v1/tasks/<id>`` (``?wait=<seconds>`` blocks until it is final)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from app.context import caller, task_store
from errors import Forbidden
from services.fields import integer
from services.records import TaskRecord

bp = Blueprint("tasks", __name__, url_prefix="/api/v1/tasks")

#: The longest ?wait= a client may ask for; beyond it, poll.
MAX_WAIT = 60


@bp.get("/<task_id>")
def get_task(task_id: str) -> Response:
    """A write task's state, node, result or error."""
    wait = integer(request.args.get("wait", "0"), "wait", low=0, high=MAX_WAIT)
    record = readable_task(task_id)
    if wait:
        record = task_store().wait(task_id, wait)
    return jsonify(record.public())


def readable_task(task_id: str) -> TaskRecord:
    """The task, for the key that submitted it or an admin (401 without a key, 403 with another's, 404 unknown)."""
    reader = caller()
    record = task_store().get(task_id)
    if not reader.is_admin and record.owner != reader.key_id:
        raise Forbidden(f"task {task_id} was submitted with another API key", field="task_id")
    return record
