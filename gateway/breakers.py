"""A circuit breaker per node (purgatory): a node that keeps failing is left alone until a probe succeeds.

Each gateway process holds a breaker per node (purgatory's asyncio breakers, in memory). ``fail_max``
calls in a row that get no answer (refused, reset, timed out, HTTP 5xx: ``NodeUnreachable``) open
it; a JSON-RPC error answer is the node doing its job and counts as a success. While open, the
gateway excludes the node from the balancer's choice (``blocked``); ``reset_timeout`` seconds later
the breaker lets a call through (half-open): its success closes the breaker, its failure opens it
again.

Opening is shared: the breaker's process writes the node and the time its probe is due to Redis
(queued here, sent with the gateway's next round trip: ``flush_on``), so the other processes keep
off the node too until then; closing removes the mark. A mark whose process died lapses at its time.

Redis, owned here::

    esp:rpc:breakers   hash   node id -> wall-clock time until which the node is left alone
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.messages.events import ContextChanged
from purgatory.domain.model import OpenedState

from errors import NodeUnreachable, RpcError

log = logging.getLogger(__name__)

BREAKERS_KEY = "esp:rpc:breakers"
OPENED, CLOSED = "opened", "closed"

T = TypeVar("T")


class Breakers:
    """This process's breakers, one per node, created on first use."""

    def __init__(self, *, fail_max: int, reset_timeout: float, clock: Callable[[], float] = time.time) -> None:
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._factory = AsyncCircuitBreakerFactory(default_threshold=fail_max, default_ttl=reset_timeout,
                                                   exclude=[RpcError])
        self._factory.add_listener(self._changed)
        self._opened_at: dict[str, float] = {}
        self._states: dict[str, str] = {}
        self._pending: dict[str, float | None] = {}  # node -> mark to write (None: remove)
        self._lock = threading.Lock()

    async def call(self, node_id: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()`` through the node's breaker; NodeUnreachable while the breaker is open."""
        try:
            breaker = await self._factory.get_breaker(node_id)
            async with breaker:
                return await call()
        except OpenedState:
            raise NodeUnreachable(f"{node_id}: circuit breaker open", node_id=node_id) from None

    def blocked(self, shared: Mapping[Any, Any] | None = None) -> set[str]:
        """Nodes to leave alone now: this process's open breakers not yet due a probe, and the shared marks."""
        now = self._clock()
        with self._lock:
            out = {node_id for node_id, at in self._opened_at.items() if now < at + self.reset_timeout}
            mine = dict(self._states)
        for node_id, until in (shared or {}).items():
            name = node_id.decode() if isinstance(node_id, bytes) else str(node_id)
            if mine.get(name) == CLOSED and name not in self._pending:
                continue  # this process's own probe closed it; its mark is being removed
            try:
                if now < float(until):
                    out.add(name)
            except (TypeError, ValueError):
                continue
        return out

    def states(self) -> dict[str, str]:
        """Each node's breaker state in this process, as purgatory names it (closed, opened, half-opened)."""
        with self._lock:
            return dict(self._states)

    def flush_on(self, pipe: Any) -> None:
        """Queue the marks changed since the last flush on ``pipe`` (the caller executes it)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for node_id, until in pending.items():
            if until is None:
                pipe.hdel(BREAKERS_KEY, node_id)
            else:
                pipe.hset(BREAKERS_KEY, node_id, str(until))

    def _changed(self, name: str, event_type: str, event: Any) -> None:
        """purgatory's listener: record the new state and queue its mark."""
        if event_type != "state_changed" or not isinstance(event, ContextChanged):
            return
        log.warning("circuit breaker of %s: %s", name, event.state)
        with self._lock:
            self._states[name] = event.state
            if event.state == OPENED:
                opened = event.opened_at or self._clock()
                self._opened_at[name] = opened
                self._pending[name] = opened + self.reset_timeout
            else:
                self._opened_at.pop(name, None)
                if event.state == CLOSED:
                    self._pending[name] = None
