"""The pool of nodes as every ESP process sees it (API, workers, beat, the node manager).

- ``spec``: a node's record; ``registry``: which nodes there are (Redis) and commands to the manager;
- ``pool``: one process's Redis client and pooled JSON-RPC clients (``rpc``);
- ``snapshot``: what the monitor measured and the recycler's overrides; ``sync``: the devnet's sync status;
- ``placement``: the balancer's choice of a node for a piece of work; ``traffic``: live in-flight counts;
- ``failover``: the one client that sends a call to the chosen node and, when it does not answer, to the next;
- ``events``: the capped stream of node events.

No web, no queue, no backend: ``nodes/`` starts and stops nodes, and writes here only through the registry.
"""
