"""What the gateway keeps of answers, in Redis, and identical requests in flight sent to a node once.

Kept (``ttl``):

- the chain's id and network version: for ``long_ttl`` (a devnet restarted from genesis clears the
  cache with the rest of the chain's state: ``services.chainstate``);
- ``eth_blockNumber`` and the fee suggestions: for ``head_ttl`` seconds at most;
- blocks, transactions and receipts by hash, and anything asked at a block number (a block, the
  state at that block, the logs of a numbered range), once that block is deeper than ``reorg_depth``
  under the pool's head: a reorganisation cannot change it any more.

Never kept: errors, ``latest``/``pending`` state, a null answer, or anything about a block newer
than the reorg depth (an empty answer about a recent block may be a node that has not seen it).

Redis, owned here::

    esp:rpc:cache:<sha256 of method and params>   string   the JSON result
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.methods import BlockNeed, CacheRule, Method

CACHE_PREFIX = "esp:rpc:cache:"
CACHE_KEY = CACHE_PREFIX + "{}"

T = TypeVar("T")


@dataclass(frozen=True)
class CachePolicy:
    enabled: bool
    reorg_depth: int
    head_ttl: float
    long_ttl: int

    def ttl(self, method: Method, need: BlockNeed, result: Any, pool_head: int | None) -> float | None:
        """Seconds to keep ``result`` of ``method``; None when it must not be kept."""
        if not self.enabled or result is None:
            return None
        rule = method.cache
        if rule is CacheRule.FOREVER:
            return self.long_ttl
        if rule is CacheRule.HEAD:
            return self.head_ttl if self.head_ttl > 0 else None
        if pool_head is None:
            return None
        deepest = pool_head - self.reorg_depth
        if rule is CacheRule.BY_HASH:
            number = result.get("blockNumber") if isinstance(result, dict) else None
            if isinstance(number, str) and number.startswith("0x") and int(number, 16) <= deepest:
                return self.long_ttl
            return None
        if rule in (CacheRule.BY_BLOCK, CacheRule.LOGS):
            if need.deep_below is not None and need.deep_below <= deepest:
                return self.long_ttl
        return None


def cache_key(method: str, params: Sequence[Any]) -> str:
    """Where the answer to ``method(params)`` is kept."""
    body = json.dumps([method, params], sort_keys=True, separators=(",", ":"))
    return CACHE_KEY.format(hashlib.sha256(body.encode()).hexdigest())


def may_be_cached(method: Method) -> bool:
    return method.cache is not CacheRule.NEVER


class InFlight:
    """Identical calls at the same moment in this process share one call (the first caller makes it; asyncio)."""

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Future[Any]] = {}

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``await call()``'s result, and whether it was shared from a call already in flight."""
        future = self._calls.get(key)
        if future is not None:
            return await asyncio.shield(future), True
        future = self._calls[key] = asyncio.get_running_loop().create_future()
        try:
            result = await call()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            future.set_result(result)
            return result, False
        finally:
            del self._calls[key]
