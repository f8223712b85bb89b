"""The write tasks: one Celery task per write operation of ``services.plans.OPERATIONS``.

Each is a thin wrapper: its arguments are addresses, amounts and ids (never
secrets: a password never leaves the API process, a key never leaves the
keystore or the unlock store); it asks the operation for its Plan, places it on
a node and hands it to the Sender (``services.sending``). Task names are
``tasks.writes.<operation>``, declared here once (``TASK_NAMES``); the API
enqueues through the task objects (``enqueue_on``).

A batched operation (``Operation.batched``: one call) has no message of its own:
its id is pushed to its sender's outbox (``services.outbox``), and a drain of that
sender (``drain_sender``, DRAIN_SENDER, on the calls queue, routed and shown as any
call) sends the writes queued so far in one batch, and the next ones as they come,
until the outbox is empty. The push itself says whether a drain must be asked
for (none holds the sender, none is on its way); only then does the enqueue
publish one. A drain that spent its time budget hands over with another, and the
control worker's sweep sends one for an outbox no drain holds.

Why a message per drain rather than per write: publishing a Celery message (and
its task-sent event) was a third of the API's CPU per submit and running it a
fifth of the write worker's, for messages that mostly found their sender busy.
The deploy-first priority is unchanged (deploys and account tasks are never
batched, and a drain hands over between batches), and no write depends on a message:
its record and outbox entry are written before the answer.
(The per-operation task of a batched operation still drains its sender, for a message
published by an older API.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import redis
from celery import Celery, Task, shared_task
from celery.exceptions import MaxRetriesExceededError
from eth_account import Account
from kombu.exceptions import OperationalError

from balancer import TaskKind
from errors import NoHealthyNode
from services.batch import Drained
from services.operations import Enqueue, EnqueueMany, Operation, Plan, Planning
from services.outbox import Outbox
from services.plans import OPERATIONS
from services.records import FAILED, WAITING
from services.sending import NodeBusy, TaskFailed
from settings import Settings
from tasks.context import Worker, worker

log = logging.getLogger(__name__)

#: A task waits this many times (about a second apart, then backing off) for a healthy node.
WAIT_RETRIES = 120

#: operation name -> Celery task name.
TASK_NAMES = {name: f"tasks.writes.{name}" for name in OPERATIONS}
#: The drain of one sender's outbox, named outright (a hand-over, or the sweep).
DRAIN_SENDER = "tasks.writes.drain_sender"
#: Seconds before a drain whose transactions no node took tries them again.
DRAIN_RETRY_SECONDS = 1.0


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


def run_drain(task: Task, w: Worker, sender: str) -> dict[str, Any]:
    """Drain ``sender``'s outbox as this message's run; hand over or retry as the drain says."""
    if w.batcher.outbox.is_held_by_another(sender, task.request.id):
        return _outcome(sender, Drained(state="busy"))  # most messages of a busy sender: one GET, and done
    node = getattr(task.request, "esp_node", None)
    if node is None or not w.placement.is_eligible(node, TaskKind.CALL):
        try:
            node = w.placement.choose(TaskKind.CALL).node_id
        except NoHealthyNode as exc:
            return _retry_drain(task, sender, str(exc))
    with w.placement.traffic.track(node):
        run = w.batcher.drain(sender, task.request.id, w.sender.clients(TaskKind.CALL, node))
    outcome = _outcome(sender, run)
    if run.state == "more":
        task.app.tasks[DRAIN_SENDER].apply_async(kwargs={"sender": sender})
    elif run.state == "waiting":
        return _retry_drain(task, sender, run.reason or "no node took the batch", outcome)
    return outcome


def _retry_drain(task: Task, sender: str, reason: str, outcome: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run this drain again later; past WAIT_RETRIES the sweep takes over (the ids stay in the outbox)."""
    log.info("drain of %s waits: %s", sender, reason)
    try:
        raise task.retry(countdown=min(DRAIN_RETRY_SECONDS * (1.2 ** task.request.retries), 10.0))
    except MaxRetriesExceededError:
        return outcome or {"sender": sender, "state": "waiting", "reason": reason}


def _outcome(sender: str, run: Drained) -> dict[str, Any]:
    return {"sender": sender, "state": run.state, "batches": run.batches, "sent": run.sent, "failed": run.failed}


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
        if op.batched:
            return run_drain(self, w, plan.sender)
        return run_write(self, w, op.kind, plan)

    run.__name__ = op.name
    run.__doc__ = op.plan.__doc__
    # A batched write's message only starts a drain: its task record says what happened to it, and Celery's
    # result and "started" state of the message (two writes to the backend each) would say nothing more.
    options = {"ignore_result": True, "track_started": False} if op.batched else {}
    return shared_task(bind=True, base=WriteTask, name=TASK_NAMES[op.name], esp_kind=op.kind.value, **options)(run)


#: operation name -> its Celery task.
WRITE_TASKS: dict[str, Task] = {name: _write_task(op) for name, op in OPERATIONS.items()}


@shared_task(bind=True, base=WriteTask, name=DRAIN_SENDER, esp_kind=TaskKind.CALL.value, ignore_result=True,
             track_started=False)
def drain_sender(self: Task, sender: str) -> dict[str, Any]:
    """Drain ``sender``'s outbox: send its queued batched writes (a hand-over, or the sweep's)."""
    return run_drain(self, worker(self.app.settings), sender)


@cache
def _treasury(settings: Settings) -> str:
    return str(Account.from_key(settings.treasury_key).address)


@cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def enqueue_on(app: Celery, client: redis.Redis | None = None) -> Enqueue:
    """How services hand an operation to ``app``'s queues: its task object's apply_async (the router places it).

    A batched operation's id goes to its sender's outbox first (in ``client``, by default
    a client of the app's Redis), so that whichever drain of that sender runs next finds it.
    """
    settings: Settings = app.settings
    client = client if client is not None else _redis(settings.redis_url)
    outbox = Outbox(client)

    def enqueue(op: Operation, params: dict[str, Any], task_id: str) -> None:
        sender = None
        if op.batched:
            try:
                sender = op.plan(Planning(treasury=_treasury(settings), redis=client), **params).sender
            except (TypeError, ValueError):
                sender = None  # its own message fails it as bad arguments, as any unreadable write
        try:
            if sender is None:
                app.tasks[TASK_NAMES[op.name]].apply_async(kwargs=params, task_id=task_id)
            elif outbox.push(sender, task_id):
                app.tasks[DRAIN_SENDER].apply_async(kwargs={"sender": sender})
        except OperationalError as exc:
            if sender is None or outbox.withdraw(sender, task_id):
                raise NoHealthyNode(f"the task queue is unavailable: {exc}") from None
            log.warning("task %s: the drain asked for was not published, but a drain has the task already", task_id)

    return enqueue


def enqueue_many_on(app: Celery, client: redis.Redis | None = None) -> EnqueueMany:
    """How services hand many writes of one operation to ``app``'s queues inside their own Redis transaction.

    A batched operation's ids are pushed to their senders' outboxes on the caller's pipeline
    (so they are accepted exactly when their records are written); once it ran, one drain is
    published per sender whose push asked for one. Were that publish to fail, the writes are
    accepted all the same: the sweep drains an outbox no drain holds. Another operation's
    writes each get their message after the pipeline ran, as ``enqueue_on`` sends them.
    """
    settings: Settings = app.settings
    client = client if client is not None else _redis(settings.redis_url)
    outbox = Outbox(client)
    one = enqueue_on(app, client)

    def enqueue_many(op: Operation, items: Sequence[tuple[dict[str, Any], str]], pipe: Any) -> tuple[int, Callable[[list[Any]], None]]:
        if not op.batched:
            def each(_: list[Any]) -> None:
                for params, task_id in items:
                    one(op, params, task_id)

            return 0, each
        planning = Planning(treasury=_treasury(settings), redis=client)
        senders: list[str | None] = []
        for params, task_id in items:
            try:
                sender: str | None = op.plan(planning, **params).sender
            except (TypeError, ValueError):
                sender = None  # its own message fails it as bad arguments, as any unreadable write
            if sender is not None:
                outbox.push(sender, task_id, pipe=pipe)
            senders.append(sender)
        pushed = [s for s in senders if s is not None]

        def publish(replies: list[Any]) -> None:
            for (params, task_id), sender in zip(items, senders, strict=True):
                if sender is None:
                    one(op, params, task_id)
            for sender in dict.fromkeys(s for s, asked in zip(pushed, replies, strict=True) if asked):
                try:
                    app.tasks[DRAIN_SENDER].apply_async(kwargs={"sender": sender})
                except OperationalError as exc:
                    log.warning("the drain of %s was not published (%s): the sweep will drain it", sender, exc)

        return len(pushed), publish

    return enqueue_many
