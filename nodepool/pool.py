"""The pool as any ESP process sees it: Redis, the node registry and pooled RPC clients."""

from __future__ import annotations

import threading

import redis

from nodepool.registry import NodeRegistry
from nodepool.rpc import RpcClient
from nodepool.spec import NodeSpec
from settings import Settings


class Pool:
    """Long-lived clients one process (API, worker, beat) uses to reach Redis and the nodes."""

    def __init__(self, settings: Settings, redis_client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = redis_client or redis.Redis.from_url(
            settings.redis_url, socket_timeout=10, socket_connect_timeout=3, health_check_interval=30
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
