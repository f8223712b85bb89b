"""JSON-RPC to a node from asyncio (the gateway's server): one aiohttp session per process, pooled connections.

The same contract as ``nodepool.rpc.RpcClient``: the result, ``RpcError`` when the node answers
with an error object (its code, message and data as the node gave them), ``NodeUnreachable`` when
it does not answer (refused, reset, timed out, HTTP 5xx without a body, not JSON-RPC). No retries:
the caller decides where to try next.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import aiohttp

from errors import NodeUnreachable, RpcError

_ids = itertools.count(1)


class AsyncRpcClient:
    """JSON-RPC over HTTP to one node, sharing the process's aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, node_id: str | None = None) -> None:
        self.session = session
        self.url = url
        self.node_id = node_id

    async def call(self, method: str, params: Sequence[Any] = (), *, timeout: float = 5.0) -> Any:
        """``method``'s result; RpcError or NodeUnreachable."""
        body = json.dumps({"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": list(params)})
        try:
            async with self.session.post(self.url, data=body, headers={"Content-Type": "application/json"},
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                data = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)[:200]
            raise NodeUnreachable(f"{self.url} did not answer: {reason}", node_id=self.node_id) from None
        if status >= 500 and not data:
            raise NodeUnreachable(f"{self.url} answered HTTP {status}", node_id=self.node_id)
        try:
            reply = json.loads(data)
        except ValueError:
            raise NodeUnreachable(f"{self.url} is not a JSON-RPC endpoint (HTTP {status})", node_id=self.node_id) from None
        if not isinstance(reply, dict):
            raise NodeUnreachable(f"{self.url} answered {method} with a non JSON-RPC body", node_id=self.node_id)
        error = reply.get("error")
        if error is not None:
            raise RpcError(int(error.get("code", -32603)), str(error.get("message", "")), error.get("data"),
                           node_id=self.node_id)
        if "result" not in reply:
            raise NodeUnreachable(f"{self.url} answered without a result", node_id=self.node_id)
        return reply["result"]
