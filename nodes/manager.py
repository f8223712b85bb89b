"""The node manager: the one process that owns ESP's managed nodes.

``python -m nodes`` starts the devnet (process or docker backend) or checks the
static nodes, registers every node in Redis, keeps followers importing the
leader's blocks, promotes a follower when the leader dies, and carries out
commands other processes send it through Redis (the recycler's restarts). On
SIGINT or SIGTERM it stops every node and unregisters them.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import redis

from errors import ConfigError, EspError, NodeError, NodeUnreachable, RpcError
from nodepool.chain import chain_mismatch
from nodepool.events import record_event
from nodepool.registry import COMMANDS_KEY, REPLY_KEY, NodeRegistry
from nodepool.rpc import RpcClient
from nodepool.spec import NodeSpec
from nodes import make_backend
from nodes.devnet.devnet import Devnet
from nodes.static import StaticBackend
from settings import Settings

log = logging.getLogger(__name__)

LEADER_CHECK_INTERVAL = 0.5


def connect_redis(settings: Settings) -> redis.Redis:
    """A Redis client that has answered PING, or ConfigError saying how to fix it."""
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(
            f"Redis at {settings.redis_url} does not answer ({exc}): start one (`make redis`) or set ESP_REDIS_URL"
        ) from None
    return client


def check_static_node(spec: NodeSpec, *, timeout: float) -> int:
    """Return the chain id a static node answers, or raise ConfigError naming it."""
    client = RpcClient(spec.url, timeout=timeout, node_id=spec.id)
    try:
        return int(client.call("eth_chainId"), 16)
    except (NodeUnreachable, RpcError) as exc:
        raise ConfigError(f"ESP_NODE_URLS: {spec.url} is not a working Ethereum JSON-RPC endpoint ({exc})") from None
    finally:
        client.close()


def check_one_chain(specs: Sequence[NodeSpec], chain_id: int, *, timeout: float) -> None:
    """Refuse, before any is registered, a static node that does not serve ``chain_id`` (ESP_CHAIN_ID).

    ESP signs every transaction for ESP_CHAIN_ID: a node on another chain would refuse them, or worse
    answer reads about a different chain, so one URL given by mistake stops the start with its name.
    """
    wrong = [f"{spec.url} serves chain id {served}" for spec in specs
             if (served := check_static_node(spec, timeout=timeout)) != chain_id]
    if wrong:
        raise ConfigError(f"ESP_NODE_URLS: {'; '.join(wrong)}, not ESP_CHAIN_ID={chain_id}:"
                          " remove the URL, or set ESP_CHAIN_ID to the chain the nodes serve")


#: Called before a managed devnet starts from genesis, with Redis and the chain id: forgets what ESP kept
#: about the previous chain (``services.chainstate.reset_chain_state``, wired by ``python -m nodes``).
FreshChainHook = Callable[[redis.Redis, int], object]


class NodeManager:
    """Owns the pool's nodes for the life of the stack."""

    def __init__(self, settings: Settings, redis_client: redis.Redis, *, on_fresh_chain: FreshChainHook | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.on_fresh_chain = on_fresh_chain
        self.registry = NodeRegistry(redis_client)
        self.backend = make_backend(settings)
        self.devnet: Devnet | None = None
        self._stop = threading.Event()

    def start(self) -> list[NodeSpec]:
        """Bring the pool up and register it, then the static nodes an operator added; return the node records."""
        specs = self._start_pool()
        return specs + self.readmit_added(specs)

    def _start_pool(self) -> list[NodeSpec]:
        self.registry.clear()
        self.redis.delete(COMMANDS_KEY)
        if not self.backend.manages:
            assert isinstance(self.backend, StaticBackend)
            specs = self.backend.specs()
            check_one_chain(specs, self.settings.chain_id, timeout=self.settings.probe_timeout * 3)
            if self.settings.devnet_sync:
                # anvils run by other means (compose/devnet.yml): keep them on the first one's chain.
                self.devnet = Devnet(self.settings, self.backend, registry=self.registry, redis_client=self.redis)
                return self.devnet.attach(specs)
            for spec in specs:
                self.registry.register(spec)
            self.registry.set_pool(leader="", backend="static", chain_id=self.settings.chain_id, devnet=False)
            return specs
        if self.on_fresh_chain is not None:
            self.on_fresh_chain(self.redis, self.settings.chain_id)
        self.devnet = Devnet(self.settings, self.backend, registry=self.registry, redis_client=self.redis)
        return self.devnet.start()

    def readmit_added(self, pool: Sequence[NodeSpec]) -> list[NodeSpec]:
        """Register again each static node an operator added (``esp node add``) that is still on the pool's chain.

        Each is checked as when it was added (chain id, genesis, the block at the lower head, and for a
        devnet not ahead of its leader); one that fails, does not answer, or whose id or URL the pool now uses is forgotten,
        with a ``node-forgotten`` event saying why: a devnet started again from genesis is another history.
        """
        leader_id = self.registry.pool().get("leader")
        leader = next((s.url for s in pool if s.id == leader_id), None) if leader_id else None
        urls = [s.url for s in pool]
        ids, taken_urls = {s.id for s in pool}, {s.url.rstrip("/").lower() for s in pool}
        readmitted = []
        for spec in self.registry.added():
            if spec.id in ids or spec.url.lower() in taken_urls:
                reason: str | None = f"its id or URL is the pool's own now ({spec.id}, {spec.url})"
            else:
                try:
                    reason = chain_mismatch(spec.url, urls, chain_id=self.settings.chain_id,
                                            timeout=self.settings.probe_timeout * 3, leader=leader)
                except NodeError as exc:
                    reason = f"{spec.url} does not answer ({exc})"
            if reason is None:
                self.registry.register(spec)
                ids.add(spec.id)
                taken_urls.add(spec.url.lower())
                readmitted.append(spec)
                self._event("node-readmitted", spec.id, url=spec.url)
            else:
                self.registry.forget_added(spec.id)
                self._event("node-forgotten", spec.id, url=spec.url, reason=reason)
                log.warning("static node %s forgotten: %s", spec.id, reason)
        return readmitted

    def serve(self) -> None:
        """Run until stopped: answer commands and watch the leader."""
        next_check = 0.0
        while not self._stop.is_set():
            try:
                item = self.redis.blpop([COMMANDS_KEY], timeout=LEADER_CHECK_INTERVAL)
            except redis.RedisError as exc:
                log.error("Redis: %s", exc)
                self._stop.wait(1.0)
                continue
            if item is not None:
                self.handle(json.loads(item[1]))
            if self.devnet is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + LEADER_CHECK_INTERVAL
                try:
                    previous = self.devnet.leader_id
                    promoted = self.devnet.check_leader()
                    if promoted:
                        self._event("leader-promoted", promoted, old=previous)
                except EspError as exc:
                    log.error("leader check: %s", exc)

    def handle(self, command: dict[str, Any]) -> None:
        """Carry out one command and push the reply where the sender waits for it."""
        op, node_id = command.get("op"), str(command.get("node_id", ""))
        reply: dict[str, Any] = {"ok": True, "op": op, "node_id": node_id}
        try:
            if self.devnet is None:
                raise NodeError(f"{node_id}: static nodes are not managed by ESP", node_id=node_id)
            if op == "restart":
                spec = self.devnet.restart(node_id, timeout=float(command.get("args", {}).get("timeout", 120)))
                reply["node"] = json.loads(spec.to_json())
            elif op == "stop":
                self.devnet.stop_node(node_id)
            else:
                raise NodeError(f"unknown command {op!r}")
        except EspError as exc:
            reply = {"ok": False, "op": op, "node_id": node_id, "error": str(exc)}
        key = REPLY_KEY.format(command.get("id", ""))
        pipe = self.redis.pipeline()
        pipe.rpush(key, json.dumps(reply))
        pipe.expire(key, 300)
        pipe.execute()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Stop every node and unregister the pool."""
        if self.devnet is not None:
            self.devnet.close()
        else:
            self.backend.close()
        self.registry.clear()

    def _event(self, kind: str, node_id: str, **data: Any) -> None:
        record_event(self.redis, kind, node_id, **data)


def main(settings: Settings, *, on_fresh_chain: FreshChainHook | None = None) -> int:
    """Entry point of ``python -m nodes``: run the pool until SIGINT/SIGTERM."""
    redis_client = connect_redis(settings)
    manager = NodeManager(settings, redis_client, on_fresh_chain=on_fresh_chain)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        manager.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        specs = manager.start()
        for spec in specs:
            print(f"node {spec.id:<8} {spec.role:<10} {spec.url}", flush=True)
        print(f"nodes: {len(specs)} {settings.node_backend} node(s) registered in Redis", flush=True)
        manager.serve()
    finally:
        manager.close()
        print("nodes: stopped", flush=True)
    return 0
