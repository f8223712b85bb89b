"""``POST /rpc``, ``GET /metrics`` and ``GET /healthz`` of the JSON-RPC gateway (aiohttp).

A client switches to ESP by changing its provider's URL to ``http://<host>:<ESP_RPC_PORT>/rpc`` and
sending its API key as ``Authorization: Bearer <key>``. Every answer is JSON-RPC: a body that is not
JSON is -32700, a request that is not JSON-RPC -32600, an unknown or forbidden method -32601, bad
params -32602. Refusals before the gateway runs carry a JSON-RPC error object (id null) and an HTTP
status: 401 without a valid key, 413 for a body over ESP_MAX_BODY_KB, 429 past ESP_RPC_RATE_LIMIT
(per key, every request of a batch counted; sliding-window counters in Redis, from the ``limits``
library that flask-limiter is built on: the API's limits and these share their storage format).

Why not Flask: the same gateway under Flask and gunicorn gthread cost ~5 ms of CPU per request and
reached 0.5-0.7x a Flask + web3.py control (bench.rpc, 2026-11-28); the framework's per-request
floor alone (0.64 ms for /healthz) is more than a node takes to answer a read.

Keys are looked up in Redis and remembered for AUTH_CACHE_SECONDS: a revoked key stops working on
/rpc within that time (on the REST API at once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import redis
import redis.asyncio as aioredis
from aiohttp import web
from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff

from access.keys import ApiKeyStore, Caller, digest_of
from app.validation import is_json_too_deep
from gateway.gateway import Gateway, GatewayConfig
from gateway.protocol import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    LIMIT_EXCEEDED,
    PARSE_ERROR,
    UNAVAILABLE,
    RpcFault,
    error_reply,
    reply_bytes,
)
from nodepool.placement import Placement
from nodepool.pool import EDGE_CONNECT_TIMEOUT, EDGE_RETRY_BASE, EDGE_RETRY_CAP, Pool, edge_redis
from settings import Settings

log = logging.getLogger(__name__)

#: Seconds a looked-up key is remembered (its revocation takes effect on /rpc within this time).
AUTH_CACHE_SECONDS = 2.0
#: The rate limit's counters: the same prefix and scheme as the API's (app.guards), scope "rpc".
LIMIT_PREFIX = "esp:limits"
LIMIT_SCOPE = "rpc"
#: What Redis not answering looks like here (keys, limits, the gateway's own reads and writes), and the
#: seconds a client is told to wait then (a Redis restart takes a few).
REDIS_ERRORS = (redis.RedisError, StorageError)
REDIS_RETRY_AFTER = 2

#: Seconds the gateway's refresh loop gets to end at shutdown (a turn takes at most a Redis timeout).
STOP_TIMEOUT = 15.0

GATEWAY = web.AppKey("gateway", Gateway)
STATE = web.AppKey("state", dict)


def make_app(settings: Settings | None = None) -> web.Application:
    """The gateway's aiohttp application for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    app = web.Application(client_max_size=settings.max_body_kb * 1024)
    app[STATE] = {"settings": settings}
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/rpc", rpc)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """What the app holds while it runs: Redis clients, the nodes' HTTP session, the gateway, the limiter."""
    state = app[STATE]
    settings: Settings = state["settings"]
    # Bounded as the API's (nodepool.pool.edge_redis): while Redis is away a request is refused within seconds, and
    # one retry replaces a pooled connection that Redis's restart broke.
    pool = Pool(settings, edge_redis(settings))
    aredis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=EDGE_CONNECT_TIMEOUT,
                                     retry=AsyncRetry(ExponentialWithJitterBackoff(base=EDGE_RETRY_BASE, cap=EDGE_RETRY_CAP),
                                                      retries=1))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, limit_per_host=64, keepalive_timeout=30))
    app[GATEWAY] = Gateway(pool, Placement(pool), GatewayConfig.from_settings(settings), aredis, session)
    state["keys"] = ApiKeyStore(pool.redis, settings_admin_key=settings.admin_key)
    state["known"] = {}
    state["limits"] = parse_many(settings.rpc_rate_limit)
    # The gateway's own connection pool (closed with it), as the API's limiter shares the API's.
    # (limits' annotation of its options says only float, str and bool; redis-py takes the pool.)
    options: dict[str, Any] = {"connection_pool": aredis.connection_pool}
    storage = RedisStorage("async+" + settings.redis_url, implementation="redispy", key_prefix=LIMIT_PREFIX, **options)
    state["limiter"] = SlidingWindowCounterRateLimiter(storage)
    refresher = asyncio.create_task(app[GATEWAY].run())
    try:
        yield
    finally:
        app[GATEWAY].stop()
        try:
            await asyncio.wait_for(refresher, STOP_TIMEOUT)  # it ends at its next turn; cancelled if it does not
        except (TimeoutError, asyncio.CancelledError):
            log.warning("the gateway's refresh loop did not stop within %s s: cancelled", STOP_TIMEOUT)
        await app[GATEWAY].drain()
        await session.close()
        await aredis.aclose()
        pool.close()


# -- the routes ---------------------------------------------------------------------------------------


async def rpc(request: web.Request) -> web.Response:
    """Answer a JSON-RPC request or batch from the pool."""
    state = request.app[STATE]
    try:
        return await _answer(request, state)
    except REDIS_ERRORS as exc:
        # An error object the client may retry on, not a 500: a raw transaction sent again is "already known" at worst.
        log.warning("/rpc: Redis does not answer: %s", exc)
        return _refusal(503, RpcFault(UNAVAILABLE, "resource unavailable: ESP's store (Redis) does not answer;"
                                      f" retry in {REDIS_RETRY_AFTER} s"), {"Retry-After": str(REDIS_RETRY_AFTER)})


async def _answer(request: web.Request, state: dict[str, Any]) -> web.Response:
    try:
        caller = await _caller(request, state)
    except RpcFault as fault:
        return _refusal(401, fault, {"WWW-Authenticate": 'Bearer realm="esp"'})
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = state["settings"].max_body_kb
        return _refusal(413, RpcFault(INVALID_REQUEST, f"request too large: the body is over {limit} KiB (ESP_MAX_BODY_KB)"))
    try:
        if is_json_too_deep(raw):
            raise ValueError("it nests too deeply")
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return _json(error_reply(None, RpcFault(PARSE_ERROR, f"parse error: the body is not JSON ({exc})")))
    cost = len(body) if isinstance(body, list) and body else 1
    wait = await _limited(state, caller, cost)
    if wait is not None:
        return _refusal(429, RpcFault(LIMIT_EXCEEDED, f"too many requests for this API key (at most "
                                      f"{state['settings'].rpc_rate_limit}): retry in {wait} s"), {"Retry-After": str(wait)})
    try:
        reply = await request.app[GATEWAY].handle(body, caller)
    except REDIS_ERRORS:
        raise
    except Exception:
        log.exception("the gateway failed on a request")
        return _refusal(500, RpcFault(INTERNAL_ERROR, "internal error: the gateway failed; it has been logged"))
    if reply is None:
        return web.Response(status=204)  # only notifications: nothing to answer
    return _json(reply)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers (no Redis, no node)."""
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """The gateway's metrics (requests, errors and latency per method and node, cache hits), over its processes."""
    registry = CollectorRegistry()
    if prometheus_values.ValueClass is not prometheus_values.MutexValue:  # files: summed over the workers
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    body = await asyncio.to_thread(generate_latest, registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


# -- helpers --------------------------------------------------------------------------------------------


async def _caller(request: web.Request, state: dict[str, Any]) -> Caller:
    header = request.headers.get("Authorization")
    if header is None:
        raise RpcFault(INVALID_REQUEST, "unauthorized: this needs an API key: send Authorization: Bearer <key>")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise RpcFault(INVALID_REQUEST, "unauthorized: send the API key as Authorization: Bearer <key>")
    known: dict[str, tuple[Caller | None, float]] = state["known"]
    digest = digest_of(token)
    now = time.monotonic()
    hit = known.get(digest)
    if hit is None or now - hit[1] > AUTH_CACHE_SECONDS:
        if len(known) > 10_000:
            known.clear()
        hit = known[digest] = (await asyncio.to_thread(state["keys"].authenticate, token), now)
    if hit[0] is None:
        raise RpcFault(INVALID_REQUEST, "unauthorized: the API key is not valid (unknown or revoked)")
    return hit[0]


async def _limited(state: dict[str, Any], caller: Caller, cost: int) -> int | None:
    """None when the caller may spend ``cost`` requests now; else the whole seconds until it may."""
    limiter: SlidingWindowCounterRateLimiter = state["limiter"]
    limit: RateLimitItem
    for limit in state["limits"]:
        if not await limiter.hit(limit, LIMIT_SCOPE, f"key:{caller.key_id}", cost=cost):
            stats = await limiter.get_window_stats(limit, LIMIT_SCOPE, f"key:{caller.key_id}")
            return max(1, math.ceil(stats.reset_time - time.time()))
    return None


def _json(reply: Any) -> web.Response:
    return web.Response(body=reply_bytes(reply), content_type="application/json")


def _refusal(status: int, fault: RpcFault, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=reply_bytes(error_reply(None, fault)), content_type="application/json",
                        headers=headers)
