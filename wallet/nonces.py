"""Nonce allocation in Redis: atomic per (chain id, address), gap-free, safe to resync.

Keys, for chain ``c`` and lower-case address ``a`` (no key holds a secret):

    esp:nonce:c:a             hash  next (the next fresh nonce), floor (highest pending count seen on chain)
    esp:nonce:c:a:released    zset  nonces handed out but never broadcast, to be reused lowest first
    esp:nonce:c:a:leases      zset  nonces handed out and not yet recorded -> lease deadline (ms, Redis clock)
    esp:nonce:c:a:holders     hash  leased nonce -> its owner ("" when none was given)
    esp:nonce:c:a:owner:<id>  str   the nonce an owner (a task id) holds, so a re-run gets the same one back
    esp:nonce:c:a:<n>         str   hash of the transaction signed with nonce n (``record``), kept MAPPING_TTL

Each operation is one Lua script, so it is atomic against every other worker;
no per-address lock is needed, and none is taken. A batch of one sender's
transactions (``services.batch``) takes its nonces with ``allocate_many`` and
binds them with ``record_many``: the same steps for each owner, in one script
(one round trip) each.

The life of a nonce (the protocol ``wallet.broadcast`` documents for a task):

1. ``allocate(addr, clients, owner=task_id)`` takes the lowest released nonce,
   else ``next`` (initialised from the pool's highest pending count on first use).
   The nonce is leased to the owner for ``lease_seconds``; a task re-run after a
   crash gets the same nonce back while the lease lasts.
2. ``record(addr, n, tx_hash, owner=task_id)`` once the signed transaction is
   saved (before its first broadcast): the lease ends, the nonce is the
   transaction's for good.
3. ``release(addr, n, owner=task_id)`` ONLY when no node can hold the
   transaction (never broadcast, or every node refused it definitely): the
   nonce goes back for reuse. Releasing the newest nonce lowers ``next``
   instead, so no hole is left at all.

A nonce whose holder died between 1 and 2 (lease run out, nothing recorded) is
put back among the released ones by the next ``allocate``: such a nonce is
reused, never skipped, so it cannot leave a gap that blocks every later
transaction of the account.

Resync after "nonce too low" (``resync``) sets ``next = max(P, next)`` and
``floor = max(P, floor)``, P being the highest pending count any node reports,
and drops released nonces below ``floor``. Why no in-flight nonce is reused:
``next`` never decreases here, so every nonce already handed out (in flight or
not) stays below it and is never handed out again; nonces below P are taken on
chain (by us or by someone else) and are never handed out again either, since
released ones below ``floor`` are dropped and ``release`` ignores them. A
lagging node only reports a smaller P, which changes nothing (max).

Limits: the scripts touch keys computed inside them (the per-nonce hash keys),
so they need a single Redis, not Redis Cluster. The state has no TTL; if Redis
loses it, the next ``allocate`` starts again from the chain's pending count,
which is right as long as no transaction of that account is then in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from errors import NodeUnreachable, NoHealthyNode, RpcError, ValidationError
from nodepool.codec import as_text
from nodepool.rpc import RpcClient, to_int
from wallet.address import checksum, key_part

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

PREFIX = "esp:nonce"
DEFAULT_LEASE_SECONDS = 120.0
MAPPING_TTL = 7 * 86_400
_NO_OWNER = "\x00"

#: Every resync: a node said "nonce too low" for a transaction no node knows (the nonce was used by another).
NONCE_CONFLICTS = Counter("esp_nonce_conflicts", "nonce conflicts: a node refused a nonce as used, and the counter was resynced")

# KEYS, in every script: 1 state hash, 2 released zset, 3 leases zset, 4 holders hash (leased nonce -> owner),
# then the owner key and/or the per-nonce hash key. Every script reads the Redis clock (TIME), never a worker's.
# The *_MANY scripts compute each owner's key inside (prefix .. 'owner:' .. owner), like the per-nonce keys.
_ALLOCATE_FN = """
local function allocate(owner, owner_key, start, lease, prefix, now)
  if owner ~= '' then
    local held = redis.call('GET', owner_key)
    -- only while this owner still holds the lease: a nonce recorded, released or re-leased since is not its own
    if held and redis.call('HGET', KEYS[4], held) == owner then
      redis.call('PEXPIRE', owner_key, lease)
      redis.call('ZADD', KEYS[3], now + lease + 1000, held)
      return tonumber(held)
    end
    if held then redis.call('DEL', owner_key) end
  end
  local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '0')
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 32)
  for _, n in ipairs(expired) do
    redis.call('ZREM', KEYS[3], n)
    redis.call('HDEL', KEYS[4], n)
    if redis.call('EXISTS', prefix .. n) == 0 and tonumber(n) >= floor then
      redis.call('ZADD', KEYS[2], tonumber(n), n)
    end
  end
  local nonce
  local low = redis.call('ZPOPMIN', KEYS[2])
  if low[1] then
    nonce = tonumber(low[1])
  else
    local nxt = redis.call('HGET', KEYS[1], 'next')
    if not nxt then
      if start == '' then return -1 end
      nxt = start
      redis.call('HSET', KEYS[1], 'floor', start)
    end
    nonce = tonumber(nxt)
    redis.call('HSET', KEYS[1], 'next', string.format('%d', nonce + 1))
  end
  local member = string.format('%d', nonce)
  redis.call('ZADD', KEYS[3], now + lease + 1000, member)
  redis.call('HSET', KEYS[4], member, owner)
  if owner ~= '' then redis.call('SET', owner_key, member, 'PX', lease) end
  return nonce
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# ARGV: start ('' unless initialising), owner, lease ms, per-nonce key prefix.
_ALLOCATE = _ALLOCATE_FN + """
return allocate(ARGV[2], KEYS[5], ARGV[1], tonumber(ARGV[3]), ARGV[4], now)
"""

# ARGV: start, lease ms, per-nonce key prefix, then one owner per nonce wanted. {-1} when not initialised.
_ALLOCATE_MANY = _ALLOCATE_FN + """
local out = {}
for i = 4, #ARGV do
  local n = allocate(ARGV[i], ARGV[3] .. 'owner:' .. ARGV[i], ARGV[1], tonumber(ARGV[2]), ARGV[3], now)
  if n == -1 then return {-1} end
  out[#out + 1] = n
end
return out
"""

_END_LEASE = """
local function end_lease(nonce, owner, owner_key)
  redis.call('ZREM', KEYS[3], nonce)
  redis.call('HDEL', KEYS[4], nonce)
  if owner ~= '' and redis.call('GET', owner_key) == nonce then redis.call('DEL', owner_key) end
end
"""

_RECORD = _END_LEASE + """
redis.call('SET', KEYS[6], ARGV[3], 'EX', ARGV[4])
end_lease(ARGV[1], ARGV[2], KEYS[5])
return 1
"""

# ARGV: per-nonce key prefix, mapping TTL, then (nonce, owner, tx hash) triples.
_RECORD_MANY = _END_LEASE + """
for i = 3, #ARGV, 3 do
  redis.call('SET', ARGV[1] .. ARGV[i], ARGV[i + 2], 'EX', ARGV[2])
  end_lease(ARGV[i], ARGV[i + 1], ARGV[1] .. 'owner:' .. ARGV[i + 1])
end
return 1
"""

_RELEASE = _END_LEASE + """
local n = tonumber(ARGV[1])
redis.call('DEL', KEYS[6])
end_lease(ARGV[1], ARGV[2], KEYS[5])
local nxt = tonumber(redis.call('HGET', KEYS[1], 'next') or '-1')
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '0')
if nxt < 0 or n >= nxt or n < floor then return 0 end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
if n == nxt - 1 then
  nxt = n
  while nxt > floor do
    local top = redis.call('ZRANGE', KEYS[2], -1, -1)
    if top[1] and tonumber(top[1]) == nxt - 1 then
      redis.call('ZREM', KEYS[2], top[1])
      nxt = nxt - 1
    else
      break
    end
  end
  redis.call('HSET', KEYS[1], 'next', string.format('%d', nxt))
else
  redis.call('ZADD', KEYS[2], n, ARGV[1])
end
return 1
"""

_RESYNC = """
local p = tonumber(ARGV[1])
local nxt = tonumber(redis.call('HGET', KEYS[1], 'next') or '-1')
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '0')
if p > nxt then nxt = p end
if p > floor then floor = p end
redis.call('HSET', KEYS[1], 'next', string.format('%d', nxt), 'floor', string.format('%d', floor))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%d', floor))
return nxt
"""


def pool_pending_count(address: str, clients: Sequence[RpcClient], *, timeout: float | None = None) -> int:
    """The highest ``eth_getTransactionCount(address, "pending")`` among the nodes that answer.

    The highest, because a node that lags behind the leader reports a smaller
    count, and handing out a nonce below the true one only earns "nonce too low".
    Raises NoHealthyNode when no node answers.
    """
    address = checksum(address)
    counts: list[int] = []
    failures: list[str] = []
    for client in clients:
        try:
            counts.append(to_int(client.call("eth_getTransactionCount", [address, "pending"], timeout=timeout)))
        except (NodeUnreachable, RpcError, TypeError, ValueError) as exc:  # no answer, or not a quantity
            failures.append(f"{client.node_id or client.url}: {exc}")
    if not counts:
        raise NoHealthyNode(f"no node answered eth_getTransactionCount for {address}: {'; '.join(failures) or 'no nodes'}")
    return max(counts)


@dataclass(frozen=True)
class NonceState:
    """A snapshot of one account's nonce bookkeeping (for status pages and tests)."""

    next: int | None
    floor: int
    released: tuple[int, ...]
    leased: tuple[int, ...]


class NonceManager:
    """Hands out nonces of one chain's accounts from Redis; see the module docstring for the protocol."""

    def __init__(
        self,
        redis_client: redis.Redis,
        chain_id: int,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        mapping_ttl: int = MAPPING_TTL,
    ) -> None:
        if lease_seconds <= 0:
            raise ValidationError("lease_seconds", "must be > 0")
        self.redis = redis_client
        self.chain_id = int(chain_id)
        self.lease_ms = int(lease_seconds * 1000)
        self.mapping_ttl = int(mapping_ttl)
        self._allocate = redis_client.register_script(_ALLOCATE)
        self._allocate_many = redis_client.register_script(_ALLOCATE_MANY)
        self._record = redis_client.register_script(_RECORD)
        self._record_many = redis_client.register_script(_RECORD_MANY)
        self._release = redis_client.register_script(_RELEASE)
        self._resync = redis_client.register_script(_RESYNC)

    # -- key names ----------------------------------------------------------

    def _base(self, address: str) -> str:
        return f"{PREFIX}:{self.chain_id}:{key_part(address)}"

    def mapping_key(self, address: str, nonce: int) -> str:
        """``esp:nonce:<chain>:<addr>:<n>``: where the hash of the transaction with that nonce is kept."""
        return f"{self._base(address)}:{int(nonce)}"

    def _keys(self, address: str, owner: str | None) -> list[str]:
        """state, released, leases, holders, owner key: the KEYS every script starts with."""
        base = self._base(address)
        owner_key = f"{base}:owner:{owner}" if owner else f"{base}:owner:{_NO_OWNER}"
        return [base, f"{base}:released", f"{base}:leases", f"{base}:holders", owner_key]

    # -- operations ---------------------------------------------------------

    def allocate(self, address: str, clients: Sequence[RpcClient], *, owner: str | None = None) -> int:
        """Hand out the next nonce of ``address``: a released one first (lowest), else a fresh one.

        ``clients`` are asked for the pending count only the first time an
        account is seen. With ``owner`` (a task id), an owner that already holds
        an unrecorded nonce gets that same nonce again.
        """
        keys = self._keys(address, owner)
        flags = [owner or "", str(self.lease_ms), f"{self._base(address)}:"]
        nonce = int(self._allocate(keys=keys, args=["", *flags]))
        if nonce == -1:
            start = pool_pending_count(address, clients)
            # Another worker may have initialised it meanwhile: the script then ignores `start`.
            nonce = int(self._allocate(keys=keys, args=[str(start), *flags]))
            log.info("nonces of %s on chain %d start at %d", checksum(address), self.chain_id, start)
        return nonce

    def allocate_many(self, address: str, clients: Sequence[RpcClient], owners: Sequence[str]) -> list[int]:
        """``allocate`` for each of ``owners`` (one nonce each, in order), in one script: one round trip.

        Each owner that still holds an unrecorded nonce gets it back, as with ``allocate``;
        the others get released nonces first (lowest first), then fresh ones.
        """
        if not owners:
            return []
        keys = self._keys(address, None)[:4]
        flags = [str(self.lease_ms), f"{self._base(address)}:", *owners]
        nonces = [int(n) for n in self._allocate_many(keys=keys, args=["", *flags])]
        if nonces == [-1]:
            start = pool_pending_count(address, clients)
            nonces = [int(n) for n in self._allocate_many(keys=keys, args=[str(start), *flags])]
            log.info("nonces of %s on chain %d start at %d", checksum(address), self.chain_id, start)
        return nonces

    def record(self, address: str, nonce: int, tx_hash: str, *, owner: str | None = None) -> None:
        """Bind ``nonce`` to its signed transaction ``tx_hash`` (call before the first broadcast; idempotent)."""
        keys = [*self._keys(address, owner), self.mapping_key(address, nonce)]
        self._record(keys=keys, args=[str(int(nonce)), owner or "", tx_hash, str(self.mapping_ttl)])

    def record_many(self, address: str, recorded: Sequence[tuple[int, str, str]]) -> None:
        """``record`` each (nonce, tx hash, owner) of ``address`` in one script: one round trip."""
        if not recorded:
            return
        args = [f"{self._base(address)}:", str(self.mapping_ttl)]
        for nonce, tx_hash, owner in recorded:
            args += [str(int(nonce)), owner, tx_hash]
        self._record_many(keys=self._keys(address, None)[:4], args=args)

    def tx_hash_for(self, address: str, nonce: int) -> str | None:
        """The hash recorded for ``nonce`` of ``address``, if any."""
        value: Any = self.redis.get(self.mapping_key(address, nonce))
        if value is None:
            return None
        return as_text(value)

    def release(self, address: str, nonce: int, *, owner: str | None = None) -> bool:
        """Give back a nonce whose transaction no node can hold; False when it was not ours to give back.

        Call it only when the transaction was never broadcast, or when every node
        refused it definitely (``TxRejected``, but not its "replacement_underpriced":
        then another transaction holds the nonce) - never after ``BroadcastFailed``
        with ``may_have_reached_node``.
        """
        keys = [*self._keys(address, owner), self.mapping_key(address, nonce)]
        return bool(self._release(keys=keys, args=[str(int(nonce)), owner or ""]))

    def resync(self, address: str, clients: Sequence[RpcClient]) -> int:
        """After "nonce too low": raise the counter to the pool's pending count; return the new next nonce."""
        NONCE_CONFLICTS.inc()
        pending = pool_pending_count(address, clients)
        base = self._base(address)
        new_next = int(self._resync(keys=[base, f"{base}:released"], args=[str(pending)]))
        log.info("nonces of %s on chain %d resynced: pool pending %d, next %d", checksum(address), self.chain_id, pending, new_next)
        return new_next

    def state(self, address: str) -> NonceState:
        """The account's counter, floor, released and leased nonces now."""
        base = self._base(address)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(base, "next")
        pipe.hget(base, "floor")
        pipe.zrange(f"{base}:released", 0, -1)
        pipe.zrange(f"{base}:leases", 0, -1)
        nxt, floor, released, leased = pipe.execute()
        return NonceState(
            next=None if nxt is None else int(nxt),
            floor=int(floor or 0),
            released=tuple(sorted(int(n) for n in released)),
            leased=tuple(sorted(int(n) for n in leased)),
        )
