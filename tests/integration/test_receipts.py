"""The receipt tracker, one pass at a time: one real anvil, real Redis, no Celery.

``services.receipts.track`` is what the control worker's beat runs every
ESP_RECEIPT_INTERVAL. Here each transaction is sent the way ``services.sending``
sends a write task's step (nonce from Redis, signed by the treasury, stored before
its broadcast, handed to the receipt watch), then ``track`` is called with the
clock (``now``) the test chooses: mined, reverted, and past its deadline with
either action.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from eth_account import Account
from eth_account.signers.local import LocalAccount
from prometheus_client import REGISTRY

from contracts import load_artifact
from contracts.abi import encode_call, encode_deploy
from nodepool.rpc import RpcClient, to_int
from nodes.process import ProcessBackend
from services.receipts import BUMP_PERCENT, CHECK_BY_HASH_EVERY, CLOCK_SKEW, MAX_SCAN_BLOCKS, track
from services.records import BROADCAST, CONFIRMED, FAILED, TaskRecord, TaskStore
from services.watch import WATCH_KEY, ReceiptWatch
from settings import DEV_TREASURY_KEY, Settings
from tests.waiting import wait_for
from wallet.broadcast import broadcast, load_prepared, prepared_key, save_prepared
from wallet.errors import AccountLocked
from wallet.nonces import NonceManager
from wallet.signing import PreparedTx, sign_transaction, suggest_fees

TREASURY: LocalAccount = Account.from_key(DEV_TREASURY_KEY)
DEAD = "0x000000000000000000000000000000000000dEaD"
TX_DEADLINE = 60.0


def signer(address: str) -> LocalAccount:
    """What the tracker signs a replacement with: here only the treasury is unlocked."""
    if address.lower() != TREASURY.address.lower():
        raise AccountLocked(address)
    return TREASURY


@dataclass
class Tracked:
    """Everything one receipt-tracking pass works with."""

    settings: Settings
    node: RpcClient
    redis: redis.Redis
    store: TaskStore
    watch: ReceiptWatch
    nonces: NonceManager

    def send(self, task_id: str, operation: str, *, to: str, value: int = 0, data: str = "0x", gas: int = 21_000,
             deadline: float | None = None) -> PreparedTx:
        """Send one step as ``services.sending`` does, and hand it to the receipt watch."""
        self.store.create(task_id, operation, "call", {"to": to, "value": value})
        owner = f"{task_id}:0"
        nonce = self.nonces.allocate(TREASURY.address, [self.node], owner=owner)
        fields = {"chainId": self.settings.chain_id, "nonce": nonce, "to": to, "value": value, "data": data, "gas": gas,
                  **suggest_fees(self.node)}
        prepared = save_prepared(self.redis, prepared_key(owner), sign_transaction(TREASURY, fields))  # before its broadcast
        self.nonces.record(TREASURY.address, prepared.nonce, prepared.tx_hash, owner=owner)
        broadcast(prepared.raw_bytes(), prepared.tx_hash, [self.node], nonce=prepared.nonce)
        self.store.update(task_id, state=BROADCAST, result={"tx_hash": prepared.tx_hash, "nonce": prepared.nonce})
        self.watch.add(task_id, [prepared.tx_hash], deadline=time.time() + TX_DEADLINE if deadline is None else deadline)
        return prepared

    def track(self, *, now: float | None = None, action: str = "replace", confirmations: int = 1) -> dict[str, int]:
        return track(self.store, self.watch, [self.node], confirmations=confirmations, deadline_action=action,
                     tx_deadline=TX_DEADLINE, signer=signer, nonces=self.nonces, now=now)

    def receipt(self, tx_hash: str) -> dict[str, Any]:
        """The node's receipt once it has one (automine answers the send a moment before the block is visible)."""
        found: dict[str, Any] = wait_for(lambda: self.node.call("eth_getTransactionReceipt", [tx_hash]), 10,
                                         f"the receipt of {tx_hash}")
        return found

    def entry(self, task_id: str) -> dict[str, Any]:
        return dict(next(e for i, e in self.watch.entries() if i == task_id))

    def record(self, task_id: str) -> TaskRecord:
        return self.store.get(task_id)


@pytest.fixture
def tracked(process_backend: ProcessBackend, settings: Settings) -> Iterator[Tracked]:
    spec = process_backend.start("node-0", role="leader")  # ESP_BLOCK_TIME=0: automine
    node = RpcClient(spec.url, timeout=10.0, node_id=spec.id)
    client = redis.Redis.from_url(settings.redis_url)
    yield Tracked(settings, node, client, TaskStore(client, ttl=3600), ReceiptWatch(client),
                  NonceManager(client, settings.chain_id))
    node.close()
    client.close()


def test_nothing_watched_is_one_cheap_pass(tracked: Tracked) -> None:
    assert tracked.track() == {"watched": 0, "blocks": 0, "by_hash": 0, "confirmed": 0, "failed": 0, "rebroadcast": 0,
                               "replaced": 0, "reported": 0}
    assert tracked.watch.cursor() is None  # no node was asked anything


def test_new_blocks_settle_watched_transactions_without_asking_for_each(tracked: Tracked) -> None:
    first = tracked.send("first", "send_eth", to=DEAD, value=1)
    tracked.receipt(first.tx_hash)
    counts = tracked.track()  # no cursor yet: this pass reads the last MAX_SCAN_BLOCKS blocks, and remembers the head
    head = to_int(tracked.node.call("eth_blockNumber"))
    assert counts["confirmed"] == 1 and counts["by_hash"] == 0 and counts["blocks"] == min(head + 1, MAX_SCAN_BLOCKS)
    assert tracked.watch.cursor() == head

    for i in range(3):
        tracked.receipt(tracked.send(f"next-{i}", "send_eth", to=DEAD, value=2 + i).tx_hash)  # automine: one block each
    counts = tracked.track()
    assert counts == {**counts, "watched": 3, "blocks": 3, "by_hash": 0, "confirmed": 3}
    assert tracked.watch.cursor() == head + 3
    assert all(tracked.record(f"next-{i}").result["block_number"] == head + 1 + i for i in range(3))  # type: ignore[index]


def test_a_transaction_mined_before_it_was_watched_is_found_by_hash(tracked: Tracked) -> None:
    tracked.track()
    tracked.receipt(tracked.send("warm", "send_eth", to=DEAD, value=1).tx_hash)
    tracked.track()  # the cursor is at the head now
    early = tracked.send("early", "send_eth", to=DEAD, value=5)
    tracked.receipt(early.tx_hash)
    tracked.watch.set_cursor(to_int(tracked.node.call("eth_blockNumber")))  # as if its block was read before it was watched

    # Its block was read after its broadcast: the first pass asks for it by hash, not CHECK_BY_HASH_EVERY later.
    counts = tracked.track()
    assert counts["blocks"] == 0 and counts["by_hash"] == 1 and counts["confirmed"] == 1
    assert tracked.record("early").state == CONFIRMED


def test_a_transaction_broadcast_after_the_last_read_waits_for_the_scan(tracked: Tracked) -> None:
    tracked.track()
    tracked.receipt(tracked.send("warm", "send_eth", to=DEAD, value=1).tx_hash)
    tracked.track()  # the cursor is at the head, read before what follows was broadcast
    tracked.node.call("evm_setAutomine", [False])
    try:
        time.sleep(CLOCK_SKEW + 0.05)  # broadcast after that read, beyond the clock margin
        later = tracked.send("later", "send_eth", to=DEAD, value=5)  # pending: no block holds it
        counts = tracked.track()
        assert counts["by_hash"] == 0 and counts["confirmed"] == 0  # no block read since could hold it: not asked
        counts = tracked.track(now=time.time() + CHECK_BY_HASH_EVERY + 0.1)
        assert counts["by_hash"] == 1 and counts["confirmed"] == 0  # the slow check still runs, and finds nothing yet
    finally:
        tracked.node.call("evm_setAutomine", [True])
    tracked.node.call("evm_mine")
    tracked.receipt(later.tx_hash)
    counts = tracked.track()  # the block that holds it is read by the scan
    assert counts["blocks"] >= 1 and counts["by_hash"] == 0 and counts["confirmed"] == 1


def test_a_mined_transfer_is_confirmed_with_its_receipt_fields_once_buried(tracked: Tracked) -> None:
    sent = tracked.send("transfer", "send_eth", to=DEAD, value=1234)
    receipt = tracked.receipt(sent.tx_hash)

    # Mined, but ESP_CONFIRMATIONS=2 asks for one more block on top: still broadcast, still watched.
    assert tracked.track(confirmations=2)["confirmed"] == 0
    assert tracked.record("transfer").state == BROADCAST and tracked.watch.count() == 1

    tracked.node.call("evm_mine")
    counts = tracked.track(confirmations=2)
    assert counts["watched"] == 1 and counts["confirmed"] == 1 and counts["failed"] == 0
    done = tracked.record("transfer")
    assert done.state == CONFIRMED and done.error is None
    assert done.result == {
        "tx_hash": sent.tx_hash, "nonce": sent.nonce,  # what the sender wrote stays
        "block_number": to_int(receipt["blockNumber"]), "block_hash": receipt["blockHash"], "gas_used": 21_000,
        "effective_gas_price": to_int(receipt["effectiveGasPrice"]), "status": 1, "contract_address": None, "logs": 0,
    }
    assert tracked.watch.count() == 0 and tracked.track()["watched"] == 0  # settled once, never looked at again


def test_a_reverted_call_fails_the_task_with_its_decoded_reason(tracked: Tracked) -> None:
    token = load_artifact("PlatformToken")
    deploy = sign_transaction(TREASURY, {
        "chainId": tracked.settings.chain_id, "nonce": to_int(tracked.node.call("eth_getTransactionCount", [TREASURY.address, "pending"])),
        "data": encode_deploy(token["abi"], token["bytecode"], ["Test Token", "TT", 0]), "gas": 3_000_000,
        **suggest_fees(tracked.node)})
    broadcast(deploy.raw_bytes(), deploy.tx_hash, [tracked.node])
    address = tracked.receipt(deploy.tx_hash)["contractAddress"]

    # The treasury holds none of this token: the transfer is mined and reverts (gas given, so nothing estimated it away).
    sent = tracked.send("revert", "token_transfer", to=address, data=encode_call(token["abi"], "transfer", [DEAD, 1]),
                        gas=100_000)
    receipt = tracked.receipt(sent.tx_hash)
    assert to_int(receipt["status"]) == 0

    counts = tracked.track()
    assert counts["failed"] == 1 and counts["confirmed"] == 0
    failed = tracked.record("revert")
    assert failed.state == FAILED
    assert failed.error == {"type": "reverted", "message": "reverted on chain: insufficient balance",
                            "reason": "insufficient balance", "tx_hash": sent.tx_hash}
    assert failed.result is not None and failed.result["status"] == 0
    assert failed.result["block_number"] == to_int(receipt["blockNumber"])
    assert tracked.watch.count() == 0


def test_past_its_deadline_a_transaction_is_reported_and_still_watched(tracked: Tracked) -> None:
    tracked.node.call("evm_setAutomine", [False])  # nothing is mined until the test says so
    deadline = time.time() + TX_DEADLINE
    sent = tracked.send("late", "send_eth", to=DEAD, value=1, deadline=deadline)

    before = tracked.track(now=deadline - 1.0, action="report")
    assert before["reported"] == 0 and tracked.record("late").error is None

    counts = tracked.track(now=deadline + 1.0, action="report")
    assert counts["reported"] == 1 and counts["replaced"] == 0
    late = tracked.record("late")
    assert late.state == BROADCAST  # reported, not failed: it may still be mined
    assert late.error == {"type": "deadline", "message": f"not mined within {TX_DEADLINE:.0f} s; still watched"}
    assert tracked.entry("late")["deadline"] == float("inf")
    assert tracked.track(now=deadline + 3600.0, action="report")["reported"] == 0  # reported once
    assert load_prepared(tracked.redis, prepared_key("late:0")) == sent  # the same bytes: nothing was re-signed

    tracked.node.call("evm_mine")
    tracked.receipt(sent.tx_hash)
    assert tracked.track(action="report")["confirmed"] == 1
    done = tracked.record("late")
    assert done.state == CONFIRMED and done.result is not None and done.result["tx_hash"] == sent.tx_hash


def test_past_its_deadline_a_transaction_is_replaced_with_raised_fees_and_the_replacement_confirms(tracked: Tracked) -> None:
    tracked.node.call("evm_setAutomine", [False])
    deadline = time.time() + TX_DEADLINE
    sent = tracked.send("stuck", "send_eth", to=DEAD, value=7, deadline=deadline)
    now = deadline + 1.0
    bumps = REGISTRY.get_sample_value("esp_fee_bumps_total")

    counts = tracked.track(now=now, action="replace")
    assert counts["replaced"] == 1 and counts["reported"] == 0
    assert REGISTRY.get_sample_value("esp_fee_bumps_total") == bumps + 1  # the metric Grafana's "Fee bumps" shows

    new = load_prepared(tracked.redis, prepared_key("stuck:0"))
    assert new is not None and new.tx_hash != sent.tx_hash
    assert (new.nonce, new.sender, new.previous_hashes) == (sent.nonce, sent.sender, (sent.tx_hash,))
    for fee in ("maxFeePerGas", "maxPriorityFeePerGas"):
        old = sent.fields[fee]
        assert new.fields[fee] == (old * (100 + BUMP_PERCENT) + 99) // 100, fee  # raised by BUMP_PERCENT, rounded up
    assert {k: v for k, v in new.fields.items() if "Fee" not in k} == {k: v for k, v in sent.fields.items() if "Fee" not in k}
    assert tracked.nonces.tx_hash_for(TREASURY.address, sent.nonce) == new.tx_hash
    assert tracked.record("stuck").result == {"tx_hash": sent.tx_hash, "nonce": sent.nonce, "replaced": 1}
    entry = tracked.entry("stuck")
    assert entry["deadline"] == now + TX_DEADLINE and entry["rebroadcast_at"] == now  # a new deadline for the replacement
    # The node took the replacement in place of the original.
    pending = tracked.node.call("eth_getTransactionByHash", [new.tx_hash])
    assert pending is not None and to_int(pending["nonce"]) == sent.nonce

    tracked.node.call("evm_mine")
    receipt = tracked.receipt(new.tx_hash)
    assert tracked.node.call("eth_getTransactionReceipt", [sent.tx_hash]) is None
    assert tracked.track(now=now + 1.0)["confirmed"] == 1
    done = tracked.record("stuck")
    assert done.state == CONFIRMED and done.result is not None
    assert done.result["tx_hash"] == new.tx_hash and done.result["block_number"] == to_int(receipt["blockNumber"])
    assert done.result["replaced"] == 1
    assert not tracked.redis.exists(WATCH_KEY.format("stuck"))
