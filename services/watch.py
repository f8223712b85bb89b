"""The receipt watch: the broadcast tasks waiting for their receipts, in Redis.

The write path adds a task once its transactions are broadcast; the receipt
tracker (``services.receipts.track``) reads the watch, settles what is mined and
removes it. The node manager empties it when a fresh chain starts.

Redis, owned here::

    esp:watch        sorted set  task id, scored by its first broadcast time
    esp:watch:<id>   string      JSON {steps, deadline, broadcast_at, rebroadcast_at, checked_at, receipts?}
    esp:watch:cursor string      the last block whose receipts the tracker has read (``receipts.track``)

A chain reset deletes ``esp:watch:*``, the cursor included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.client import Pipeline

from nodepool.codec import as_text

WATCH_SET = "esp:watch"
WATCH_KEY = "esp:watch:{}"
WATCH_CURSOR = WATCH_KEY.format("cursor")
#: When (wall clock, s) the pass that moved the cursor read its blocks.
WATCH_CURSOR_AT = WATCH_KEY.format("cursor-at")
#: Watched tasks read per pass by default.
MAX_BATCH = 2000


class ReceiptWatch:
    """The set of broadcast tasks waiting for receipts."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(self, task_id: str, hashes: Sequence[str], *, deadline: float) -> None:
        pipe = self.redis.pipeline()
        self.add_to(pipe, task_id, hashes, deadline=deadline)
        pipe.execute()

    def add_to(self, pipe: Pipeline, task_id: str, hashes: Sequence[str], *, deadline: float) -> None:
        """Queue ``add`` on ``pipe`` (a batch of tasks watched in one round trip); the caller executes it."""
        now = time.time()
        entry = {"steps": len(hashes), "deadline": deadline, "broadcast_at": now, "rebroadcast_at": now, "checked_at": now}
        pipe.set(WATCH_KEY.format(task_id), json.dumps(entry))
        pipe.zadd(WATCH_SET, {task_id: now})

    def entries(self, limit: int = MAX_BATCH) -> list[tuple[str, dict[str, Any]]]:
        ids = [as_text(i) for i in self.redis.zrange(WATCH_SET, 0, limit - 1)]
        if not ids:
            return []
        raws = self.redis.mget([WATCH_KEY.format(i) for i in ids])
        out = []
        for task_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                self.redis.zrem(WATCH_SET, task_id)
                continue
            out.append((task_id, json.loads(raw)))
        return out

    def update(self, task_id: str, entry: dict[str, Any]) -> None:
        self.redis.set(WATCH_KEY.format(task_id), json.dumps(entry))

    def update_many(self, entries: dict[str, dict[str, Any]]) -> None:
        """Store several entries in one round trip."""
        if entries:
            self.redis.mset({WATCH_KEY.format(task_id): json.dumps(entry) for task_id, entry in entries.items()})

    def cursor(self) -> int | None:
        """The last block whose receipts were read, or None before the first pass."""
        raw = self.redis.get(WATCH_CURSOR)
        return None if raw is None else int(raw)

    def cursor_read_at(self) -> float | None:
        """When the blocks up to the cursor were read (None before the first pass): a transaction broadcast
        after that cannot be in them."""
        raw = self.redis.get(WATCH_CURSOR_AT)
        return None if raw is None else float(raw)

    def set_cursor(self, block: int, *, read_at: float | None = None) -> None:
        self.redis.mset({WATCH_CURSOR: block, WATCH_CURSOR_AT: time.time() if read_at is None else read_at})

    def done(self, task_id: str) -> None:
        pipe = self.redis.pipeline()
        self.done_to(pipe, task_id)
        pipe.execute()

    @staticmethod
    def done_to(pipe: Pipeline, task_id: str) -> None:
        """Queue ``done`` on ``pipe`` (many tasks settled in one round trip); the caller executes it."""
        pipe.zrem(WATCH_SET, task_id)
        pipe.delete(WATCH_KEY.format(task_id))

    def count(self) -> int:
        return int(self.redis.zcard(WATCH_SET))
