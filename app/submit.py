"""Turning a validated write request into a Celery task: 202 with the task id and a status URL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from flask import Response, jsonify, request
from kombu.exceptions import OperationalError

from app.auth import require_caller
from app.context import celery, pool, settings, task_store
from errors import Conflict, NoHealthyNode
from tasks import idempotency
from tasks.operations import OPERATIONS
from tasks.status import TaskRecord

#: How long a request whose Idempotency-Key another request is still working on waits for that task.
IDEMPOTENT_WAIT_SECONDS = 30.0
_POLL_SECONDS = 0.02


def submit(operation: str, params: dict[str, Any], *, prepare: Callable[[], dict[str, Any]] | None = None,
           secret: str | None = None) -> tuple[Response, int]:
    """Enqueue ``operation`` with ``params`` (addresses, amounts, ids: never secrets) for the calling key.

    With an ``Idempotency-Key`` header, every request with that key (from the same
    API key) gets the task the first one created, even while it is still being
    created, and ``prepare`` runs once; the same key with a different request (a
    different ``secret`` included) is a 409. ``prepare`` runs once the key is
    claimed and returns parameters to add (e.g. the address of a keystore it creates).
    """
    caller = require_caller()
    op = OPERATIONS[operation]
    task_id = str(uuid.uuid4())
    key = request.headers.get("Idempotency-Key")
    store = task_store()
    redis = pool().redis
    if key is not None:
        idempotency.check_key(key)
        digest = idempotency.fingerprint(operation, params, secret=secret, server_secret=settings().secret_key)
        existing = _claim_or_wait(caller.key_id, key, digest, task_id)
        if existing is not None:
            response = jsonify(existing.public())
            response.headers["Idempotent-Replayed"] = "true"
            response.headers["Location"] = f"/api/v1/tasks/{existing.id}"
            return response, 202
    try:
        full = {**params, **(prepare() if prepare else {})}
        record = store.create(task_id, operation, op.kind.value, full, owner=caller.key_id)
    except Exception:
        if key is not None:
            idempotency.release(redis, caller.key_id, key)
        raise
    try:
        celery().send_task(op.task, kwargs=full, task_id=task_id)
    except OperationalError as exc:
        # Not accepted: say so and let the client retry (with the same key).
        store.update(task_id, state="failed", error={"type": "not-enqueued", "message": str(exc)})
        if key is not None:
            idempotency.release(redis, caller.key_id, key)
        raise NoHealthyNode(f"the task queue is unavailable: {exc}") from None
    response = jsonify(record.public())
    response.headers["Location"] = f"/api/v1/tasks/{task_id}"
    return response, 202


def _claim_or_wait(scope: str, key: str, digest: str, task_id: str) -> TaskRecord | None:
    """None when this request claimed ``key``; else the task another request made with it, once its record exists.

    The first request claims the key before its record exists (preparing may take a
    KDF's time); the others wait for that record, and claim the key themselves if
    the first one gave it up (its preparation failed).
    """
    redis = pool().redis
    store = task_store()
    deadline = time.monotonic() + IDEMPOTENT_WAIT_SECONDS
    while True:
        bound = idempotency.claim(redis, scope, key, digest, task_id)
        if bound is None:
            return None
        record = store.find(bound)
        if record is not None:
            return record
        if time.monotonic() > deadline:
            raise Conflict("a request with this Idempotency-Key is still being processed: retry it", field="Idempotency-Key")
        time.sleep(_POLL_SECONDS)
