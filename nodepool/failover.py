"""Failing over: ``first_answer`` asks nodes in turn until one answers; ``ReadClient`` does it for reads,
placed by the balancer and counted in flight.

Every caller that must reach *some* node (a read, a gas estimate, a receipt check,
the block producer) goes through ``first_answer``; only the broadcast of signed
bytes has its own protocol (``wallet.broadcast.broadcast``: it must tell "refused"
from "maybe taken").

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from balancer import TaskKind
from errors import NodeUnreachable, NoHealthyNode, RpcError
from nodepool.placement import DispatchPaused, Placement
from nodepool.pool import Pool
from nodepool.rpc import RpcClient
from nodepool.traffic import Traffic

C = TypeVar("C")
T = TypeVar("T")


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
                       kind: TaskKind | str = TaskKind.READ, exclude: Iterable[str] = ()) -> tuple[Any, str]:
        """The result of ``method`` and the id of the node that answered it (never one of ``exclude``).

        Raises RpcError (not retried) when the node answers with an error object, and
        NoHealthyNode when no node may take the read or every node tried failed.
        """
        tried: set[str] = set(exclude)

        def candidates() -> Iterator[str]:
            # Each attempt excludes the nodes that failed, so the loop ends when the pool runs out.
            for _ in range(len(self.placement.view().specs) + 1):
                try:
                    node_id = self._choose(kind, frozenset(tried))
                except NoHealthyNode:
                    if tried:
                        return  # every node the policy would give has failed: first_answer says which
                    raise
                yield node_id
                tried.add(node_id)  # resumed: it did not answer

        def ask(node_id: str) -> Any:
            client = self.pool.rpc(self.placement.cached_spec(node_id), timeout=self.timeout)
            token = self.traffic.begin(node_id)
            ok = False
            try:
                result = client.call(method, params)
                ok = True
                return result
            except RpcError:
                ok = True  # the node answered: healthy, and the answer is the caller's to handle
                raise
            finally:
                self.traffic.end(node_id, token, ok=ok)

        node_id, result = first_answer(candidates(), ask, what=method)
        return result, node_id

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


class NoNodeAnswered(NoHealthyNode):
    """Raised when every node tried failed to answer (each failure is in ``failures``)."""

    def __init__(self, what: str, failures: Sequence[str]) -> None:
        super().__init__(f"no node answered {what}: {'; '.join(failures) or 'no node to ask'}")
        self.failures = list(failures)


def first_answer(candidates: Iterable[C], ask: Callable[[C], T], *, what: str,
                 accept: Callable[[T], bool] = lambda _: True,
                 retry_on: tuple[type[Exception], ...] = (NodeUnreachable,)) -> tuple[C, T]:
    """Ask each candidate in turn until one answers (and its answer is accepted); return it and the answer.

    The one "try the next node" loop of ESP: a candidate that raises one of
    ``retry_on`` (by default: it did not answer) or whose answer ``accept`` refuses
    is passed over; anything else propagates. NoNodeAnswered when none answered.
    """
    failures: list[str] = []
    for candidate in candidates:
        try:
            answer = ask(candidate)
        except retry_on as exc:
            failures.append(f"{_name(candidate)}: {exc}")
            continue
        if accept(answer):
            return candidate, answer
        failures.append(f"{_name(candidate)}: no such answer")
    raise NoNodeAnswered(what, failures)


def _name(candidate: object) -> str:
    if isinstance(candidate, RpcClient):
        return candidate.node_id or candidate.url
    return str(candidate)
