"""Reads through the balancer: the node the policy picks, failing over when a node does not answer.

Reads never go through Celery: the API process places them itself with the same
Placement (and policy) the router uses for writes, so reads prefer zone II as
the thesis asks. A read is idempotent, so when its node does not answer
(connection refused, reset, timed out, HTTP 5xx) it is sent again to another
node — no read is lost when a node dies. A JSON-RPC error *answer* (a revert,
an unknown method, bad params) is the node doing its job: it is not retried,
counts as a success in the node's health counters, and propagates to the caller.

While the pool's health index LBH is below 0 the thesis pauses dispatch until it
recovers; a read then *waits* (bounded by ``pause_wait``, default two monitor
intervals) rather than fails. Under the esp policy the index is evaluated on live
in-flight counts, so the pause lifts as soon as work in flight finishes: it acts
as the pool's admission limit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from balancer import TaskKind
from errors import NodeUnreachable, NoHealthyNode, RpcError
from nodepool.placement import DispatchPaused, Placement
from nodepool.pool import Pool
from nodepool.traffic import Traffic


class ReadClient:
    """Sends JSON-RPC reads to the pool, one node per attempt, each tracked in flight (thread-safe)."""

    def __init__(self, pool: Pool, placement: Placement | None = None, *, timeout: float | None = None,
                 pause_wait: float | None = None) -> None:
        self.pool = pool
        self.placement = placement or Placement(pool)
        self.traffic: Traffic = self.placement.traffic
        self.timeout = timeout or pool.settings.rpc_timeout
        self.pause_wait = pause_wait if pause_wait is not None else 2 * pool.settings.monitor_interval

    def call(self, method: str, params: Sequence[Any] = (), *, kind: TaskKind | str = TaskKind.READ) -> Any:
        """The result of ``method`` from some node; RpcError when a node answers with an error."""
        return self.call_with_node(method, params, kind=kind)[0]

    def call_with_node(self, method: str, params: Sequence[Any] = (), *,
                       kind: TaskKind | str = TaskKind.READ) -> tuple[Any, str]:
        """The result of ``method`` and the id of the node that answered it.

        Raises RpcError (not retried) when the node answers with an error object, and
        NoHealthyNode when no node may take the read or every node tried failed.
        """
        failures: list[str] = []
        tried: set[str] = set()
        # Each attempt excludes the nodes that failed, so the loop ends when the pool runs out.
        for _ in range(len(self.placement.view().specs) + 1):
            try:
                node_id = self._choose(kind, frozenset(tried))
            except NoHealthyNode:
                if failures:
                    raise NoHealthyNode(f"no node answered {method}: {'; '.join(failures)}") from None
                raise
            client = self.pool.rpc(self.placement.cached_spec(node_id), timeout=self.timeout)
            token = self.traffic.begin(node_id)
            ok = False
            try:
                result = client.call(method, params)
                ok = True
                return result, node_id
            except RpcError:
                ok = True  # the node answered: healthy, and the answer is the caller's to handle
                raise
            except NodeUnreachable as exc:
                failures.append(f"{node_id}: {exc}")
                tried.add(node_id)
            finally:
                self.traffic.end(node_id, token, ok=ok)
        raise NoHealthyNode(f"no node answered {method}: {'; '.join(failures)}")

    def _choose(self, kind: TaskKind | str, exclude: frozenset[str]) -> str:
        """The policy's node; while dispatch is paused, wait (backing off) for at most ``pause_wait`` seconds."""
        deadline = time.monotonic() + self.pause_wait
        delay = 0.002
        while True:
            try:
                return self.placement.choose(kind, exclude=exclude).node_id
            except DispatchPaused:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                time.sleep(min(delay, remaining))  # work in flight finishing is what lifts the pause
                delay = min(delay * 2, 0.05)
