"""Accounts kept by ESP and plain ETH transfers (the work is ``services.accounts``').

``POST /api/v1/accounts`` creates a keystore owned by the caller's key (the password
never leaves this process) and enqueues the treasury's funding transfer;
``.../unlock`` lets the account sign for a while; ``POST /api/v1/transactions`` sends ETH,
``POST /api/v1/transactions/batch`` many transfers at once (one task each, all accepted or none).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app.auth import key_required
from app.context import accounts, reader, settings, views
from app.submit import accepted, accepted_many
from app.validation import json_body
from errors import ValidationError
from services.fields import address, amount, integer, required
from wallet.keystore import check_password

bp = Blueprint("accounts", __name__, url_prefix="/api/v1")

MAX_UNLOCK_SECONDS = 86400


@bp.post("/accounts")
@key_required
def create_account() -> tuple[Response, int]:
    """Create an account owned by the caller's key (encrypted keystore) and fund it with gas money; 202 with the task."""
    data = json_body(request)
    password = check_password(required(data, "password"))
    return accepted(accounts().create(password))


@bp.get("/accounts")
@key_required
def list_accounts() -> Response:
    """The caller's accounts (an admin's: all, and the treasury), and whether each is unlocked now."""
    return jsonify(accounts().listing())


@bp.post("/accounts/<addr>/unlock")
@key_required
def unlock_account(addr: str) -> Response:
    """Let the caller's account sign for ``seconds`` (1..86400) once its password is checked."""
    account = address(addr, "address")
    data = json_body(request)
    password = check_password(required(data, "password"))
    seconds = integer(data.get("seconds", 300), "seconds", low=1, high=MAX_UNLOCK_SECONDS)
    accounts().unlock(account, password, seconds)
    return jsonify({"address": account, "unlocked": True, "seconds": seconds})


@bp.get("/accounts/<addr>/balance")
def balance(addr: str) -> Response:
    """The account's ETH balance (wei and ether) and, once the platform token is deployed, its token balance."""
    account = address(addr, "address")
    wei, node = reader().call_with_node("eth_getBalance", [account, "latest"])
    body: dict[str, Any] = {"address": account, "wei": str(int(wei, 16)), "ether": str(Decimal(int(wei, 16)) / Decimal(10**18)),
                            "node": node, "token": views().token_balance_or_none(account)}
    return jsonify(body)


@bp.post("/transactions")
@key_required
def send_transaction() -> tuple[Response, int]:
    """Send ETH from one of the caller's accounts (unlocked), or the treasury for an admin; 202 with the task."""
    data = json_body(request)
    sender = address(required(data, "from"), "from")
    to = address(required(data, "to"), "to")
    value = amount(required(data, "value_wei"), "value_wei")
    return accepted(accounts().send_eth(sender, to, value))


@bp.post("/transactions/batch")
@key_required
def send_transactions() -> tuple[Response, int]:
    """Send many ETH transfers at once: ``{"transactions": [{"from", "to", "value_wei"}, ...]}``; 202 with one task each.

    Every transfer is checked before any is accepted (a problem names ``transactions[i].<field>``),
    then all are accepted together or none is. Each counts as one request against the rate limit.
    """
    items = transfer_list(json_body(request), settings().max_submit_batch)
    transfers = [transfer(item, f"transactions[{i}]") for i, item in enumerate(items)]
    return accepted_many(accounts().send_eth_many(transfers))


def transfer(item: dict[str, Any], where: str) -> tuple[str, str, int]:
    """One transfer of a batch, each problem naming ``<where>.<field>``."""
    def given(name: str) -> Any:
        return required(item, name, field=f"{where}.{name}")

    return (address(given("from"), f"{where}.from"), address(given("to"), f"{where}.to"),
            amount(given("value_wei"), f"{where}.value_wei"))


def transfer_list(data: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The body's ``transactions``: a list of 1 to ``limit`` JSON objects."""
    items = required(data, "transactions")
    if not isinstance(items, list) or not items:
        raise ValidationError("transactions", "must be a non-empty list of transfers")
    if len(items) > limit:
        raise ValidationError("transactions", f"holds {len(items)} transfers; at most {limit} (ESP_MAX_SUBMIT_BATCH)", status=413)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationError(f"transactions[{i}]", "must be an object with from, to and value_wei")
    return items
