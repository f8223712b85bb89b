"""The registry of write operations: name -> Celery task and task class (priority)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from balancer import TaskKind


@dataclass(frozen=True)
class Operation:
    """A write operation the API can enqueue."""

    name: str
    task: str
    kind: TaskKind


#: Filled by tasks.writes' @write_operation as its modules are imported.
OPERATIONS: dict[str, Operation] = {}


def register(name: str, kind: TaskKind) -> Operation:
    op = Operation(name=name, task=f"tasks.writes.{name}", kind=kind)
    OPERATIONS[name] = op
    return op


#: operation name -> fn(params, receipts, redis) -> fields to add to the result, run once its
#: transactions are confirmed (e.g. decode a created project's id from the receipt's logs).
ConfirmHook = Callable[[dict[str, Any], list[dict[str, Any]], Any], dict[str, Any]]
CONFIRM_HOOKS: dict[str, ConfirmHook] = {}


def on_confirmed(operation: str) -> Callable[[ConfirmHook], ConfirmHook]:
    """Register ``fn`` to run when a task of ``operation`` is confirmed."""

    def decorate(fn: ConfirmHook) -> ConfirmHook:
        CONFIRM_HOOKS[operation] = fn
        return fn

    return decorate
