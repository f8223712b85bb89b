"""What each caller was last shown, so that it reads its own writes whichever gateway process it reaches.

Two things per API key: the newest block an answer showed it (a receipt, a transaction, a block), under
which its later reads at the head are never answered; and the node that took its last raw transaction,
where its ``pending`` reads go for READ_OWN_WRITE_FOR seconds. Each process keeps the records of the
keys it served (``ShownRecords``) and merges what Redis holds at every request. A newer block is
written before the reply leaves (``Shown.show``): the caller's next request may reach another
process, which learns it from Redis only.

Redis, owned here::

    esp:rpc:seen:<key id>   hash   block: the newest block shown; node, at: the node that took its last raw
                                   transaction, and when (JSON values; expires SEEN_TTL s after the last change)
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.state import Deferred

SEEN_KEY = "esp:rpc:seen:{}"
SEEN_TTL = 60
#: Keys whose record a process keeps in memory as well (the oldest is dropped first).
MAX_SEEN_KEYS = 10_000
#: Seconds after a raw transaction during which the caller's ``pending`` reads go to the node that took it.
READ_OWN_WRITE_FOR = 30.0

#: Raise the stored block, never lower it: two processes showing one key blocks 10 and 9 at once may write in either order.
RAISE_BLOCK = """
local shown = tonumber(redis.call('HGET', KEYS[1], 'block') or '-1')
if shown < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'block', ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
"""


@dataclass
class Shown:
    """One caller's record as this process knows it, shared by its requests here (their writes may still be queued)."""

    key_id: str
    block: int = -1
    node: str | None = None
    at: float = 0.0

    def merge(self, stored: Mapping[Any, Any]) -> None:
        """Take what Redis holds (``HGETALL`` of its key) where it is newer than what this process knows."""
        values = {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in stored.items()}
        if int(values.get("block", -1)) > self.block:
            self.block = int(values["block"])
        if float(values.get("at", 0)) > self.at:
            self.node, self.at = values.get("node"), float(values["at"])

    def show(self, block: int, writes: Deferred) -> None:
        """The caller has been shown ``block``: a newer one is recorded on ``writes`` (send them before the reply)."""
        if block > self.block:
            self.block = block
            writes.eval(RAISE_BLOCK, 1, SEEN_KEY.format(self.key_id), block, SEEN_TTL)

    def wrote(self, node_id: str, now: float, writes: Deferred) -> None:
        """``node_id`` took the caller's raw transaction at ``now`` (wall clock: other processes compare it)."""
        self.node, self.at = node_id, now
        key = SEEN_KEY.format(self.key_id)
        writes.hset(key, mapping={"node": json.dumps(node_id), "at": json.dumps(now)})
        writes.expire(key, SEEN_TTL)

    def own_write_node(self, now: float, blocked: Collection[str]) -> str | None:
        """The node that took the caller's last raw transaction, while its ``pending`` reads should go there."""
        if self.node and now - self.at < READ_OWN_WRITE_FOR and self.node not in blocked:
            return self.node
        return None

    def is_above(self, head: int) -> bool:
        """Whether the caller was shown a block above ``head``: an answer at that head would take it back in time."""
        return head < self.block


class ShownRecords:
    """The records of the keys this process served, newest last, at most MAX_SEEN_KEYS."""

    def __init__(self) -> None:
        self._records: dict[str, Shown] = {}

    @staticmethod
    def read_on(pipe: Any, key_id: str) -> None:
        """Queue the read of ``key_id``'s stored record on a pipeline (its reply goes to ``get``)."""
        pipe.hgetall(SEEN_KEY.format(key_id))

    def get(self, key_id: str, stored: Mapping[Any, Any] | None) -> Shown:
        """``key_id``'s record, with what Redis held merged in."""
        record = self._records.pop(key_id, None) or Shown(key_id)
        self._records[key_id] = record
        if len(self._records) > MAX_SEEN_KEYS:
            self._records.pop(next(iter(self._records)))
        record.merge(stored or {})
        return record
