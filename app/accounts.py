"""Accounts kept by ESP and plain ETH transfers.

``POST /api/v1/accounts`` creates a keystore (the password never leaves this
process) and enqueues the treasury's funding transfer; ``.../unlock`` lets the
account sign for a while; ``POST /api/v1/transactions`` sends ETH.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app.auth import check_acts_as, key_required, require_caller
from app.context import keystore, owners, reader, settings, treasury_address, unlock_store
from app.submit import submit
from app.validation import address, amount, integer, json_body, required
from errors import ValidationError
from wallet.errors import AccountLocked
from wallet.keystore import check_password

bp = Blueprint("accounts", __name__, url_prefix="/api/v1")

MAX_UNLOCK_SECONDS = 86400


@bp.post("/accounts")
@key_required
def create_account() -> tuple[Response, int]:
    """Create an account owned by the caller's key (encrypted keystore) and fund it with gas money; 202 with the task."""
    data = json_body(request)
    password = check_password(required(data, "password"))
    return submit_create_account(password)


def submit_create_account(password: str) -> tuple[Response, int]:
    """Enqueue the funding of a new account that the caller's key owns; at most one keystore per idempotent request."""
    owner = require_caller()

    def create() -> dict[str, Any]:
        account = keystore().create(password)
        owners().set_account_owner(account, owner.key_id)
        return {"address": account}

    return submit("fund_account", {"value_wei": settings().funding_wei}, prepare=create, secret=password)


def visible_accounts() -> list[str]:
    """The accounts the caller may see: an admin every account of the keystore, a user those its key created."""
    caller = require_caller()
    every = keystore().list()
    if caller.is_admin:
        return every
    mine = owners().accounts_of(caller.key_id)
    return [a for a in every if a in mine]


@bp.get("/accounts")
@key_required
def list_accounts() -> Response:
    """The caller's accounts (an admin's: all, and the treasury), and whether each is unlocked now."""
    store = unlock_store()
    accounts = [{"address": a, "unlocked": store.is_unlocked(a), "unlocked_for_s": max(store.ttl(a), 0)} for a in visible_accounts()]
    body: dict[str, Any] = {"accounts": accounts, "count": len(accounts)}
    if require_caller().is_admin:
        body["treasury"] = treasury_address()
    return jsonify(body)


@bp.post("/accounts/<addr>/unlock")
@key_required
def unlock_account(addr: str) -> Response:
    """Let the caller's account sign for ``seconds`` (1..86400) once its password is checked."""
    account = address(addr, "address")
    data = json_body(request)
    password = check_password(required(data, "password"))
    seconds = integer(data.get("seconds", 300), "seconds", low=1, high=MAX_UNLOCK_SECONDS)
    unlock(account, password, seconds)
    return jsonify({"address": account, "unlocked": True, "seconds": seconds})


def unlock(account: str, password: str, seconds: int, *, field: str = "address") -> None:
    """Unlock ``account`` for its owner (or an admin): the ownership check comes before any KDF work."""
    check_acts_as(account, field)
    unlock_store().unlock(account, password, seconds, keystore())


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
@key_required
def send_transaction() -> tuple[Response, int]:
    """Send ETH from one of the caller's accounts (unlocked), or the treasury for an admin; 202 with the task."""
    data = json_body(request)
    sender = address(required(data, "from"), "from")
    to = address(required(data, "to"), "to")
    value = amount(required(data, "value_wei"), "value_wei")
    check_signer(sender, "from")
    return submit("send_eth", {"sender": sender, "to": to, "value_wei": value})


def check_owned(account: str, field: str) -> None:
    """Refuse an account the caller may not act as (401/403), then one that is not in ESP's keystore (422)."""
    check_acts_as(account, field)
    if account != treasury_address() and not keystore().has(account):
        raise ValidationError(field, f"{account} is not an account of ESP's keystore", status=422)


def check_signer(account: str, field: str) -> None:
    """Refuse, before anything is enqueued, a sender the caller may not sign as, or one that is locked."""
    check_owned(account, field)
    if account != treasury_address() and not unlock_store().is_unlocked(account):
        raise AccountLocked(account)
