"""Task status: ``GET /api/v1/tasks/<id>`` (``?wait=<seconds>`` blocks until it is final), and many at once:
``POST /api/v1/tasks/lookup`` with ``{"ids": [...]}`` (one Redis read for all of them)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from app.context import caller, task_store
from app.validation import json_body
from errors import Forbidden, ValidationError
from services.fields import integer, required
from services.records import TaskRecord

bp = Blueprint("tasks", __name__, url_prefix="/api/v1/tasks")

#: The longest ?wait= a client may ask for; beyond it, poll.
MAX_WAIT = 60
#: The most task ids one lookup may name.
MAX_LOOKUP = 1000


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


@bp.post("/lookup")
def lookup_tasks() -> Response:
    """Many tasks' states at once: those the caller may read, in the order asked; the rest listed as ``missing``.

    An id that is unknown and one submitted with another key are alike ``missing`` here (a
    lookup does not tell another key's tasks apart from none).
    """
    ids = required(json_body(request), "ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids):
        raise ValidationError("ids", "must be a list of task ids")
    if len(ids) > MAX_LOOKUP:
        raise ValidationError("ids", f"names {len(ids)} tasks; at most {MAX_LOOKUP}", status=413)
    reader = caller()
    found, missing = [], []
    for task_id, record in zip(ids, task_store().find_many(ids), strict=True):
        if record is None or (not reader.is_admin and record.owner != reader.key_id):
            missing.append(task_id)
        else:
            found.append(record.public())
    return jsonify({"tasks": found, "missing": missing})
