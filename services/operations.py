"""What a write operation is: its name, its task class (priority), how it plans its transactions.

An operation's plan function takes a ``Planning`` (what the worker knows: the
treasury's address, Redis) and the task's parameters (addresses, amounts, ids,
hashes: never secrets), and returns a ``Plan``: which account signs and which
transactions it sends. Once its transactions are confirmed, an operation's
``on_confirmed`` hook may add to the task's result (a created project's id, say).

The operations themselves are listed in ``services.plans.OPERATIONS``; the Celery
edge (``tasks.writes``) makes one task per operation, and the API enqueues
through it (``Enqueue``). A ``batched`` operation (one call-class transaction) is
sent by its sender's next drain, with every other batched write of that sender
queued by then (``services.batch``); the others are sent one task at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from balancer import TaskKind
from services.sending import Step


@dataclass
class Plan:
    """What a write operation sends: from which account, which transactions, what it reports."""

    sender: str
    steps: list[Step]
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Planning:
    """What a plan function may use besides its parameters."""

    treasury: str
    redis: redis.Redis


#: fn(params, receipts, redis) -> fields to add to the result, run once the task's transactions are confirmed.
ConfirmHook = Callable[[dict[str, Any], list[dict[str, Any]], Any], dict[str, Any]]


@dataclass(frozen=True)
class Operation:
    """A write operation the API can enqueue."""

    name: str
    kind: TaskKind
    plan: Callable[..., Plan]  # plan(planning, **params)
    on_confirmed: ConfirmHook | None = None
    #: One call-class transaction, sent in a batch with its sender's other queued writes (``services.batch``).
    batched: bool = False


#: How a service hands an operation to the queue: (operation, parameters, task id). The Celery edge provides it.
Enqueue = Callable[[Operation, dict[str, Any], str], None]
#: Many writes of one operation in the caller's Redis transaction: (operation, [(parameters, task id)], pipeline)
#: queues their hand-over on the pipeline and returns how many replies those commands add at its end, and what
#: to call with those replies once the pipeline ran (it publishes what must be published).
EnqueueMany = Callable[[Operation, Sequence[tuple[dict[str, Any], str]], Any], tuple[int, Callable[[list[Any]], None]]]
