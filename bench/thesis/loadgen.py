"""Fire a fixed list of operations at a target with C concurrent workers; record every operation.

asyncio with one ``httpx.AsyncClient`` whose connection pool holds exactly C
connections: C workers pull the next operation from the shared sequence until it
is exhausted or the wall-clock cap passes. Each operation's latency runs from
its first byte sent to its effect being available to the client (for an ESP
write: its task confirmed); an ESP write's 202-accepted latency is kept apart.
Operations still running at the cap are cancelled and counted as ``capped``;
operations never started are counted as ``not_started``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

CONNECT_TIMEOUT_S = 30.0
# A single request may legitimately take long: an ESP task wait holds for up to 60 s.
READ_TIMEOUT_S = 90.0


class OpError(Exception):
    """An operation did not succeed; ``kind`` names how (``http_500``, ``task_failed``, ``bad_answer``, ...)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(frozen=True)
class Done:
    """What a target reports of a successful operation."""

    accepted_s: float | None = None  # an ESP write: seconds to its 202 Accepted
    node: str | None = None  # the pool node that answered (a read) or ran it (a task), when the system says


class Target(Protocol):
    """A system under test: the same operation vocabulary over HTTP."""

    name: str
    base_url: str

    async def perform(self, client: httpx.AsyncClient, op: str, index: int) -> Done: ...


@dataclass(frozen=True)
class OpRecord:
    """One operation as measured: when it started (s after the run's start), how long it took and how it ended."""

    index: int
    op: str
    start_s: float
    latency_s: float
    outcome: str  # "ok" or the error kind
    accepted_s: float | None = None
    node: str | None = None


@dataclass(frozen=True)
class RunOutcome:
    """Every operation's record, the run's wall time, and whether the cap cut it short."""

    records: list[OpRecord]
    wall_s: float
    capped: bool
    not_started: int


def error_kind(exc: BaseException) -> str:
    """A short, stable name for how an operation failed."""
    if isinstance(exc, OpError):
        return exc.kind
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol"
    if isinstance(exc, ValueError):  # a body that is not the JSON the contract promises
        return "bad_answer"
    return type(exc).__name__


def make_client(base_url: str, concurrency: int) -> httpx.AsyncClient:
    """An AsyncClient whose pool holds exactly ``concurrency`` connections to the target."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S, pool=READ_TIMEOUT_S)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout)


async def fire(target: Target, ops: Sequence[str], concurrency: int, *, cap_s: float,
               on_record: Callable[[OpRecord], None] | None = None) -> RunOutcome:
    """Run ``ops`` against ``target`` with ``concurrency`` workers, stopping at ``cap_s`` seconds at the latest."""
    records: list[OpRecord] = []
    pending: Iterator[tuple[int, str]] = iter(enumerate(ops))
    started = time.perf_counter()
    last_end = started

    def keep(record: OpRecord) -> None:
        nonlocal last_end
        records.append(record)
        last_end = max(last_end, started + record.start_s + record.latency_s)
        if on_record is not None:
            on_record(record)

    async with make_client(target.base_url, concurrency) as client:
        async def worker() -> None:
            for index, op in pending:  # one shared iterator: each operation is taken by exactly one worker
                t0 = time.perf_counter()
                try:
                    done = await target.perform(client, op, index)
                except asyncio.CancelledError:
                    keep(OpRecord(index, op, t0 - started, time.perf_counter() - t0, "capped"))
                    raise
                except Exception as exc:  # every failure is a figure of the run, never a crash of it
                    keep(OpRecord(index, op, t0 - started, time.perf_counter() - t0, error_kind(exc)))
                else:
                    keep(OpRecord(index, op, t0 - started, time.perf_counter() - t0, "ok", done.accepted_s, done.node))

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        _, still = await asyncio.wait(tasks, timeout=cap_s)
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)
    not_started = sum(1 for _ in pending)
    return RunOutcome(sorted(records, key=lambda r: r.index), last_end - started, bool(still), not_started)


def run(target: Target, ops: Sequence[str], concurrency: int, *, cap_s: float,
        on_record: Callable[[OpRecord], None] | None = None) -> RunOutcome:
    """``fire`` in a fresh event loop."""
    return asyncio.run(fire(target, ops, concurrency, cap_s=cap_s, on_record=on_record))


async def with_client(base_url: str, job: Callable[[httpx.AsyncClient], Awaitable[None]], concurrency: int = 16) -> None:
    """Run ``job`` with a client of its own (setup phases, outside any measured window)."""
    async with make_client(base_url, concurrency) as client:
        await job(client)
