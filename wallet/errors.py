"""The wallet's exceptions, all under ``errors.EspError``.

    EspError
     └── WalletError
          ├── UnknownAccount      no keystore file for the address       (also errors.NotFound: 404)
          ├── AccountExists       a key for the address is already kept  (also errors.Conflict: 409)
          ├── WrongPassword       the password does not open the keystore (403)
          ├── KeystoreCorrupt     a keystore file is unreadable or unsafe (500)
          ├── KeystoreUnwritable  the keystore folder cannot take a new file: full (507), read-only or denied (503)
          ├── AccountLocked       the account is not (or no longer) unlocked (423)
          ├── KdfBusy             too many password checks in flight in this process (503)
          └── SendError
               ├── NonceTooLow     the nonce is used on chain by another transaction: resync, re-sign
               ├── TxRejected      every node refused the signed bytes for a definite reason
               └── BroadcastFailed no node took the bytes: retry the SAME bytes later

Bad input (an unlock duration out of bounds, a malformed address, an empty
password) raises ``errors.ValidationError`` naming the field.

No message, argument or attribute of these exceptions ever holds a password, a
private key or a decrypted keystore: they name the address and the condition only.
Each class carries ``status``, the HTTP status ``app/errors.py`` should answer with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from errors import Conflict, EspError, NotFound


class WalletError(EspError):
    """Root of the wallet's errors (keystore, unlock, nonces, sending)."""

    status = 500


class UnknownAccount(WalletError, NotFound):
    """Raised when ESP keeps no keystore file for the address."""

    status = 404

    def __init__(self, address: str) -> None:
        NotFound.__init__(self, f"no account {address} in ESP's keystore", field="address")
        self.address = address


class AccountExists(WalletError, Conflict):
    """Raised by ``Keystore.import_key`` when the key's address is already kept."""

    status = 409

    def __init__(self, address: str) -> None:
        Conflict.__init__(self, f"account {address} is already in ESP's keystore", field="address")
        self.address = address


class WrongPassword(WalletError):
    """Raised when a password does not decrypt the account's keystore file."""

    status = 403
    field = "password"

    def __init__(self, address: str) -> None:
        super().__init__(f"wrong password for account {address}")
        self.address = address


class KeystoreCorrupt(WalletError):
    """Raised when a keystore file is not a readable Web3 Secret Storage v3 file, or asks for unsafe KDF work."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"keystore file of {address} is unusable: {reason}")
        self.address = address
        self.reason = reason


class KeystoreUnwritable(WalletError):
    """Raised when a new keystore file cannot be written (disk full, read-only, permission denied).

    Nothing was kept: the temporary file is removed and no account exists. ``status`` is 507
    (Insufficient Storage) when the disk or quota is full, 503 otherwise; both are the operator's to fix.
    """

    field = "keystore"

    def __init__(self, reason: str, *, full: bool) -> None:
        super().__init__(f"ESP's keystore folder cannot be written ({reason}): no account was created")
        self.reason = reason
        self.status = 507 if full else 503


class AccountLocked(WalletError):
    """Raised when a signer is asked for an account that is not unlocked (never, expired or locked)."""

    status = 423

    def __init__(self, address: str, reason: str = "is locked: unlock it first") -> None:
        super().__init__(f"account {address} {reason}")
        self.address = address


class KdfBusy(WalletError):
    """Raised when a process's ``KdfGate`` already runs and queues all the password KDFs it allows.

    Nothing was attempted: the password was not checked and no key was created;
    retry after ``retry_after`` seconds.
    """

    status = 503

    def __init__(self, *, retry_after: int) -> None:
        super().__init__(f"too many password checks in progress: retry in {retry_after} s")
        self.retry_after = retry_after


class SendError(WalletError):
    """Root of the errors of broadcasting one signed transaction."""

    status = 502

    def __init__(self, message: str, *, tx_hash: str) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash


class NonceTooLow(SendError):
    """Raised when a node says "nonce too low" and no node knows our transaction.

    The nonce's slot is taken on chain by another transaction, so ours can never
    be mined: the caller resyncs the nonce counter and signs again with a NEW
    nonce (see ``wallet.broadcast.broadcast``).
    """

    status = 409

    def __init__(self, *, tx_hash: str, nonce: int | None, node_id: str | None) -> None:
        super().__init__(
            f"nonce {nonce if nonce is not None else '?'} of transaction {tx_hash} is already used on chain"
            f" (said by {node_id or 'a node'})",
            tx_hash=tx_hash,
        )
        self.nonce = nonce
        self.node_id = node_id


class TxRejected(SendError):
    """Raised when every node the bytes reached answered and refused the transaction for a definite reason.

    ``kind`` is a ``wallet.broadcast.TxErrorKind`` value (insufficient_funds,
    intrinsic_gas_too_low, replacement_underpriced, ...); ``node_message`` is the
    first node's own words. No node holds the transaction, so its nonce may be
    released for reuse - except for "replacement_underpriced", where another
    transaction holds that nonce: sign again with a new nonce, release nothing.
    """

    status = 422

    def __init__(self, *, tx_hash: str, kind: str, node_message: str, node_id: str | None,
                 node_code: int | None = None, node_data: Any = None) -> None:
        super().__init__(f"transaction {tx_hash} refused by {node_id or 'the node'}: {node_message}", tx_hash=tx_hash)
        self.kind = kind
        self.node_message = node_message
        self.node_id = node_id
        #: The node's JSON-RPC error code and data, for callers that pass the refusal on as it was (``/rpc``).
        self.node_code = node_code
        self.node_data = node_data


class BroadcastFailed(SendError):
    """Raised when no node accepted the transaction and at least one failure was not a definite refusal.

    ``may_have_reached_node`` is True when a node failed in a way that leaves it
    unknown whether it took the bytes (timeout, connection dropped, HTTP 5xx):
    then the nonce must NOT be released; retry the same signed bytes later.
    """

    status = 503

    def __init__(self, *, tx_hash: str, attempts: Sequence[str], may_have_reached_node: bool) -> None:
        super().__init__(f"no node accepted transaction {tx_hash}: {'; '.join(attempts) or 'no node to try'}", tx_hash=tx_hash)
        self.attempts = tuple(attempts)
        self.may_have_reached_node = may_have_reached_node
