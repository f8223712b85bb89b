"""Turning a validated write request into a Celery task: 202 with the task id and a status URL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from flask import Response, jsonify, request
from kombu.exceptions import OperationalError

from app.context import celery, pool, task_store
from errors import NoHealthyNode
from tasks import idempotency
from tasks.operations import OPERATIONS


def submit(operation: str, params: dict[str, Any], *, prepare: Callable[[], dict[str, Any]] | None = None) -> tuple[Response, int]:
    """Enqueue ``operation`` with ``params`` (addresses, amounts, ids: never secrets).

    With an ``Idempotency-Key`` header, a repeated request returns the task the
    first one created (and ``prepare`` does not run again); the same key with a
    different request is a 409. ``prepare`` runs once the key is claimed and
    returns parameters to add (e.g. the address of a keystore it creates).
    """
    op = OPERATIONS[operation]
    task_id = str(uuid.uuid4())
    key = request.headers.get("Idempotency-Key")
    store = task_store()
    if key is not None:
        idempotency.check_key(key)
        existing = idempotency.claim(pool().redis, key, operation, params, task_id)
        if existing is not None:
            response = jsonify(store.get(existing).public())
            response.headers["Idempotent-Replayed"] = "true"
            response.headers["Location"] = f"/api/v1/tasks/{existing}"
            return response, 202
    try:
        full = {**params, **(prepare() if prepare else {})}
    except Exception:
        if key is not None:
            idempotency.release(pool().redis, key)
        raise
    record = store.create(task_id, operation, op.kind.value, full)
    try:
        celery().send_task(op.task, kwargs=full, task_id=task_id)
    except OperationalError as exc:
        # Not accepted: say so and let the client retry (with the same key).
        store.update(task_id, state="failed", error={"type": "not-enqueued", "message": str(exc)})
        if key is not None:
            idempotency.release(pool().redis, key)
        raise NoHealthyNode(f"the task queue is unavailable: {exc}") from None
    response = jsonify(record.public())
    response.headers["Location"] = f"/api/v1/tasks/{task_id}"
    return response, 202
