"""The JSON-RPC gateway: any web3 client reaches the pool through ``POST /rpc`` (``app.rpc`` is its edge).

- ``methods``: what each method is (a read, a raw transaction, a node key's or the node's administration),
  where its block parameter is, and how its parameters are checked;
- ``heads``: the pool's head (the highest a quorum of healthy nodes has) and which nodes are at a block;
- ``cache``: what cannot change, kept in Redis, and identical requests in flight sent once;
- ``breakers``: a circuit breaker per node (pybreaker), whose open breakers keep the balancer off the node;
- ``kept``: raw transactions kept by hash before they are answered, re-broadcast until mined;
- ``protocol``: JSON-RPC 2.0 error codes and replies, one request checked;
- ``state``: the pool's state a process routes by, and its queued writes;
- ``sending``: ``eth_sendRawTransaction``, kept then broadcast by the write path's protocol;
- ``shown``: what each caller was last shown (a block, the node that took its transaction), so it reads its own writes;
- ``gateway``: one request or batch, routed, failed over within a deadline, answered;
- ``metrics``: requests, errors, latency and cache hits per method and node.

No web here: the gateway takes decoded JSON and a caller, and returns JSON-RPC reply objects.
"""
