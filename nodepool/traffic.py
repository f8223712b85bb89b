"""Live per-node counters from real traffic, in Redis: work in flight and outcomes over a window.

In-flight work is a sorted set per node (member = a unique token, score = start
time) rather than a counter: a process that dies mid-request leaves an entry
that ages out after MAX_INFLIGHT_AGE instead of a count that never comes down
(a leaked count would hold the balancer's LBH pause forever).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis

INFLIGHT_KEY = "esp:inflight:{}"
OUTCOME_KEY = "esp:outcomes:{}:{}"  # node, second
#: Work older than this no longer counts as in flight (longer than any task may run).
MAX_INFLIGHT_AGE = 180.0
#: Seconds of outcomes the error rate looks at.
ERROR_WINDOW = 30


class Traffic:
    """Counters every ESP process updates as it sends work to nodes."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def begin(self, node_id: str) -> str:
        """Count one piece of work as in flight on ``node_id``; returns its token."""
        token = uuid.uuid4().hex
        self.redis.zadd(INFLIGHT_KEY.format(node_id), {token: time.time()})
        return token

    def end(self, node_id: str, token: str, *, ok: bool) -> None:
        """The work finished: stop counting it and record its outcome."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(INFLIGHT_KEY.format(node_id), token)
        self._outcome(pipe, node_id, ok)
        pipe.execute()

    # -- the same, queued on a pipeline the caller executes (sync or asyncio: one round trip with its own commands)

    @staticmethod
    def begin_on(pipe: Any, node_id: str) -> str:
        """Queue ``begin`` on ``pipe``; returns the token."""
        token = uuid.uuid4().hex
        pipe.zadd(INFLIGHT_KEY.format(node_id), {token: time.time()})
        return token

    @classmethod
    def end_on(cls, pipe: Any, node_id: str, token: str, *, ok: bool) -> None:
        """Queue ``end`` on ``pipe``."""
        pipe.zrem(INFLIGHT_KEY.format(node_id), token)
        cls._outcome(pipe, node_id, ok)

    @staticmethod
    def inflight_on(pipe: Any, node_ids: Iterable[str]) -> list[str]:
        """Queue ``inflight``'s commands on ``pipe``; ``parse_inflight`` reads their replies."""
        ids = list(node_ids)
        cutoff = time.time() - MAX_INFLIGHT_AGE
        for node_id in ids:
            pipe.zremrangebyscore(INFLIGHT_KEY.format(node_id), "-inf", cutoff)
            pipe.zcard(INFLIGHT_KEY.format(node_id))
        return ids

    @staticmethod
    def parse_inflight(ids: list[str], replies: list[Any]) -> dict[str, int]:
        """In-flight counts from the replies of ``inflight_on``'s commands (2 per node, in order)."""
        return {node_id: int(replies[2 * i + 1]) for i, node_id in enumerate(ids)}

    def record(self, node_id: str, *, ok: bool) -> None:
        """Record the outcome of one request that was not tracked in flight."""
        pipe = self.redis.pipeline(transaction=False)
        self._outcome(pipe, node_id, ok)
        pipe.execute()

    def record_many(self, outcomes: Mapping[str, bool]) -> None:
        """Record one outcome per node (node id -> ok) in one round trip; the monitor's probes use it."""
        if not outcomes:
            return
        pipe = self.redis.pipeline(transaction=False)
        for node_id, ok in outcomes.items():
            self._outcome(pipe, node_id, ok)
        pipe.execute()

    def forget(self, node_id: str) -> None:
        """Drop the node's outcome window: a restarted node starts with a clean error rate.

        Its errors belonged to the process that died; left in the window they would
        keep the fresh node looking faulty (and the pool serving poorly) for
        ERROR_WINDOW seconds.
        """
        now = int(time.time())
        self.redis.delete(*(OUTCOME_KEY.format(node_id, second) for second in range(now - 2 * ERROR_WINDOW, now + 2)))

    @contextmanager
    def track(self, node_id: str) -> Iterator[None]:
        """Count the block's work as in flight; an exception records an error."""
        token = self.begin(node_id)
        ok = False
        try:
            yield
            ok = True
        finally:
            self.end(node_id, token, ok=ok)

    def inflight(self, node_ids: Iterable[str]) -> dict[str, int]:
        """Current in-flight counts (aged-out entries are dropped first)."""
        pipe = self.redis.pipeline(transaction=False)
        ids = self.inflight_on(pipe, node_ids)
        return self.parse_inflight(ids, pipe.execute())

    def outcomes(self, node_ids: Iterable[str], *, window: int = ERROR_WINDOW) -> dict[str, tuple[int, int]]:
        """(requests, errors) per node over the last ``window`` seconds."""
        ids = list(node_ids)
        now = int(time.time())
        pipe = self.redis.pipeline(transaction=False)
        for node_id in ids:
            for second in range(now - window + 1, now + 1):
                pipe.hmget(OUTCOME_KEY.format(node_id, second), "ok", "err")
        replies = pipe.execute()
        result = {}
        for i, node_id in enumerate(ids):
            ok = err = 0
            for pair in replies[i * window : (i + 1) * window]:
                ok += int(pair[0] or 0)
                err += int(pair[1] or 0)
            result[node_id] = (ok + err, err)
        return result

    @staticmethod
    def _outcome(pipe: Any, node_id: str, ok: bool) -> None:
        key = OUTCOME_KEY.format(node_id, int(time.time()))
        pipe.hincrby(key, "ok" if ok else "err", 1)
        pipe.expire(key, ERROR_WINDOW * 2)
