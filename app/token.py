"""The platform token: the owner's add/delete/set (admin), transfers, balances and the total supply."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from app.auth import admin_required, key_required
from app.context import market, views
from app.submit import accepted
from app.validation import json_body
from services.fields import address, amount, required

bp = Blueprint("token", __name__, url_prefix="/api/v1/token")


def _change(change: str) -> tuple[Response, int]:
    data = json_body(request)
    account = address(required(data, "address"), "address")
    value = amount(required(data, "value"), "value")
    return accepted(market().token_change(change, account, value))


@bp.post("/add")
@admin_required
def add() -> tuple[Response, int]:
    """Mint ``value`` tokens to ``address`` (admin); 202 with the task."""
    return _change("add")


@bp.post("/delete")
@admin_required
def delete() -> tuple[Response, int]:
    """Burn ``value`` tokens from ``address`` (admin); 202 with the task."""
    return _change("delete")


@bp.post("/set")
@admin_required
def set_balance() -> tuple[Response, int]:
    """Make ``address``'s balance exactly ``value`` (admin); 202 with the task."""
    return _change("set")


@bp.post("/transfer")
@key_required
def transfer() -> tuple[Response, int]:
    """Move ``value`` tokens from ``from`` (one of the caller's accounts, unlocked) to ``to``; 202 with the task."""
    data = json_body(request)
    sender = address(required(data, "from"), "from")
    to = address(required(data, "to"), "to")
    value = amount(required(data, "value"), "value")
    return accepted(market().token_transfer(sender, to, value))


@bp.get("/balance/<addr>")
def balance(addr: str) -> Response:
    """An account's token balance (a decimal string: token amounts exceed JSON's safe integers)."""
    account = address(addr, "address")
    platform = views()
    value, node = platform.token_balance(account)
    return jsonify({"address": account, "balance": str(value), "token": platform.require_platform()["PlatformToken"], "node": node})


@bp.get("/total")
def total() -> Response:
    """The token's total supply, name, symbol and decimals."""
    return jsonify(views().token_summary())
