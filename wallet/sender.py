"""Signing locally and broadcasting safely: same bytes everywhere, never a second nonce by mistake.

The protocol a write task follows (the Celery task is a thin wrapper around it;
``key = prepared_key(task.request.id)``):

1. ``prepared = load_prepared(r, key)``; if there is one, this is a re-run:
   ``nonces.record(...)`` it again (idempotent) and go to 4 with its bytes.
2. ``n = nonces.allocate(sender, clients, owner=task_id)``;
   ``prepared = sign_transaction(unlock.signer(sender), {..., "nonce": n})``.
3. ``prepared = save_prepared(r, key, prepared)`` - BEFORE any broadcast. It is
   SET NX: if a twin of this task (re-delivered while the first still runs) saved
   first, its record comes back and ours is dropped (``nonces.release`` our n when
   it differs). Then ``nonces.record(sender, n, prepared.tx_hash, owner=task_id)``.
4. ``broadcast(prepared.raw_bytes(), prepared.tx_hash, clients)``:
   - returns: a node holds the transaction; wait for its receipt elsewhere.
   - ``BroadcastFailed``: no node took the bytes. Retry step 4 later with the
     SAME bytes. Never re-sign: a node that timed out may have taken them.
     Only when giving up and ``may_have_reached_node`` is False may the nonce be
     released.
   - ``TxRejected``: every node answered and refused (insufficient funds, gas,
     fee...): no node holds it, so ``nonces.release`` the nonce, drop the
     prepared record and fail the task (or fix the fields and go to 2).
     Except ``kind == "replacement_underpriced"`` on a first send: another
     transaction holds our nonce in a pool, so do NOT release it; drop the
     prepared record and go to 2 for a new nonce.
   - ``NonceTooLow``: the slot is taken on chain by a transaction that is not
     ours (no node knows our hash). ``nonces.resync``, drop the prepared record,
     go to 2 for a NEW nonce. This is the one case where signing again is safe:
     the node that said "nonce too low" has that nonce consumed on its chain by
     another transaction, and every node answered that it does not know ours, so
     ours can never be mined. If the node that said it cannot be asked, the
     outcome is ``BroadcastFailed`` instead (retry later), because "our hash is
     unknown" must come from the node whose chain holds that nonce.

Why re-sending the same bytes is always safe: a signed transaction has one hash
and one nonce; a node that already holds it answers "already known" (geth) or
"transaction already imported" (anvil), and once mined it answers "nonce too
low", which ``broadcast`` resolves by finding our hash. Both count as success.

Error messages, as anvil 1.7.1 answers ``eth_sendRawTransaction`` (triggered here):
    -32003 "nonce too low"                      (also for a re-send of a mined transaction)
    -32003 "transaction already imported"       (re-send of a pending transaction)
    -32003 "replacement transaction underpriced" (same nonce, fees not both raised)
    -32003 "Insufficient funds for gas * price + value"
    -32003 "max fee per gas less than block base fee"
    -32000 "intrinsic gas too low"
    -32000 "intrinsic gas too high -- tx.gas_limit > env.block.gas_limit"
geth's are matched too ("already known", "known transaction", "transaction
underpriced", "exceeds block gas limit", "txpool is full", ...), case-insensitively.
anvil took a replacement with +5% fees; geth requires +10% on both fee fields,
so ``replace`` refuses less than 10%.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eth_keys.backends import get_backend
from eth_utils import keccak

from errors import NodeUnreachable, RpcError, ValidationError
from nodepool.failover import NoNodeAnswered, first_answer
from nodepool.rpc import RpcClient, to_int
from wallet.address import checksum
from wallet.errors import BroadcastFailed, NonceTooLow, TxRejected

if TYPE_CHECKING:
    import redis
    from eth_account.signers.local import LocalAccount

log = logging.getLogger(__name__)

MIN_BUMP_PERCENT = 10
PREPARED_PREFIX = "esp:prepared:"
PREPARED_TTL = 7 * 86_400
DEFAULT_PRIORITY_FEE = 10**9

_INT_FIELDS = ("chainId", "nonce", "gas", "value", "maxFeePerGas", "maxPriorityFeePerGas", "gasPrice", "type")
_ALLOWED_FIELDS = frozenset((*_INT_FIELDS, "to", "data", "accessList"))


# -- error classification -------------------------------------------------------


class TxErrorKind(enum.StrEnum):
    """What a node's refusal of ``eth_sendRawTransaction`` means for us."""

    ALREADY_KNOWN = "already_known"
    NONCE_TOO_LOW = "nonce_too_low"
    REPLACEMENT_UNDERPRICED = "replacement_underpriced"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    INTRINSIC_GAS_TOO_LOW = "intrinsic_gas_too_low"
    GAS_LIMIT_EXCEEDED = "gas_limit_exceeded"
    FEE_CAP_TOO_LOW = "fee_cap_too_low"
    UNDERPRICED = "underpriced"
    FEE_EXCEEDS_CAP = "fee_exceeds_cap"
    INVALID = "invalid"
    NONCE_TOO_HIGH = "nonce_too_high"
    POOL_FULL = "pool_full"
    NODE_ERROR = "node_error"
    UNKNOWN = "unknown"


#: Refusals that hold for these bytes on any node of the chain; the rest are transient.
DEFINITE_REFUSALS = frozenset({
    TxErrorKind.REPLACEMENT_UNDERPRICED,
    TxErrorKind.INSUFFICIENT_FUNDS,
    TxErrorKind.INTRINSIC_GAS_TOO_LOW,
    TxErrorKind.GAS_LIMIT_EXCEEDED,
    TxErrorKind.FEE_CAP_TOO_LOW,
    TxErrorKind.UNDERPRICED,
    TxErrorKind.FEE_EXCEEDS_CAP,
    TxErrorKind.INVALID,
})

# Order matters: the first kind whose fragment occurs wins ("replacement
# transaction underpriced" before "underpriced").
_PATTERNS: tuple[tuple[TxErrorKind, tuple[str, ...]], ...] = (
    (TxErrorKind.ALREADY_KNOWN, ("already known", "known transaction", "already imported", "alreadyknown")),
    (TxErrorKind.NONCE_TOO_LOW, ("nonce too low", "nonce is too low", "oldnonce", "too stale nonce")),
    (TxErrorKind.REPLACEMENT_UNDERPRICED, ("replacement transaction underpriced", "replacement underpriced",
                                           "future transaction tries to replace pending")),
    (TxErrorKind.INSUFFICIENT_FUNDS, ("insufficient funds",)),
    (TxErrorKind.INTRINSIC_GAS_TOO_LOW, ("intrinsic gas too low",)),
    (TxErrorKind.GAS_LIMIT_EXCEEDED, ("exceeds block gas limit", "intrinsic gas too high", "gas limit reached")),
    (TxErrorKind.FEE_CAP_TOO_LOW, ("max fee per gas less than block base fee", "fee cap less than block base fee",
                                   "feecap too low", "fee cap too low")),
    (TxErrorKind.INVALID, ("max priority fee per gas higher than max fee per gas", "tip above fee cap",
                           "invalid sender", "invalid signature", "invalid chain id", "incorrect chain id",
                           "chain id mismatch", "replay-protected", "transaction type not supported",
                           "oversized data", "negative value", "max initcode size exceeded")),
    (TxErrorKind.UNDERPRICED, ("transaction underpriced", "underpriced")),
    (TxErrorKind.FEE_EXCEEDS_CAP, ("exceeds the configured cap",)),
    (TxErrorKind.NONCE_TOO_HIGH, ("nonce too high",)),
    (TxErrorKind.POOL_FULL, ("txpool is full", "transaction pool is full", "pool is full", "account limit exceeded")),
)


def classify_error(message: str, code: int | None = None) -> TxErrorKind:
    """Classify a node's error message for ``eth_sendRawTransaction`` (geth, anvil, others)."""
    text = message.lower()
    for kind, fragments in _PATTERNS:
        if any(fragment in text for fragment in fragments):
            return kind
    if code in (-32603, -32005):  # internal error, limit exceeded: the node's trouble, not the transaction's
        return TxErrorKind.NODE_ERROR
    return TxErrorKind.UNKNOWN


# -- signing ----------------------------------------------------------------------


def signing_backend() -> str:
    """The eth_keys backend signing uses ("CoinCurveECCBackend" is ~10x faster than "NativeECCBackend")."""
    return type(get_backend()).__name__


def has_fast_signing() -> bool:
    """True when coincurve (libsecp256k1) does the signing."""
    return signing_backend() == "CoinCurveECCBackend"


@dataclass(frozen=True)
class PreparedTx:
    """A signed transaction, kept in Redis before its first broadcast so a re-run sends the same bytes."""

    chain_id: int
    sender: str
    nonce: int
    tx_hash: str
    raw: str
    fields: dict[str, Any]
    #: Hashes of earlier versions with this nonce (fee bumps): any of them may be the one mined.
    previous_hashes: tuple[str, ...] = field(default=())

    @property
    def hashes(self) -> tuple[str, ...]:
        """Every hash that may end up mined for this nonce, newest last."""
        return (*self.previous_hashes, self.tx_hash)

    def raw_bytes(self) -> bytes:
        """The signed bytes to hand to ``eth_sendRawTransaction``."""
        return bytes.fromhex(self.raw[2:])

    def to_json(self) -> str:
        """Serialise for Redis (no secret inside: a signed transaction is public once sent)."""
        return json.dumps(
            {
                "chain_id": self.chain_id, "sender": self.sender, "nonce": self.nonce, "tx_hash": self.tx_hash,
                "raw": self.raw, "fields": self.fields, "previous_hashes": list(self.previous_hashes),
            },
            sort_keys=True, separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> PreparedTx:
        """Rebuild from ``to_json``'s output."""
        data = json.loads(raw)
        return cls(
            chain_id=int(data["chain_id"]), sender=str(data["sender"]), nonce=int(data["nonce"]),
            tx_hash=str(data["tx_hash"]), raw=str(data["raw"]), fields=dict(data["fields"]),
            previous_hashes=tuple(data.get("previous_hashes", ())),
        )


def normalise_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Check and normalise unsigned transaction fields to a JSON-safe dict eth_account signs as is."""
    unknown = set(fields) - _ALLOWED_FIELDS
    if unknown:
        raise ValidationError(sorted(unknown)[0], "is not a transaction field ESP signs")
    out: dict[str, Any] = {}
    for name in _INT_FIELDS:
        if name in fields and fields[name] is not None:
            value = fields[name]
            try:
                number = to_int(value) if isinstance(value, str) else int(value)
            except (TypeError, ValueError):
                raise ValidationError(name, "must be a non-negative integer") from None
            if isinstance(value, bool) or number < 0:
                raise ValidationError(name, "must be a non-negative integer")
            out[name] = number
    for name in ("chainId", "nonce", "gas"):
        if name not in out:
            raise ValidationError(name, "is required to sign")
    has_1559 = "maxFeePerGas" in out or "maxPriorityFeePerGas" in out
    if has_1559 and not ("maxFeePerGas" in out and "maxPriorityFeePerGas" in out):
        raise ValidationError("maxFeePerGas", "maxFeePerGas and maxPriorityFeePerGas go together")
    if has_1559 == ("gasPrice" in out):
        raise ValidationError("gasPrice", "give either gasPrice or maxFeePerGas + maxPriorityFeePerGas")
    if has_1559 and out["maxPriorityFeePerGas"] > out["maxFeePerGas"]:
        raise ValidationError("maxPriorityFeePerGas", "must not exceed maxFeePerGas")
    if fields.get("to") not in (None, "", b""):
        out["to"] = checksum(fields["to"], "to")
    data = fields.get("data")
    if data not in (None, "", b""):
        if isinstance(data, (bytes, bytearray)):
            out["data"] = "0x" + bytes(data).hex()
        elif isinstance(data, str):
            digits = data[2:] if data.startswith("0x") else data
            try:
                bytes.fromhex(digits)
            except ValueError:
                raise ValidationError("data", "must be hex bytes") from None
            out["data"] = "0x" + digits.lower()
        else:
            raise ValidationError("data", "must be hex bytes")
    if fields.get("accessList"):
        out["accessList"] = json.loads(json.dumps(fields["accessList"]))
    return out


def sign_transaction(account: LocalAccount, fields: Mapping[str, Any]) -> PreparedTx:
    """Sign ``fields`` (chainId, nonce, gas and fees required) with ``account``; nothing is sent."""
    clean = normalise_fields(fields)
    signed = account.sign_transaction(clean)
    return PreparedTx(
        chain_id=clean["chainId"],
        sender=str(account.address),
        nonce=clean["nonce"],
        tx_hash=signed.hash.to_0x_hex(),
        raw=signed.raw_transaction.to_0x_hex(),
        fields=clean,
    )


def bump_fees(fields: Mapping[str, Any], bump_percent: int = MIN_BUMP_PERCENT, *, min_max_fee_per_gas: int = 0) -> dict[str, Any]:
    """``fields`` with every fee raised by at least ``bump_percent`` (>= 10, rounded up, +1 wei at least)."""
    if isinstance(bump_percent, bool) or not isinstance(bump_percent, int) or bump_percent < MIN_BUMP_PERCENT:
        raise ValidationError("bump_percent", f"must be a whole percentage >= {MIN_BUMP_PERCENT} (nodes refuse smaller bumps)")
    clean = normalise_fields(fields)

    def raised(old: int) -> int:
        return max(old + 1, -(-old * (100 + bump_percent) // 100))

    if "gasPrice" in clean:
        clean["gasPrice"] = max(raised(clean["gasPrice"]), min_max_fee_per_gas)
    else:
        clean["maxPriorityFeePerGas"] = raised(clean["maxPriorityFeePerGas"])
        clean["maxFeePerGas"] = max(raised(clean["maxFeePerGas"]), min_max_fee_per_gas, clean["maxPriorityFeePerGas"])
    return clean


def replace(
    account: LocalAccount, prepared: PreparedTx, bump_percent: int = MIN_BUMP_PERCENT, *, min_max_fee_per_gas: int = 0
) -> PreparedTx:
    """Re-sign ``prepared`` with the same nonce and fees raised by ``bump_percent`` (a stuck transaction)."""
    if checksum(account.address) != checksum(prepared.sender):
        raise ValidationError("sender", "the signer is not the sender of the transaction to replace")
    bumped = sign_transaction(account, bump_fees(prepared.fields, bump_percent, min_max_fee_per_gas=min_max_fee_per_gas))
    return PreparedTx(
        chain_id=bumped.chain_id, sender=bumped.sender, nonce=bumped.nonce, tx_hash=bumped.tx_hash, raw=bumped.raw,
        fields=bumped.fields, previous_hashes=prepared.hashes,
    )


def cancel(account: LocalAccount, prepared: PreparedTx, bump_percent: int = MIN_BUMP_PERCENT) -> PreparedTx:
    """A 0-value transfer to oneself with ``prepared``'s nonce and raised fees: it takes the nonce instead."""
    fields = {k: v for k, v in prepared.fields.items() if k in _INT_FIELDS}
    fields.update(to=prepared.sender, value=0, gas=21_000)
    fields.pop("data", None)
    return replace(account, dataclasses.replace(prepared, fields=fields), bump_percent)


def suggest_fees(client: RpcClient, *, timeout: float | None = None) -> dict[str, int]:
    """EIP-1559 fees that stay valid for a few blocks of rising base fee: maxFee = 2 x base fee + tip."""
    block, tip = client.batch_raw([("eth_getBlockByNumber", ["latest", False]), ("eth_maxPriorityFeePerGas", [])], timeout=timeout)
    if ("error" in block and block["error"] is not None) or not isinstance(block.get("result"), dict):
        raise NodeUnreachable(f"{client.url} gave no latest block", node_id=client.node_id)
    priority = to_int(tip["result"]) if tip.get("result") is not None else DEFAULT_PRIORITY_FEE
    base = block["result"].get("baseFeePerGas")
    if base is None:  # a chain without EIP-1559
        return {"gasPrice": to_int(client.call("eth_gasPrice", timeout=timeout))}
    return {"maxFeePerGas": 2 * to_int(base) + priority, "maxPriorityFeePerGas": priority}


# -- the prepared record in Redis -------------------------------------------------


def prepared_key(task_id: str) -> str:
    """Where a task's prepared transaction is kept: ``esp:prepared:<task id>``."""
    return PREPARED_PREFIX + task_id


def save_prepared(
    redis_client: redis.Redis, key: str, prepared: PreparedTx, *, ttl: int = PREPARED_TTL, overwrite: bool = False
) -> PreparedTx:
    """Store ``prepared`` under ``key`` unless one is there already; return the record that IS stored.

    First writer wins (SET NX), so two copies of one task cannot both send: the
    loser gets the winner's record back and must release its own nonce.
    ``overwrite=True`` is for a fee-bump replacement of the stored record.
    """
    body = prepared.to_json()
    if overwrite:
        redis_client.set(key, body, ex=ttl)
        return prepared
    for _ in range(3):
        if redis_client.set(key, body, ex=ttl, nx=True):
            return prepared
        existing = load_prepared(redis_client, key)
        if existing is not None:
            return existing
        # It expired between SET NX and GET: try again.
    raise RuntimeError(f"could not store the prepared transaction under {key}")


def load_prepared(redis_client: redis.Redis, key: str) -> PreparedTx | None:
    """The prepared transaction stored under ``key``, or None."""
    raw: Any = redis_client.get(key)
    return None if raw is None else PreparedTx.from_json(raw)


def delete_prepared(redis_client: redis.Redis, key: str) -> None:
    """Forget a prepared transaction (after TxRejected or NonceTooLow, before signing anew)."""
    redis_client.delete(key)


# -- broadcasting -------------------------------------------------------------------


@dataclass(frozen=True)
class Broadcast:
    """Which node holds our transaction, and how we know."""

    node_id: str | None
    url: str
    outcome: str  # "accepted", "already_known" or "known" (found by hash after "nonce too low")
    attempts: tuple[str, ...] = ()


def find_transaction(tx_hash: str, clients: Sequence[RpcClient], *, timeout: float | None = None) -> tuple[RpcClient, dict[str, Any]] | None:
    """The first node that knows ``tx_hash`` (pending or mined) and what it says, or None."""
    try:
        return first_answer(clients, lambda client: client.call("eth_getTransactionByHash", [tx_hash], timeout=timeout),
                            what="eth_getTransactionByHash", accept=bool, retry_on=(NodeUnreachable, RpcError))
    except NoNodeAnswered:
        return None


def broadcast(
    raw_tx: bytes, tx_hash: str, clients: Sequence[RpcClient], *, nonce: int | None = None, timeout: float | None = None
) -> Broadcast:
    """Send the signed bytes to the first client; on a node error, the SAME bytes to the next.

    Success: a node accepted them, already had them, or (after "nonce too low")
    some node knows our hash. Raises NonceTooLow, TxRejected or BroadcastFailed;
    the module docstring says what the caller does with each.
    """
    computed = "0x" + keccak(raw_tx).hex()
    if computed != tx_hash.lower():
        raise ValidationError("tx_hash", "does not match the signed bytes")
    raw_hex = "0x" + raw_tx.hex()
    attempts: list[str] = []
    refusals: list[tuple[TxErrorKind, str, str | None]] = []
    ambiguous = False
    for client in clients:
        name = client.node_id or client.url
        try:
            answer = client.call("eth_sendRawTransaction", [raw_hex], timeout=timeout)
        except NodeUnreachable as exc:
            # No answer: the node may or may not have taken the bytes. Same bytes elsewhere is safe.
            ambiguous = True
            attempts.append(f"{name}: {exc}")
            continue
        except RpcError as exc:
            kind = classify_error(exc.rpc_message, exc.code)
            if kind is TxErrorKind.ALREADY_KNOWN:
                log.info("tx %s already known to %s", computed, name)
                return Broadcast(client.node_id, client.url, "already_known", tuple(attempts))
            if kind is TxErrorKind.NONCE_TOO_LOW:
                return _after_nonce_too_low(computed, client, clients, attempts, nonce=nonce, timeout=timeout)
            attempts.append(f"{name}: {exc.rpc_message}")
            if kind in DEFINITE_REFUSALS:
                refusals.append((kind, exc.rpc_message, client.node_id))
            continue
        if isinstance(answer, str) and answer.lower() != computed:
            log.warning("node %s answered hash %s for tx %s", name, answer, computed)
        log.debug("tx %s accepted by %s", computed, name)
        return Broadcast(client.node_id, client.url, "accepted", tuple(attempts))
    if refusals and len(refusals) == len(clients):
        kind, message, node_id = refusals[0]
        raise TxRejected(tx_hash=computed, kind=kind.value, node_message=message, node_id=node_id)
    raise BroadcastFailed(tx_hash=computed, attempts=attempts, may_have_reached_node=ambiguous)


def _after_nonce_too_low(
    tx_hash: str, saying: RpcClient, clients: Sequence[RpcClient], attempts: list[str], *, nonce: int | None, timeout: float | None
) -> Broadcast:
    """Resolve "nonce too low": ours mined or pending somewhere is success; unknown everywhere is NonceTooLow."""
    # Ask the node that said it first: its chain holds that nonce, so it is the one that can say "not ours".
    ordered = [saying, *(c for c in clients if c is not saying)]
    saying_answered = False
    for client in ordered:
        try:
            found = client.call("eth_getTransactionByHash", [tx_hash], timeout=timeout)
        except (NodeUnreachable, RpcError) as exc:
            attempts.append(f"{client.node_id or client.url}: lookup failed: {exc}")
            continue
        if client is saying:
            saying_answered = True
        if found:
            log.info("tx %s: nonce too low at %s, and the tx is known to %s", tx_hash, saying.node_id or saying.url, client.node_id or client.url)
            return Broadcast(client.node_id, client.url, "known", tuple(attempts))
    if not saying_answered:
        raise BroadcastFailed(tx_hash=tx_hash, attempts=attempts, may_have_reached_node=True)
    raise NonceTooLow(tx_hash=tx_hash, nonce=nonce, node_id=saying.node_id or saying.url)
