"""Unlocked accounts: a key re-encrypted under the server secret, in Redis, for a bounded time.

``unlock`` checks the password by decrypting the keystore file (the slow,
password-hardened step, once), then stores the key sealed with AES-256-GCM
under a key derived from ``ESP_SECRET_KEY`` (HKDF-SHA256) with the account's
address as associated data, at ``esp:unlock:<address>`` with a TTL of the
unlock's duration. ``signer`` opens it again for each signing (a Redis GET and
one AES-GCM decryption, microseconds), so ``lock`` or expiry take effect at once
for every worker.

What this protects: Redis (and any dump or replica of it) never holds a key
or a password in clear; a sealed blob is useless without the server secret and
cannot be moved to another address's entry (the address is authenticated).
What it does not: a process that has the server secret and Redis can sign for
unlocked accounts while they stay unlocked - that is what unlocking means. The
plaintext key lives only in the signing worker's memory during ``signer``'s use.

AES-GCM comes from pycryptodome (already installed as eth-keyfile's
dependency); the ``cryptography`` package is not installed in this venv.
"""

from __future__ import annotations

import base64
import logging
import secrets
from typing import TYPE_CHECKING

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from eth_account import Account

from errors import ConfigError, ValidationError
from wallet.address import checksum, key_part
from wallet.errors import AccountLocked

if TYPE_CHECKING:
    import redis
    from eth_account.signers.local import LocalAccount

    from wallet.keystore import Keystore

log = logging.getLogger(__name__)

MIN_UNLOCK_SECONDS = 1
MAX_UNLOCK_SECONDS = 86_400
KEY_PREFIX = "esp:unlock:"
_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HKDF_SALT = b"esp/wallet/unlock/v1"


def check_seconds(seconds: object) -> int:
    """Return ``seconds`` if it is a whole number in 1..86400; raise ValidationError otherwise."""
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise ValidationError("seconds", f"must be a whole number of seconds from {MIN_UNLOCK_SECONDS} to {MAX_UNLOCK_SECONDS}")
    if not MIN_UNLOCK_SECONDS <= seconds <= MAX_UNLOCK_SECONDS:
        raise ValidationError("seconds", f"must be from {MIN_UNLOCK_SECONDS} to {MAX_UNLOCK_SECONDS} (24 h), not {seconds}")
    return seconds


class UnlockStore:
    """Which accounts may sign now, and their keys sealed under the server secret, in Redis."""

    def __init__(self, redis_client: redis.Redis, secret_key: str, *, prefix: str = KEY_PREFIX) -> None:
        if not isinstance(secret_key, str) or len(secret_key) < 16:
            raise ConfigError("ESP_SECRET_KEY must be at least 16 characters to seal unlocked keys")
        self.redis = redis_client
        self.prefix = prefix
        # HKDF, not a password hash: the server secret is a random token, not a human password.
        derived = HKDF(secret_key.encode(), 32, _HKDF_SALT, SHA256, context=b"unlocked-account-key")
        assert isinstance(derived, bytes)  # one key asked for, so one key back
        self._key: bytes = derived

    def __repr__(self) -> str:
        return f"UnlockStore(prefix={self.prefix!r})"  # never the derived key

    def _name(self, address: str) -> str:
        return self.prefix + key_part(address)

    def unlock(self, address: str, password: str, seconds: int, keystore: Keystore) -> None:
        """Check ``password`` against the keystore and let ``address`` sign for ``seconds`` (1..86400).

        Raises ValidationError (bad ``seconds``), UnknownAccount or WrongPassword;
        a second unlock replaces the first and its duration.
        """
        address = checksum(address)
        seconds = check_seconds(seconds)
        key = keystore.decrypt(address, password)
        self.redis.set(self._name(address), self._seal(address, key), ex=seconds)
        log.info("unlocked %s for %d s", address, seconds)

    def signer(self, address: str) -> LocalAccount:
        """An eth_account signer for an unlocked ``address``; AccountLocked when it is not unlocked."""
        address = checksum(address)
        blob = self.redis.get(self._name(address))
        if blob is None:
            raise AccountLocked(address)
        key = self._open(address, blob)
        account = Account.from_key(key)
        if account.address != address:  # cannot happen unless the AAD check was bypassed
            raise AccountLocked(address, "has an unusable unlock entry: unlock it again")
        return account

    def lock(self, address: str) -> bool:
        """Forget the unlocked key now; True when the account was unlocked."""
        removed = bool(self.redis.delete(self._name(address)))
        if removed:
            log.info("locked %s", checksum(address))
        return removed

    def is_unlocked(self, address: str) -> bool:
        """True while ``address`` may sign."""
        return bool(self.redis.exists(self._name(address)))

    def ttl(self, address: str) -> int:
        """Whole seconds ``address`` stays unlocked (0 when it is locked)."""
        remaining = self.redis.ttl(self._name(address))
        return max(int(remaining), 0) if isinstance(remaining, int) else 0  # -2 gone, -1 never (not ours)

    # -- sealing ------------------------------------------------------------

    def _seal(self, address: str, key: bytes) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)  # random 96-bit nonces: safe far beyond 2^32 seals per secret
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
        cipher.update(_aad(address))
        sealed, tag = cipher.encrypt_and_digest(key)
        # Base64 text, so a client built with decode_responses=True reads it back too.
        return base64.b64encode(_VERSION + nonce + sealed + tag).decode()

    def _open(self, address: str, blob: bytes | str) -> bytes:
        try:
            raw = base64.b64decode(blob, validate=True)
        except (ValueError, TypeError):
            raise AccountLocked(address, "has an unusable unlock entry: unlock it again") from None
        if len(raw) != 1 + _NONCE_BYTES + 32 + _TAG_BYTES or raw[:1] != _VERSION:
            raise AccountLocked(address, "has an unusable unlock entry: unlock it again")
        nonce, sealed, tag = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES : -_TAG_BYTES], raw[-_TAG_BYTES:]
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
        cipher.update(_aad(address))
        try:
            return bytes(cipher.decrypt_and_verify(sealed, tag))
        except ValueError:
            # Wrong server secret (rotated) or an entry copied from another address.
            raise AccountLocked(address, "must be unlocked again (the unlock entry does not open with this server secret)") from None


def _aad(address: str) -> bytes:
    return b"esp-unlock-v1:" + checksum(address).lower().encode()
