"""Who is calling: ``Authorization: Bearer <API key>`` on every request that carries one.

``authenticate`` runs before every request: no header leaves the caller anonymous
(public reads still work), a header with a key that is not live is a 401 at once.
Views then ask for what they need: ``require_caller()`` (any key), ``check_admin()``
(the admin role), or ``access.policy.check_acts_as`` through ``check_acts_as`` here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, g, request

from access import policy
from access.keys import Caller
from app.context import key_store, owners, treasury_address
from errors import Unauthorized


def install(app: Flask) -> None:
    """Authenticate every request before its view runs."""
    app.before_request(authenticate)


def authenticate() -> None:
    g.caller = None
    header = request.headers.get("Authorization")
    if header is None:
        return
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send the API key as Authorization: Bearer <key>")
    caller = key_store().authenticate(token.strip())
    if caller is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)")
    g.caller = caller


def current_caller() -> Caller | None:
    """The authenticated caller of this request, or None for an anonymous one."""
    return g.get("caller")


def require_caller() -> Caller:
    """The caller; Unauthorized (401) when the request carries no key."""
    return policy.require_caller(current_caller())


def check_admin() -> Caller:
    """The caller if it is an admin; 401 without a key, 403 with a user's."""
    return policy.require_admin(current_caller())


def check_acts_as(account: str, field: str) -> Caller:
    """The caller if it may sign as (or act in the name of) ``account``: its owner, or an admin; the treasury only for an admin."""
    return policy.check_acts_as(current_caller(), account, field, owners=owners(), treasury=treasury_address())


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a view that only an admin may call."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_admin()
        return view(*args, **kwargs)

    return wrapper


def key_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a view that any caller with a key may call (ownership is checked inside)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        require_caller()
        return view(*args, **kwargs)

    wrapper.key_required = True  # type: ignore[attr-defined]
    return wrapper
