"""Idempotency keys: the same key returns the same task instead of a second transaction.

A key is scoped to the API key that sent it (two callers never share a task by
choosing the same string), and bound to a fingerprint of what was asked, so the
same key with a different request is a 409. A secret that is part of the request
(an account's password) enters the fingerprint only as an HMAC under the server
secret: Redis never holds it, nor anything to test guesses against without that secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import redis

from errors import Conflict, ValidationError

IDEMPOTENCY_KEY = "esp:idem:{}"
#: How long a key is remembered (the same as Stripe's and IETF draft's common practice: a day).
IDEMPOTENCY_TTL = 86400
MAX_KEY_LENGTH = 255


def fingerprint(operation: str, params: dict[str, Any], *, secret: str | None = None, server_secret: str = "") -> str:
    """A digest of what was asked, to tell a retry from a different request under the same key."""
    sealed = hmac.new(server_secret.encode(), secret.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest() if secret else None
    canonical = json.dumps({"op": operation, "params": params, "secret": sealed}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key: str) -> str:
    """Validate an Idempotency-Key header value: 1..255 printable ASCII characters."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise ValidationError("Idempotency-Key", f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters", status=400)
    return key


def _redis_key(scope: str, key: str) -> str:
    return IDEMPOTENCY_KEY.format(hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest())


def claim(client: redis.Redis, scope: str, key: str, digest: str, task_id: str) -> str | None:
    """Bind ``scope``'s ``key`` to ``task_id``; return the task id it is already bound to, if any.

    Raises Conflict when the key was used for a different request (another ``digest``).
    """
    name = _redis_key(scope, key)
    record = json.dumps({"task_id": task_id, "fingerprint": digest})
    while True:
        if client.set(name, record, nx=True, ex=IDEMPOTENCY_TTL):
            return None
        existing = client.get(name)
        if existing is None:  # released or expired between the two calls: claim again
            continue
        bound = json.loads(existing)
        if bound["fingerprint"] != digest:
            raise Conflict("this Idempotency-Key was used for a different request", field="Idempotency-Key")
        return str(bound["task_id"])


def release(client: redis.Redis, scope: str, key: str) -> None:
    """Forget a key whose task could not be created or enqueued, so a retry can succeed."""
    client.delete(_redis_key(scope, key))
