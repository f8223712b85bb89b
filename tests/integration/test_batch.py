"""Batched sending, one drain at a time: one real anvil (automine), real Redis, no Celery.

Writes are queued the way the API queues them (a task record, then the id in its
sender's outbox); ``BatchSender.drain`` is what a write worker runs for a sender's
message, and ``services.receipts.track`` what the control worker runs to settle them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from nodepool.rpc import RpcClient, to_int
from nodes.process import ProcessBackend
from services.batch import FILL_NONCE, BatchSender, filler_id
from services.outbox import Outbox
from services.receipts import track
from services.records import TaskRecord
from settings import Settings
from tasks.context import Worker
from tests.conftest import make_settings
from tests.waiting import wait_for
from wallet.broadcast import load_prepared, prepared_key
from wallet.keystore import Keystore
from wallet.signing import PreparedTx

ETH = 10**18
DEAD = "0x000000000000000000000000000000000000dEaD"
PASSWORD = "batch test passphrase"


@dataclass
class Bench:
    """A worker's objects over one automining node."""

    settings: Settings
    worker: Worker
    node: RpcClient

    @property
    def batcher(self) -> BatchSender:
        return self.worker.batcher

    @property
    def treasury(self) -> str:
        return str(self.worker.sender.treasury.address)

    def queue(self, operation: str, signer: str, **params: Any) -> str:
        """Queue a batched write as the API does: its record, then its id in its signer's outbox."""
        task_id = str(uuid.uuid4())
        self.worker.store.create(task_id, operation, "call", params)
        self.batcher.outbox.push(signer, task_id)
        return task_id

    def transfer(self, sender: str, value: int, to: str = DEAD) -> str:
        return self.queue("send_eth", sender, sender=sender, to=to, value_wei=value)

    def drain(self, sender: str, holder: str = "run-1", **kw: Any) -> Any:
        """Drain ``sender`` as the holder ``holder`` (a Celery task id, in a worker)."""
        return self.batcher.drain(sender, holder, [self.node], **kw)

    def settle(self, task_ids: list[str], timeout: float = 30) -> list[TaskRecord]:
        """Run receipt passes until every task is final; their records."""
        w = self.worker

        def final() -> list[TaskRecord] | None:
            track(w.store, w.sender.watch, [self.node], confirmations=1, deadline_action="replace", tx_deadline=60.0,
                  signer=w.sender.signer, nonces=w.sender.nonces)
            records = [w.store.get(t) for t in task_ids]
            return records if all(r.is_final for r in records) else None

        return wait_for(final, timeout, "every task to be confirmed or failed", interval=0.1)

    def account(self, wei: int) -> str:
        """A new ESP account, unlocked, funded with ``wei`` by the treasury (through a batch)."""
        address = Keystore(self.settings.keystore_dir, work_factor=4096).create(PASSWORD)
        self.worker.sender.unlocked.unlock(address, PASSWORD, 600, Keystore(self.settings.keystore_dir, work_factor=4096))
        task = self.transfer(self.treasury, wei, to=address)
        self.drain(self.treasury)
        assert self.settle([task])[0].state == "confirmed"
        return address

    def count(self, address: str) -> int:
        return to_int(self.node.call("eth_getTransactionCount", [address, "latest"]))


@pytest.fixture
def bench(process_backend: ProcessBackend, settings: Settings, tmp_path) -> Iterator[Bench]:
    spec = process_backend.start("node-0", role="leader")  # ESP_BLOCK_TIME=0: automine
    s = make_settings(tmp_path, ESP_REDIS_URL=settings.redis_url, ESP_KEYSTORE_SCRYPT_N="4096")
    worker = Worker(s)
    node = RpcClient(spec.url, timeout=10.0, node_id=spec.id)
    yield Bench(s, worker, node)
    node.close()
    worker.pool.close()


def test_one_drain_sends_a_sender_s_queue_in_one_batch(bench: Bench) -> None:
    ids = [bench.transfer(bench.treasury, 1 + i) for i in range(200)]
    run = bench.drain(bench.treasury)
    assert (run.state, run.batches, run.sent, run.failed) == ("done", 1, 200, 0)
    assert bench.batcher.outbox.stats() == {"batches": 1, "transactions": 200}
    assert bench.batcher.outbox.waiting(bench.treasury) == (0, 0)
    records = bench.settle(ids)
    assert [r.state for r in records] == ["confirmed"] * 200
    nonces = [r.result["nonce"] for r in records if r.result]
    assert nonces == list(range(nonces[0], nonces[0] + 200)), "nonces in queue order, no gap"
    assert {r.result["from"] for r in records if r.result} == {bench.treasury}
    assert bench.count(bench.treasury) == nonces[-1] + 1


def test_a_transaction_the_balance_cannot_cover_fails_before_it_takes_a_nonce(bench: Bench) -> None:
    sender = bench.account(ETH)
    ids = [bench.transfer(sender, v) for v in (ETH // 4, ETH // 4, ETH // 2, ETH // 4)]
    run = bench.drain(sender)
    assert (run.sent, run.failed) == (3, 1)
    records = bench.settle(ids)
    assert [r.state for r in records] == ["confirmed", "confirmed", "failed", "confirmed"]
    error = records[2].error or {}
    assert error["type"] == "insufficient-funds" and sender in error["message"] and error["field"] == "from"
    assert [r.result["nonce"] for r in (records[0], records[1], records[3]) if r.result] == [0, 1, 2]
    assert bench.count(sender) == 3


def test_a_transaction_the_node_refuses_fails_alone_and_its_nonce_is_filled(bench: Bench) -> None:
    sender = bench.account(5 * ETH)
    ids = [bench.transfer(sender, v) for v in (1, 2, 3 * ETH, 4, 5)]

    def spend(saved: list[PreparedTx]) -> None:
        # After the balance check and the signing, before the broadcast: the sender's balance drops
        # (as if spent elsewhere), so the node refuses the 3 ETH transfer and only that one.
        assert [p.nonce for p in saved] == [0, 1, 2, 3, 4]
        bench.node.call("anvil_setBalance", [sender, hex(ETH)])

    run = bench.drain(sender, after_save=spend)
    assert (run.sent, run.failed) == (4, 1)
    records = bench.settle(ids)
    assert [r.state for r in records] == ["confirmed", "confirmed", "failed", "confirmed", "confirmed"]
    error = records[2].error or {}
    assert error["type"] == "insufficient-funds" and error["message"].startswith("the node refused the transaction")
    assert error["nonce"] == 2 and error["nonce_filled_by"]
    filler = bench.settle([filler_id(ids[2])])[0]
    assert filler.operation == FILL_NONCE and filler.state == "confirmed"
    assert filler.result and filler.result["tx_hash"] == error["nonce_filled_by"] and filler.result["nonce"] == 2
    assert [r.result["nonce"] for r in records if r.state == "confirmed" and r.result] == [0, 1, 3, 4]
    assert bench.count(sender) == 5  # nonces 0..4 all taken: no gap


def test_a_refused_last_transaction_gives_its_nonce_back(bench: Bench) -> None:
    sender = bench.account(5 * ETH)
    ids = [bench.transfer(sender, v) for v in (1, 3 * ETH)]
    bench.drain(sender, after_save=lambda saved: bench.node.call("anvil_setBalance", [sender, hex(ETH)]))
    records = bench.settle(ids)
    assert [r.state for r in records] == ["confirmed", "failed"]
    assert "nonce_filled_by" not in (records[1].error or {})
    after = bench.transfer(sender, 7)
    bench.drain(sender)
    assert (bench.settle([after])[0].result or {})["nonce"] == 1, "the refused nonce went back, and was taken next"


def _drain_and_die(settings: Settings, node_url: str, sender: str) -> None:
    """A worker process that dies by SIGKILL after saving a batch and before broadcasting it."""
    worker = Worker(settings)
    worker.batcher.drain(sender, "killed-run", [RpcClient(node_url, node_id="node-0")],
                         after_save=lambda saved: os.kill(os.getpid(), signal.SIGKILL))


def test_a_drain_killed_between_save_and_broadcast_is_sent_once_with_the_same_bytes(bench: Bench) -> None:
    sender = bench.treasury
    before = bench.count(sender)
    ids = [bench.transfer(sender, 10 + i) for i in range(40)]
    child = multiprocessing.get_context("fork").Process(target=_drain_and_die, args=(bench.settings, bench.node.url, sender))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    saved = [load_prepared(bench.worker.pool.redis, prepared_key(f"{t}:0")) for t in ids]
    assert all(p is not None for p in saved) and bench.count(sender) == before  # saved, none broadcast
    assert bench.batcher.outbox.waiting(sender) == (0, 40)  # still in flight
    # The killed run's message is delivered again (same task id, so the same holder token).
    run = bench.drain(sender, holder="killed-run")
    assert (run.sent, run.failed) == (40, 0)
    records = bench.settle(ids)
    assert [r.state for r in records] == ["confirmed"] * 40
    assert [r.result["tx_hash"] for r in records if r.result] == [p.tx_hash for p in saved if p is not None]
    assert bench.count(sender) == before + 40  # each exactly once


def test_a_sender_held_by_one_drain_is_left_to_it(bench: Bench) -> None:
    outbox: Outbox = bench.batcher.outbox
    sender = bench.treasury
    outbox.push(sender, "a")
    assert outbox.take(sender, "holder", 10) == ["a"]
    outbox.push(sender, "b")
    assert bench.drain(sender, holder="other").state == "busy"
    assert outbox.settle(sender, "holder", []) is True  # "a" went out
    assert outbox.release(sender, "holder") is False, "an id waits: the holder must carry on"
    assert outbox.take(sender, "holder", 10) == ["b"]
    assert outbox.settle(sender, "holder", ["b"]) is True  # left in flight (no node took it, say)
    assert outbox.release(sender, "holder", anyway=True) is True
    assert outbox.take(sender, "next", 10) == ["b"], "whoever holds the sender next takes the in-flight ids first"
    assert outbox.release(sender, "next", anyway=True) is True
    assert outbox.idle_senders() == [], "not quiet for long enough yet"
    assert outbox.idle_senders(age_ms=0) == [sender.lower()]
    assert outbox.idle_senders(age_ms=0) == [], "a sender is swept once per SWEEP_AGE_MS"
    assert bench.drain(sender, holder="sweeper").state == "done"  # "b" has no task record: dropped
    assert outbox.waiting(sender) == (0, 0)
    assert outbox.idle_senders(age_ms=0) == []


def test_a_push_asks_for_a_drain_only_when_none_holds_the_sender_or_is_on_its_way(bench: Bench) -> None:
    outbox: Outbox = bench.batcher.outbox
    sender = bench.treasury
    assert outbox.push(sender, "a") is True, "nothing holds the sender: ask for a drain"
    assert outbox.push(sender, "b") is False, "a drain is on its way: it takes this one too"
    assert outbox.take(sender, "holder", 10) == ["a", "b"]
    assert outbox.push(sender, "c") is False, "the holder takes it before it lets go"
    assert outbox.settle(sender, "holder", []) is True
    assert outbox.release(sender, "holder") is False
    assert outbox.take(sender, "holder", 10) == ["c"]
    assert outbox.settle(sender, "holder", []) is True
    assert outbox.release(sender, "holder") is True
    assert outbox.push(sender, "d") is True, "released: the next push asks again"
    assert outbox.withdraw(sender, "d") is True  # its drain could not be published
    assert outbox.push(sender, "e") is True, "a withdrawn push does not leave the sender waiting for a drain"
    assert outbox.take(sender, "last", 10) == ["e"]
    assert outbox.settle(sender, "last", []) is True and outbox.release(sender, "last") is True
