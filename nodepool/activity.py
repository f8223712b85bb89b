"""What the platform is doing, for the operators' dashboard: running totals every process adds to, in Redis.

Every process counts what passes through it with one INCRBY, queued on a pipeline it
sends anyway where it has one:

    requests     API requests answered (``app.dashboard`` counts them after each one;
                 health, metrics and the dashboard's own polling are not counted)
    rpc          JSON-RPC calls answered by the gateway (``gateway.gateway``)
    confirmed    transactions confirmed on chain (``services.receipts``)

and every write task's record, as it is written, is noted in a capped sorted set of
recent tasks (``services.records``). The monitor reads the totals and the queue
lengths in the pipeline it sends each beat anyway (``activity_on``) and keeps them
in its snapshot history: rates are differences between two entries, so no process
keeps a clock or a window of its own.

Redis, owned here::

    esp:activity:requests | esp:activity:rpc | esp:activity:confirmed   running totals (INCRBY)
    esp:activity:tasks    recent task ids, scored by their record's last write (newest RECENT_TASKS kept)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nodepool.codec import as_text

REQUESTS_KEY = "esp:activity:requests"
RPC_KEY = "esp:activity:rpc"
CONFIRMED_KEY = "esp:activity:confirmed"
RECENT_TASKS_KEY = "esp:activity:tasks"
#: The totals, by the name the snapshot history and the dashboard give them.
TOTALS = {"requests": REQUESTS_KEY, "rpc": RPC_KEY, "confirmed": CONFIRMED_KEY}
#: Task ids kept in the recent-tasks set.
RECENT_TASKS = 50


def count_on(pipe: Any, total: str, amount: int = 1) -> None:
    """Queue on ``pipe`` (a pipeline, a client, or the gateway's queue of deferred writes) adding ``amount`` to the
    running total ``total``."""
    if amount:
        pipe.incrby(TOTALS[total], amount)


def note_tasks_on(pipe: Any, stamps: Mapping[str, float]) -> None:
    """Queue on ``pipe`` noting the tasks ``stamps`` (id -> time of their record's write) as recent."""
    if stamps:
        pipe.zadd(RECENT_TASKS_KEY, dict(stamps))
        pipe.zremrangebyrank(RECENT_TASKS_KEY, 0, -RECENT_TASKS - 1)


def recent_task_ids(client: Any, count: int) -> list[str]:
    """The ids of the ``count`` most recently written task records, newest first."""
    return [as_text(t) for t in client.zrevrange(RECENT_TASKS_KEY, 0, max(count, 1) - 1)]


def activity_on(pipe: Any, queues: Sequence[str]) -> int:
    """Queue on ``pipe`` the reads of every total and of ``queues``' lengths; returns how many replies they add."""
    for key in TOTALS.values():
        pipe.get(key)
    for queue in queues:
        pipe.llen(queue)
    return len(TOTALS) + len(queues)


def parse_activity(replies: Sequence[Any], queues: Sequence[str]) -> dict[str, Any]:
    """The totals and queue lengths from ``activity_on``'s replies: {"requests": n, "rpc": n, "confirmed": n, "queues": {…}}."""
    totals = {name: int(raw or 0) for name, raw in zip(TOTALS, replies, strict=False)}
    lengths = replies[len(TOTALS):]
    return {**totals, "queues": {queue: int(n or 0) for queue, n in zip(queues, lengths, strict=True)}}
