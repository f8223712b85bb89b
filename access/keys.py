"""API keys: random bearer tokens, stored only as their SHA-256, each with a role.

A key looks like ``esp_<id>_<secret>``: the id names it in listings and logs (it
is not secret), the 256-bit secret is shown once, at creation, and never stored.
Because the secret is random, not a human password, one SHA-256 is the right
stored form (as for GitHub's and Stripe's tokens): a slow KDF would add nothing
but latency to every request. ``ESP_ADMIN_KEY`` from the settings stays a valid
admin key (``make up`` generates and prints it), so an operator can create the
first keys.

Redis, owned here::

    esp:apikeys          hash  key id -> JSON record (id, name, role, created_at, revoked_at, digest)
    esp:apikey-digests   hash  SHA-256 of the whole key -> key id (only live keys)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from errors import NotFound, ValidationError
from nodepool.codec import as_text

KEYS = "esp:apikeys"
DIGESTS = "esp:apikey-digests"

ADMIN = "admin"
USER = "user"
ROLES = (ADMIN, USER)

#: The id of the bootstrap admin key taken from ESP_ADMIN_KEY.
SETTINGS_ADMIN_ID = "settings-admin"
MAX_NAME_LENGTH = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}", re.ASCII)
_KEY = re.compile(r"esp_([0-9a-f]{16})_[A-Za-z0-9_-]{43}", re.ASCII)


@dataclass(frozen=True)
class Caller:
    """Who is asking: the id of the key they presented and its role."""

    key_id: str
    role: str
    name: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


@dataclass(frozen=True)
class ApiKey:
    """A stored key as listings show it: never the secret, nor its digest."""

    id: str
    name: str
    role: str
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.active}


def check_role(role: object, field: str = "role") -> str:
    if role not in ROLES:
        raise ValidationError(field, f"must be one of {', '.join(ROLES)}")
    return str(role)


def check_name(name: object, field: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(field, f"must be 1 to {MAX_NAME_LENGTH} characters: ASCII letters, digits, space and ._@-, "
                                     "starting with a letter or digit")
    return name


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class ApiKeyStore:
    """API keys in Redis; ``authenticate`` is one HGET (plus one for the record)."""

    def __init__(self, client: redis.Redis, *, settings_admin_key: str = "") -> None:
        self.redis = client
        self._settings_admin = settings_admin_key

    def create(self, name: str, role: str, *, now: float | None = None) -> tuple[ApiKey, str]:
        """A new key: its record and the whole key, which is shown once and never stored."""
        name, role = check_name(name), check_role(role)
        key_id = secrets.token_hex(8)
        secret = f"esp_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(id=key_id, name=name, role=role, created_at=time.time() if now is None else now)
        stored = json.dumps({**asdict(record), "digest": digest_of(secret)})
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(KEYS, key_id, stored)
            pipe.hset(DIGESTS, digest_of(secret), key_id)
            pipe.execute()
        return record, secret

    def get(self, key_id: str) -> ApiKey:
        raw = self.redis.hget(KEYS, key_id)
        if raw is None:
            raise NotFound(f"no API key with id {key_id!r}", field="id")
        return _record(raw)

    def list(self) -> list[ApiKey]:
        records = [_record(raw) for raw in self.redis.hvals(KEYS)]
        return sorted(records, key=lambda k: (k.created_at, k.id))

    def revoke(self, key_id: str, *, now: float | None = None) -> ApiKey:
        """Revoke a key: it stops authenticating at once, in every process. Revoking twice is harmless."""
        raw = self.redis.hget(KEYS, key_id)
        if raw is None:
            raise NotFound(f"no API key with id {key_id!r}", field="id")
        stored = json.loads(raw)
        if stored.get("revoked_at") is None:
            stored["revoked_at"] = time.time() if now is None else now
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(DIGESTS, stored["digest"])
                pipe.hset(KEYS, key_id, json.dumps(stored))
                pipe.execute()
        return _record(json.dumps(stored))

    def authenticate(self, presented: str) -> Caller | None:
        """The caller a presented key identifies, or None when it is not a live key."""
        if self._settings_admin and hmac.compare_digest(presented.encode("utf-8", "surrogatepass"),
                                                        self._settings_admin.encode()):
            return Caller(SETTINGS_ADMIN_ID, ADMIN, "ESP_ADMIN_KEY")
        if not _KEY.fullmatch(presented):
            return None
        key_id = self.redis.hget(DIGESTS, digest_of(presented))
        if key_id is None:
            return None
        record = self.get(as_text(key_id))
        if not record.active:
            return None
        return Caller(record.id, record.role, record.name)


def _record(raw: bytes | str) -> ApiKey:
    data = json.loads(raw)
    return ApiKey(id=data["id"], name=data["name"], role=data["role"], created_at=data["created_at"],
                  revoked_at=data.get("revoked_at"))
