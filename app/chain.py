"""Chain reads: block number, gas price, blocks, transactions and receipts (the reads are ``services.chain``').

Every read goes through the pool's reader: the balancer places it, and a node that
does not answer is replaced by another one (the ``node`` field says which node answered).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from app.context import reader
from errors import ValidationError
from services.chain import read_block, read_receipt, read_transaction, transaction_count

bp = Blueprint("chain", __name__, url_prefix="/api/v1/chain")


def flag(name: str) -> bool:
    """A true/false query parameter."""
    raw = request.args.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ValidationError(name, "must be true or false")
    return raw in ("true", "1")


@bp.get("/block-number")
def block_number() -> Response:
    """The chain's head block number."""
    head, node = reader().call_with_node("eth_blockNumber", [])
    return jsonify({"block_number": int(head, 16), "node": node})


@bp.get("/gas-price")
def gas_price() -> Response:
    """The node's suggested gas price, in wei."""
    price, node = reader().call_with_node("eth_gasPrice", [])
    return jsonify({"gas_price_wei": str(int(price, 16)), "node": node})


@bp.get("/blocks/<block>")
def get_block(block: str) -> Response:
    """A block by number, tag or hash (``?full=true`` includes whole transactions)."""
    body, node = read_block(reader(), block, full=flag("full"))
    return jsonify({"block": body, "node": node})


@bp.get("/blocks/<block>/transaction-count")
def get_transaction_count(block: str) -> Response:
    """How many transactions a block (number, tag or hash) holds."""
    count, node = transaction_count(reader(), block)
    return jsonify({"block": block, "transaction_count": count, "node": node})


@bp.get("/transactions/<digest>")
def get_transaction(digest: str) -> Response:
    """A transaction by hash."""
    body, node = read_transaction(reader(), digest)
    return jsonify({"transaction": body, "node": node})


@bp.get("/transactions/<digest>/receipt")
def get_receipt(digest: str) -> Response:
    """A mined transaction's receipt (404 while it is pending)."""
    body, node = read_receipt(reader(), digest)
    return jsonify({"receipt": body, "node": node})
