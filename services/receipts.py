"""Receipt tracking without holding a worker slot.

A write task ends once its transactions are broadcast; it registers them here.
A beat task (``track_receipts``, every ESP_RECEIPT_INTERVAL on the control
queue) reads the receipts of every block mined since its last pass, one
``eth_getBlockReceipts`` per block in one JSON-RPC batch (a few calls per second
however many transactions are watched, where asking by hash cost one call per
watched transaction per pass); a transaction the blocks did not show is asked for
by hash every CHECK_BY_HASH_EVERY seconds, and at once when an earlier pass read
blocks after it was broadcast (it may be in one of them: the write path watches a
task after its broadcast, so a block can be mined and read in between). Then it:

- confirms a task once every transaction of it has a receipt buried under
  ESP_CONFIRMATIONS blocks (``confirmed``, with the receipt fields), or fails it
  with the decoded revert reason when one reverted;
- re-broadcasts the same signed bytes of a transaction still not mined every
  REBROADCAST_EVERY seconds (a node that crashed with it in its pool lost it);
- past ESP_TX_DEADLINE, replaces a transaction (same nonce, fees raised) or
  reports it on the task, per ESP_TX_DEADLINE_ACTION.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from prometheus_client import Counter

from contracts import decode_revert
from errors import EspError, NodeUnreachable, RpcError
from nodepool.activity import count_on
from nodepool.failover import NoNodeAnswered, first_answer
from nodepool.rpc import RpcClient, to_int
from services.plans import OPERATIONS
from services.records import CONFIRMED, FAILED, TaskStore, apply
from services.watch import ReceiptWatch
from wallet.broadcast import broadcast, load_prepared_many, prepared_key, save_prepared
from wallet.nonces import NonceManager
from wallet.signing import PreparedTx, replace

log = logging.getLogger(__name__)

#: Watched tasks looked at per beat (the rest wait for the next one).
MAX_BATCH = 2000
#: Blocks whose receipts one pass reads at most; a tracker further behind asks by hash instead.
MAX_SCAN_BLOCKS = 64
#: A watched transaction the block scan has not found is also asked for by hash this often (it may have been
#: mined before it was watched: the write path watches a task after its last broadcast).
CHECK_BY_HASH_EVERY = 3.0
#: How far apart the clocks of the process that broadcast and the tracker's may be (s), for that "at once".
CLOCK_SKEW = 0.1
REBROADCAST_EVERY = 5.0
#: A replacement raises both fee caps by this much (geth and anvil need at least 10%).
BUMP_PERCENT = 15

FEE_BUMPS = Counter("esp_fee_bumps", "transactions not mined by their deadline, replaced with fees raised by BUMP_PERCENT")


def receipt_fields(receipt: dict[str, Any]) -> dict[str, Any]:
    """The receipt fields a task result carries."""
    return {
        "block_number": to_int(receipt["blockNumber"]),
        "block_hash": receipt["blockHash"],
        "gas_used": to_int(receipt["gasUsed"]),
        "effective_gas_price": to_int(receipt.get("effectiveGasPrice")),
        "status": to_int(receipt["status"]),
        "contract_address": receipt.get("contractAddress"),
        "logs": len(receipt.get("logs") or []),
    }


def revert_reason(client: RpcClient, tx_hash: str) -> str:
    """Why a mined transaction reverted (from a call trace), or a plain fallback."""
    try:
        trace = client.call("debug_traceTransaction", [tx_hash, {"tracer": "callTracer"}])
        return decode_revert(trace.get("output")) if trace.get("output") else "reverted without a reason"
    except (NodeUnreachable, RpcError) as exc:
        return f"reverted (reason unavailable: {exc})"


def track(
    store: TaskStore,
    watch: ReceiptWatch,
    clients: Sequence[RpcClient],
    *,
    confirmations: int,
    deadline_action: str,
    tx_deadline: float,
    signer: Callable[[str], LocalAccount],
    nonces: NonceManager,
    now: float | None = None,
) -> dict[str, int]:
    """One pass over the watched tasks; returns counts of what happened."""
    now = time.time() if now is None else now
    counts = {"watched": 0, "blocks": 0, "by_hash": 0, "confirmed": 0, "failed": 0, "rebroadcast": 0, "replaced": 0,
              "reported": 0}
    entries = watch.entries()
    counts["watched"] = len(entries)
    if not entries or not clients:
        return counts
    keys = [(task_id, step) for task_id, entry in entries for step in range(entry["steps"])]
    loaded = load_prepared_many(watch.redis, [prepared_key(f"{task_id}:{step}") for task_id, step in keys])
    prepared = {key: p for key, p in zip(keys, loaded, strict=True) if p is not None}
    watched = {h.lower() for p in prepared.values() for h in p.hashes}
    read_before = watch.cursor_read_at()  # the blocks up to the cursor were read then
    client, head, receipts, scanned = _scan_blocks(watch, clients, watched)
    counts["blocks"] = scanned.blocks
    for _, entry in entries:
        receipts.update(entry.get("receipts") or {})  # found by an earlier pass, waiting for confirmations
    changed: dict[str, dict[str, Any]] = {}
    finished: list[tuple[str, list[dict[str, Any]]]] = []  # settled below, all in a few round trips
    # A transaction mined before it was watched, or in a block the scan did not read, is asked for by hash.
    ask = []
    for task_id, entry in entries:
        checked_at = entry.get("checked_at", entry["broadcast_at"])
        # Never asked, and an earlier pass read blocks after its broadcast: it may be in one of them.
        missable = checked_at <= entry["broadcast_at"] and read_before is not None and entry["broadcast_at"] < read_before + CLOCK_SKEW
        if scanned.complete and not missable and now - checked_at < CHECK_BY_HASH_EVERY:
            continue
        missing = [h for s in range(entry["steps"]) if (p := prepared.get((task_id, s))) is not None
                   for h in p.hashes if h.lower() not in receipts]
        if missing:
            ask += missing
            entry["checked_at"] = now
            changed[task_id] = entry
    if ask:
        replies = client.batch_raw([("eth_getTransactionReceipt", [h]) for h in ask])
        receipts.update({h.lower(): r["result"] for h, r in zip(ask, replies, strict=True) if r.get("result")})
        counts["by_hash"] = len(ask)
    for task_id, entry in entries:
        steps = [prepared.get((task_id, s)) for s in range(entry["steps"])]
        if any(p is None for p in steps):
            store.update(task_id, state=FAILED, error={"type": "lost", "message": "the signed transaction record expired"})
            watch.done(task_id)
            changed.pop(task_id, None)
            counts["failed"] += 1
            continue
        found = [next((receipts[h.lower()] for h in p.hashes if h.lower() in receipts), None) for p in steps if p is not None]
        buried = [r is not None and head - to_int(r["blockNumber"]) + 1 >= confirmations for r in found]
        if all(buried):
            finished.append((task_id, [r for r in found if r is not None]))
            changed.pop(task_id, None)
            continue
        mined = {r["transactionHash"].lower(): r for r in found if r is not None}
        if mined and mined != entry.get("receipts"):
            entry["receipts"] = mined
            changed[task_id] = entry
        late = [(i, p) for i, (p, r) in enumerate(zip(steps, found, strict=True)) if r is None and p is not None]
        if not late:
            continue  # mined, waiting for confirmations
        if now > entry["deadline"]:
            changed.pop(task_id, None)  # written below, with its new deadline
            if deadline_action == "replace":
                _replace(store, watch, clients, task_id, entry, late, signer, nonces, tx_deadline, now, counts)
            else:
                store.update(task_id, error={"type": "deadline", "message": f"not mined within {tx_deadline:.0f} s; still watched"})
                entry["deadline"] = float("inf")
                watch.update(task_id, entry)
                counts["reported"] += 1
        elif now - entry["rebroadcast_at"] >= REBROADCAST_EVERY:
            for _, p in late:
                try:
                    broadcast(p.raw_bytes(), p.tx_hash, clients, nonce=p.nonce)
                except EspError as exc:
                    log.info("re-broadcast of %s: %s", p.tx_hash, exc)
            entry["rebroadcast_at"] = now
            changed[task_id] = entry
            counts["rebroadcast"] += 1
    _finish(store, watch, client, finished, counts)
    watch.update_many(changed)
    return counts


@dataclass(frozen=True)
class Scan:
    """What one pass read of the new blocks: how many, and whether it read every block up to the head."""

    blocks: int
    complete: bool


def _scan_blocks(watch: ReceiptWatch, clients: Sequence[RpcClient],
                 watched: set[str]) -> tuple[RpcClient, int, dict[str, dict[str, Any]], Scan]:
    """The head, and the receipts of watched transactions in the blocks since the cursor (one batch).

    Moves the cursor to the last block read. A node without ``eth_getBlockReceipts``,
    or a tracker more than MAX_SCAN_BLOCKS behind, makes the scan incomplete: the
    caller then asks for every missing receipt by hash.
    """
    client, replies = _ask_any(clients, [("eth_blockNumber", [])])
    head = to_int(replies[0].get("result"))
    cursor = watch.cursor()
    lowest = max(head - MAX_SCAN_BLOCKS + 1, 0)
    first = lowest if cursor is None or cursor > head else max(cursor + 1, lowest)
    complete = cursor is not None and cursor + 1 >= lowest
    blocks = list(range(first, head + 1))
    receipts: dict[str, dict[str, Any]] = {}
    if not blocks:
        return client, head, receipts, Scan(0, complete)
    read = first - 1
    for number, reply in zip(blocks, client.batch_raw([("eth_getBlockReceipts", [hex(n)]) for n in blocks]), strict=True):
        if reply.get("error") is not None or reply.get("result") is None:
            complete = False  # unsupported, or a block this node does not have yet: by hash this time
            break
        for receipt in reply["result"]:
            if receipt["transactionHash"].lower() in watched:
                receipts[receipt["transactionHash"].lower()] = receipt
        read = number
    if read >= first:
        watch.set_cursor(read)
    return client, head, receipts, Scan(read - first + 1, complete)


def _finish(store: TaskStore, watch: ReceiptWatch, client: RpcClient, finished: list[tuple[str, list[dict[str, Any]]]],
            counts: dict[str, int]) -> None:
    """Confirm (or fail, reverted) every task whose receipts are all buried: one MGET, then one MULTI of records
    and watch removals, records first (hooks and revert reasons, rare, still ask on their own)."""
    if not finished:
        return
    records = store.find_many([task_id for task_id, _ in finished])
    pipe = watch.redis.pipeline(transaction=True)
    written = []
    for (task_id, found), record in zip(finished, records, strict=True):
        watch.done_to(pipe, task_id)
        if record is None:
            continue  # expired: nothing to write
        result = dict(record.result or {})
        fields = [receipt_fields(r) for r in found]
        result.update(fields[0])
        if len(fields) > 1:
            result["transactions"] = [{"step": i, "tx_hash": r["transactionHash"], **f}
                                      for i, (r, f) in enumerate(zip(found, fields, strict=True))]
        result["tx_hash"] = found[0]["transactionHash"]
        failed = next((r for r in found if to_int(r["status"]) != 1), None)
        if failed is None:
            operation = OPERATIONS.get(record.operation)
            hook = operation.on_confirmed if operation else None
            if hook is not None:
                try:
                    result.update(hook(record.params, found, watch.redis))
                except Exception as exc:  # a hook must not leave the task unconfirmed forever
                    log.exception("confirm hook of %s failed", record.operation)
                    result["hook_error"] = str(exc)
            if apply(record, state=CONFIRMED, result=result):
                written.append(record)
                count_on(pipe, "confirmed", len(found))  # the dashboard's confirmed transactions per second
            counts["confirmed"] += 1
        else:
            reason = revert_reason(client, failed["transactionHash"])
            if apply(record, state=FAILED, result=result, error={"type": "reverted", "message": f"reverted on chain: {reason}",
                                                                 "reason": reason, "tx_hash": failed["transactionHash"]}):
                written.append(record)
            counts["failed"] += 1
    store.write_many(written, pipe)
    pipe.execute()


def _replace(store: TaskStore, watch: ReceiptWatch, clients: Sequence[RpcClient], task_id: str, entry: dict[str, Any],
             late: list[tuple[int, PreparedTx]], signer: Callable[[str], LocalAccount], nonces: NonceManager, tx_deadline: float,
             now: float, counts: dict[str, int]) -> None:
    for step, p in late:
        try:
            account = signer(p.sender)
        except EspError as exc:
            store.update(task_id, error={"type": "deadline", "message": f"not mined within {tx_deadline:.0f} s and "
                                         f"cannot be replaced: {exc}"})
            continue
        new = replace(account, p, BUMP_PERCENT)
        FEE_BUMPS.inc()
        save_prepared(watch.redis, prepared_key(f"{task_id}:{step}"), new, overwrite=True)
        nonces.record(p.sender, new.nonce, new.tx_hash, owner=f"{task_id}:{step}")
        try:
            broadcast(new.raw_bytes(), new.tx_hash, clients, nonce=new.nonce)
        except EspError as exc:
            log.warning("replacement %s of %s: %s", new.tx_hash, p.tx_hash, exc)
        record = store.find(task_id)
        result = dict(record.result or {}) if record else {}
        result["replaced"] = int(result.get("replaced", 0)) + 1
        store.update(task_id, result=result)
        counts["replaced"] += 1
    entry["deadline"] = now + tx_deadline
    entry["rebroadcast_at"] = now
    watch.update(task_id, entry)


def _ask_any(clients: Sequence[RpcClient], calls: list[tuple[str, list[Any]]]) -> tuple[RpcClient, list[dict[str, Any]]]:
    try:
        return first_answer(clients, lambda client: client.batch_raw(calls), what="the receipt check")
    except NoNodeAnswered as exc:
        raise NodeUnreachable(str(exc)) from None
