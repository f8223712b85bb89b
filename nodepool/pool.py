"""The pool as any ESP process sees it: Redis, the node registry and pooled RPC clients."""

from __future__ import annotations

import threading

import redis
from redis.backoff import ExponentialBackoff, ExponentialWithJitterBackoff
from redis.retry import Retry

from nodepool.registry import NodeRegistry
from nodepool.rpc import RpcClient
from nodepool.spec import NodeSpec
from settings import Settings

#: How long a worker's Redis command rides out Redis going away: redis-py retries it with a backoff
#: (0.1 s doubling to 1 s, 30 times: about 26 s) instead of its default ten quick tries (about 5 s at most).
#: A drain cut off by a Redis restart then carries on when Redis is back; failing instead would leave its
#: sender's outbox held by a lock nobody releases for a minute (services.outbox LOCK_MS). Retrying a
#: command whose reply was lost is what redis-py's default does already, only for longer. The API and
#: the gateway pass a client of their own that gives up within a second (``edge_redis``).
REDIS_RETRY = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=30)

#: The edges' Redis client (the API, the JSON-RPC gateway): while Redis is away a request is answered 503
#: within these timeouts, not after the workers' half minute of retries; one retry, soon, takes a pooled
#: connection that Redis's restart broke and opens a new one, so the first request after it succeeds.
EDGE_CONNECT_TIMEOUT = 1.0
EDGE_SOCKET_TIMEOUT = 5.0
EDGE_RETRY_BASE = 0.05
EDGE_RETRY_CAP = 0.25


def edge_redis(settings: Settings) -> redis.Redis:
    """The Redis client of a process that answers clients: it gives up within seconds (see EDGE_CONNECT_TIMEOUT)."""
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=EDGE_CONNECT_TIMEOUT,
                                socket_timeout=EDGE_SOCKET_TIMEOUT, health_check_interval=30,
                                retry=Retry(ExponentialWithJitterBackoff(base=EDGE_RETRY_BASE, cap=EDGE_RETRY_CAP), retries=1))


class Pool:
    """Long-lived clients one process (API, worker, beat) uses to reach Redis and the nodes."""

    def __init__(self, settings: Settings, redis_client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = redis_client or redis.Redis.from_url(
            settings.redis_url, socket_timeout=10, socket_connect_timeout=3, health_check_interval=30, retry=REDIS_RETRY
        )
        self.registry = NodeRegistry(self.redis)
        self._clients: dict[tuple[str, float], RpcClient] = {}
        self._lock = threading.Lock()

    def rpc(self, spec: NodeSpec, *, timeout: float | None = None) -> RpcClient:
        """A pooled JSON-RPC client for the node (one per URL and timeout, thread-safe)."""
        timeout = timeout or self.settings.rpc_timeout
        key = (spec.url, timeout)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = RpcClient(spec.url, timeout=timeout, node_id=spec.id)
            return client

    def nodes(self) -> list[NodeSpec]:
        """Every registered node, in id order."""
        return self.registry.all()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self.redis.close()
