"""Who is calling: ``Authorization: Bearer <API key>`` on every request that carries one.

``authenticate`` runs before every request: no header leaves the caller anonymous
(public reads still work), a header with a key that is not live is a 401 at once.
Views then ask for what they need: ``key_required`` (any key: ``app.context.caller()``),
``admin_required``/``check_admin()`` (the admin role); ownership is the services' to check
(``access.policy`` through ``services.accounts``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, g, request

from access import policy
from access.keys import Caller
from app.context import caller, key_store
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


def check_admin() -> Caller:
    """The caller if it is an admin; 401 without a key, 403 with a user's."""
    return policy.require_admin(g.get("caller"))


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
        caller()
        return view(*args, **kwargs)

    wrapper.key_required = True  # type: ignore[attr-defined]
    return wrapper
