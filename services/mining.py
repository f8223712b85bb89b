"""Mining: whether and how blocks are produced, and starting or stopping it (admin).

Blocks are produced by the devnet leader (the registry's pool facts name it; its
followers import its blocks), or, with static nodes (no devnet), by every node.
Each node kind is driven with its own methods:

- anvil: ``evm_setAutomine`` / ``evm_setIntervalMining`` (read back with
  ``anvil_getAutomine`` / ``anvil_getIntervalMining``); the interval RPC takes whole
  seconds, and a leader started with a sub-second ESP_BLOCK_TIME reports 0;
- geth: ``miner_start`` / ``miner_stop`` (``eth_mining`` to read), block time ignored.

Note: when the devnet hands leadership to another node (a restart or a crash), the
new leader mines as ESP_BLOCK_TIME says, whatever was set here before.
"""

from __future__ import annotations

from typing import Any

from errors import NodeError, NoHealthyNode, RpcError, ValidationError
from nodepool.failover import ReadClient
from nodepool.pool import Pool
from nodepool.rpc import RpcClient
from nodepool.spec import NodeSpec

ACTIONS = ("start", "stop")
MAX_BLOCK_TIME = 3600


def producers(pool: Pool) -> list[NodeSpec]:
    """The nodes that produce blocks: the devnet leader, or every node of a static pool."""
    p = pool
    facts = p.registry.pool()
    specs = p.nodes()
    leader = facts.get("leader")
    if facts.get("devnet") and leader:
        chosen = [s for s in specs if s.id == leader]
        if chosen:
            return chosen
    if not specs:
        raise NoHealthyNode("no node is registered")
    return specs


def node_kind(client: RpcClient) -> str:
    """``anvil``, ``geth`` or the client's own name, from web3_clientVersion."""
    version = str(client.call("web3_clientVersion")).lower()
    if version.startswith("anvil"):
        return "anvil"
    if version.startswith("geth"):
        return "geth"
    return version.split("/", 1)[0] or "unknown"


def mining_state(client: RpcClient, kind: str) -> dict[str, Any]:
    """One producer's mining mode (automine, interval, on, off) and block time."""
    if kind == "anvil":
        automine = bool(client.call("anvil_getAutomine"))
        interval = client.call("anvil_getIntervalMining")
        if automine:
            return {"mining": True, "mode": "automine", "block_time": 0}
        if interval is not None:
            return {"mining": True, "mode": "interval", "block_time": int(interval)}
        return {"mining": False, "mode": "off", "block_time": None}
    try:
        mining = bool(client.call("eth_mining"))
    except RpcError:
        return {"mining": None, "mode": "unknown", "block_time": None}
    return {"mining": mining, "mode": "on" if mining else "off", "block_time": None}


def apply(client: RpcClient, kind: str, action: str, block_time: int) -> None:
    """Start or stop block production on one producer with its kind's own methods."""
    if kind == "anvil":
        if action == "stop":
            client.call("evm_setAutomine", [False])
            client.call("evm_setIntervalMining", [0])
        elif block_time == 0:
            client.call("evm_setIntervalMining", [0])
            client.call("evm_setAutomine", [True])
        else:
            client.call("evm_setAutomine", [False])
            client.call("evm_setIntervalMining", [block_time])
    elif kind == "geth":
        client.call("miner_start" if action == "start" else "miner_stop", [])
    else:
        raise ValidationError("action", f"mining on {kind} nodes is not supported", status=501)


def describe(pool: Pool, reader: ReadClient) -> dict[str, Any]:
    """The mining state of every producer and the chain's head."""
    states = []
    for spec in producers(pool):
        client = pool.rpc(spec)
        try:
            kind = node_kind(client)
            states.append({"node": spec.id, "client": kind, **mining_state(client, kind)})
        except NodeError as exc:
            states.append({"node": spec.id, "client": None, "mining": None, "mode": "unreachable", "block_time": None,
                           "error": str(exc)})
    head, node = reader.call_with_node("eth_blockNumber", [])
    modes = {s["mode"] for s in states}
    first = states[0] if states else {}
    return {
        "mining": any(s["mining"] for s in states),
        "mode": modes.pop() if len(modes) == 1 else "mixed",
        "block_time": first.get("block_time"),
        "block_number": int(head, 16),
        "producers": states,
        "node": node,
    }


def set_mining(pool: Pool, reader: ReadClient, action: str, block_time: int) -> dict[str, Any]:
    """Start (``block_time`` seconds, 0 = automine) or stop block production on every producer; the new state."""
    if action not in ACTIONS:
        raise ValidationError("action", "must be start or stop")
    for spec in producers(pool):
        client = pool.rpc(spec)
        apply(client, node_kind(client), action, block_time)
    return {"action": action, **describe(pool, reader)}
