"""What a batch asks a node before it signs: the sender's balance, the fees, each call's gas; who can pay.

One JSON-RPC batch per batch of transactions (``services.batch``): the sender's
pending balance, the latest block (its base fee), the priority fee, the gas price
(a chain without EIP-1559), and one eth_estimateGas per distinct call that needs
it (two identical transfers of a token are estimated once).

The funds check exists because a node takes a transaction whose cost the latest
balance covers even when the pending transactions before it spend that balance,
and then drops it unmined, with every later nonce of the sender behind it (seen
on anvil 1.7.1). So each transaction's most possible cost (value + gas x max fee)
is added, in queue order, to those before it against the PENDING balance, and one
that does not fit is refused before it takes a nonce.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from errors import RpcError
from nodepool.failover import first_answer
from nodepool.rpc import RpcClient, to_int
from services.sending import TaskFailed, TxRequest, estimate_call, estimate_failure, gas_limit
from wallet.signing import DEFAULT_PRIORITY_FEE


@dataclass(frozen=True)
class Preflight:
    """What the node said: the balance, the fees to sign with, and per request its gas or why it cannot be sent."""

    balance: int
    fees: dict[str, int]
    gas: list[int | TaskFailed]


def preflight(address: str, requests: Sequence[TxRequest], clients: Sequence[RpcClient], *, block_gas_limit: int,
              timeout: float) -> Preflight:
    """Ask the first node that answers, in one batch; NoNodeAnswered when none does."""
    calls: list[tuple[str, list[Any]]] = [("eth_getBalance", [address, "pending"]), ("eth_getBlockByNumber", ["latest", False]),
                                          ("eth_maxPriorityFeePerGas", []), ("eth_gasPrice", [])]
    distinct: dict[str, int] = {}
    for request in requests:
        if request.gas is None:
            distinct.setdefault(json.dumps(estimate_call(address, request), sort_keys=True), len(distinct))
    calls += [("eth_estimateGas", [json.loads(call)]) for call in distinct]
    _, replies = first_answer(clients, lambda c: c.batch_raw(calls, timeout=timeout), what="the batch's preflight",
                              accept=_has_balance_and_block)
    estimates = replies[4:]
    gas: list[int | TaskFailed] = []
    for request in requests:
        if request.gas is not None:
            gas.append(request.gas)
            continue
        reply = estimates[distinct[json.dumps(estimate_call(address, request), sort_keys=True)]]
        if reply.get("error") is not None:
            err = reply["error"]
            gas.append(estimate_failure(address, RpcError(int(err.get("code", -32603)), str(err.get("message", "")), err.get("data"))))
        else:
            gas.append(gas_limit(to_int(reply["result"]), block_gas_limit))
    return Preflight(to_int(replies[0]["result"]), fees(*replies[1:4]), gas)


def affordable(costs: Sequence[int], balance: int) -> list[bool]:
    """Which of ``costs``, paid in order, ``balance`` covers: one that does not fit is skipped, not paid."""
    out = []
    for cost in costs:
        fits = cost <= balance
        if fits:
            balance -= cost
        out.append(fits)
    return out


def max_cost(fields: Mapping[str, Any]) -> int:
    """The most a transaction can take from its sender: value + gas x its highest price."""
    price = fields.get("maxFeePerGas", fields.get("gasPrice", 0))
    return int(fields.get("value", 0)) + int(fields["gas"]) * int(price)


def fees(block: dict[str, Any], tip: dict[str, Any], price: dict[str, Any]) -> dict[str, int]:
    """Fees as ``wallet.signing.suggest_fees`` makes them: max fee = 2 x base fee + tip; a legacy chain's gas price."""
    priority = to_int(tip["result"]) if tip.get("result") is not None else DEFAULT_PRIORITY_FEE
    base = block["result"].get("baseFeePerGas")
    if base is None:
        return {"gasPrice": to_int(price.get("result")) or priority}
    return {"maxFeePerGas": 2 * to_int(base) + priority, "maxPriorityFeePerGas": priority}


def _has_balance_and_block(replies: list[dict[str, Any]]) -> bool:
    """A preflight answer to use: the balance and the latest block (else the next node is asked)."""
    return replies[0].get("error") is None and replies[0].get("result") is not None and isinstance(replies[1].get("result"), dict)
