"""ESP's record of a write task, in Redis: what the task-status API shows.

Celery's own states say whether a worker ran the task; a client wants to know
where its transaction is. The record follows it::

    queued -> waiting (for a healthy node) -> running -> broadcast -> confirmed
                                                 \\-----------------\\-> failed

``broadcast`` is set once a node accepted the signed transaction; the receipt
tracker sets ``confirmed`` (with the receipt) or ``failed`` (with the decoded
revert reason). Every change is published on a channel so ``?wait=`` can block
without polling.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from redis.client import Pipeline

from errors import NotFound
from nodepool.activity import note_tasks_on

TASK_KEY = "esp:task:{}"
TASK_CHANNEL = "esp:task-events:{}"

QUEUED = "queued"
WAITING = "waiting"
RUNNING = "running"
BROADCAST = "broadcast"
CONFIRMED = "confirmed"
FAILED = "failed"
STATES = (QUEUED, WAITING, RUNNING, BROADCAST, CONFIRMED, FAILED)
FINAL = (CONFIRMED, FAILED)


@dataclass
class TaskRecord:
    """One write task as clients see it."""

    id: str
    operation: str
    kind: str
    state: str = QUEUED
    node: str | None = None
    attempts: int = 0
    created_at: float = 0.0
    started_at: float | None = None  # first time a worker ran it (queue wait = started_at - created_at)
    updated_at: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    owner: str | None = None  # id of the API key that submitted it (None: ESP's own task); never shown


    @property
    def is_final(self) -> bool:
        return self.state in FINAL

    def public(self) -> dict[str, Any]:
        """The JSON the API returns."""
        body = asdict(self)
        del body["owner"]
        body["status_url"] = f"/api/v1/tasks/{self.id}"
        return body


class TaskStore:
    """Reads and writes task records; every write is published for waiters."""

    def __init__(self, client: redis.Redis, *, ttl: int) -> None:
        self.redis = client
        self.ttl = ttl

    def create(self, task_id: str, operation: str, kind: str, params: dict[str, Any], *, owner: str | None = None) -> TaskRecord:
        now = time.time()
        record = TaskRecord(id=task_id, operation=operation, kind=kind, params=params, created_at=now, updated_at=now,
                            owner=owner)
        self._write(record)
        return record

    def get(self, task_id: str) -> TaskRecord:
        raw = self.redis.get(TASK_KEY.format(task_id))
        if raw is None:
            raise NotFound(f"no task {task_id!r} (unknown, or older than its retention)", field="task_id")
        return TaskRecord(**json.loads(raw))

    def find(self, task_id: str) -> TaskRecord | None:
        try:
            return self.get(task_id)
        except NotFound:
            return None

    def find_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        """The records of ``task_ids`` (None where there is none), in one round trip."""
        if not task_ids:
            return []
        raws: Any = self.redis.mget([TASK_KEY.format(t) for t in task_ids])
        return [None if raw is None else TaskRecord(**json.loads(raw)) for raw in raws]

    def update(self, task_id: str, *, state: str | None = None, **changes: Any) -> TaskRecord:
        """Apply changes; a final state is never left (a late duplicate cannot undo it)."""
        record = self.get(task_id)
        if apply(record, state=state, **changes):
            self._write(record)
        return record

    def write_many(self, records: Sequence[TaskRecord], pipe: Pipeline) -> None:
        """Queue the writes of ``records`` (changed with ``apply``) on ``pipe``; the caller executes it."""
        for record in records:
            self._queue(record, pipe)
        note_tasks_on(pipe, {record.id: record.updated_at for record in records})

    def wait(self, task_id: str, timeout: float) -> TaskRecord:
        """Return the record once it is final, or as it is after ``timeout`` seconds."""
        record = self.get(task_id)
        if record.is_final or timeout <= 0:
            return record
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(TASK_CHANNEL.format(task_id))
            deadline = time.monotonic() + timeout
            record = self.get(task_id)  # a change between get and subscribe is not missed
            while not record.is_final:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                pubsub.get_message(timeout=min(left, 1.0))
                record = self.get(task_id)
        finally:
            pubsub.close()
        return record

    def _write(self, record: TaskRecord) -> None:
        pipe = self.redis.pipeline()
        self._queue(record, pipe)
        note_tasks_on(pipe, {record.id: record.updated_at})
        pipe.execute()

    def _queue(self, record: TaskRecord, pipe: Pipeline) -> None:
        # vars(), not asdict(): the same JSON without asdict's deep copy (a third of a batch's bookkeeping CPU).
        pipe.set(TASK_KEY.format(record.id), json.dumps(vars(record), default=str), ex=self.ttl)
        pipe.publish(TASK_CHANNEL.format(record.id), record.state)


def apply(record: TaskRecord, *, state: str | None = None, **changes: Any) -> bool:
    """Change ``record`` in memory as ``TaskStore.update`` does; False (unchanged) when it would leave a final state."""
    if record.is_final and state not in (None, record.state):
        return False
    if state is not None:
        if state not in STATES:
            raise ValueError(f"unknown task state {state!r}")
        if state == RUNNING and record.started_at is None:
            record.started_at = time.time()
        record.state = state
    for name, value in changes.items():
        setattr(record, name, value)
    record.updated_at = time.time()
    return True
