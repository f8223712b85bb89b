"""Asking every registered node, at once, which chain it serves and where its head is.

Readiness (``/readyz``) and the thesis's ``/conn/connect`` show the answers; the
monitor has its own timed probe (``services.monitor.probe_node``), built for sampling.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from errors import NodeError
from nodepool.pool import Pool
from nodepool.spec import NodeSpec

MAX_PROBE_THREADS = 8


def probe(pool: Pool, spec: NodeSpec, timeout: float) -> dict[str, Any]:
    """One node's chain id and head (one JSON-RPC batch), or why it did not answer; never raises for the node."""
    started = time.perf_counter()
    try:
        chain_id, head = pool.rpc(spec, timeout=timeout).batch([("eth_chainId", []), ("eth_blockNumber", [])])
        return {"id": spec.id, "url": spec.url, "ok": True, "chain_id": int(chain_id, 16), "block_number": int(head, 16),
                "latency_ms": round((time.perf_counter() - started) * 1000, 3)}
    except (NodeError, ValueError, TypeError) as exc:
        return {"id": spec.id, "url": spec.url, "ok": False, "error": str(exc)}


def probe_all(pool: Pool, specs: list[NodeSpec], timeout: float) -> list[dict[str, Any]]:
    """Every node's answer, asked concurrently (so the slowest node bounds the wait, not their sum), in ``specs``' order."""
    if not specs:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PROBE_THREADS, len(specs))) as ex:
        return list(ex.map(lambda spec: probe(pool, spec, timeout), specs))
