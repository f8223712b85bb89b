"""Sending a write task's transactions: sign locally, allocate nonces in Redis, broadcast safely.

(Calls, the batched operations, are sent many at a time by ``services.batch``, which
keeps the same protocol and uses this module's Sender for accounts, nonces and records.)

A write task sends one or more transactions ("steps") from one account. For
each step it follows wallet.broadcast's protocol: a prepared (signed) transaction
is stored in Redis under ``<task id>:<step>`` before it is first broadcast, so a
task that runs again (worker killed, re-delivered) re-sends the same bytes and
never signs a second transaction with a new nonce. Receipts are not awaited
here: every broadcast step is handed to the receipt tracker and the worker slot
is freed.

Steps may depend on earlier ones (a contract deploy followed by calls to it):
each step is built from a context that holds the addresses of contracts the
earlier steps create, computed from their sender and nonce (CREATE addresses
are known before mining).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from rlp import encode as rlp_encode

from balancer import TaskKind
from contracts import decode_revert
from errors import EspError, RpcError
from nodepool.failover import NoNodeAnswered, first_answer
from nodepool.placement import Placement
from nodepool.pool import Pool
from nodepool.rpc import RpcClient, to_int
from services.records import BROADCAST, RUNNING, TaskStore
from services.watch import ReceiptWatch
from wallet.broadcast import broadcast, delete_prepared, load_prepared, prepared_key, save_prepared
from wallet.errors import AccountLocked, BroadcastFailed, NonceTooLow, TxRejected
from wallet.nonces import NonceManager
from wallet.signing import PreparedTx, sign_transaction, suggest_fees
from wallet.unlock import UnlockStore

log = logging.getLogger(__name__)

#: Gas margin over eth_estimateGas (state may change between estimate and mining).
GAS_MARGIN = 1.25
#: How many times a step may be signed anew (nonce taken by another transaction).
MAX_RESIGN = 3


class TaskFailed(EspError):
    """Raised when a write task cannot succeed (revert, refusal, locked account); ends it as failed."""

    def __init__(self, message: str, *, kind: str = "failed", **details: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details

    def as_error(self) -> dict[str, Any]:
        return {"type": self.kind, "message": str(self), **self.details}


class NodeBusy(EspError):
    """Raised when no node took a transaction now; the task retries later with the same bytes."""


@dataclass(frozen=True)
class TxRequest:
    """One transaction a task wants sent (no nonce, no signature yet)."""

    to: str | None  # None creates a contract
    value: int = 0
    data: str = "0x"
    gas: int | None = None  # None: estimate
    gas_price: int | None = None  # set: a legacy transaction at this price; None: EIP-1559 fees


@dataclass
class SendContext:
    """What earlier steps of the task produced, for building later ones."""

    sender: str
    created: dict[int, str] = field(default_factory=dict)  # step -> contract address it creates


Step = Callable[[SendContext], TxRequest]


def create_address(sender: str, nonce: int) -> str:
    """The address a CREATE from ``sender`` at ``nonce`` deploys to."""
    return str(to_checksum_address(keccak(rlp_encode([bytes.fromhex(sender[2:]), nonce]))[12:]))


def estimate_call(sender: str, request: TxRequest) -> dict[str, Any]:
    """The ``eth_estimateGas`` call object for ``request`` sent by ``sender``."""
    call: dict[str, Any] = {"from": sender, "value": hex(request.value), "data": request.data}
    if request.to is not None:
        call["to"] = request.to
    return call


def estimate_failure(sender: str, exc: RpcError) -> TaskFailed:
    """What a refused ``eth_estimateGas`` means for the task: it would revert, its sender cannot pay, or else."""
    if exc.code == 3 or "revert" in exc.rpc_message.lower():
        reason = decode_revert(exc.data) if exc.data else exc.rpc_message
        return TaskFailed(f"the transaction would revert: {reason}", kind="reverted", reason=reason)
    if "insufficient funds" in exc.rpc_message.lower():
        return TaskFailed(f"{sender} cannot pay for this transaction: {exc.rpc_message}", kind="insufficient-funds", field="from")
    return TaskFailed(f"gas estimation failed: {exc.rpc_message}", kind="estimate-failed")


def gas_limit(estimate: int, block_gas_limit: int) -> int:
    """The gas a transaction is signed with: the estimate and a margin, at most a block's."""
    return min(int(estimate * GAS_MARGIN), block_gas_limit)


class Sender:
    """Sends the transactions of write tasks, in one worker process."""

    def __init__(self, pool: Pool, placement: Placement, store: TaskStore) -> None:
        settings = pool.settings
        self.pool = pool
        self.placement = placement
        self.store = store
        self.settings = settings
        self.nonces = NonceManager(pool.redis, settings.chain_id, lease_seconds=settings.nonce_lease_seconds)
        self.unlocked = UnlockStore(pool.redis, settings.secret_key)
        self.treasury: LocalAccount = Account.from_key(settings.treasury_key)
        self.watch = ReceiptWatch(pool.redis)

    # -- accounts -----------------------------------------------------------------

    def signer(self, address: str) -> LocalAccount:
        """The account that signs for ``address``: the treasury, or an unlocked ESP account."""
        if address.lower() == self.treasury.address.lower():
            return self.treasury
        return self.unlocked.signer(address)

    # -- sending -------------------------------------------------------------------

    def clients(self, kind: TaskKind, first: str | None) -> list[RpcClient]:
        return [self.pool.rpc(spec) for spec in self.placement.ordered(kind, first=first)]

    def send(self, task_id: str, kind: TaskKind, sender: str, steps: Sequence[Step], *, node: str | None,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send every step; return the task record's result (with ``extra``, the operation's own fields).

        The result is written with the broadcast state, before the receipt tracker
        can see the task, so a confirmation never races a later write of it.

        Raises TaskFailed (end the task) or NodeBusy (retry later, same bytes).
        """
        clients = self.clients(kind, node)
        self.store.update(task_id, state=RUNNING, node=clients[0].node_id if clients else node)
        context = SendContext(sender=sender)
        sent: list[dict[str, Any]] = []
        for index, build in enumerate(steps):
            prepared = self._send_step(task_id, index, kind, sender, build, context, clients)
            if prepared.fields.get("to") is None:
                context.created[index] = create_address(prepared.sender, prepared.nonce)
            sent.append({"step": index, "tx_hash": prepared.tx_hash, "nonce": prepared.nonce,
                         "contract_address": context.created.get(index)})
        first = sent[0]
        result = {
            "tx_hash": first["tx_hash"], "nonce": first["nonce"], "from": sender,
            "node": clients[0].node_id if clients else node,
        }
        if len(sent) > 1:
            result["transactions"] = sent
        if first["contract_address"]:
            result["contract_address"] = first["contract_address"]
        result.update(extra or {})
        self.store.update(task_id, state=BROADCAST, result=result)
        self.watch.add(task_id, [s["tx_hash"] for s in sent], deadline=time.time() + self.settings.tx_deadline)
        return result

    def _send_step(self, task_id: str, index: int, kind: TaskKind, sender: str, build: Step,
                   context: SendContext, clients: list[RpcClient]) -> PreparedTx:
        key = prepared_key(f"{task_id}:{index}")
        owner = f"{task_id}:{index}"
        for _ in range(MAX_RESIGN + 1):
            prepared = load_prepared(self.pool.redis, key)
            if prepared is not None:
                self.nonces.record(sender, prepared.nonce, prepared.tx_hash, owner=owner)  # a re-run: same bytes
            else:
                prepared = self._prepare(key, owner, sender, build(context), clients)
            try:
                outcome = broadcast(prepared.raw_bytes(), prepared.tx_hash, clients, nonce=prepared.nonce,
                                    timeout=self.settings.rpc_timeout)
            except BroadcastFailed as exc:
                raise NodeBusy(f"no node took the transaction yet: {'; '.join(exc.attempts) or exc}") from None
            except TxRejected as exc:
                delete_prepared(self.pool.redis, key)
                if exc.kind == "replacement_underpriced":
                    continue  # another transaction holds that nonce in a pool: take a new one
                self.nonces.release(sender, prepared.nonce, owner=owner)
                raise TaskFailed(f"the node refused the transaction: {exc.node_message}", kind="rejected",
                                 reason=exc.kind) from None
            except NonceTooLow:
                self.nonces.resync(sender, clients)
                delete_prepared(self.pool.redis, key)
                continue
            log.info("task %s step %d: %s nonce %d via %s (%s)", task_id, index, prepared.tx_hash, prepared.nonce,
                     outcome.node_id, outcome.outcome)
            return prepared
        raise TaskFailed(f"the nonce of {sender} kept being taken by other transactions", kind="nonce-conflict")

    def _prepare(self, key: str, owner: str, sender: str, request: TxRequest, clients: list[RpcClient]) -> PreparedTx:
        try:
            account = self.signer(sender)
        except AccountLocked as exc:
            raise TaskFailed(str(exc), kind="account-locked", field="from") from None
        fields: dict[str, Any] = {"chainId": self.settings.chain_id, "value": request.value, "data": request.data}
        if request.to is not None:
            fields["to"] = request.to
        fields["gas"] = request.gas or self._estimate_gas(sender, request, clients)
        if request.gas_price is not None:
            fields["gasPrice"] = request.gas_price
        else:
            fields.update(self._call_any(clients, lambda c: suggest_fees(c, timeout=self.settings.rpc_timeout)))
        nonce = self.nonces.allocate(sender, clients, owner=owner)
        prepared = sign_transaction(account, {**fields, "nonce": nonce})
        stored = save_prepared(self.pool.redis, key, prepared)
        if stored.tx_hash != prepared.tx_hash and stored.nonce != nonce:
            self.nonces.release(sender, nonce, owner=owner)  # a twin of this task saved first: send its bytes
        self.nonces.record(sender, stored.nonce, stored.tx_hash, owner=owner)
        return stored

    def _estimate_gas(self, sender: str, request: TxRequest, clients: list[RpcClient]) -> int:
        call = estimate_call(sender, request)
        try:
            estimate = to_int(self._call_any(clients, lambda c: c.call("eth_estimateGas", [call], timeout=self.settings.rpc_timeout)))
        except RpcError as exc:
            raise estimate_failure(sender, exc) from None
        return gas_limit(estimate, self.settings.block_gas_limit)

    @staticmethod
    def _call_any(clients: Sequence[RpcClient], fn: Callable[[RpcClient], Any]) -> Any:
        """Run ``fn`` on the first client that answers; NodeBusy (the task retries later) when none does."""
        try:
            return first_answer(clients, fn, what="the write's call")[1]
        except NoNodeAnswered as exc:
            raise NodeBusy(str(exc)) from None
