"""A circuit breaker per node (pybreaker): a node that keeps failing is left alone until a probe succeeds.

Each API process holds a ``pybreaker.CircuitBreaker`` per node. ``fail_max`` calls in a row that get
no answer (refused, reset, timed out, HTTP 5xx: ``NodeUnreachable``) open it; a JSON-RPC error answer
is the node doing its job and counts as a success. While open, the gateway excludes the node from
the balancer's choice (``blocked``); ``reset_timeout`` seconds later the breaker lets one call
through (half-open): its success closes the breaker, its failure opens it again.

Opening is shared: the breaker writes the node and the time its probe is due to Redis, so the other
processes exclude the node too until then (and the monitor's next sample sees what they see); closing
removes it. A mark whose process died lapses at its time.

Redis, owned here::

    esp:rpc:breakers   hash   node id -> wall-clock time until which the node is left alone
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pybreaker
import redis

from errors import NodeUnreachable, RpcError

log = logging.getLogger(__name__)

BREAKERS_KEY = "esp:rpc:breakers"

T = TypeVar("T")


class _Publisher(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: Breakers) -> None:
        self.owner = owner

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        self.owner.changed(str(cb.name), new_state.name if new_state is not None else "closed")


class Breakers:
    """This process's breakers, one per node, created on first use (thread-safe)."""

    def __init__(self, client: redis.Redis, *, fail_max: int, reset_timeout: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._opened_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._listener = _Publisher(self)

    def breaker(self, node_id: str) -> pybreaker.CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(node_id)
            if breaker is None:
                breaker = self._breakers[node_id] = pybreaker.CircuitBreaker(
                    fail_max=self.fail_max, reset_timeout=self.reset_timeout, exclude=[RpcError],
                    listeners=[self._listener], name=node_id, throw_new_error_on_trip=False)
            return breaker

    def call(self, node_id: str, call: Callable[[], T]) -> T:
        """``call()`` through the node's breaker; NodeUnreachable while the breaker is open."""
        try:
            return self.breaker(node_id).call(call)
        except pybreaker.CircuitBreakerError:
            raise NodeUnreachable(f"{node_id}: circuit breaker open", node_id=node_id) from None

    def blocked(self, shared: Mapping[Any, Any] | None = None) -> set[str]:
        """Nodes to leave alone now: this process's open breakers not yet due a probe, and the shared marks."""
        now = self._clock()
        with self._lock:
            out = {node_id for node_id, at in self._opened_at.items() if now < at + self.reset_timeout}
        for node_id, until in (shared or {}).items():
            name = node_id.decode() if isinstance(node_id, bytes) else str(node_id)
            if name in self._breakers and self._breakers[name].current_state == pybreaker.STATE_HALF_OPEN:
                continue
            try:
                if now < float(until):
                    out.add(name)
            except (TypeError, ValueError):
                continue
        return out

    def states(self) -> dict[str, str]:
        """Each known node's breaker state in this process: closed, open or half-open."""
        with self._lock:
            return {node_id: str(b.current_state) for node_id, b in self._breakers.items()}

    def changed(self, node_id: str, state: str) -> None:
        """pybreaker's listener: record and share the new state."""
        now = self._clock()
        log.warning("circuit breaker of %s: %s", node_id, state)
        try:
            if state == pybreaker.STATE_OPEN:
                with self._lock:
                    self._opened_at[node_id] = now
                self.redis.hset(BREAKERS_KEY, node_id, str(now + self.reset_timeout))
            elif state == pybreaker.STATE_CLOSED:
                with self._lock:
                    self._opened_at.pop(node_id, None)
                self.redis.hdel(BREAKERS_KEY, node_id)
            else:  # half-open: this process probes; the others keep away until the mark lapses or is removed
                with self._lock:
                    self._opened_at.pop(node_id, None)
        except redis.RedisError as exc:
            log.warning("could not share the breaker state of %s: %s", node_id, exc)
