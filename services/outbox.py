"""Per-sender outboxes: the batched writes of one account waiting for a drain, and who is draining them.

A batched write (``Operation.batched``: a single-step call) is pushed here by the
enqueue, and only when no drain holds its sender and none has been asked for
does the push say so: then, and only then, the enqueue publishes one Celery
message (a drain of that sender, ``tasks.writes.DRAIN_SENDER``). Its run takes
along every write of the sender queued by then, and keeps draining while more
come in. So a stream of writes from one sender costs one Redis call each at the
API and a message per drain, not per write. One drain at a time holds a sender
(a lock whose token is the Celery task id of the run that took it, so a run
redelivered after its worker died takes its own lock back at once).

Redis, owned here (``<a>`` is the sender's lower-case address)::

    esp:outbox:<a>            list    task ids waiting, oldest first
    esp:outbox:<a>:inflight   list    the ids the holding drain took and has not settled yet
    esp:outbox:<a>:lock       string  the holding drain's token, PX LOCK_MS (renewed at each step)
    esp:outbox:<a>:wake       string  a drain was asked for and has not taken the sender yet (PX WAKE_MS)
    esp:outbox:<a>:swept      string  set for SWEEP_AGE_MS when the sweep asked for a drain of the sender
    esp:outbox:senders        zset    senders with ids waiting or in flight, scored by their last push or take
                                      (ms, Redis clock): the sweep's worklist
    esp:outbox:stats          hash    batches, transactions: what the drains sent, counted

Nothing is lost between these steps: ``take`` moves ids from the outbox to the
in-flight list atomically, and a drain that dies leaves them there; the next
holder (the redelivered run, or after LOCK_MS any run or the sweep's) takes the
in-flight ids first. ``release`` gives the lock up only when both lists are
empty, atomically, so an id pushed while the holder works is never left without
a drain: whoever found the sender busy may simply stop. The wake flag is cleared
by the drain that takes the sender and by every release, so a push after a
release always asks for a drain; a drain asked for and lost (its message never
published or never run) is made up by the next push after WAKE_MS, or the sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.client import Pipeline

from nodepool.codec import as_text
from wallet.address import key_part

OUTBOX_KEY = "esp:outbox:{}"
INFLIGHT_KEY = "esp:outbox:{}:inflight"
LOCK_KEY = "esp:outbox:{}:lock"
WAKE_KEY = "esp:outbox:{}:wake"
SENDERS_KEY = "esp:outbox:senders"
STATS_KEY = "esp:outbox:stats"

#: How long a drain holds its sender without renewing the lock (it renews at every take and settle).
LOCK_MS = 60_000
#: How long a drain asked for may take to start before the next push asks again (a message lost on its way).
WAKE_MS = 10_000
#: Senders one sweep looks at.
SWEEP_LIMIT = 1000
#: A sender is swept only when nothing was pushed or taken for it this long, and then at most once as often.
SWEEP_AGE_MS = 5_000

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: 1 outbox, 2 senders, 3 lock, 4 wake. ARGV: task id, sender, wake ms.
# 1: no drain holds the sender or was asked for: ask for one. 0: one will take this id.
_PUSH = _NOW + """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[2])
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('SET', KEYS[4], '1', 'PX', ARGV[3], 'NX') then return 1 end
return 0
"""

# KEYS: 1 outbox, 2 in-flight, 3 lock, 4 senders, 5 wake. ARGV: token, limit, lock ms, sender. nil: another drain holds it.
_TAKE = _NOW + """
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then return false end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
redis.call('DEL', KEYS[5])
if redis.call('ZSCORE', KEYS[4], ARGV[4]) then redis.call('ZADD', KEYS[4], now, ARGV[4]) end
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
if #ids > 0 then return ids end
ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #ids > 0 then
  redis.call('LTRIM', KEYS[1], #ids, -1)
  redis.call('RPUSH', KEYS[2], unpack(ids))
end
return ids
"""

# KEYS: 1 outbox, 2 in-flight, 3 lock. ARGV: token, lock ms, then the ids still in flight. 0: the lock is not ours.
_SETTLE = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if #ARGV > 2 then redis.call('RPUSH', KEYS[2], unpack(ARGV, 3)) end
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
"""

# KEYS: 1 outbox, 2 in-flight, 3 lock, 4 senders, 5 wake. ARGV: token, sender, give up anyway ('1': keep the lists).
# 1: released (or not ours); 0: ids are waiting, keep draining.
_RELEASE = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 1 end
local empty = redis.call('LLEN', KEYS[1]) == 0 and redis.call('LLEN', KEYS[2]) == 0
if not empty and ARGV[3] ~= '1' then return 0 end
redis.call('DEL', KEYS[3], KEYS[5])
if empty then redis.call('ZREM', KEYS[4], ARGV[2]) end
return 1
"""

# KEYS: 1 senders. ARGV: limit, age ms, repeat ms. The senders quiet for age ms with ids and no holder (each
# marked swept for repeat ms); forgets the ones with neither.
_IDLE = _NOW + """
local out = {}
local age = tonumber(ARGV[2])
for _, a in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - age, 'LIMIT', 0, tonumber(ARGV[1]))) do
  local base = 'esp:outbox:' .. a
  if redis.call('EXISTS', base .. ':lock') == 0 then
    if redis.call('LLEN', base) > 0 or redis.call('LLEN', base .. ':inflight') > 0 then
      if redis.call('SET', base .. ':swept', '1', 'PX', ARGV[3], 'NX') then out[#out + 1] = a end
    else
      redis.call('ZREM', KEYS[1], a)
    end
  end
end
return out
"""


class Outbox:
    """The outboxes of every sender, in one Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._push = client.register_script(_PUSH)
        self._take = client.register_script(_TAKE)
        self._settle = client.register_script(_SETTLE)
        self._release = client.register_script(_RELEASE)
        self._idle = client.register_script(_IDLE)

    @staticmethod
    def _keys(sender: str) -> list[str]:
        part = key_part(sender)
        return [OUTBOX_KEY.format(part), INFLIGHT_KEY.format(part), LOCK_KEY.format(part), SENDERS_KEY,
                WAKE_KEY.format(part)]

    def push(self, sender: str, task_id: str, *, pipe: Pipeline | None = None) -> bool:
        """Queue ``task_id`` for ``sender``'s drain; True when the caller must ask for a drain (publish one).

        With ``pipe``, the push is queued on it (the caller's other writes go in the same round
        trip) and the answer is that command's result in ``pipe.execute()``; False is returned here.
        """
        outbox, _, lock, senders, wake = self._keys(sender)
        keys, args = [outbox, senders, lock, wake], [task_id, key_part(sender), str(WAKE_MS)]
        if pipe is not None:
            self._push(keys=keys, args=args, client=pipe)
            return False
        return bool(self._push(keys=keys, args=args))

    def withdraw(self, sender: str, task_id: str) -> bool:
        """Take ``task_id`` back out (the drain asked for could not be published); False when a drain has it already.

        The wake flag goes too, so that the next push asks for a drain again.
        """
        outbox, _, _, _, wake = self._keys(sender)
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(outbox, 1, task_id)
        pipe.delete(wake)
        removed, _ = pipe.execute()
        return bool(removed)

    def take(self, sender: str, token: str, limit: int) -> list[str] | None:
        """Hold ``sender`` for ``token`` and return the ids to work on: the in-flight ones first, else up to
        ``limit`` from the outbox (moved to in-flight). None when another drain holds the sender."""
        ids: Any = self._take(keys=self._keys(sender), args=[token, str(limit), str(LOCK_MS), key_part(sender)])
        return None if ids is None else [as_text(i) for i in ids]

    def is_held_by_another(self, sender: str, token: str) -> bool:
        """True when a drain other than ``token`` holds ``sender`` (one GET: a message that finds its sender
        busy ends before it places anything; ``take`` would say the same, ``release`` makes it safe)."""
        holder: Any = self.redis.get(self._keys(sender)[2])
        return holder is not None and as_text(holder) != token

    def settle(self, sender: str, token: str, pending: Sequence[str]) -> bool:
        """The batch is done but for ``pending`` (left in flight for a later try); False if the lock was lost."""
        return bool(self._settle(keys=self._keys(sender)[:3], args=[token, str(LOCK_MS), *pending]))

    def release(self, sender: str, token: str, *, anyway: bool = False) -> bool:
        """Give up ``sender`` if nothing waits (True); else False: keep draining. ``anyway``: give it up regardless."""
        keys = self._keys(sender)
        return bool(self._release(keys=keys, args=[token, key_part(sender), "1" if anyway else "0"]))

    def idle_senders(self, limit: int = SWEEP_LIMIT, *, age_ms: int = SWEEP_AGE_MS) -> list[str]:
        """Senders whose ids wait, quiet for ``age_ms``, with no drain holding them (a message lost, a holder dead):
        the sweep drains them. A sender found is not found again for SWEEP_AGE_MS."""
        found: Any = self._idle(keys=[SENDERS_KEY], args=[str(limit), str(age_ms), str(SWEEP_AGE_MS)])
        return [as_text(a) for a in found]

    def waiting(self, sender: str) -> tuple[int, int]:
        """How many ids wait in ``sender``'s outbox and in flight."""
        outbox, inflight, *_ = self._keys(sender)
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(outbox)
        pipe.llen(inflight)
        waiting, flying = pipe.execute()
        return int(waiting), int(flying)

    @staticmethod
    def count(pipe: Pipeline, transactions: int) -> None:
        """Queue on ``pipe``: one more batch of ``transactions`` sent."""
        pipe.hincrby(STATS_KEY, "batches", 1)
        pipe.hincrby(STATS_KEY, "transactions", transactions)

    def stats(self) -> dict[str, int]:
        """Batches and transactions the drains have sent."""
        raw: Any = self.redis.hgetall(STATS_KEY)
        return {as_text(k): int(v) for k, v in raw.items()}
