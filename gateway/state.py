"""What a gateway process shares between its requests: the pool's state it routes by, and its queued writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from nodepool.placement import PlacementView


class Deferred:
    """Redis commands recorded now (a pipeline's methods) and sent later in one round trip: the gateway's writes queue."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.commands.append((name, args, kwargs))

    def take(self) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        """The commands recorded so far, forgotten here."""
        commands, self.commands = self.commands, []
        return commands


async def send_commands(client: aioredis.Redis, commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
    """Recorded commands sent in one pipelined round trip (none: nothing sent)."""
    if not commands:
        return
    pipe = client.pipeline(transaction=False)
    for name, args, kwargs in commands:
        getattr(pipe, name)(*args, **kwargs)
    await pipe.execute()


@dataclass(frozen=True)
class Shared:
    """The pool's state as this process last read it (``Gateway.run``, every SHARED_EVERY seconds): what routing needs."""

    view: PlacementView
    sync: Mapping[str, Mapping[str, Any]]
    blocked: set[str]
    inflight: dict[str, int]
    heads: dict[str, int]
    pool_head: int | None
    read_at: float
