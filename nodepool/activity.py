"""What the platform is doing, for the operators' dashboard: running totals every process adds to, in Redis.

Every process counts what passes through it with one INCRBY, queued on a pipeline it
sends anyway where it has one, or summed in the process by a ``Tally`` and sent at most
twice a second where it has none (a round trip of its own on every API request cost
~20% of a cheap request's time here):

    requests     API requests answered (``app.dashboard`` tallies them after each one;
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

import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from nodepool.codec import as_text

log = logging.getLogger(__name__)

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


class Tally:
    """Running totals added to in this process and sent to Redis in the background, one INCRBY per total a flush.

    ``add`` only counts under a lock; a daemon thread, started by the first ``add`` after a quiet spell,
    sends what was counted every ``interval`` seconds and ends once a flush finds nothing to send, so an
    idle process keeps no thread. A flush Redis refuses keeps its counts for the next one. ``close``
    sends what is left (what a process killed outright had counted in its last interval is lost: these
    are the dashboard's rates, not records).
    """

    def __init__(self, client: redis.Redis, *, interval: float = 0.5) -> None:
        self.redis = client
        self.interval = interval
        self._pending: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def add(self, total: str, amount: int = 1) -> None:
        """Count ``amount`` more of ``total`` (one of TOTALS); sent within about ``interval`` seconds."""
        if total not in TOTALS:
            raise ValueError(f"unknown total {total!r}; expected one of {', '.join(TOTALS)}")
        with self._lock:
            self._pending[total] += amount
            if not self._closed.is_set() and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, daemon=True, name="esp-activity-tally")
                self._thread.start()

    def flush(self) -> int:
        """Send what was counted now; returns how many totals were sent (0: nothing pending, or Redis refused)."""
        with self._lock:
            counts, self._pending = self._pending, Counter()
        counts = +counts  # only positive amounts
        if not counts:
            return 0
        try:
            pipe = self.redis.pipeline(transaction=False)
            for total, amount in counts.items():
                count_on(pipe, total, amount)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("activity not sent, kept for the next flush: Redis: %s", exc)
            with self._lock:
                self._pending.update(counts)
            return 0
        return len(counts)

    def close(self) -> None:
        """Stop the thread and send what is left."""
        self._closed.set()
        thread = self._thread
        if thread is not None:
            thread.join(self.interval + 5)
        self.flush()

    def _run(self) -> None:
        while not self._closed.wait(self.interval):
            with self._lock:
                if not self._pending:
                    self._thread = None  # quiet: the next add starts another
                    return
            self.flush()


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
