"""The gateway's metrics (prometheus_client): requests, errors and latency per method and node, cache hits.

Declared once here; ``/metrics`` exposes them with the rest (summed over the API's processes).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("esp_rpc_requests", "JSON-RPC requests answered by /rpc, by method and outcome",
                   ["method", "outcome"])
NODE_CALLS = Counter("esp_rpc_node_calls", "calls the gateway sent to a node, by method, node and outcome",
                     ["method", "node", "outcome"])
LATENCY = Histogram("esp_rpc_latency_seconds", "time to answer one JSON-RPC request, by method", ["method"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
NODE_LATENCY = Histogram("esp_rpc_node_latency_seconds", "time a node took to answer the gateway, by node",
                         ["node"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0))
CACHE = Counter("esp_rpc_cache", "cache lookups of /rpc by method and result (hit, miss, shared in flight)",
                ["method", "result"])
