"""Admin operations take ``Authorization: Bearer <ESP_ADMIN_KEY>``."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import request

from app.context import settings
from errors import Unauthorized


def check_admin() -> None:
    """Raise Unauthorized unless the request carries the admin key."""
    expected = settings().admin_key
    if not expected:
        raise Unauthorized("admin operations are disabled: ESP_ADMIN_KEY is not set")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("this is an admin operation: send Authorization: Bearer <ESP_ADMIN_KEY>")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("the admin key is not valid")


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a view that only an admin may call."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_admin()
        return view(*args, **kwargs)

    return wrapper
