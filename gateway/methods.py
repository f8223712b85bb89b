"""What each JSON-RPC method is to the gateway, and the checks of its parameters.

A method is one of:

- a **read** (``READ``): sent to one node chosen by the balancer's read preference, at a node
  whose head is high enough for the block it names (``block_need``);
- ``eth_sendRawTransaction`` (``SEND_RAW``): kept, then broadcast (``gateway.kept``);
- a method that would use a **node-held key** (``NODE_KEY``: ``eth_sendTransaction``, ``eth_sign*``,
  ``personal_*``, ``eth_accounts``) or **node administration** (``ADMIN``: ``admin_*``, ``miner_*``,
  ``debug_*``, ``anvil_*``, ``evm_*``, ``hardhat_*``, ``txpool_*``, ``engine_*``): refused unless the
  caller holds the admin role; an admin's call goes to the pool's block producer;
- **not served through a pool** (``UNSUPPORTED``): filters and subscriptions live in one node's
  memory, so a pool cannot keep them (poll ``eth_getLogs`` and ``eth_blockNumber`` instead);
- anything else: unknown (-32601).

``CacheRule`` says what of an answer may be kept (``gateway.cache``): ``FOREVER`` (the chain's id),
``HEAD`` (the head and fee suggestions, for a short time), ``BY_HASH`` and ``BY_BLOCK`` (blocks,
transactions, receipts and state at a block, once deeper than the reorg depth), ``LOGS`` (a
numbered range below the reorg depth) or ``NEVER``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class Kind(enum.Enum):
    READ = "read"
    SEND_RAW = "send_raw"
    NODE_KEY = "node_key"
    ADMIN = "admin"
    UNSUPPORTED = "unsupported"


class CacheRule(enum.Enum):
    NEVER = "never"
    FOREVER = "forever"
    HEAD = "head"
    BY_HASH = "by_hash"
    BY_BLOCK = "by_block"
    LOGS = "logs"


class InvalidParams(ValueError):
    """The request's params do not fit the method (-32602); the message names the parameter."""


@dataclass(frozen=True)
class Method:
    name: str
    kind: Kind
    #: Positional parameters accepted, fewest and most.
    arity: tuple[int, int] = (0, 0)
    #: Index of the block parameter (a tag, a number, or an EIP-1898 object), if the method has one.
    block_at: int | None = None
    cache: CacheRule = CacheRule.NEVER
    #: Parameters checked for shape: index -> "address" | "hash" | "data" | "object" | "bool".
    shapes: tuple[tuple[int, str], ...] = ()


def _read(name: str, arity: tuple[int, int], block_at: int | None = None, cache: CacheRule = CacheRule.NEVER,
          **shapes: str) -> Method:
    return Method(name, Kind.READ, arity, block_at, cache, tuple((int(k[1:]), v) for k, v in shapes.items()))


_METHODS = [
    _read("eth_chainId", (0, 0), cache=CacheRule.FOREVER),
    _read("net_version", (0, 0), cache=CacheRule.FOREVER),
    _read("web3_clientVersion", (0, 0)),
    _read("web3_sha3", (1, 1), p0="data"),
    _read("net_listening", (0, 0)),
    _read("net_peerCount", (0, 0)),
    _read("eth_syncing", (0, 0)),
    _read("eth_blockNumber", (0, 0), cache=CacheRule.HEAD),
    _read("eth_gasPrice", (0, 0), cache=CacheRule.HEAD),
    _read("eth_maxPriorityFeePerGas", (0, 0), cache=CacheRule.HEAD),
    _read("eth_blobBaseFee", (0, 0), cache=CacheRule.HEAD),
    _read("eth_feeHistory", (2, 3), block_at=1),
    _read("eth_getBalance", (1, 2), block_at=1, cache=CacheRule.BY_BLOCK, p0="address"),
    _read("eth_getTransactionCount", (1, 2), block_at=1, cache=CacheRule.BY_BLOCK, p0="address"),
    _read("eth_getCode", (1, 2), block_at=1, cache=CacheRule.BY_BLOCK, p0="address"),
    _read("eth_getStorageAt", (2, 3), block_at=2, cache=CacheRule.BY_BLOCK, p0="address"),
    _read("eth_getProof", (2, 3), block_at=2, cache=CacheRule.BY_BLOCK, p0="address"),
    _read("eth_call", (1, 3), block_at=1, cache=CacheRule.BY_BLOCK, p0="object"),
    _read("eth_estimateGas", (1, 3), block_at=1, p0="object"),
    _read("eth_createAccessList", (1, 2), block_at=1, p0="object"),
    _read("eth_getBlockByNumber", (1, 2), block_at=0, cache=CacheRule.BY_BLOCK, p1="bool"),
    _read("eth_getBlockTransactionCountByNumber", (1, 1), block_at=0, cache=CacheRule.BY_BLOCK),
    _read("eth_getTransactionByBlockNumberAndIndex", (2, 2), block_at=0, cache=CacheRule.BY_BLOCK),
    _read("eth_getUncleCountByBlockNumber", (1, 1), block_at=0, cache=CacheRule.BY_BLOCK),
    _read("eth_getUncleByBlockNumberAndIndex", (2, 2), block_at=0, cache=CacheRule.BY_BLOCK),
    _read("eth_getBlockReceipts", (1, 1), block_at=0, cache=CacheRule.BY_BLOCK),
    _read("eth_getBlockByHash", (1, 2), cache=CacheRule.BY_HASH, p0="hash", p1="bool"),
    _read("eth_getBlockTransactionCountByHash", (1, 1), cache=CacheRule.BY_HASH, p0="hash"),
    _read("eth_getTransactionByBlockHashAndIndex", (2, 2), cache=CacheRule.BY_HASH, p0="hash"),
    _read("eth_getUncleCountByBlockHash", (1, 1), cache=CacheRule.BY_HASH, p0="hash"),
    _read("eth_getTransactionByHash", (1, 1), cache=CacheRule.BY_HASH, p0="hash"),
    _read("eth_getTransactionReceipt", (1, 1), cache=CacheRule.BY_HASH, p0="hash"),
    _read("eth_getLogs", (1, 1), cache=CacheRule.LOGS, p0="object"),
    Method("eth_sendRawTransaction", Kind.SEND_RAW, (1, 1), shapes=((0, "data"),)),
]
METHODS: dict[str, Method] = {m.name: m for m in _METHODS}

NODE_KEY_METHODS = frozenset({
    "eth_sendTransaction", "eth_sign", "eth_signTransaction", "eth_signTypedData", "eth_signTypedData_v3",
    "eth_signTypedData_v4", "eth_accounts", "eth_requestAccounts",
})
NODE_KEY_PREFIXES = ("personal_",)
ADMIN_PREFIXES = ("admin_", "miner_", "debug_", "anvil_", "evm_", "hardhat_", "txpool_", "engine_")
UNSUPPORTED_METHODS = frozenset({
    "eth_newFilter", "eth_newBlockFilter", "eth_newPendingTransactionFilter", "eth_getFilterChanges",
    "eth_getFilterLogs", "eth_uninstallFilter", "eth_subscribe", "eth_unsubscribe",
})

BLOCK_TAGS = frozenset({"latest", "pending", "safe", "finalized", "earliest"})
#: Tags answered from the head: never from a node behind the pool's head.
HEAD_TAGS = frozenset({"latest", "pending", "safe", "finalized"})

_LENIENT_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}", re.ASCII)
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}", re.ASCII)
_HASH = re.compile(r"0x[0-9a-fA-F]{64}", re.ASCII)
_DATA = re.compile(r"0x([0-9a-fA-F]{2})*", re.ASCII)


def lookup(name: str) -> Method | None:
    """The method's description; None when the gateway does not know it."""
    method = METHODS.get(name)
    if method is not None:
        return method
    if name in NODE_KEY_METHODS or name.startswith(NODE_KEY_PREFIXES):
        return Method(name, Kind.NODE_KEY, (0, 64))
    if name.startswith(ADMIN_PREFIXES):
        return Method(name, Kind.ADMIN, (0, 64))
    if name in UNSUPPORTED_METHODS:
        return Method(name, Kind.UNSUPPORTED, (0, 64))
    return None


def refusal(method: Method) -> str:
    """Why a user's key may not call ``method``."""
    if method.kind is Kind.NODE_KEY:
        return (f"{method.name} would use a key held by the node: ESP's nodes hold none for callers; sign locally "
                "and send eth_sendRawTransaction")
    if method.kind is Kind.ADMIN:
        return f"{method.name} is node administration: it needs an API key with the admin role"
    return (f"{method.name} is not served through a pool (filters and subscriptions live in one node): "
            "poll eth_getLogs and eth_blockNumber instead")


def check_params(method: Method, params: Any) -> list[Any]:
    """The params as a list, checked against the method; InvalidParams naming the parameter otherwise."""
    if params is None:
        params = []
    if not isinstance(params, list):
        raise InvalidParams("params must be an array (positional parameters)")
    low, high = method.arity
    if not low <= len(params) <= high:
        expected = str(low) if low == high else f"{low} to {high}"
        raise InvalidParams(f"{method.name} takes {expected} parameters, not {len(params)}")
    for index, shape in method.shapes:
        if index < len(params):
            _check_shape(params[index], shape, f"params[{index}]")
    if method.block_at is not None and method.block_at < len(params):
        block_param(params[method.block_at], f"params[{method.block_at}]")
    if method.name == "eth_getLogs":
        _check_filter(params[0])
    return params


def _check_shape(value: Any, shape: str, where: str) -> None:
    ok = {
        "address": lambda v: isinstance(v, str) and _ADDRESS.fullmatch(v) is not None,
        "hash": lambda v: isinstance(v, str) and _HASH.fullmatch(v) is not None,
        "data": lambda v: isinstance(v, str) and _DATA.fullmatch(v) is not None,
        "object": lambda v: isinstance(v, dict),
        "bool": lambda v: isinstance(v, bool),
    }[shape](value)
    if not ok:
        described = {"address": "a 20-byte hex address", "hash": "a 32-byte hex hash", "data": "0x-prefixed hex bytes",
                     "object": "an object", "bool": "true or false"}[shape]
        raise InvalidParams(f"{where} must be {described}")


def block_param(value: Any, where: str) -> str | int | dict[str, Any]:
    """A block parameter checked: a tag, a number (int), or an EIP-1898 ``{"blockHash"}``/``{"blockNumber"}`` object."""
    if isinstance(value, str):
        if value in BLOCK_TAGS:
            return value
        if _LENIENT_QUANTITY.fullmatch(value):
            return int(value, 16)
    elif isinstance(value, dict):
        if "blockHash" in value and isinstance(value["blockHash"], str) and _HASH.fullmatch(value["blockHash"]):
            return value
        if "blockNumber" in value:
            return block_param(value["blockNumber"], f"{where}.blockNumber")
    raise InvalidParams(f"{where} must be a block: latest, pending, safe, finalized, earliest, a hex number "
                        "or {\"blockHash\": ...}")


def _check_filter(log_filter: dict[str, Any]) -> None:
    for name in ("fromBlock", "toBlock"):
        if name in log_filter and log_filter[name] is not None:
            block_param(log_filter[name], f"params[0].{name}")
    if "blockHash" in log_filter and not (isinstance(log_filter["blockHash"], str) and _HASH.fullmatch(log_filter["blockHash"])):
        raise InvalidParams("params[0].blockHash must be a 32-byte hex hash")


# -- which block a request needs ----------------------------------------------------------------------


@dataclass(frozen=True)
class BlockNeed:
    """What a node must have to answer: the pool's head (``at_head``), a block number (``number``), or nothing."""

    at_head: bool = False
    number: int | None = None

    @property
    def deep_below(self) -> int | None:
        """The highest block the answer depends on, when it is a fixed number (for caching)."""
        return None if self.at_head else self.number


NO_NEED = BlockNeed()
AT_HEAD = BlockNeed(at_head=True)


def block_need(method: Method, params: Sequence[Any]) -> BlockNeed:
    """Which block ``params`` ask ``method`` about (checked params only)."""
    if method.cache is CacheRule.HEAD or method.name in ("eth_feeHistory", "eth_syncing"):
        return AT_HEAD
    if method.name == "eth_getLogs":
        log_filter = params[0]
        if "blockHash" in log_filter:
            return NO_NEED
        high = [_need_of(log_filter.get(name, "latest"), "params[0]") for name in ("fromBlock", "toBlock")]
        if any(n.at_head for n in high):
            return AT_HEAD
        return BlockNeed(number=max(n.number or 0 for n in high))
    if method.block_at is None:
        return NO_NEED
    if method.block_at >= len(params):
        return AT_HEAD  # the block parameter's default is "latest"
    return _need_of(params[method.block_at], f"params[{method.block_at}]")


def _need_of(value: Any, where: str) -> BlockNeed:
    block = block_param(value if value is not None else "latest", where)
    if isinstance(block, int):
        return BlockNeed(number=block)
    if isinstance(block, dict):
        return NO_NEED  # by hash: any node that has the block
    if block in HEAD_TAGS:
        return AT_HEAD
    return BlockNeed(number=0)  # earliest
