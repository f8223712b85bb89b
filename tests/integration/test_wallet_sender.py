"""Signing and broadcasting against a real anvil and the real Redis (DB 12)."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from eth_account import Account
from eth_account.signers.local import LocalAccount

from nodepool.rpc import RpcClient, to_int
from nodepool.spec import NodeSpec
from nodes.process import ProcessBackend, free_port
from settings import DEV_TREASURY_KEY, Settings
from tests.conftest import fresh_redis
from tests.waiting import wait_for
from wallet.broadcast import broadcast, delete_prepared, find_transaction, load_prepared, prepared_key, save_prepared
from wallet.errors import BroadcastFailed, NonceTooLow, TxRejected
from wallet.nonces import NonceManager
from wallet.signing import PreparedTx, replace, sign_transaction, suggest_fees

REDIS_DB = 12
CHAIN_ID = 31337
TREASURY = Account.from_key(DEV_TREASURY_KEY)
DEAD = "0x000000000000000000000000000000000000dEaD"
GWEI = 10**9


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = fresh_redis(REDIS_DB)
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RpcClient]:
    """One automining anvil (ESP_BLOCK_TIME=0, leader), stopped after the test."""
    backend = ProcessBackend(Settings.from_env({"ESP_RUN_DIR": str(tmp_path), "ESP_BLOCK_TIME": "0"}))
    spec: NodeSpec = backend.start("node-0", role="leader")
    client = RpcClient(spec.url, timeout=5.0, node_id="node-0", maxsize=16)
    try:
        yield client
    finally:
        client.close()
        backend.stop(spec)
        backend.close()


def dead_client(name: str = "dead") -> RpcClient:
    return RpcClient(f"http://127.0.0.1:{free_port()}", timeout=1.0, node_id=name)


@pytest.fixture
def silent_client() -> Iterator[RpcClient]:
    """A node that takes the connection (the kernel's backlog accepts it) and never answers: a request may have reached it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield RpcClient(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=1.0, node_id="silent")
    finally:
        listener.close()


def wait_receipt(client: RpcClient, tx_hash: str, timeout: float = 15.0) -> dict[str, Any]:
    return dict(wait_for(lambda: client.call("eth_getTransactionReceipt", [tx_hash]), timeout, f"the receipt of {tx_hash}"))


def transfer(sender: LocalAccount, nonce: int, fees: dict[str, int], value: int = 1, to: str = DEAD) -> PreparedTx:
    return sign_transaction(sender, {"chainId": CHAIN_ID, "nonce": nonce, "to": to, "value": value, "gas": 21_000, **fees})


def send(manager: NonceManager, sender: LocalAccount, clients: Sequence[RpcClient], fees: dict[str, int], **kw: Any) -> PreparedTx:
    """Allocate, sign, record, broadcast - resyncing on NonceTooLow, as a write task does."""
    for _ in range(5):
        nonce = manager.allocate(sender.address, clients)
        prepared = transfer(sender, nonce, fees, **kw)
        manager.record(sender.address, nonce, prepared.tx_hash)
        try:
            broadcast(prepared.raw_bytes(), prepared.tx_hash, clients, nonce=nonce)
        except NonceTooLow:
            manager.resync(sender.address, clients)
            continue
        return prepared
    raise AssertionError("nonce kept being too low")


def funded_account(manager: NonceManager, node: RpcClient, fees: dict[str, int], wei: int = 10**18) -> LocalAccount:
    account: LocalAccount = Account.create()
    prepared = send(manager, TREASURY, [node], fees, value=wei, to=account.address)
    assert wait_receipt(node, prepared.tx_hash)["status"] == "0x1"
    return account


def nonces_on_chain(client: RpcClient, sender: str) -> list[int]:
    """The nonce of every mined transaction from ``sender``, read block by block."""
    head = to_int(client.call("eth_blockNumber"))
    calls = [("eth_getBlockByNumber", [hex(n), True]) for n in range(head + 1)]
    found = []
    for start in range(0, len(calls), 100):
        for block in client.batch(calls[start:start + 100]):
            found += [to_int(tx["nonce"]) for tx in block["transactions"] if tx["from"].lower() == sender.lower()]
    return found


def test_200_concurrent_transfers_from_one_account_land_with_nonces_0_to_199(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    fees = suggest_fees(node)
    sender = funded_account(manager, node, fees)

    def one_task(i: int) -> PreparedTx:
        # The write task's protocol: allocate as the owner, sign, save BEFORE broadcasting, record, broadcast.
        task_id = f"task-{i}"
        nonce = manager.allocate(sender.address, [node], owner=task_id)
        prepared = save_prepared(r, prepared_key(task_id), transfer(sender, nonce, fees))
        manager.record(sender.address, prepared.nonce, prepared.tx_hash, owner=task_id)
        broadcast(prepared.raw_bytes(), prepared.tx_hash, [node], nonce=prepared.nonce)
        return prepared

    with ThreadPoolExecutor(8) as pool:
        sent = list(pool.map(one_task, range(200), timeout=120))
    assert sorted(p.nonce for p in sent) == list(range(200))
    wait_for(lambda: to_int(node.call("eth_getTransactionCount", [sender.address, "latest"])) >= 200, 60,
             "all 200 transactions to be mined")
    receipts = [wait_receipt(node, p.tx_hash) for p in sent]
    assert all(rc["status"] == "0x1" for rc in receipts)
    assert sorted(nonces_on_chain(node, sender.address)) == list(range(200))  # once each, no gap
    assert to_int(node.call("eth_getTransactionCount", [sender.address, "latest"])) == 200
    assert manager.state(sender.address).leased == ()
    assert load_prepared(r, prepared_key("task-7")) in sent


def test_the_same_bytes_again_are_idempotent_pending_and_mined(r: redis.Redis, node: RpcClient) -> None:
    fees = suggest_fees(node)
    prepared = transfer(TREASURY, 0, fees)
    node.call("evm_setAutomine", [False])
    first = broadcast(prepared.raw_bytes(), prepared.tx_hash, [node])
    again = broadcast(prepared.raw_bytes(), prepared.tx_hash, [node])  # anvil: "transaction already imported"
    assert (first.outcome, again.outcome) == ("accepted", "already_known")
    node.call("evm_mine", [])
    assert wait_receipt(node, prepared.tx_hash)["status"] == "0x1"
    mined = broadcast(prepared.raw_bytes(), prepared.tx_hash, [node], nonce=0)  # anvil: "nonce too low", but it is ours
    assert mined.outcome == "known" and mined.node_id == "node-0"
    assert nonces_on_chain(node, TREASURY.address) == [0]  # on chain once


def test_a_node_error_sends_the_same_bytes_to_the_next_node(node: RpcClient) -> None:
    prepared = transfer(TREASURY, 0, suggest_fees(node))
    result = broadcast(prepared.raw_bytes(), prepared.tx_hash, [dead_client("down-1"), node])
    assert result.node_id == "node-0" and result.outcome == "accepted"
    assert len(result.attempts) == 1 and "down-1" in result.attempts[0]
    assert wait_receipt(node, prepared.tx_hash)["status"] == "0x1"
    # What the node holds is exactly our signed bytes.
    assert node.call("eth_getRawTransactionByHash", [prepared.tx_hash]) == prepared.raw


def test_no_node_answering_is_broadcast_failed_and_maybe_reached(node: RpcClient, silent_client: RpcClient) -> None:
    prepared = transfer(TREASURY, 0, suggest_fees(node))
    with pytest.raises(BroadcastFailed) as info:
        broadcast(prepared.raw_bytes(), prepared.tx_hash, [dead_client("a"), silent_client], timeout=1.0)
    assert info.value.may_have_reached_node and len(info.value.attempts) == 2
    assert info.value.tx_hash == prepared.tx_hash


def test_connections_refused_everywhere_reached_no_node(node: RpcClient) -> None:
    prepared = transfer(TREASURY, 0, suggest_fees(node))
    with pytest.raises(BroadcastFailed) as info:
        broadcast(prepared.raw_bytes(), prepared.tx_hash, [dead_client("a"), dead_client("b")])
    assert not info.value.may_have_reached_node and len(info.value.attempts) == 2


def test_nonce_too_low_from_a_transaction_behind_our_back_resyncs_and_resigns(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    fees = suggest_fees(node)
    sender = funded_account(manager, node, fees)
    nonce = manager.allocate(sender.address, [node])
    assert nonce == 0
    # Another wallet with the same key spends nonce 0 first.
    outsider = transfer(sender, 0, fees, value=12345)
    node.call("eth_sendRawTransaction", [outsider.raw])
    wait_receipt(node, outsider.tx_hash)
    ours = transfer(sender, nonce, fees)
    manager.record(sender.address, nonce, ours.tx_hash)
    with pytest.raises(NonceTooLow) as info:
        broadcast(ours.raw_bytes(), ours.tx_hash, [node], nonce=nonce)
    assert info.value.nonce == 0 and info.value.tx_hash == ours.tx_hash
    assert find_transaction(ours.tx_hash, [node]) is None  # ours is nowhere: signing anew is safe
    assert manager.resync(sender.address, [node]) == 1
    retry = transfer(sender, manager.allocate(sender.address, [node]), fees)
    assert retry.nonce == 1
    assert broadcast(retry.raw_bytes(), retry.tx_hash, [node]).outcome == "accepted"
    assert wait_receipt(node, retry.tx_hash)["status"] == "0x1"
    assert sorted(nonces_on_chain(node, sender.address)) == [0, 1]


def test_every_node_refusing_is_tx_rejected_and_the_nonce_is_released(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    poor: LocalAccount = Account.create()
    nonce = manager.allocate(poor.address, [node])
    prepared = transfer(poor, nonce, suggest_fees(node))
    with pytest.raises(TxRejected) as info:
        broadcast(prepared.raw_bytes(), prepared.tx_hash, [node])
    assert info.value.kind == "insufficient_funds" and info.value.node_id == "node-0"
    assert manager.release(poor.address, nonce)
    assert manager.allocate(poor.address, [node]) == nonce


def test_a_refusal_with_a_silent_node_is_not_definite(node: RpcClient, silent_client: RpcClient) -> None:
    poor: LocalAccount = Account.create()
    prepared = transfer(poor, 0, suggest_fees(node))
    with pytest.raises(BroadcastFailed) as info:  # the silent node may have taken it: do not release
        broadcast(prepared.raw_bytes(), prepared.tx_hash, [silent_client, node], timeout=1.0)
    assert info.value.may_have_reached_node


def test_a_refusal_is_definite_when_the_other_nodes_refused_the_connection(node: RpcClient) -> None:
    # A killed node refuses connections: it never got the bytes, so the answering node's refusal is the answer
    # (the fault suite found raw transactions of an unfunded sender "accepted" while a follower was down).
    poor: LocalAccount = Account.create()
    prepared = transfer(poor, 0, suggest_fees(node))
    with pytest.raises(TxRejected) as info:
        broadcast(prepared.raw_bytes(), prepared.tx_hash, [dead_client(), node])
    assert info.value.kind == "insufficient_funds" and info.value.node_id == "node-0"


def test_intrinsic_gas_too_low_is_rejected(node: RpcClient) -> None:
    prepared = sign_transaction(TREASURY, {"chainId": CHAIN_ID, "nonce": 0, "to": DEAD, "value": 1, "gas": 20_000,
                                           **suggest_fees(node)})
    with pytest.raises(TxRejected) as info:
        broadcast(prepared.raw_bytes(), prepared.tx_hash, [node])
    assert info.value.kind == "intrinsic_gas_too_low"


def test_fee_bump_replaces_a_pending_transaction_with_the_same_nonce(node: RpcClient) -> None:
    fees = {"maxFeePerGas": 2 * GWEI, "maxPriorityFeePerGas": GWEI}
    node.call("evm_setAutomine", [False])
    stuck = transfer(TREASURY, 0, fees)
    broadcast(stuck.raw_bytes(), stuck.tx_hash, [node])
    same_fees = transfer(TREASURY, 0, fees, value=2)  # another transaction, same nonce, same fees
    with pytest.raises(TxRejected) as info:
        broadcast(same_fees.raw_bytes(), same_fees.tx_hash, [node])
    assert info.value.kind == "replacement_underpriced"
    bumped = replace(TREASURY, stuck, 10)
    assert bumped.fields["maxFeePerGas"] == 2_200_000_000 and bumped.fields["maxPriorityFeePerGas"] == 1_100_000_000
    assert broadcast(bumped.raw_bytes(), bumped.tx_hash, [node]).outcome == "accepted"
    node.call("evm_mine", [])
    assert wait_receipt(node, bumped.tx_hash)["status"] == "0x1"
    assert node.call("eth_getTransactionReceipt", [stuck.tx_hash]) is None
    assert bumped.hashes == (stuck.tx_hash, bumped.tx_hash)
    assert nonces_on_chain(node, TREASURY.address) == [0]


def test_prepared_record_first_writer_wins(r: redis.Redis) -> None:
    fees = {"maxFeePerGas": 2 * GWEI, "maxPriorityFeePerGas": GWEI}
    key = prepared_key("celery-task-id-1")
    assert load_prepared(r, key) is None
    first = transfer(TREASURY, 3, fees)
    twin = transfer(TREASURY, 4, fees)
    assert save_prepared(r, key, first) == first
    assert save_prepared(r, key, twin) == first  # a twin of the task gets the first record back
    assert load_prepared(r, key) == first
    bumped = replace(TREASURY, first)
    assert save_prepared(r, key, bumped, overwrite=True) == bumped
    assert load_prepared(r, key) == bumped
    assert 0 < r.ttl(key) <= 7 * 86_400
    delete_prepared(r, key)
    assert load_prepared(r, key) is None


def test_a_rerun_after_a_crash_sends_the_saved_bytes_not_new_ones(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    fees = suggest_fees(node)
    key = prepared_key("task-crash")
    # First run: allocates, signs, saves, records, broadcasts - then the worker dies before acking.
    nonce = manager.allocate(TREASURY.address, [node], owner="task-crash")
    prepared = save_prepared(r, key, transfer(TREASURY, nonce, fees))
    manager.record(TREASURY.address, nonce, prepared.tx_hash, owner="task-crash")
    broadcast(prepared.raw_bytes(), prepared.tx_hash, [node])
    wait_receipt(node, prepared.tx_hash)
    # Re-delivery: the task finds its record and re-broadcasts the same bytes.
    again = load_prepared(r, key)
    assert again == prepared
    assert broadcast(again.raw_bytes(), again.tx_hash, [node], nonce=again.nonce).outcome == "known"
    assert nonces_on_chain(node, TREASURY.address) == [0]
    assert manager.tx_hash_for(TREASURY.address, 0) == prepared.tx_hash


def test_suggested_fees_are_accepted(node: RpcClient) -> None:
    fees = suggest_fees(node)
    assert fees["maxFeePerGas"] >= fees["maxPriorityFeePerGas"] > 0
    prepared = transfer(TREASURY, 0, fees)
    broadcast(prepared.raw_bytes(), prepared.tx_hash, [node])
    assert wait_receipt(node, prepared.tx_hash)["status"] == "0x1"

