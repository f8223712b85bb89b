"""Batched sending: one drain sends every queued call of ONE sender together.

A drain holds its sender (``services.outbox``) and, until the outbox is empty or
its time budget is spent, takes up to MAX_BATCH task ids at a time and sends them
as one batch, keeping ``wallet.broadcast``'s protocol for every transaction:

1. the task records, one MGET; the live ones are marked running in one pipeline;
2. prepared transactions already stored (a drain that died after saving): re-sent
   as they are, never signed again;
3. for the others, ONE JSON-RPC batch to a node (``services.preflight``): the
   sender's pending balance, the fees, eth_estimateGas where a call needs it. A
   task whose cost, added to those before it, exceeds the balance fails here,
   before it takes a nonce (a node would take it, then drop it unmined with every
   later nonce behind it);
4. their nonces in one script (``NonceManager.allocate_many``), signed in a tight
   loop (``wallet.signing.sign_many``: libsecp256k1 without eth_account's formatting), saved (SET NX) in one pipeline and recorded in one script, all BEFORE the
   first broadcast;
5. every transaction in ONE ``eth_sendRawTransaction`` batch, in nonce order. A
   refusal or no answer is retried alone through ``wallet.broadcast.broadcast``
   (the same bytes to the next nodes), which also resolves "nonce too low";
6. the records (broadcast or failed) and the receipt watch in one MULTI pipeline.

A transaction every node refuses definitely (say the balance fell meanwhile)
fails its task with the node's reason. Its nonce is given back when no later
nonce of the batch was taken; otherwise a zero-value transfer to itself takes
that nonce (a task of ESP's own, ``fill_nonce``, watched like any other), because
the later transactions are already in the nodes' pools: signing them again with
lower nonces could get both versions mined.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from errors import NoHealthyNode
from nodepool.failover import NoNodeAnswered, first_answer
from nodepool.rpc import RpcClient
from nodepool.spec import ROLE_LEADER
from services.operations import Operation, Plan, Planning
from services.outbox import Outbox
from services.preflight import affordable, max_cost, preflight
from services.records import BROADCAST, FAILED, FINAL, RUNNING, WAITING, TaskRecord, apply
from services.sending import SendContext, Sender, TaskFailed, TxRequest
from wallet.broadcast import (
    TxErrorKind,
    broadcast,
    classify_error,
    delete_prepared,
    load_prepared_many,
    prepared_key,
    save_prepared_many,
)
from wallet.errors import AccountLocked, BroadcastFailed, NonceTooLow, TxRejected
from wallet.signing import PreparedTx, sign_many, sign_transaction

log = logging.getLogger(__name__)

#: Task ids one batch takes at most.
MAX_BATCH = 256
#: Seconds a drain keeps taking new batches before it hands its sender over (a new drain message, at the queue's tail).
RUN_BUDGET = 1.0
#: Times one task may be signed anew in a run (its nonce taken by a transaction ESP did not send).
MAX_RESIGN = 3
#: The operation of the task that fills a refused transaction's nonce.
FILL_NONCE = "fill_nonce"

#: Called after a batch is saved and before it is broadcast (tests kill the process there).
Hook = Callable[[list[PreparedTx]], None]


@dataclass
class Item:
    """One task of a batch, as it goes."""

    record: TaskRecord
    plan: Plan
    request: TxRequest
    prepared: PreparedTx | None = None
    failure: TaskFailed | None = None

    @property
    def owner(self) -> str:
        return f"{self.record.id}:0"


@dataclass
class Drained:
    """What one drain run did. ``state``: done (nothing waits), busy (another drain holds the sender),
    more (budget spent, ids wait: drain again), waiting (no node took some: retry them later)."""

    state: str = "done"
    batches: int = 0
    sent: int = 0
    failed: int = 0
    reason: str = ""
    resigned: dict[str, int] = field(default_factory=dict)


class BatchSender:
    """Drains senders' outboxes, in one worker process, with the Sender's accounts, nonces, records and watch."""

    def __init__(self, sender: Sender, outbox: Outbox, planning: Planning, operations: Mapping[str, Operation]) -> None:
        self.sender = sender
        self.outbox = outbox
        self.planning = planning
        self.operations = operations
        self.settings = sender.settings
        self.store = sender.store
        self.redis = sender.pool.redis

    def drain(self, address: str, token: str, clients: Sequence[RpcClient], *, limit: int = MAX_BATCH,
              budget: float = RUN_BUDGET, after_save: Hook | None = None) -> Drained:
        """Send ``address``'s queued writes, batch after batch, as the holder ``token`` (a Celery task id)."""
        run = Drained()
        try:
            return self._drain(address, token, clients, run, limit=limit, budget=budget, after_save=after_save)
        except BaseException:
            # Whatever went wrong, the ids stay in flight: the next holder (the next message, the sweep) takes them.
            self.outbox.release(address, token, anyway=True)
            raise

    def _drain(self, address: str, token: str, clients: Sequence[RpcClient], run: Drained, *, limit: int, budget: float,
               after_save: Hook | None) -> Drained:
        started = time.monotonic()
        while True:
            ids = self.outbox.take(address, token, limit)
            if ids is None:
                run.state = "busy" if run.batches == 0 else "done"
                return run
            if not ids:
                if self.outbox.release(address, token):
                    return run
                continue  # an id came in between: take it
            pending, again = self._batch(address, ids, clients, run, after_save)
            if not self.outbox.settle(address, token, [*pending, *again]):
                log.warning("drain %s of %s lost its hold on the sender; its holder carries on", token, address)
                return run
            if pending:
                self.outbox.release(address, token, anyway=True)
                run.state, run.reason = "waiting", f"no node took {len(pending)} of the batch's transactions yet"
                return run
            if time.monotonic() - started > budget and not self.outbox.release(address, token):
                self.outbox.release(address, token, anyway=True)
                run.state = "more"
                return run

    # -- one batch ------------------------------------------------------------------------

    def _batch(self, address: str, ids: list[str], clients: Sequence[RpcClient], run: Drained,
               after_save: Hook | None) -> tuple[list[str], list[str]]:
        """Send the tasks ``ids``; return the ids to retry later (no node took them) and now (signed anew)."""
        node = clients[0].node_id if clients else None
        items, failed = self._load(address, ids)
        for item in items:
            apply(item.record, state=RUNNING, node=node)
        self._write([*items, *failed], [])
        run.failed += len(failed)
        if not items:
            return [], []
        stored = load_prepared_many(self.redis, [prepared_key(i.owner) for i in items])
        for item, prepared in zip(items, stored, strict=True):
            item.prepared = prepared
        fresh = [i for i in items if i.prepared is None]
        if fresh:
            try:
                self._prepare(address, fresh, [i for i in items if i.prepared is not None], clients)
            except NoHealthyNode as exc:  # no node answered the preflight or the pending count: all of them later
                return self._waiting(items, str(exc)), []
        ready = sorted((i for i in items if i.prepared is not None and i.failure is None), key=_nonce)
        if after_save is not None:
            after_save([i.prepared for i in ready if i.prepared is not None])
        sent, pending, again, refused = self._broadcast(address, ready, clients, run)
        self._fill_gaps(address, ready, refused, clients)
        failed = [i for i in items if i.failure is not None]
        for item in failed:
            apply(item.record, state=FAILED, error=item.failure.as_error() if item.failure else None)
        for item in sent:
            assert item.prepared is not None
            result = {"tx_hash": item.prepared.tx_hash, "nonce": item.prepared.nonce, "from": address, "node": node,
                      **item.plan.result}
            apply(item.record, state=BROADCAST, result=result)
        if pending:
            for item in pending:
                apply(item.record, state=WAITING, error={"type": "waiting", "message": "no node took the transaction yet"})
        self._write([*sent, *pending, *failed], sent)
        run.batches += 1
        run.sent += len(sent)
        run.failed += len(failed)
        log.info("batch of %s: %d sent, %d failed, %d waiting, %d to sign again (nonces %s)", address, len(sent),
                 len(failed), len(pending), len(again), _span([i.prepared.nonce for i in sent if i.prepared]))
        return [i.record.id for i in pending], [i.record.id for i in again]

    def _load(self, address: str, ids: list[str]) -> tuple[list[Item], list[Item]]:
        """The live tasks among ``ids`` with their plans, and the ones failed already (a plan that cannot be made)."""
        items: list[Item] = []
        failed: list[Item] = []
        seen: set[str] = set()
        for task_id, record in zip(ids, self.store.find_many(ids), strict=True):
            if record is None or task_id in seen or record.state in (BROADCAST, *FINAL):
                continue  # expired, a duplicate, or sent by an earlier run that died before settling
            seen.add(task_id)
            op = self.operations.get(record.operation)
            placeholder = Item(record, Plan(address, []), TxRequest(to=None))
            try:
                if op is None or not op.batched:
                    raise TaskFailed(f"{record.operation} is not a batched operation", kind="bad-arguments")
                plan = op.plan(self.planning, **record.params)
                if plan.sender.lower() != address.lower() or len(plan.steps) != 1:
                    raise TaskFailed(f"{record.operation} is not one transaction from {address}", kind="bad-arguments")
                items.append(Item(record, plan, plan.steps[0](SendContext(sender=address))))
            except TaskFailed as exc:
                placeholder.failure = exc
            except (TypeError, ValueError) as exc:  # a message this code cannot read (an older or newer API)
                placeholder.failure = TaskFailed(f"{record.operation}: {exc}", kind="bad-arguments")
            else:
                continue
            apply(record, state=FAILED, error=placeholder.failure.as_error())
            failed.append(placeholder)
        return items, failed

    def _prepare(self, address: str, fresh: list[Item], resent: list[Item], clients: Sequence[RpcClient]) -> None:
        """Check the funds, allocate, sign, save and record ``fresh``'s transactions (one preflight RPC batch)."""
        asked = preflight(address, [i.request for i in fresh], clients, block_gas_limit=self.settings.block_gas_limit,
                          timeout=self.settings.rpc_timeout)
        fields: dict[int, dict[str, Any]] = {}
        for item, gas in zip(fresh, asked.gas, strict=True):
            if isinstance(gas, TaskFailed):
                item.failure = gas
            else:
                fields[id(item)] = self._fields(item.request, gas, asked.fees)
        paying = [i for i in fresh if i.failure is None]
        # Signed ones sent again count too (they may not be in a pool yet): cautious, never optimistic.
        spent = sum(max_cost(i.prepared.fields) for i in resent if i.prepared is not None)
        for item, ok in zip(paying, affordable([max_cost(fields[id(i)]) for i in paying], asked.balance - spent), strict=True):
            if not ok:
                item.failure = TaskFailed(f"{address} cannot pay for this transaction: it costs up to {max_cost(fields[id(item)])} "
                                          "wei, more than its balance leaves after the transactions queued before it",
                                          kind="insufficient-funds", field="from")
        signing = [i for i in fresh if i.failure is None]
        if not signing:
            return
        try:
            account = self.sender.signer(address)
        except AccountLocked as exc:
            for item in signing:
                item.failure = TaskFailed(str(exc), kind="account-locked", field="from")
            return
        nonces = self.sender.nonces.allocate_many(address, clients, [i.owner for i in signing])
        signed = sign_many(account, [{**fields[id(i)], "nonce": n} for i, n in zip(signing, nonces, strict=True)])
        stored = save_prepared_many(self.redis, [(prepared_key(i.owner), p) for i, p in zip(signing, signed, strict=True)])
        for item, mine, kept in zip(signing, signed, stored, strict=True):
            if kept.tx_hash != mine.tx_hash and kept.nonce != mine.nonce:
                self.sender.nonces.release(address, mine.nonce, owner=item.owner)  # a twin saved first: send its bytes
            item.prepared = kept
        self.sender.nonces.record_many(address, [(i.prepared.nonce, i.prepared.tx_hash, i.owner)
                                                 for i in (*resent, *signing) if i.prepared is not None])

    def _fields(self, request: TxRequest, gas: int, fees: dict[str, int]) -> dict[str, Any]:
        fields: dict[str, Any] = {"chainId": self.settings.chain_id, "value": request.value, "data": request.data, "gas": gas}
        if request.to is not None:
            fields["to"] = request.to
        if request.gas_price is not None:
            fields["gasPrice"] = request.gas_price
        else:
            fields.update(fees)
        return fields

    def _broadcast(self, address: str, ready: list[Item], clients: Sequence[RpcClient],
                   run: Drained) -> tuple[list[Item], list[Item], list[Item], list[Item]]:
        """One batch to the first node that answers; a transaction it did not take, alone to every node.
        Returns (sent, waiting: no node took it, again: to sign anew, refused: every node refused it)."""
        sent: list[Item] = []
        pending: list[Item] = []
        again: list[Item] = []
        refused: list[Item] = []
        if not ready:
            return sent, pending, again, refused
        calls = [("eth_sendRawTransaction", [i.prepared.raw]) for i in ready if i.prepared is not None]
        timeout = self.settings.rpc_timeout
        try:
            _, replies = first_answer(self._producer_first(clients), lambda c: c.batch_raw(calls, timeout=timeout),
                                      what="the batch's broadcast")
        except NoNodeAnswered as exc:  # the same bytes go again later; a node that timed out may hold them
            log.info("batch of %s: %s", address, exc)
            return sent, list(ready), again, refused
        for item, reply in zip(ready, replies, strict=True):
            p = item.prepared
            assert p is not None
            error = reply.get("error")
            if error is None or classify_error(str(error.get("message", "")), error.get("code")) is TxErrorKind.ALREADY_KNOWN:
                sent.append(item)
                continue
            try:  # alone, through the single-transaction protocol: the same bytes, node after node
                broadcast(p.raw_bytes(), p.tx_hash, clients, nonce=p.nonce, timeout=timeout)
                sent.append(item)
            except BroadcastFailed:
                pending.append(item)
            except NonceTooLow:
                self.sender.nonces.resync(address, clients)
                self._sign_again(item, run, again, "its nonce was taken on chain by a transaction ESP did not send")
            except TxRejected as exc:
                if exc.kind == TxErrorKind.REPLACEMENT_UNDERPRICED:  # another transaction holds that nonce in a pool
                    self._sign_again(item, run, again, "its nonce is held by another transaction")
                    continue
                kind = "insufficient-funds" if exc.kind == TxErrorKind.INSUFFICIENT_FUNDS else "rejected"
                item.failure = TaskFailed(f"the node refused the transaction: {exc.node_message}", kind=kind,
                                          reason=exc.kind, nonce=p.nonce)
                refused.append(item)
        return sent, pending, again, refused

    def _producer_first(self, clients: Sequence[RpcClient]) -> list[RpcClient]:
        """The nodes to broadcast to, the pool's block producer first when it has one (a devnet's leader).

        A devnet follower only relays what it takes to the leader, on its next sync round, then
        drops it, and anvil's drop takes along every later transaction of the sender that
        arrived meanwhile (nodes.devnet.forwarding): measured, a burst sent to followers sat
        behind a nonce gap for 5-20 s, until the receipt tracker re-broadcast the lost ones. The
        balancer's choice still serves the drain's reads (nonces, fees, balance); pools of real
        nodes (no leader) keep its order.
        """
        leader = next((spec.id for spec in self.sender.pool.nodes() if spec.role == ROLE_LEADER), None)
        return sorted(clients, key=lambda c: c.node_id != leader) if leader else list(clients)

    def _sign_again(self, item: Item, run: Drained, again: list[Item], why: str) -> None:
        delete_prepared(self.redis, prepared_key(item.owner))
        tries = run.resigned[item.record.id] = run.resigned.get(item.record.id, 0) + 1
        if tries > MAX_RESIGN:
            item.failure = TaskFailed(f"the nonce of {item.plan.sender} kept being taken: {why}", kind="nonce-conflict")
        else:
            again.append(item)

    def _fill_gaps(self, address: str, ready: list[Item], refused: list[Item], clients: Sequence[RpcClient]) -> None:
        """Leave no nonce of a refused transaction empty below one that was taken (see the module docstring).

        Its prepared record goes only once the nonce is given back or filled: a drain that
        dies before sends the refused bytes again and comes back here.
        """
        taken = [i.prepared.nonce for i in ready if i not in refused and i.prepared is not None]
        for item in sorted(refused, key=_nonce, reverse=True):
            assert item.prepared is not None and item.failure is not None
            nonce = item.prepared.nonce
            if any(n > nonce for n in taken):
                try:
                    item.failure.details["nonce_filled_by"] = self._fill(address, item.record.id, item.prepared, clients)
                except AccountLocked:  # cannot sign a filler: the sender's next transaction takes the nonce instead
                    log.error("nonce %d of %s is left for its next transaction (the account is locked)", nonce, address)
                    self.sender.nonces.release(address, nonce, owner=item.owner)
            else:
                self.sender.nonces.release(address, nonce, owner=item.owner)
            delete_prepared(self.redis, prepared_key(item.owner))

    def _fill(self, address: str, task_id: str, refused: PreparedTx, clients: Sequence[RpcClient]) -> str:
        """Take ``refused``'s nonce with a zero-value transfer to itself (a task of ESP's own, watched); its hash."""
        fill_id = filler_id(task_id)
        owner = f"{fill_id}:0"
        fields = {k: v for k, v in refused.fields.items() if k in ("chainId", "maxFeePerGas", "maxPriorityFeePerGas", "gasPrice")}
        prepared = sign_transaction(self.sender.signer(address), {**fields, "nonce": refused.nonce, "to": address,
                                                                  "value": 0, "gas": 21_000})
        record = self.store.find(fill_id) or self.store.create(  # found: a run that died after making it
            fill_id, FILL_NONCE, "call", {"sender": address, "nonce": refused.nonce, "for_task": task_id})
        prepared = save_prepared_many(self.redis, [(prepared_key(owner), prepared)])[0]
        self.sender.nonces.record(address, prepared.nonce, prepared.tx_hash, owner=owner)
        try:
            broadcast(prepared.raw_bytes(), prepared.tx_hash, clients, nonce=prepared.nonce, timeout=self.settings.rpc_timeout)
        except (BroadcastFailed, NonceTooLow, TxRejected) as exc:
            log.error("the filler of nonce %d of %s was not taken (%s): the receipt tracker re-sends it", refused.nonce, address, exc)
        apply(record, state=BROADCAST, result={"tx_hash": prepared.tx_hash, "nonce": prepared.nonce, "from": address})
        pipe = self.redis.pipeline(transaction=True)
        self.store.write_many([record], pipe)
        self.sender.watch.add_to(pipe, fill_id, [prepared.tx_hash], deadline=time.time() + self.settings.tx_deadline)
        pipe.execute()
        log.warning("nonce %d of %s, refused for task %s, is taken by the zero-value transfer %s", refused.nonce, address,
                    task_id, prepared.tx_hash)
        return prepared.tx_hash

    def _waiting(self, items: list[Item], reason: str) -> list[str]:
        for item in items:
            apply(item.record, state=WAITING, error={"type": "waiting", "message": reason})
        self._write(items, [])
        return [i.record.id for i in items]

    def _write(self, items: list[Item], watched: list[Item]) -> None:
        """The records of ``items``, and ``watched`` handed to the receipt watch after them: one MULTI round trip."""
        if not items:
            return
        pipe = self.redis.pipeline(transaction=True)
        self.store.write_many([i.record for i in items], pipe)
        deadline = time.time() + self.settings.tx_deadline
        for item in watched:
            assert item.prepared is not None
            self.sender.watch.add_to(pipe, item.record.id, [item.prepared.tx_hash], deadline=deadline)
        if watched:
            Outbox.count(pipe, len(watched))
        pipe.execute()


def filler_id(task_id: str) -> str:
    """The id of the task that fills the nonce refused for ``task_id``: a UUID as every task's, the same on a re-run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"esp:fill-nonce:{task_id}"))


def _nonce(item: Item) -> int:
    return item.prepared.nonce if item.prepared is not None else -1


def _span(nonces: list[int]) -> str:
    return f"{min(nonces)}..{max(nonces)}" if nonces else "-"
