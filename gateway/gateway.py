"""One JSON-RPC request or batch, answered from the pool: checked, routed, failed over, cached, kept.

``Gateway.handle(body, caller)`` takes the decoded JSON body and returns the reply (an object, a list
for a batch, None when every request was a notification). Each request of a batch is routed on its
own merits and answered in order; a batch longer than ``max_batch`` is refused whole.

A read goes to the node the balancer's read preference chooses among those that may answer it: not
left alone by its circuit breaker, and, for ``latest``/``pending`` (or a block number), at the pool's
head (``gateway.heads``) or at the block — and at the newest block this caller has already been
shown, so that a client reads its own writes. A node that does not answer (or times out) is
replaced by another until ``deadline``; an error *answer* (a revert, with its data) is passed through
as the node gave it. A by-hash lookup a node answers null is asked of the nodes furthest ahead
before null is believed. Answers that cannot change are cached (``gateway.cache``).

``eth_sendRawTransaction`` keeps the bytes (``gateway.kept``) and sends them by the write path's
protocol (``wallet.broadcast``): the pool's block producer first, then the balancer's write order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from access.keys import Caller
from balancer import TaskKind
from errors import NodeUnreachable, NoHealthyNode, RpcError
from gateway import metrics
from gateway.breakers import BREAKERS_KEY, Breakers
from gateway.cache import CachePolicy, InFlight, cache_key, may_be_cached
from gateway.heads import Heads, at_least, healthy, pool_head
from gateway.kept import KeptTransactions, RawTx, decode_raw
from gateway.methods import AT_HEAD, BlockNeed, InvalidParams, Kind, Method, block_need, check_params, lookup, refusal
from nodepool.placement import Placement, PlacementView
from nodepool.pool import Pool
from nodepool.rpc import RpcClient, to_int
from nodepool.spec import ROLE_LEADER
from nodepool.sync import SYNC_KEY, parse_sync_statuses
from nodepool.traffic import Traffic
from settings import Settings
from wallet.broadcast import broadcast
from wallet.errors import BroadcastFailed, NonceTooLow, TxRejected

# JSON-RPC 2.0 error codes, and the implementation-defined ones ESP answers with.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: No node could answer within the deadline (server error range).
NO_NODE = -32000
#: EIP-1474's "limit exceeded": a rate limit, a batch too long.
LIMIT_EXCEEDED = -32005

#: What a caller was last shown, for reading its own writes: ``{"block": n, "node": id, "at": t}``.
SEEN_KEY = "esp:rpc:seen:{}"
SEEN_TTL = 60
#: Seconds after a raw transaction during which the caller's ``pending`` reads go to the node that took it.
READ_OWN_WRITE_FOR = 30.0
#: Seconds between two reads of the pool's chain id from the registry.
CHAIN_RECHECK = 30.0
#: By-hash lookups whose null answer is checked with the nodes furthest ahead before it is believed.
BY_HASH = frozenset({"eth_getTransactionByHash", "eth_getTransactionReceipt", "eth_getBlockByHash"})
#: Answers that carry a block number a caller has then been shown.
SHOWS_BLOCK = frozenset({"eth_getTransactionReceipt", "eth_getBlockByHash", "eth_getBlockByNumber"})


class RpcFault(Exception):
    """A JSON-RPC error object to answer with."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def error_reply(request_id: Any, fault: RpcFault) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": fault.to_dict()}


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
    """What one request (or batch) reads from Redis first, in one round trip."""

    view: PlacementView
    sync: Mapping[str, Mapping[str, Any]]
    blocked: set[str]
    seen: dict[str, Any]
    cached: dict[str, Any]
    heads: dict[str, int]
    pool_head: int | None


@dataclass(frozen=True)
class Call:
    """One checked request of a body."""

    id: Any
    method: Method
    params: list[Any]
    notification: bool


class Gateway:
    """The pool behind one JSON-RPC endpoint, in one process (thread-safe)."""

    def __init__(self, pool: Pool, placement: Placement, config: GatewayConfig) -> None:
        self.pool = pool
        self.placement = placement
        self.config = config
        self.redis = pool.redis
        self.traffic = Traffic(pool.redis)
        self.heads = Heads()
        self.breakers = Breakers(pool.redis, fail_max=config.breaker_failures, reset_timeout=config.breaker_reset)
        self.inflight = InFlight()
        self.kept = KeptTransactions(pool.redis)
        self._chains: dict[tuple[str, int], int] = {}
        self._chain: int | None = None
        self._chain_read_at = -CHAIN_RECHECK

    # -- the body ----------------------------------------------------------------------------------

    def handle(self, body: Any, caller: Caller) -> Any:
        """The reply to a decoded JSON-RPC body: an object, a list (batch), or None (notifications only)."""
        if isinstance(body, list):
            if not body:
                return error_reply(None, RpcFault(INVALID_REQUEST, "invalid request: an empty batch"))
            if len(body) > self.config.max_batch:
                return error_reply(None, RpcFault(LIMIT_EXCEEDED, f"a batch may carry at most {self.config.max_batch} "
                                                  f"requests (ESP_RPC_MAX_BATCH), not {len(body)}"))
            replies = self._answer(body, caller)
            out = [r for r in replies if r is not None]
            return out or None
        return self._answer([body], caller)[0]

    def _answer(self, items: Sequence[Any], caller: Caller) -> list[dict[str, Any] | None]:
        calls: list[Call | dict[str, Any]] = [self._check(item, caller) for item in items]
        checked = [c for c in calls if isinstance(c, Call)]
        keys = {i: cache_key(c.method.name, c.params)
                for i, c in enumerate(calls) if isinstance(c, Call) and self._cacheable(c)}
        context = self._context(caller, list(keys.values())) if checked else None
        replies: list[dict[str, Any] | None] = []
        for i, call in enumerate(calls):
            if not isinstance(call, Call):
                replies.append(call)
                continue
            assert context is not None
            started = time.perf_counter()
            try:
                result = self._dispatch(call, caller, context, keys.get(i))
                reply: dict[str, Any] = {"jsonrpc": "2.0", "id": call.id, "result": result}
                outcome = "ok"
            except RpcFault as fault:
                reply = error_reply(call.id, fault)
                outcome = "error"
            metrics.REQUESTS.labels(call.method.name, outcome).inc()
            metrics.LATENCY.labels(call.method.name).observe(time.perf_counter() - started)
            replies.append(None if call.notification else reply)
        return replies

    def _check(self, item: Any, caller: Caller) -> Call | dict[str, Any]:
        """The request as a Call, or the error reply that answers it."""
        request_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(request_id, (str, int, type(None))) or isinstance(request_id, bool):
            request_id = None
        if not isinstance(item, dict) or item.get("jsonrpc") != "2.0" or not isinstance(item.get("method"), str):
            return error_reply(request_id, RpcFault(INVALID_REQUEST, "invalid request: a JSON-RPC 2.0 request is an "
                                                    "object with \"jsonrpc\": \"2.0\", a string \"method\" and an id"))
        if "id" in item and item["id"] is not request_id:
            return error_reply(None, RpcFault(INVALID_REQUEST, "invalid request: id must be a string, a number or null"))
        name = item["method"]
        method = lookup(name)
        if method is None:
            return error_reply(request_id, RpcFault(METHOD_NOT_FOUND, f"the method {name} does not exist or is not "
                                                    "available"))
        if (method.kind in (Kind.NODE_KEY, Kind.ADMIN) and not caller.is_admin) or method.kind is Kind.UNSUPPORTED:
            return error_reply(request_id, RpcFault(METHOD_NOT_FOUND, refusal(method)))
        try:
            params = check_params(method, item.get("params"))
        except InvalidParams as exc:
            return error_reply(request_id, RpcFault(INVALID_PARAMS, f"invalid params: {exc}"))
        return Call(request_id, method, params, notification="id" not in item)

    def _cacheable(self, call: Call) -> bool:
        return self.config.cache.enabled and call.method.kind is Kind.READ and may_be_cached(call.method)

    def _context(self, caller: Caller, cache_keys: list[str]) -> Context:
        view = self.placement.view()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(SYNC_KEY)
        pipe.hgetall(BREAKERS_KEY)
        pipe.hgetall(SEEN_KEY.format(caller.key_id))
        if cache_keys:
            pipe.mget(cache_keys)
        replies = pipe.execute()
        raw_sync, raw_breakers, raw_seen = replies[:3]
        cached = {k: v for k, v in zip(cache_keys, replies[3], strict=True) if v is not None} if cache_keys else {}
        sync = parse_sync_statuses(raw_sync)
        blocked = self.breakers.blocked(raw_breakers) | set(view.overrides)
        seen = {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in (raw_seen or {}).items()}
        heads = self.heads.known(view.specs, view.snapshot, sync)
        head = pool_head(heads, healthy(view.specs, view.snapshot, sync, exclude=blocked))
        return Context(view, sync, blocked, seen, cached, heads, head)

    # -- one request ---------------------------------------------------------------------------------

    def _dispatch(self, call: Call, caller: Caller, context: Context, key: str | None) -> Any:
        kind = call.method.kind
        if kind is Kind.SEND_RAW:
            return self._send_raw(call, caller, context)
        if kind in (Kind.NODE_KEY, Kind.ADMIN):
            return self._administer(call, context)
        if key is not None and key in context.cached:
            metrics.CACHE.labels(call.method.name, "hit").inc()
            return json.loads(context.cached[key])
        need = block_need(call.method, call.params)
        if key is None:
            return self._read(call, caller, context, need)
        result, shared = self.inflight.run(key, lambda: self._read(call, caller, context, need))
        metrics.CACHE.labels(call.method.name, "shared" if shared else "miss").inc()
        if not shared:
            ttl = self.config.cache.ttl(call.method, need, result, context.pool_head)
            if ttl is not None:
                self.redis.set(key, json.dumps(result, separators=(",", ":")), px=int(ttl * 1000))
        return result

    def _read(self, call: Call, caller: Caller, context: Context, need: BlockNeed) -> Any:
        name, params = call.method.name, call.params
        seen_block = int(context.seen.get("block", -1))
        required: int | None = None
        if need.at_head:
            required = max(context.pool_head if context.pool_head is not None else -1, seen_block)
        elif need.number is not None and (context.pool_head is None or need.number <= max(context.pool_head, seen_block)):
            required = need.number
        first = self._own_write_node(call, context)
        node_id, result = self._ask(name, params, context, required=required, first=first)
        if result is None and name in BY_HASH:
            node_id, result = self._ask_ahead(name, params, context, asked=node_id)
        if isinstance(result, dict) and name in SHOWS_BLOCK and isinstance(result.get("blockNumber"), str):
            self._shown(caller, context, to_int(result["blockNumber"]), node_id)
        elif name == "eth_blockNumber" and isinstance(result, str):
            self.heads.observe(node_id, to_int(result))
        return result

    def _own_write_node(self, call: Call, context: Context) -> str | None:
        """The node that took this caller's last raw transaction, for its ``pending`` reads soon after."""
        node_id = context.seen.get("node")
        at = float(context.seen.get("at", 0))
        block_at = call.method.block_at
        pending = block_at is not None and block_at < len(call.params) and call.params[block_at] == "pending"
        if node_id and pending and time.time() - at < READ_OWN_WRITE_FOR and node_id not in context.blocked:
            return str(node_id)
        return None

    def _ask(self, method: str, params: list[Any], context: Context, *, required: int | None = None,
             first: str | None = None, kind: TaskKind = TaskKind.READ) -> tuple[str, Any]:
        """Some node's answer: the balancer's choice among the nodes that may answer, the next on no answer."""
        deadline = time.monotonic() + self.config.deadline
        tried: set[str] = set()
        failures: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            node_id = first if first is not None and first not in tried else self._choose(context, required, tried, kind)
            if node_id is None:
                if not tried and required is not None:
                    time.sleep(0.05)  # no node at the block yet: a follower imports it within moments
                    context.heads.update(self.heads.known(context.view.specs, context.view.snapshot,
                                                          self._sync_now()))
                    required = required if time.monotonic() < deadline - self.config.deadline / 2 else None
                    continue
                break
            try:
                return node_id, self._call(node_id, method, params, min(remaining, self.config.rpc_timeout), context)
            except NodeUnreachable as exc:
                tried.add(node_id)
                failures.append(f"{node_id}: {exc}")
        raise RpcFault(NO_NODE, f"no node answered {method} within {self.config.deadline:g} s"
                       + (f": {'; '.join(failures)}" if failures else ": no node may take it now"))

    def _choose(self, context: Context, required: int | None, tried: set[str], kind: TaskKind) -> str | None:
        behind = set()
        if required is not None:
            behind = set(context.view.specs) - at_least(context.heads, required)
        exclude = frozenset(tried | context.blocked | behind)
        try:
            return self.placement.choose(kind, exclude=exclude).node_id
        except NoHealthyNode:
            pass
        # The balancer has no node for it (zones, LBH pause): any registered node that may answer, furthest ahead first.
        left = [n for n in context.view.specs if n not in exclude]
        return max(left, key=lambda n: context.heads.get(n, -1)) if left else None

    def _call(self, node_id: str, method: str, params: list[Any], timeout: float, context: Context) -> Any:
        spec = self.placement.cached_spec(node_id)
        client = self.pool.rpc(spec)
        self._check_chain(spec.id, spec.generation, client, context)
        token = self.traffic.begin(node_id)
        ok = False
        started = time.perf_counter()
        try:
            result = self.breakers.call(node_id, lambda: client.call(method, params, timeout=timeout))
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
            self.traffic.end(node_id, token, ok=ok)

    def _check_chain(self, node_id: str, generation: int, client: RpcClient, context: Context) -> None:
        """Refuse a node that serves another chain than the pool's (asked once per node generation)."""
        key = (node_id, generation)
        chain = self._chains.get(key)
        if chain is None:
            chain = self._chains[key] = to_int(self.breakers.call(node_id, lambda: client.call("eth_chainId", timeout=2.0)))
        expected = self._expected_chain()
        if expected is not None and chain != expected:
            raise NodeUnreachable(f"{node_id} serves chain {chain}, the pool's is {expected}", node_id=node_id)

    def _expected_chain(self) -> int | None:
        """The pool's chain id as the node manager registered it (re-read every CHAIN_RECHECK seconds)."""
        now = time.monotonic()
        if now - self._chain_read_at > CHAIN_RECHECK:
            value = self.pool.registry.pool().get("chain_id")
            self._chain = int(value) if value is not None else None
            self._chain_read_at = now
        return self._chain

    def _ask_ahead(self, method: str, params: list[Any], context: Context, *, asked: str) -> tuple[str, Any]:
        """A by-hash lookup answered null: ask the other nodes, furthest ahead first, before believing it."""
        others = sorted((n for n in context.view.specs if n != asked and n not in context.blocked),
                        key=lambda n: -context.heads.get(n, -1))
        for node_id in others[:2]:
            try:
                result = self._call(node_id, method, params, self.config.rpc_timeout, context)
            except NodeUnreachable:
                continue
            if result is not None:
                return node_id, result
        if method != "eth_getBlockByHash" and self.kept.is_kept(params[0]):
            self._resend_kept(params[0], context)  # ESP accepted it: make sure the block producer holds it
            return self._ask(method, params, context, first=self._producer(context))
        return asked, None

    def _sync_now(self) -> dict[str, dict[str, Any]]:
        return parse_sync_statuses(self.redis.hgetall(SYNC_KEY))

    def _shown(self, caller: Caller, context: Context, block: int, node_id: str) -> None:
        """The caller has been shown ``block``: its later reads at the head come from nodes that have it."""
        self.heads.observe(node_id, block)
        if block > int(context.seen.get("block", -1)):
            context.seen["block"] = block
            key = SEEN_KEY.format(caller.key_id)
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(key, "block", json.dumps(block))
            pipe.expire(key, SEEN_TTL)
            pipe.execute()

    # -- raw transactions and administration ---------------------------------------------------------

    def _send_raw(self, call: Call, caller: Caller, context: Context) -> str:
        try:
            tx = decode_raw(call.params[0])
        except InvalidParams as exc:
            raise RpcFault(INVALID_PARAMS, f"invalid params: {exc}") from None
        expected = self._expected_chain()
        if tx.chain_id is not None and expected is not None and tx.chain_id != expected:
            raise RpcFault(-32000, f"invalid chain id: the transaction is signed for chain {tx.chain_id}, "
                           f"the pool serves chain {expected}")
        self.kept.keep(tx)
        clients = self._senders(context)
        try:
            sent = broadcast(tx.raw_bytes(), tx.tx_hash, clients, nonce=tx.nonce, timeout=self.config.rpc_timeout)
        except TxRejected as exc:
            self.kept.forget(tx.tx_hash)
            raise RpcFault(exc.node_code if exc.node_code is not None else -32000, exc.node_message, exc.node_data) from None
        except NonceTooLow:
            self.kept.forget(tx.tx_hash)
            raise RpcFault(-32003, "nonce too low") from None
        except BroadcastFailed as exc:
            if not exc.may_have_reached_node:
                self.kept.forget(tx.tx_hash)
                raise RpcFault(NO_NODE, str(exc)) from None
            return tx.tx_hash  # a node may hold it; kept, it is sent again until mined (gateway.kept)
        self._wrote(caller, tx, sent.node_id)
        return tx.tx_hash

    def _senders(self, context: Context) -> list[RpcClient]:
        """Where raw bytes go: the pool's block producer first (a devnet's leader: followers only relay), then
        the balancer's write order; nodes left alone by their breaker last."""
        specs = self.placement.ordered(TaskKind.CALL)
        producer = self._producer(context)
        specs.sort(key=lambda s: (s.id != producer, s.id in context.blocked))
        return [self.pool.rpc(spec) for spec in specs]

    def _producer(self, context: Context) -> str | None:
        return next((s.id for s in context.view.specs.values() if s.role == ROLE_LEADER), None)

    def _resend_kept(self, tx_hash: str, context: Context) -> None:
        record = self.kept.get(tx_hash)
        if record is None:
            return
        tx = RawTx(record["tx_hash"], record["raw"], record["nonce"], record.get("chain_id"))
        try:
            broadcast(tx.raw_bytes(), tx.tx_hash, self._senders(context), nonce=tx.nonce, timeout=self.config.rpc_timeout)
        except (TxRejected, NonceTooLow, BroadcastFailed):
            pass  # the beat's pass decides what to do with it

    def _wrote(self, caller: Caller, tx: RawTx, node_id: str | None) -> None:
        key = SEEN_KEY.format(caller.key_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping={"node": json.dumps(node_id), "at": json.dumps(time.time())})
        pipe.expire(key, SEEN_TTL)
        pipe.execute()

    def _administer(self, call: Call, context: Context) -> Any:
        """An admin's node-key or administration call: to the block producer (what it changes, the chain follows)."""
        producer = self._producer(context)
        return self._ask(call.method.name, call.params, context, first=producer)[1]


def reply_bytes(reply: Any) -> bytes:
    """The reply as the HTTP body."""
    return json.dumps(reply, separators=(",", ":")).encode()


__all__ = ["AT_HEAD", "Gateway", "GatewayConfig", "RpcFault", "error_reply", "reply_bytes"]
