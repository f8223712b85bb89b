"""The write tasks: one Celery task per write operation of ``services.plans.OPERATIONS``.

Each is a thin wrapper: its arguments are addresses, amounts and ids (never
secrets: a password never leaves the API process, a key never leaves the
keystore or the unlock store); it asks the operation for its Plan, places it on
a node and hands it to the Sender (``services.sending``). Task names are
``tasks.writes.<operation>``, declared here once (``TASK_NAMES``); the API
enqueues through the task objects (``enqueue_on``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task, shared_task
from celery.exceptions import MaxRetriesExceededError
from kombu.exceptions import OperationalError

from balancer import TaskKind
from errors import NoHealthyNode
from services.operations import Enqueue, Operation, Plan
from services.plans import OPERATIONS
from services.records import FAILED, WAITING
from services.sending import NodeBusy, TaskFailed
from tasks.context import Worker, worker

log = logging.getLogger(__name__)

#: A task waits this many times (about a second apart, then backing off) for a healthy node.
WAIT_RETRIES = 120

#: operation name -> Celery task name.
TASK_NAMES = {name: f"tasks.writes.{name}" for name in OPERATIONS}


class WriteTask(Task):
    """Late-acknowledged, re-delivered if the worker dies, never holding a slot while waiting."""

    acks_late = True
    reject_on_worker_lost = True
    max_retries = WAIT_RETRIES
    esp_kind = TaskKind.CALL.value


def run_write(task: Task, w: Worker, kind: TaskKind, plan: Plan) -> dict[str, Any]:
    """Place, send and hand over to the receipt tracker; end the task record on failure."""
    task_id = task.request.id
    node = getattr(task.request, "esp_node", None)
    if node is None or not w.placement.is_eligible(node, kind):
        try:
            node = w.placement.choose(kind).node_id  # the routed node went away: re-pick
        except NoHealthyNode as exc:
            return _wait(task, w, str(exc))
    try:
        with w.placement.traffic.track(node):
            return w.sender.send(task_id, kind, plan.sender, plan.steps, node=node, extra=plan.result)
    except NodeBusy as exc:
        return _wait(task, w, str(exc))
    except TaskFailed as exc:
        w.store.update(task_id, state=FAILED, error=exc.as_error())
        return {"failed": exc.as_error()}


def _wait(task: Task, w: Worker, reason: str) -> dict[str, Any]:
    w.store.update(task.request.id, state=WAITING, error={"type": "waiting", "message": reason})
    countdown = min(1.0 * (1.2 ** task.request.retries), 10.0)
    try:
        raise task.retry(countdown=countdown)
    except MaxRetriesExceededError:
        error = {"type": "no-healthy-node", "message": f"gave up waiting for a healthy node: {reason}"}
        w.store.update(task.request.id, state=FAILED, error=error)
        return {"failed": error}


def _write_task(op: Operation) -> Task:
    def run(self: Task, **params: Any) -> dict[str, Any]:
        w = worker(self.app.settings)
        try:
            plan = op.plan(w.planning, **params)
        except (TypeError, ValueError) as exc:
            # A message this code cannot read (e.g. from an older or newer API): end it clearly.
            error = {"type": "bad-arguments", "message": f"{op.name}: {exc}"}
            w.store.update(self.request.id, state=FAILED, error=error)
            return {"failed": error}
        return run_write(self, w, op.kind, plan)

    run.__name__ = op.name
    run.__doc__ = op.plan.__doc__
    return shared_task(bind=True, base=WriteTask, name=TASK_NAMES[op.name], esp_kind=op.kind.value)(run)


#: operation name -> its Celery task.
WRITE_TASKS: dict[str, Task] = {name: _write_task(op) for name, op in OPERATIONS.items()}


def enqueue_on(app: Celery) -> Enqueue:
    """How services hand an operation to ``app``'s queues: its task object's apply_async (the router places it)."""

    def enqueue(op: Operation, params: dict[str, Any], task_id: str) -> None:
        try:
            app.tasks[TASK_NAMES[op.name]].apply_async(kwargs=params, task_id=task_id)
        except OperationalError as exc:
            raise NoHealthyNode(f"the task queue is unavailable: {exc}") from None

    return enqueue
