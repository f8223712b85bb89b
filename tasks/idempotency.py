"""Idempotency keys: the same key returns the same task instead of a second transaction."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from errors import Conflict, ValidationError

IDEMPOTENCY_KEY = "esp:idem:{}"
#: How long a key is remembered (the same as Stripe's and IETF draft's common practice: a day).
IDEMPOTENCY_TTL = 86400
MAX_KEY_LENGTH = 255


def fingerprint(operation: str, params: dict[str, Any]) -> str:
    """A digest of what was asked, to tell a retry from a different request under the same key."""
    canonical = json.dumps({"op": operation, "params": params}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key: str) -> str:
    """Validate an Idempotency-Key header value."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ValidationError("Idempotency-Key", f"must be 1 to {MAX_KEY_LENGTH} printable characters", status=400)
    return key


def claim(client: redis.Redis, key: str, operation: str, params: dict[str, Any], task_id: str) -> str | None:
    """Bind ``key`` to ``task_id``; return the task id it is already bound to, if any.

    Raises Conflict when the key was used for a different request.
    """
    record = json.dumps({"task_id": task_id, "fingerprint": fingerprint(operation, params)})
    redis_key = IDEMPOTENCY_KEY.format(hashlib.sha256(key.encode()).hexdigest())
    if client.set(redis_key, record, nx=True, ex=IDEMPOTENCY_TTL):
        return None
    existing = client.get(redis_key)
    if existing is None:  # expired between the two calls: claim again
        return claim(client, key, operation, params, task_id)
    bound = json.loads(existing)
    if bound["fingerprint"] != fingerprint(operation, params):
        raise Conflict("this Idempotency-Key was used for a different request", field="Idempotency-Key")
    return str(bound["task_id"])


def release(client: redis.Redis, key: str) -> None:
    """Forget a key whose task could not be enqueued, so a retry can succeed."""
    client.delete(IDEMPOTENCY_KEY.format(hashlib.sha256(key.encode()).hexdigest()))
