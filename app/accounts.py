"""Accounts kept by ESP and plain ETH transfers.

``POST /api/v1/accounts`` creates a keystore (the password never leaves this
process) and enqueues the treasury's funding transfer; ``.../unlock`` lets the
account sign for a while; ``POST /api/v1/transactions`` sends ETH.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app.context import keystore, reader, settings, unlock_store
from app.submit import submit
from app.validation import address, amount, integer, json_body, required
from errors import ValidationError
from wallet.errors import AccountLocked
from wallet.keystore import check_password

bp = Blueprint("accounts", __name__, url_prefix="/api/v1")

MAX_UNLOCK_SECONDS = 86400


@bp.post("/accounts")
def create_account() -> tuple[Response, int]:
    """Create an account (encrypted keystore) and fund it with gas money; 202 with the task."""
    data = json_body(request)
    password = check_password(required(data, "password"))
    funding = settings().funding_wei
    return submit("fund_account", {"value_wei": funding}, prepare=lambda: {"address": keystore().create(password)})


@bp.get("/accounts")
def list_accounts() -> Response:
    """Every account in ESP's keystore, and whether it is unlocked now."""
    store = unlock_store()
    accounts = [{"address": a, "unlocked": store.is_unlocked(a), "unlocked_for_s": max(store.ttl(a), 0)} for a in keystore().list()]
    return jsonify({"accounts": accounts, "count": len(accounts), "treasury": treasury_address()})


@bp.post("/accounts/<addr>/unlock")
def unlock_account(addr: str) -> Response:
    """Let the account sign for ``seconds`` (1..86400) once its password is checked."""
    account = address(addr, "address")
    data = json_body(request)
    password = check_password(required(data, "password"))
    seconds = integer(data.get("seconds", 300), "seconds", low=1, high=MAX_UNLOCK_SECONDS)
    unlock_store().unlock(account, password, seconds, keystore())
    return jsonify({"address": account, "unlocked": True, "seconds": seconds})


@bp.get("/accounts/<addr>/balance")
def balance(addr: str) -> Response:
    """The account's ETH balance (wei and ether) and, once the platform token is deployed, its token balance."""
    account = address(addr, "address")
    wei, node = reader().call_with_node("eth_getBalance", [account, "latest"])
    body: dict[str, Any] = {"address": account, "wei": str(int(wei, 16)), "ether": str(Decimal(int(wei, 16)) / Decimal(10**18)), "node": node}
    from app.platform import token_balance_or_none

    body["token"] = token_balance_or_none(account)
    return jsonify(body)


@bp.post("/transactions")
def send_transaction() -> tuple[Response, int]:
    """Send ETH from an ESP account (unlocked) or the treasury; 202 with the task."""
    data = json_body(request)
    sender = address(required(data, "from"), "from")
    to = address(required(data, "to"), "to")
    value = amount(required(data, "value_wei"), "value_wei")
    check_can_sign(sender, "from")
    return submit("send_eth", {"sender": sender, "to": to, "value_wei": value})


def treasury_address() -> str:
    """The treasury's address (derived once per key: this runs on every transfer request)."""
    return _address_of(settings().treasury_key)


@cache
def _address_of(private_key: str) -> str:
    from eth_account import Account

    return str(Account.from_key(private_key).address)


def check_can_sign(account: str, field: str) -> None:
    """Refuse, before anything is enqueued, a sender that is unknown or locked."""
    if account == treasury_address():
        return
    if not keystore().has(account):
        raise ValidationError(field, f"{account} is not an account of ESP's keystore", status=422)
    if not unlock_store().is_unlocked(account):
        raise AccountLocked(account)
