"""Reading the chain: blocks, transactions and receipts, through the pool's failover reader.

Quantities are decoded: small ones (numbers, gas, timestamps) as JSON integers, wei
amounts as decimal strings (they exceed JSON's safe integers). What the chain does
not hold is NotFound naming the field that asked for it.
"""

from __future__ import annotations

import re
from typing import Any

from errors import NotFound, RpcError, ValidationError
from nodepool.failover import ReadClient
from services.fields import MAX_BLOCK_NUMBER, tx_hash

#: JSON-RPC's "invalid params" error code.
INVALID_PARAMS = -32602
BLOCK_TAGS = ("latest", "earliest", "pending", "safe", "finalized")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
# ASCII digits only: \d also matches '٣' and '²'. Whole-string matches: "$" would let a trailing newline through.
_NUMBER = re.compile(r"[0-9]{1,19}")
_HEX_NUMBER = re.compile(r"0x[0-9a-fA-F]{1,16}")
#: The block path parameter as the OpenAPI document states it (block_id accepts exactly these).
BLOCK_PATTERN = rf"^([0-9]{{1,19}}|0x[0-9a-fA-F]{{1,16}}|0x[0-9a-fA-F]{{64}}|{'|'.join(BLOCK_TAGS)})$"

#: Quantities kept as JSON integers; every other hex quantity of these names becomes a decimal string.
SMALL = {"number", "timestamp", "gasUsed", "gasLimit", "size", "nonce", "blockNumber", "transactionIndex", "logIndex",
         "gas", "type", "chainId", "status", "cumulativeGasUsed", "v", "yParity", "blobGasUsed", "excessBlobGas"}
WEI = {"value", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas", "baseFeePerGas", "effectiveGasPrice",
       "maxFeePerBlobGas", "blobGasPrice", "totalDifficulty", "difficulty"}


def decode_quantities(obj: Any) -> Any:
    """A node's block/transaction/receipt object with its quantities decoded (recursively)."""
    if isinstance(obj, list):
        return [decode_quantities(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, str) and value.startswith("0x") and key in SMALL:
            out[key] = int(value, 16)
        elif isinstance(value, str) and value.startswith("0x") and key in WEI:
            out[key] = str(int(value, 16))
        elif isinstance(value, (dict, list)):
            out[key] = decode_quantities(value)
        else:
            out[key] = value
    return out


def block_id(raw: str, field: str = "block") -> tuple[str, str]:
    """(``byHash`` or ``byNumber``, the JSON-RPC parameter) for a block number (0..2**63-1), tag or hash."""
    if _HASH.fullmatch(raw):
        return "byHash", raw.lower()
    number = int(raw) if _NUMBER.fullmatch(raw) else int(raw, 16) if _HEX_NUMBER.fullmatch(raw) else None
    if number is not None:
        if number > MAX_BLOCK_NUMBER:
            raise ValidationError(field, f"must be a block number from 0 to {MAX_BLOCK_NUMBER}")
        return "byNumber", hex(number)
    if raw in BLOCK_TAGS:
        return "byNumber", raw
    raise ValidationError(field, f"must be a block number (ASCII decimal or 0x hex), a 0x 32-byte block hash or one of {', '.join(BLOCK_TAGS)}")


def read_block(reader: ReadClient, raw: str, *, full: bool, field: str = "block") -> tuple[dict[str, Any], str]:
    """The block named by number, tag or hash (404 naming ``field`` when the chain has none)."""
    how, param = block_id(raw, field)
    method = "eth_getBlockByHash" if how == "byHash" else "eth_getBlockByNumber"
    block, node = reader.call_with_node(method, [param, full])
    if block is None:
        raise NotFound(f"no block {raw} on the chain (yet)", field=field)
    return decode_quantities(block), node


def transaction_count(reader: ReadClient, raw: str, field: str = "block") -> tuple[int, str]:
    """How many transactions the block holds (404 when there is no such block)."""
    how, param = block_id(raw, field)
    method = "eth_getBlockTransactionCountByHash" if how == "byHash" else "eth_getBlockTransactionCountByNumber"
    try:
        count, node = reader.call_with_node(method, [param])
    except RpcError as exc:
        # anvil answers a number past its head with "invalid params" where geth answers null: the same 404.
        if exc.code != INVALID_PARAMS:
            raise
        count = None
    if count is None:
        raise NotFound(f"no block {raw} on the chain (yet)", field=field)
    return int(count, 16), node


def read_transaction(reader: ReadClient, raw: str, field: str = "hash") -> tuple[dict[str, Any], str]:
    """A transaction by hash (404 naming ``field`` when no node knows it)."""
    return _by_hash(reader, "eth_getTransactionByHash", raw, field, "no transaction {} known to the pool")


def read_receipt(reader: ReadClient, raw: str, field: str = "hash") -> tuple[dict[str, Any], str]:
    """A mined transaction's receipt (404 naming ``field`` while there is none)."""
    return _by_hash(reader, "eth_getTransactionReceipt", raw, field, "no receipt for {}: unknown or not mined yet")


def _by_hash(reader: ReadClient, method: str, raw: str, field: str, missing: str) -> tuple[dict[str, Any], str]:
    digest = tx_hash(raw, field)
    found, node = reader.call_with_node(method, [digest])
    if found is None:
        raise NotFound(missing.format(digest), field=field)
    return decode_quantities(found), node
