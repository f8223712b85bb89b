"""Write tasks: each builds its transactions (a Plan) and hands them to the Sender.

Every task here is a thin wrapper: arguments are addresses, amounts and ids
(never secrets: a password never leaves the API process, a key never leaves
the keystore or the unlock store), and the logic lives in tasks.sending.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Task, shared_task
from celery.exceptions import MaxRetriesExceededError

from balancer import TaskKind
from errors import NoHealthyNode
from tasks.operations import register
from tasks.sending import NodeBusy, Step, TaskFailed, TxRequest
from tasks.status import FAILED, WAITING

log = logging.getLogger(__name__)

#: A task waits this many times (about a second apart, then backing off) for a healthy node.
WAIT_RETRIES = 120


@dataclass
class Plan:
    """What a write operation sends: from which account, which transactions, what it reports."""

    sender: str
    steps: list[Step]
    result: dict[str, Any] = field(default_factory=dict)


class WriteTask(Task):
    """Late-acknowledged, re-delivered if the worker dies, never holding a slot while waiting."""

    acks_late = True
    reject_on_worker_lost = True
    max_retries = WAIT_RETRIES
    esp_kind = TaskKind.CALL.value


def run_write(task: Task, kind: TaskKind, plan: Plan) -> dict[str, Any]:
    """Place, send and hand over to the receipt tracker; end the task record on failure."""
    from tasks.context import writer

    w = writer()
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


def _wait(task: Task, w: Any, reason: str) -> dict[str, Any]:
    w.store.update(task.request.id, state=WAITING, error={"type": "waiting", "message": reason})
    countdown = min(1.0 * (1.2 ** task.request.retries), 10.0)
    try:
        raise task.retry(countdown=countdown)
    except MaxRetriesExceededError:
        error = {"type": "no-healthy-node", "message": f"gave up waiting for a healthy node: {reason}"}
        w.store.update(task.request.id, state=FAILED, error=error)
        return {"failed": error}


def write_operation(name: str, kind: TaskKind) -> Callable[[Callable[..., Plan]], Task]:
    """Declare a write operation: ``fn(**params) -> Plan`` becomes the Celery task ``tasks.writes.<name>``."""
    op = register(name, kind)

    def decorate(fn: Callable[..., Plan]) -> Task:
        def run(self: Task, **params: Any) -> dict[str, Any]:
            try:
                plan = fn(**params)
            except (TypeError, ValueError) as exc:
                # A message this code cannot read (e.g. from an older or newer API): end it clearly.
                from tasks.context import writer

                error = {"type": "bad-arguments", "message": f"{name}: {exc}"}
                writer().store.update(self.request.id, state=FAILED, error=error)
                return {"failed": error}
            return run_write(self, kind, plan)

        run.__name__ = name
        run.__doc__ = fn.__doc__
        return shared_task(bind=True, base=WriteTask, name=op.task, esp_kind=kind.value)(run)

    return decorate


def treasury_address() -> str:
    from tasks.context import writer

    return str(writer().sender.treasury.address)


# -- operations of the write path ----------------------------------------------------


@write_operation("fund_account", TaskKind.ACCOUNT)
def fund_account(address: str, value_wei: int) -> Plan:
    """Send gas money from the treasury to a new account."""
    return Plan(treasury_address(), [lambda ctx: TxRequest(to=address, value=int(value_wei), gas=21_000)],
                result={"address": address, "funded_wei": str(value_wei)})


@write_operation("send_eth", TaskKind.CALL)
def send_eth(sender: str, to: str, value_wei: int) -> Plan:
    """Send ETH from an unlocked ESP account (or the treasury)."""
    return Plan(sender, [lambda ctx: TxRequest(to=to, value=int(value_wei), gas=21_000)],
                result={"to": to, "value_wei": str(value_wei)})
