"""Raw transactions kept: the signed bytes a client sent through ``/rpc``, kept until they are mined.

``eth_sendRawTransaction`` stores the bytes under their hash BEFORE it answers (``keep``), so that
the node that took them dying before it mined them loses nothing: a beat task
(``tasks.control.resend_kept``) asks for their receipts, sends the same bytes again every
``RESEND_EVERY`` seconds while they are not mined (to the pool's block producer first), and forgets
them once mined under the reorg depth. The same bytes can be mined once at most (one nonce, one
hash); a node that already holds them answers "already known", one that mined them "nonce too low"
with the hash on chain, and both count as success (``wallet.broadcast``).

A kept transaction is also forgotten when its nonce was taken on chain by another transaction of the
sender (the client replaced it), when every node refuses it for good, or after ``KEEP_FOR``.

Redis, owned here::

    esp:rpc:kept        sorted set   tx hash, scored by when it was kept
    esp:rpc:kept:<hash> string       JSON {raw, nonce, chain_id, kept_at, sent_at}
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis
import rlp
from eth_utils import keccak

from errors import EspError, NodeUnreachable
from gateway.methods import InvalidParams
from nodepool.failover import NoNodeAnswered, first_answer
from nodepool.rpc import RpcClient, to_int
from wallet.broadcast import broadcast
from wallet.errors import NonceTooLow, TxRejected

log = logging.getLogger(__name__)

KEPT_SET = "esp:rpc:kept"
KEPT_KEY = "esp:rpc:kept:{}"
#: Seconds between sends of bytes not yet mined.
RESEND_EVERY = 3.0
#: A kept transaction not mined after this long is forgotten.
KEEP_FOR = 6 * 3600
#: Kept transactions looked at per pass.
MAX_PASS = 1000


@dataclass(frozen=True)
class RawTx:
    """A signed transaction as a client sent it: its hash, bytes, nonce and chain id (None: pre-EIP-155)."""

    tx_hash: str
    raw: str
    nonce: int
    chain_id: int | None

    def raw_bytes(self) -> bytes:
        return bytes.fromhex(self.raw[2:])


def decode_raw(value: str) -> RawTx:
    """Hash, nonce and chain id of signed bytes ("0x..."); InvalidParams when they are not a transaction."""
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise InvalidParams("params[0] must be 0x-prefixed hex bytes") from None
    if not raw:
        raise InvalidParams("params[0] is empty: it must be a signed transaction")
    try:
        if raw[0] >= 0xC0:  # legacy: rlp([nonce, gasPrice, gas, to, value, data, v, r, s])
            fields = rlp.decode(raw)
            nonce, v = _int(fields[0]), _int(fields[6])
            chain_id = (v - 35) // 2 if v >= 35 else None
        elif raw[0] <= 0x7F:  # typed (EIP-2718): type byte, then rlp([chainId, nonce, ...])
            fields = rlp.decode(raw[1:])
            chain_id, nonce = _int(fields[0]), _int(fields[1])
        else:
            raise ValueError("neither a legacy nor a typed transaction")
    except (rlp.DecodingError, ValueError, IndexError, TypeError) as exc:
        raise InvalidParams(f"params[0] is not a signed transaction: {exc}") from None
    return RawTx("0x" + keccak(raw).hex(), "0x" + raw.hex(), nonce, chain_id)


def _int(item: Any) -> int:
    if not isinstance(item, bytes):
        raise ValueError("a number field is a list")
    return int.from_bytes(item, "big")


class KeptTransactions:
    """The kept raw transactions in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def keep(self, tx: RawTx, *, now: float | None = None) -> None:
        """Keep ``tx`` (a second keep of the same bytes changes nothing)."""
        pipe = self.redis.pipeline(transaction=True)
        self.keep_on(pipe, tx, now=now)
        pipe.execute()

    def forget(self, tx_hash: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        self.forget_on(pipe, tx_hash)
        pipe.execute()

    # -- the same, queued on a pipeline the caller executes (the gateway's is asyncio's) ----------------

    @staticmethod
    def keep_on(pipe: Any, tx: RawTx, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        record = {**asdict(tx), "kept_at": now, "sent_at": now}
        pipe.set(KEPT_KEY.format(tx.tx_hash), json.dumps(record), nx=True, ex=KEEP_FOR + 3600)
        pipe.zadd(KEPT_SET, {tx.tx_hash: now}, nx=True)

    @staticmethod
    def forget_on(pipe: Any, tx_hash: str) -> None:
        pipe.delete(KEPT_KEY.format(tx_hash))
        pipe.zrem(KEPT_SET, tx_hash)

    def entries(self, limit: int = MAX_PASS) -> list[dict[str, Any]]:
        hashes = [h.decode() if isinstance(h, bytes) else str(h) for h in self.redis.zrange(KEPT_SET, 0, limit - 1)]
        if not hashes:
            return []
        out = []
        for tx_hash, raw in zip(hashes, self.redis.mget([KEPT_KEY.format(h) for h in hashes]), strict=True):
            if raw is None:
                self.redis.zrem(KEPT_SET, tx_hash)
                continue
            out.append(json.loads(raw))
        return out

    def sent(self, records: Sequence[dict[str, Any]], now: float) -> None:
        if not records:
            return
        pipe = self.redis.pipeline(transaction=False)
        for record in records:
            record["sent_at"] = now
            pipe.set(KEPT_KEY.format(record["tx_hash"]), json.dumps(record), xx=True, keepttl=True)
        pipe.execute()


def resend_pass(kept: KeptTransactions, clients: Sequence[RpcClient], *, depth: int,
                now: float | None = None) -> dict[str, int]:
    """One pass over the kept transactions (clients in the order to send to: the block producer first)."""
    now = time.time() if now is None else now
    counts = {"kept": 0, "mined": 0, "forgotten": 0, "resent": 0}
    records = kept.entries()
    counts["kept"] = len(records)
    if not records or not clients:
        return counts
    calls: list[tuple[str, list[Any]]] = [("eth_blockNumber", [])]
    calls += [("eth_getTransactionReceipt", [r["tx_hash"]]) for r in records]
    try:
        _, replies = first_answer(clients, lambda c: c.batch_raw(calls), what="the kept transactions' receipts")
    except NoNodeAnswered as exc:
        log.info("kept transactions: %s", exc)
        return counts
    head = to_int(replies[0].get("result"))
    resent = []
    for record, reply in zip(records, replies[1:], strict=True):
        receipt = reply.get("result")
        if receipt:
            counts["mined"] += 1
            if head - to_int(receipt["blockNumber"]) + 1 >= depth:
                kept.forget(record["tx_hash"])
                counts["forgotten"] += 1
            continue
        if now - record["kept_at"] > KEEP_FOR:
            kept.forget(record["tx_hash"])
            counts["forgotten"] += 1
            continue
        if now - record["sent_at"] < RESEND_EVERY:
            continue
        try:
            broadcast(bytes.fromhex(record["raw"][2:]), record["tx_hash"], clients, nonce=record["nonce"])
            resent.append(record)
        except (NonceTooLow, TxRejected) as exc:  # replaced by the client, or refused for good by every node
            log.info("kept transaction %s forgotten: %s", record["tx_hash"], exc)
            kept.forget(record["tx_hash"])
            counts["forgotten"] += 1
        except (EspError, NodeUnreachable) as exc:
            log.info("kept transaction %s not sent again yet: %s", record["tx_hash"], exc)
    kept.sent(resent, now)
    counts["resent"] = len(resent)
    return counts
