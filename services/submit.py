"""Submitting a write: the task record, the Idempotency-Key, and the hand-over to the queue, in one place.

Services build a validated operation's parameters (addresses, amounts, ids, hashes:
never secrets) and give them to a ``Submitter`` made for one request (its caller
and Idempotency-Key). It answers with the task record: the edge renders it (the
API as 202 + the task).

With an Idempotency-Key, every request with that key (from the same API key) gets
the task the first one created, even while it is still being created, and
``prepare`` runs once; the same key with a different request (a different
``secret`` included) is a Conflict.

``submit_many`` accepts many writes of one operation in one Redis transaction: every
record and every hand-over to the queue (``EnqueueMany``) is written, or none is. Its
task ids under an Idempotency-Key derive from the first one, which the key binds,
so a replay finds them all.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from access.keys import Caller
from errors import Conflict, NoHealthyNode
from services import idempotency
from services.operations import Enqueue, EnqueueMany
from services.plans import OPERATIONS
from services.records import FAILED, TaskRecord, TaskStore

#: How long a request whose Idempotency-Key another request is still working on waits for that task.
IDEMPOTENT_WAIT_SECONDS = 30.0
_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class Submitted:
    """A write accepted: its task record, and whether an earlier request with the same key made it."""

    record: TaskRecord
    replayed: bool = False


@dataclass(frozen=True)
class SubmittedMany:
    """Many writes accepted together: their task records in request order, and whether a replay returned them."""

    records: list[TaskRecord]
    replayed: bool = False


def batch_ids(first: str, count: int) -> list[str]:
    """The task ids of a batch whose first task is ``first``: UUIDs as every task's, the same on every replay."""
    return [first, *(str(uuid.uuid5(uuid.NAMESPACE_URL, f"esp:batch:{first}:{i}")) for i in range(1, count))]


@dataclass
class Submitter:
    """Submits writes for one caller (and one request's Idempotency-Key)."""

    store: TaskStore
    redis: redis.Redis
    enqueue: Enqueue
    server_secret: str
    caller: Caller
    idempotency_key: str | None = None
    enqueue_many: EnqueueMany | None = None

    def submit(self, operation: str, params: dict[str, Any], *, prepare: Callable[[], dict[str, Any]] | None = None,
               secret: str | None = None) -> Submitted:
        """Create ``operation``'s task record and enqueue it; ``prepare`` adds parameters once the key is claimed."""
        op = OPERATIONS[operation]
        task_id = str(uuid.uuid4())
        key = self.idempotency_key
        if key is not None:
            idempotency.check_key(key)
            digest = idempotency.fingerprint(operation, params, secret=secret, server_secret=self.server_secret)
            existing = self._claim_or_wait(key, digest, task_id)
            if existing is not None:
                return Submitted(existing, replayed=True)
        try:
            full = {**params, **(prepare() if prepare else {})}
            record = self.store.create(task_id, operation, op.kind.value, full, owner=self.caller.key_id)
        except Exception:
            self._release(key)
            raise
        try:
            self.enqueue(op, full, task_id)
        except NoHealthyNode as exc:
            # Not accepted: say so and let the client retry (with the same key).
            self.store.update(task_id, state=FAILED, error={"type": "not-enqueued", "message": str(exc)})
            self._release(key)
            raise
        return Submitted(record)

    def submit_many(self, operation: str, many: list[dict[str, Any]]) -> SubmittedMany:
        """Create one task per parameter set of ``operation`` and enqueue them all in one Redis transaction."""
        if self.enqueue_many is None:
            raise TypeError("this Submitter was made without enqueue_many")
        op = OPERATIONS[operation]
        ids = batch_ids(str(uuid.uuid4()), len(many))
        key = self.idempotency_key
        if key is not None:
            idempotency.check_key(key)
            digest = idempotency.fingerprint(f"{operation}[]", {"many": many}, server_secret=self.server_secret)
            existing = self._claim_or_wait(key, digest, ids[0])
            if existing is not None:
                found = self.store.find_many(batch_ids(existing.id, len(many)))
                return SubmittedMany([r for r in found if r is not None], replayed=True)
        now = time.time()
        records = [TaskRecord(id=task_id, operation=operation, kind=op.kind.value, params=params, created_at=now,
                              updated_at=now, owner=self.caller.key_id) for task_id, params in zip(ids, many, strict=True)]
        try:
            pipe = self.redis.pipeline(transaction=True)
            self.store.write_many(records, pipe)
            staged, publish = self.enqueue_many(op, list(zip(many, ids, strict=True)), pipe)
            replies = pipe.execute()
        except Exception:
            self._release(key)
            raise
        publish(replies[len(replies) - staged:] if staged else [])
        return SubmittedMany(records)

    def _release(self, key: str | None) -> None:
        if key is not None:
            idempotency.release(self.redis, self.caller.key_id, key)

    def _claim_or_wait(self, key: str, digest: str, task_id: str) -> TaskRecord | None:
        """None when this request claimed ``key``; else the task another request made with it, once its record exists.

        The first request claims the key before its record exists (preparing may take a
        KDF's time); the others wait for that record, and claim the key themselves if
        the first one gave it up (its preparation failed).
        """
        deadline = time.monotonic() + IDEMPOTENT_WAIT_SECONDS
        while True:
            bound = idempotency.claim(self.redis, self.caller.key_id, key, digest, task_id)
            if bound is None:
                return None
            record = self.store.find(bound)
            if record is not None:
                return record
            if time.monotonic() > deadline:
                raise Conflict("a request with this Idempotency-Key is still being processed: retry it", field="Idempotency-Key")
            time.sleep(_POLL_SECONDS)
