"""The node registry in Redis: every ESP process (API, workers, beat) sees the same pool."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from errors import NodeError
from nodepool.codec import as_text
from nodepool.spec import NodeSpec

NODES_KEY = "esp:nodes"
POOL_KEY = "esp:pool"
COMMANDS_KEY = "esp:nodes:commands"
REPLY_KEY = "esp:nodes:reply:{}"
#: Static nodes an operator added at run time (id -> JSON), kept across restarts of the node manager until removed.
ADDED_KEY = "esp:nodes:added"


class NodeRegistry:
    """Node records in the Redis hash ``esp:nodes`` (id -> JSON) and pool facts in ``esp:pool``."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def register(self, spec: NodeSpec) -> None:
        self.redis.hset(NODES_KEY, spec.id, spec.to_json())

    def register_new(self, spec: NodeSpec) -> bool:
        """Register ``spec`` unless a node of its id is registered already (False then): one Redis HSETNX."""
        return bool(self.redis.hsetnx(NODES_KEY, spec.id, spec.to_json()))

    def remove(self, node_id: str) -> None:
        self.redis.hdel(NODES_KEY, node_id)

    def get(self, node_id: str) -> NodeSpec | None:
        raw = self.redis.hget(NODES_KEY, node_id)
        return NodeSpec.from_json(raw) if raw else None

    def all(self) -> list[NodeSpec]:
        raw = self.redis.hgetall(NODES_KEY)
        specs = [NodeSpec.from_json(v) for v in raw.values()]
        return sorted(specs, key=lambda s: _natural(s.id))

    def clear(self) -> None:
        """Forget the registered pool (the nodes an operator added stay remembered: ``added``)."""
        self.redis.delete(NODES_KEY, POOL_KEY)

    def remember_added(self, spec: NodeSpec) -> None:
        """Keep ``spec`` among the nodes an operator added, to register again when the node manager restarts."""
        self.redis.hset(ADDED_KEY, spec.id, spec.to_json())

    def forget_added(self, node_id: str) -> None:
        self.redis.hdel(ADDED_KEY, node_id)

    def added(self) -> list[NodeSpec]:
        """The nodes an operator added and has not removed, in id order."""
        specs = [NodeSpec.from_json(v) for v in self.redis.hgetall(ADDED_KEY).values()]
        return sorted(specs, key=lambda s: _natural(s.id))

    def set_pool(self, **facts: Any) -> None:
        self.redis.hset(POOL_KEY, mapping={k: json.dumps(v) for k, v in facts.items()})

    def pool(self) -> dict[str, Any]:
        raw = self.redis.hgetall(POOL_KEY)
        return {as_text(k): json.loads(v) for k, v in raw.items()}

    def leader(self) -> NodeSpec | None:
        leader_id = self.pool().get("leader")
        return self.get(leader_id) if leader_id else None


class NodeControl:
    """Asks the node manager (``python -m nodes``) to act on a node, and waits for its answer.

    Managed nodes are children of the manager process (so Ctrl-C and a crash of
    the manager take them down); other processes such as the recycler send it
    commands through a Redis list instead of touching the processes themselves.
    ``request``/``restart`` block until the reply; ``send`` and ``poll`` split that
    in two for callers that must not block (the recycler, one step per beat).
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def send(self, op: str, node_id: str, **args: Any) -> str:
        """Queue ``op`` for ``node_id`` without waiting; returns the command id to ``poll`` with."""
        command_id = uuid.uuid4().hex
        command = {"id": command_id, "op": op, "node_id": node_id, "args": args, "sent_at": time.time()}
        self.redis.rpush(COMMANDS_KEY, json.dumps(command))
        return command_id

    def poll(self, command_id: str) -> dict[str, Any] | None:
        """The manager's reply to a sent command (``ok`` true or false, ``error``), or None while it works on it."""
        raw = self.redis.lpop(REPLY_KEY.format(command_id))
        return json.loads(raw) if raw else None  # type: ignore[arg-type]

    def request(self, op: str, node_id: str, *, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        """Send ``op`` for ``node_id`` and return the manager's reply; raise NodeError on failure."""
        command_id = self.send(op, node_id, **args)
        reply = self.redis.blpop([REPLY_KEY.format(command_id)], timeout=timeout)
        if reply is None:
            raise NodeError(f"{node_id}: the node manager did not answer {op!r} within {timeout:.0f} s (is `python -m nodes` running?)", node_id=node_id)
        result: dict[str, Any] = json.loads(reply[1])
        if not result.get("ok"):
            raise NodeError(f"{node_id}: {op} failed: {result.get('error')}", node_id=node_id)
        return result

    def restart(self, node_id: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Restart ``node_id`` through the manager and wait until it answers and has caught up."""
        return self.request("restart", node_id, timeout=timeout)


def _natural(node_id: str) -> tuple[str, int]:
    prefix, _, number = node_id.rpartition("-")
    return (prefix, int(number)) if number.isdigit() else (node_id, 0)
