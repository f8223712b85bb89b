"""Small real tasks about the pool itself."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from errors import NodeError
from tasks.context import services


@shared_task(name="tasks.system.node_head", queue="esp.control")
def node_head(node_id: str) -> dict[str, Any]:
    """Read a node's chain id and head block through the worker (a broker round trip)."""
    svc = services()
    spec = svc.registry.get(node_id)
    if spec is None:
        raise NodeError(f"no node {node_id!r} is registered", node_id=node_id)
    client = svc.rpc(spec)
    chain_id, head = client.batch([("eth_chainId", []), ("eth_blockNumber", [])])
    return {"node": node_id, "chain_id": int(chain_id, 16), "head": int(head, 16)}
