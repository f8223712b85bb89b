"""Broadcasting safely: same bytes everywhere, never a second nonce by mistake.

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
   - ``TxRejected``: every node the bytes reached refused them (insufficient funds,
     gas, fee...; a node whose connection was refused never got them): no node holds it, so ``nonces.release`` the nonce, drop the
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

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_utils import keccak

from errors import NodeUnreachable, RpcError, ValidationError
from nodepool.failover import NoNodeAnswered, first_answer
from nodepool.rpc import RpcClient
from wallet.errors import BroadcastFailed, NonceTooLow, TxRejected
from wallet.signing import PreparedTx

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

PREPARED_PREFIX = "esp:prepared:"
PREPARED_TTL = 7 * 86_400


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


def save_prepared_many(redis_client: redis.Redis, items: Sequence[tuple[str, PreparedTx]], *,
                       ttl: int = PREPARED_TTL) -> list[PreparedTx]:
    """``save_prepared`` for many (key, prepared) in one pipeline; the records that ARE stored, in order.

    Same first-writer-wins rule: where a key already held a record, that record comes back
    (read in a second round trip, only then) and the caller must release its own nonce.
    """
    if not items:
        return []
    pipe = redis_client.pipeline(transaction=False)
    for key, prepared in items:
        pipe.set(key, prepared.to_json(), ex=ttl, nx=True)
    stored = pipe.execute()
    lost = [key for (key, _), ok in zip(items, stored, strict=True) if not ok]
    if not lost:
        return [prepared for _, prepared in items]
    winners = dict(zip(lost, load_prepared_many(redis_client, lost), strict=True))
    out = []
    for key, prepared in items:
        winner = winners.get(key, prepared)
        if winner is None:  # expired between SET NX and GET: store ours the one-by-one way
            winner = save_prepared(redis_client, key, prepared, ttl=ttl)
        out.append(winner)
    return out


def load_prepared(redis_client: redis.Redis, key: str) -> PreparedTx | None:
    """The prepared transaction stored under ``key``, or None."""
    raw: Any = redis_client.get(key)
    return None if raw is None else PreparedTx.from_json(raw)


def load_prepared_many(redis_client: redis.Redis, keys: Sequence[str]) -> list[PreparedTx | None]:
    """The prepared transactions stored under ``keys`` (None where there is none), in one round trip."""
    if not keys:
        return []
    raws: Any = redis_client.mget(list(keys))
    return [None if raw is None else PreparedTx.from_json(raw) for raw in raws]


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
    refusals: list[tuple[TxErrorKind, RpcError, str | None]] = []
    ambiguous = False
    for client in clients:
        name = client.node_id or client.url
        try:
            answer = client.call("eth_sendRawTransaction", [raw_hex], timeout=timeout)
        except NodeUnreachable as exc:
            # No answer: unless the connection was refused, the node may have taken the bytes. Same bytes elsewhere is safe.
            ambiguous = ambiguous or exc.delivered
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
                refusals.append((kind, exc, client.node_id))
            continue
        if isinstance(answer, str) and answer.lower() != computed:
            log.warning("node %s answered hash %s for tx %s", name, answer, computed)
        log.debug("tx %s accepted by %s", computed, name)
        return Broadcast(client.node_id, client.url, "accepted", tuple(attempts))
    if refusals and not ambiguous:
        # Every node that got the bytes refused them (the others never got them): the node's answer is the answer.
        kind, error, node_id = refusals[0]
        raise TxRejected(tx_hash=computed, kind=kind.value, node_message=error.rpc_message, node_id=node_id,
                         node_code=error.code, node_data=error.data)
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
