"""One JSON-RPC request or batch, answered from the pool: checked, routed, failed over, cached, kept.

``Gateway.handle(body, caller)`` takes the decoded JSON body and returns the reply (an object, a list
for a batch, None when every request was a notification). Each request of a batch is routed on its
own merits and answered in order; a batch longer than ``max_batch`` is refused whole.

A read goes to the node the balancer's read preference chooses among those that may answer it: not
left alone by its circuit breaker, and, for ``latest``/``pending`` (or a block number), at the pool's
head (``gateway.heads``) or at the block — and at the newest block this caller has already been
shown (``gateway.shown``), so that a client reads its own writes: a cached head below that block is
not its answer. A node that does not answer (or times out) is replaced by another until ``deadline``;
an error *answer* (a revert, with its data) is passed through as the node gave it. A by-hash lookup a
node answers null is asked of the nodes furthest ahead before null is believed. Answers that cannot
change are cached (``gateway.cache``).

``eth_sendRawTransaction`` keeps the bytes (``gateway.kept``) and sends them by the write path's
protocol (``wallet.broadcast``, in a thread): the pool's block producer first, then the balancer's
write order.

The gateway runs on an asyncio loop (``rpc.server``). The pool's state (the devnet's sync status,
breaker marks, in-flight counts) is read by each process every SHARED_EVERY seconds, not per request;
a request's own Redis reads (what its caller was last shown, cached answers) are one pipelined round
trip; what it writes (its node call's in-flight mark and outcome, cache entries) is queued and sent
every FLUSH_EVERY seconds in one round trip for all requests. A newer block the caller was shown is
written before the reply leaves (one round trip, only then): its next request may reach another
process. Node calls share one aiohttp session. Measured on this machine, the same gateway under
Flask and gunicorn cost ~5 ms of CPU per request (bench.rpc): the framework and ~7 Redis round
trips, more than a node's answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis
import redis.asyncio as aioredis

from access.keys import Caller
from balancer import TaskKind
from errors import NodeUnreachable, NoHealthyNode, RpcError
from gateway import metrics
from gateway.breakers import BREAKERS_KEY, Breakers
from gateway.cache import CachePolicy, InFlight, cache_key, may_be_cached
from gateway.heads import Heads, at_least, healthy, pool_head
from gateway.methods import BlockNeed, Kind, block_need
from gateway.protocol import INVALID_REQUEST, LIMIT_EXCEEDED, NO_NODE, Call, RpcFault, check, error_reply
from gateway.sending import RawSender, producer
from gateway.shown import Shown, ShownRecords
from gateway.state import Deferred, Shared, send_commands
from nodepool.activity import count_on
from nodepool.aiorpc import AsyncRpcClient
from nodepool.placement import Placement
from nodepool.pool import Pool
from nodepool.rpc import to_int
from nodepool.spec import NodeSpec
from nodepool.sync import SYNC_KEY, parse_sync_statuses
from nodepool.traffic import Traffic
from settings import Settings

log = logging.getLogger(__name__)

#: Seconds between two reads of the pool's state (sync status, breaker marks, in-flight counts) per process.
SHARED_EVERY = 0.05
#: A state older than this (the refresher stalled) is read again by the request that finds it.
STALE_SHARED = 1.0
#: Seconds between two sends of the writes requests queued.
FLUSH_EVERY = 0.005
#: Seconds between two reads of the pool's chain id from the registry.
CHAIN_RECHECK = 30.0
#: By-hash lookups whose null answer is checked with the nodes furthest ahead before it is believed.
BY_HASH = frozenset({"eth_getTransactionByHash", "eth_getTransactionReceipt", "eth_getBlockByHash"})
#: Answers that carry the number of a block the caller has then been shown (and the field it is in).
SHOWS_BLOCK = {"eth_getTransactionReceipt": "blockNumber", "eth_getTransactionByHash": "blockNumber",
               "eth_getBlockByHash": "number", "eth_getBlockByNumber": "number"}


def shown_block(method: str, result: Any) -> int | None:
    """The number of the block an answer shows (a receipt's, a transaction's, a block's own); None for others."""
    number_field = SHOWS_BLOCK.get(method)
    if number_field is not None and isinstance(result, dict) and isinstance(result.get(number_field), str):
        return to_int(result[number_field])
    return None


@dataclass(frozen=True)
class GatewayConfig:
    max_batch: int
    deadline: float
    rpc_timeout: float
    cache: CachePolicy
    breaker_failures: int
    breaker_reset: float

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayConfig:
        return cls(
            max_batch=settings.rpc_max_batch, deadline=settings.rpc_deadline, rpc_timeout=settings.rpc_timeout,
            cache=CachePolicy(enabled=settings.rpc_cache, reorg_depth=settings.rpc_reorg_depth,
                              head_ttl=settings.rpc_head_ttl, long_ttl=settings.rpc_cache_ttl),
            breaker_failures=settings.rpc_breaker_failures, breaker_reset=settings.rpc_breaker_reset)


@dataclass
class Context:
    """One request's (or batch's) view: the pool's state, what its caller was shown, cached answers, and where it
    queues its writes. ``inflight`` and ``heads`` are its own copies: it counts its calls and waits for heads."""

    shared: Shared
    seen: Shown
    cached: dict[str, Any]
    inflight: dict[str, int]
    heads: dict[str, int]
    #: Where the request queues its writes: the gateway's queue, sent every FLUSH_EVERY seconds.
    after: Deferred = field(default_factory=Deferred)
    #: Writes sent before the reply leaves: what the caller was shown, which its next request may ask of another process.
    before_reply: Deferred = field(default_factory=Deferred)


class Gateway:
    """The pool behind one JSON-RPC endpoint, in one process, on its event loop."""

    def __init__(self, pool: Pool, placement: Placement, config: GatewayConfig, aredis: aioredis.Redis,
                 session: aiohttp.ClientSession) -> None:
        self.pool = pool  # sync clients: the placement's refresh and raw broadcasts run in threads
        self.placement = placement
        self.config = config
        self.redis = aredis
        self.session = session
        self.heads = Heads()
        self.breakers = Breakers(fail_max=config.breaker_failures, reset_timeout=config.breaker_reset)
        self.inflight = InFlight()
        self._clients: dict[str, AsyncRpcClient] = {}
        self._chains: dict[tuple[str, int], int] = {}
        self._chain: int | None = None
        self._chain_read_at = -CHAIN_RECHECK
        self._shared: Shared | None = None
        #: What each key was last shown and where it last wrote, as this process knows it.
        self._seen = ShownRecords()
        #: Writes requests queue (the in-flight marks of their node calls included), sent by ``run`` every FLUSH_EVERY.
        self._writes = Deferred()
        self._running = False
        self.sender = RawSender(pool, placement, aredis, rpc_timeout=config.rpc_timeout)

    # -- the body ----------------------------------------------------------------------------------

    async def handle(self, body: Any, caller: Caller) -> Any:
        """The reply to a decoded JSON-RPC body: an object, a list (batch), or None (notifications only)."""
        if isinstance(body, list):
            if not body:
                return error_reply(None, RpcFault(INVALID_REQUEST, "invalid request: an empty batch"))
            if len(body) > self.config.max_batch:
                return error_reply(None, RpcFault(LIMIT_EXCEEDED, f"a batch may carry at most {self.config.max_batch} "
                                                  f"requests (ESP_RPC_MAX_BATCH), not {len(body)}"))
            replies = await self._answer(body, caller)
            out = [r for r in replies if r is not None]
            return out or None
        return (await self._answer([body], caller))[0]

    async def _answer(self, items: Sequence[Any], caller: Caller) -> list[dict[str, Any] | None]:
        calls = [check(item, caller) for item in items]
        keys = {i: cache_key(c.method.name, c.params) for i, c in enumerate(calls) if isinstance(c, Call) and self._cacheable(c)}
        if not any(isinstance(c, Call) for c in calls):
            return [c if isinstance(c, dict) else None for c in calls]
        context = await self._context(caller, list(keys.values()))
        replies: list[dict[str, Any] | None] = []
        for i, call in enumerate(calls):
            if not isinstance(call, Call):
                replies.append(call)
                continue
            started = time.perf_counter()
            try:
                result = await self._dispatch(call, context, keys.get(i))
                reply: dict[str, Any] = {"jsonrpc": "2.0", "id": call.id, "result": result}
                outcome = "ok"
            except RpcFault as fault:
                reply = error_reply(call.id, fault)
                outcome = "error"
            metrics.REQUESTS.labels(call.method.name, outcome).inc()
            metrics.LATENCY.labels(call.method.name).observe(time.perf_counter() - started)
            replies.append(None if call.notification else reply)
        count_on(self._writes, "rpc", sum(isinstance(c, Call) for c in calls))  # sent with the other queued writes
        await self._send_now(context)
        return replies

    async def _send_now(self, context: Context) -> None:
        """Send the writes the caller's next request must find, whichever process takes it (one round trip)."""
        commands = context.before_reply.take()
        try:
            await send_commands(self.redis, commands)
        except (redis.RedisError, OSError) as exc:
            log.warning("gateway: what a caller was shown not written before the reply (queued again): %s", exc)
            self._writes.commands.extend(commands)

    def _cacheable(self, call: Call) -> bool:
        return self.config.cache.enabled and call.method.kind is Kind.READ and may_be_cached(call.method)

    async def _context(self, caller: Caller, cache_keys: list[str]) -> Context:
        """What this request needs from Redis: the pool's state (this process's, refreshed every SHARED_EVERY
        seconds by ``run``), and in one round trip what the caller was last shown and the cached answers."""
        shared = self._shared
        if shared is None or time.monotonic() - shared.read_at > STALE_SHARED:
            shared = await self._refresh()  # not started, or the refresher stalled: read it now
        pipe = self.redis.pipeline(transaction=False)
        self._seen.read_on(pipe, caller.key_id)
        if cache_keys:
            pipe.mget(cache_keys)
        replies = await pipe.execute()
        cached = {k: v for k, v in zip(cache_keys, replies[1], strict=True) if v is not None} if cache_keys else {}
        seen = self._seen.get(caller.key_id, replies[0])
        return Context(shared, seen, cached, dict(shared.inflight), dict(shared.heads), self._writes)

    async def _refresh(self) -> Shared:
        """Read the pool's state: the devnet's sync status, breaker marks, in-flight counts (and send queued writes)."""
        if self.placement.needs_refresh():
            await asyncio.to_thread(self.placement.view)  # once per monitor interval, off the loop
        view = self.placement.view()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(SYNC_KEY)
        pipe.hgetall(BREAKERS_KEY)
        ids = Traffic.inflight_on(pipe, view.specs)
        self.breakers.flush_on(pipe)
        replies = await pipe.execute()
        sync = parse_sync_statuses(replies[0])
        blocked = self.breakers.blocked(replies[1]) | set(view.overrides)
        heads = self.heads.known(view.specs, view.snapshot, sync)
        shared = Shared(view, sync, blocked, Traffic.parse_inflight(ids, replies[2:2 + 2 * len(ids)]), heads,
                        pool_head(heads, healthy(view.specs, view.snapshot, sync, exclude=blocked)), time.monotonic())
        self._shared = shared
        return shared

    async def _flush(self) -> None:
        """Send the writes requests queued (in-flight marks, outcomes, cache, the nodes callers wrote to): one round trip."""
        await send_commands(self.redis, self._writes.take())

    async def run(self) -> None:
        """Keep this process's view of the pool fresh and send queued writes, until ``stop()`` (``rpc.server``).

        It ends on a flag, checked every turn, rather than on cancellation: a cancel that lands inside a Redis call
        can come back out of it as that call's timeout, a Redis error this loop rides out -- the task then looped on,
        "cancelling", and the app's cleanup awaited it forever (seen in the tests, twice in seven runs of a module).
        """
        last_refresh = 0.0
        self._running = True
        while self._running:
            try:
                await self._flush()
                if time.monotonic() - last_refresh >= SHARED_EVERY:
                    await self._refresh()
                    last_refresh = time.monotonic()
            except (redis.RedisError, OSError) as exc:
                log.warning("gateway refresh: Redis: %s", exc)
                await asyncio.sleep(0.5)
            await asyncio.sleep(FLUSH_EVERY)

    def stop(self) -> None:
        """Make ``run`` return at its next turn (within FLUSH_EVERY, or the half second it waits after a Redis error)."""
        self._running = False

    async def drain(self) -> None:
        """Send the writes still queued (at shutdown)."""
        await self._flush()

    # -- one request ---------------------------------------------------------------------------------

    async def _dispatch(self, call: Call, context: Context, key: str | None) -> Any:
        kind = call.method.kind
        if kind is Kind.SEND_RAW:
            return await self._send_raw(call, context)
        if kind in (Kind.NODE_KEY, Kind.ADMIN):
            return (await self._ask(call.method.name, call.params, context, first=producer(context.shared.view)))[1]
        result = await self._cached_or_read(call, context, block_need(call.method, call.params), key)
        block = shown_block(call.method.name, result)
        if block is not None:  # this caller's reads at the head now come from nodes that have it, however it was found
            context.seen.show(block, context.before_reply)
        return result

    async def _cached_or_read(self, call: Call, context: Context, need: BlockNeed, key: str | None) -> Any:
        """The answer from the cache, or shared with an identical call in flight, or read from a node (and cached)."""
        if key is not None and key in context.cached:
            result = json.loads(context.cached[key])
            if not self._behind_caller(call, result, context):
                metrics.CACHE.labels(call.method.name, "hit").inc()
                return result
            key = None  # another caller's head, below a block this caller was shown: asked afresh, not kept
        if key is None:
            return await self._read(call, context, need)
        result, shared = await self.inflight.run(key, lambda: self._read(call, context, need))
        if shared and self._behind_caller(call, result, context):
            return await self._read(call, context, need)
        metrics.CACHE.labels(call.method.name, "shared" if shared else "miss").inc()
        if not shared:
            ttl = self.config.cache.ttl(call.method, need, result, context.shared.pool_head)
            if ttl is not None:
                context.after.set(key, json.dumps(result, separators=(",", ":")), px=int(ttl * 1000))
        return result

    async def _read(self, call: Call, context: Context, need: BlockNeed) -> Any:
        name, params = call.method.name, call.params
        seen_block = context.seen.block
        required: int | None = None
        if need.at_head:
            required = max(context.shared.pool_head if context.shared.pool_head is not None else -1, seen_block)
        elif need.number is not None and (context.shared.pool_head is None or need.number <= max(context.shared.pool_head, seen_block)):
            required = need.number
        first = self._own_write_node(call, context)
        node_id, result = await self._ask(name, params, context, required=required, first=first)
        if result is None and name in BY_HASH:
            node_id, result = await self._ask_ahead(name, params, context, asked=node_id)
        block = shown_block(name, result)
        if block is not None:
            self.heads.observe(node_id, block)
        elif name == "eth_blockNumber" and isinstance(result, str):
            self.heads.observe(node_id, to_int(result))
        return result

    @staticmethod
    def _behind_caller(call: Call, result: Any, context: Context) -> bool:
        """Whether a head answered for another request (cached, or shared in flight) is below a block this caller was
        shown (a receipt from the block producer, ahead of the quorum's head): a client would count -1 confirmations."""
        return call.method.name == "eth_blockNumber" and isinstance(result, str) and context.seen.is_above(to_int(result))

    @staticmethod
    def _own_write_node(call: Call, context: Context) -> str | None:
        """The node that took this caller's last raw transaction, for its ``pending`` reads soon after."""
        block_at = call.method.block_at
        pending = block_at is not None and block_at < len(call.params) and call.params[block_at] == "pending"
        return context.seen.own_write_node(time.time(), context.shared.blocked) if pending else None

    async def _ask(self, method: str, params: list[Any], context: Context, *, required: int | None = None,
                   first: str | None = None) -> tuple[str, Any]:
        """Some node's answer: the balancer's choice among the nodes that may answer, the next on no answer."""
        started = time.monotonic()
        deadline = started + self.config.deadline
        tried: set[str] = set()
        failures: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            node_id = first if first is not None and first not in tried else self._choose(context, required, tried)
            if node_id is None:
                if not tried and required is not None:
                    # No node has the block yet: a follower imports it within moments. Past half the deadline, any node.
                    await asyncio.sleep(0.05)
                    sync = parse_sync_statuses(await self.redis.hgetall(SYNC_KEY))
                    context.heads.update(self.heads.known(context.shared.view.specs, context.shared.view.snapshot, sync))
                    if time.monotonic() - started > self.config.deadline / 2:
                        required = None
                    continue
                break
            try:
                return node_id, await self._call(node_id, method, params, min(remaining, self.config.rpc_timeout), context)
            except NodeUnreachable as exc:
                tried.add(node_id)
                failures.append(f"{node_id}: {exc}")
        raise RpcFault(NO_NODE, f"no node answered {method}"
                       + (f": {'; '.join(failures)}" if failures else ": no node may take it now"))

    def _choose(self, context: Context, required: int | None, tried: set[str]) -> str | None:
        behind: set[str] = set()
        if required is not None:
            behind = set(context.shared.view.specs) - at_least(context.heads, required)
        exclude = frozenset(tried | context.shared.blocked | behind)
        try:
            return self.placement.choose(TaskKind.READ, exclude=exclude, inflight=context.inflight).node_id
        except NoHealthyNode:
            pass
        # The balancer has no node for it (zones, LBH pause): any registered node that may answer, furthest ahead first.
        left = [n for n in context.shared.view.specs if n not in exclude]
        return max(left, key=lambda n: context.heads.get(n, -1)) if left else None

    async def _call(self, node_id: str, method: str, params: list[Any], timeout: float, context: Context) -> Any:
        spec = self.placement.cached_spec(node_id)
        client = self._client(spec)
        await self._check_chain(spec, client)
        token = Traffic.begin_on(context.after, node_id)  # visible to the balancer within FLUSH_EVERY
        context.inflight[node_id] = context.inflight.get(node_id, 0) + 1
        ok = False
        started = time.perf_counter()
        try:
            result = await self.breakers.call(node_id, lambda: client.call(method, params, timeout=timeout))
            ok = True
            metrics.NODE_CALLS.labels(method, node_id, "ok").inc()
            return result
        except RpcError as exc:
            ok = True  # the node answered: the answer is the caller's, as the node gave it
            metrics.NODE_CALLS.labels(method, node_id, "error").inc()
            raise RpcFault(exc.code, exc.rpc_message, exc.data) from None
        except NodeUnreachable:
            metrics.NODE_CALLS.labels(method, node_id, "unreachable").inc()
            raise
        finally:
            metrics.NODE_LATENCY.labels(node_id).observe(time.perf_counter() - started)
            Traffic.end_on(context.after, node_id, token, ok=ok)

    def _client(self, spec: NodeSpec) -> AsyncRpcClient:
        client = self._clients.get(spec.url)
        if client is None:
            client = self._clients[spec.url] = AsyncRpcClient(self.session, spec.url, node_id=spec.id)
        return client

    async def _check_chain(self, spec: NodeSpec, client: AsyncRpcClient) -> None:
        """Refuse a node that serves another chain than the pool's (asked once per node generation)."""
        key = (spec.id, spec.generation)
        chain = self._chains.get(key)
        if chain is None:
            chain = self._chains[key] = to_int(await self.breakers.call(spec.id, lambda: client.call("eth_chainId", timeout=2.0)))
        expected = await self._expected_chain()
        if expected is not None and chain != expected:
            raise NodeUnreachable(f"{spec.id} serves chain {chain}, the pool's is {expected}", node_id=spec.id)

    async def _expected_chain(self) -> int | None:
        """The pool's chain id as the node manager registered it (re-read every CHAIN_RECHECK seconds)."""
        now = time.monotonic()
        if now - self._chain_read_at > CHAIN_RECHECK:
            value = (await asyncio.to_thread(self.pool.registry.pool)).get("chain_id")
            self._chain = int(value) if value is not None else None
            self._chain_read_at = now
        return self._chain

    async def _ask_ahead(self, method: str, params: list[Any], context: Context, *, asked: str) -> tuple[str, Any]:
        """A by-hash lookup answered null: ask the other nodes, furthest ahead first, before believing it."""
        others = sorted((n for n in context.shared.view.specs if n != asked and n not in context.shared.blocked),
                        key=lambda n: -context.heads.get(n, -1))
        for node_id in others[:2]:
            try:
                result = await self._call(node_id, method, params, self.config.rpc_timeout, context)
            except NodeUnreachable:
                continue
            if result is not None:
                return node_id, result
        # ESP accepted it (its bytes are kept): make sure the block producer holds it, then ask the producer.
        if method != "eth_getBlockByHash" and await self.sender.resend(params[0], context.shared):
            return await self._ask(method, params, context, first=producer(context.shared.view))
        return asked, None

    # -- raw transactions ----------------------------------------------------------------------------

    async def _send_raw(self, call: Call, context: Context) -> str:
        tx_hash, node_id = await self.sender.send(call.params[0], context.shared, await self._expected_chain())
        if node_id is not None:  # the caller's pending reads go to the node that took it (READ_OWN_WRITE_FOR)
            context.seen.wrote(node_id, time.time(), context.after)
        return tx_hash
