"""``POST /rpc`` against the real stack: JSON-RPC 2.0 as clients expect it, routed, cached, kept, keyed.

One LocalStack (3 anvils kept on one chain, Celery workers and beat) for the module and the gateway's
server (``rpc.server``) on a port of its own; requests go over HTTP with a user's key unless a test
says otherwise.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from eth_account import Account
from prometheus_client import REGISTRY

from gateway.cache import cache_key
from gateway.kept import KEPT_KEY, KEPT_SET, KeptTransactions, decode_raw, resend_pass
from gateway.shown import SEEN_KEY, SEEN_TTL, ShownRecords
from gateway.state import Deferred
from nodepool.rpc import RpcClient, to_int
from rpc.server import GATEWAY
from tests.conftest import DB_RPC
from tests.stack import LocalStack, RpcServer
from tests.waiting import wait_for

Account.enable_unaudited_hdwallet_features()
MNEMONIC = "test test test test test test test test test test test junk"
#: anvil's funded dev account #7 (ESP's treasury is #0; other modules use other indexes).
SENDER = Account.from_mnemonic(MNEMONIC, account_path="m/44'/60'/0'/0/7")
#: Deploys a contract whose every call reverts with the 4 bytes 0xdeadbeef.
REVERTER_INIT = "0x600d600c600039600d6000f3" + "63deadbeef60005260046" + "01cfd"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack(tmp_path_factory.mktemp("rpc"), DB_RPC, name="rpc", writers=1, ESP_DEPLOY_PLATFORM="0",
                   ESP_RPC_REORG_DEPTH="2", ESP_RPC_MAX_BATCH="10")
    try:
        s.rpc_url = s.serve_rpc()  # type: ignore[attr-defined]
        yield s
    finally:
        s.close()


def post(url: str, body: Any, *, key: str | None, raw: bytes | None = None) -> tuple[int, Any, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    response = requests.post(url, data=raw if raw is not None else json.dumps(body), headers=headers, timeout=60)
    return response.status_code, (response.json() if response.content else None), response.headers


def rpc(stack: LocalStack, body: Any, *, key: str | None = "", raw: bytes | None = None) -> tuple[int, Any]:
    status, reply, _ = post(stack.rpc_url, body, key=stack.user_key if key == "" else key, raw=raw)  # type: ignore[attr-defined]
    return status, reply


def call(stack: LocalStack, method: str, params: list[Any] | None = None, **kw: Any) -> Any:
    status, reply = rpc(stack, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}, **kw)
    assert status == 200, reply
    assert "error" not in reply, reply
    return reply["result"]


def sign(nonce: int, **fields: Any) -> Any:
    tx = {"to": SENDER.address, "value": 1, "gas": 21000, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9,
          "nonce": nonce, "chainId": 31337, **fields}
    return SENDER.sign_transaction(tx)


def next_nonce(stack: LocalStack) -> int:
    return to_int(call(stack, "eth_getTransactionCount", [SENDER.address, "pending"]))


def wait_receipt(stack: LocalStack, tx_hash: str, timeout: float = 20) -> dict[str, Any]:
    return wait_for(lambda: call(stack, "eth_getTransactionReceipt", [tx_hash]), timeout, f"the receipt of {tx_hash}")


# -- JSON-RPC as the specification says -------------------------------------------------------------


def test_a_read_is_answered_with_the_pools_chain(stack: LocalStack) -> None:
    assert to_int(call(stack, "eth_chainId")) == 31337
    head = to_int(call(stack, "eth_blockNumber"))
    direct = max(to_int(RpcClient(spec.url).call("eth_blockNumber")) for spec in stack.specs)
    assert 0 <= direct - head <= 2


def test_without_a_key_the_answer_is_401_with_a_json_rpc_error(stack: LocalStack) -> None:
    status, reply = rpc(stack, {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}, key=None)
    assert status == 401
    assert reply["jsonrpc"] == "2.0" and reply["id"] is None and reply["error"]["code"] == -32600
    assert "API key" in reply["error"]["message"]
    status, reply = rpc(stack, {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}, key="esp_nope_nope")
    assert status == 401 and reply["error"]["code"] == -32600


def test_a_batch_is_answered_in_order_each_request_on_its_own(stack: LocalStack) -> None:
    body = [
        {"jsonrpc": "2.0", "id": "a", "method": "eth_chainId"},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_noSuchMethod", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_getBalance", "params": ["0x12", "latest"]},
        {"jsonrpc": "1.0", "id": 4, "method": "eth_chainId"},
        {"jsonrpc": "2.0", "method": "eth_chainId"},  # a notification: no answer
        {"jsonrpc": "2.0", "id": 6, "method": "eth_getBalance", "params": [SENDER.address, "latest"]},
        17,
    ]
    status, replies = rpc(stack, body)
    assert status == 200
    assert [r["id"] for r in replies] == ["a", 2, 3, 4, 6, None]
    assert replies[0]["result"] == "0x7a69"
    assert replies[1]["error"]["code"] == -32601 and "eth_noSuchMethod" in replies[1]["error"]["message"]
    assert replies[2]["error"]["code"] == -32602 and "params[0]" in replies[2]["error"]["message"]
    assert replies[3]["error"]["code"] == -32600
    assert to_int(replies[4]["result"]) > 0
    assert replies[5]["error"]["code"] == -32600


def test_malformed_bodies_and_long_batches_are_refused_whole(stack: LocalStack) -> None:
    status, reply = rpc(stack, None, raw=b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert status == 200 and reply == {"jsonrpc": "2.0", "id": None, "error": reply["error"]}
    assert reply["error"]["code"] == -32700
    status, reply = rpc(stack, [])
    assert reply["error"]["code"] == -32600
    status, reply = rpc(stack, [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in range(11)])
    assert isinstance(reply, dict) and reply["error"]["code"] == -32005 and "ESP_RPC_MAX_BATCH" in reply["error"]["message"]
    status, reply = rpc(stack, {"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": {"address": "0x0"}})
    assert reply["error"]["code"] == -32602
    status, reply = rpc(stack, {"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": [SENDER.address, "0xZZ"]})
    assert reply["error"]["code"] == -32602 and "params[1]" in reply["error"]["message"]
    big = {"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [{"data": "0x" + "00" * 600_000}, "latest"]}
    status, reply = rpc(stack, big)
    assert status == 413 and reply["error"]["code"] == -32600


def test_node_keys_and_node_administration_are_for_admins_only(stack: LocalStack) -> None:
    for method, params in (("eth_sendTransaction", [{"from": SENDER.address, "to": SENDER.address}]),
                           ("eth_sign", [SENDER.address, "0x00"]), ("personal_unlockAccount", [SENDER.address, "x"]),
                           ("eth_accounts", []), ("anvil_mine", []), ("evm_mine", []), ("debug_traceTransaction", ["0x" + "0" * 64]),
                           ("admin_peers", []), ("miner_stop", []), ("hardhat_mine", [])):
        status, reply = rpc(stack, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        assert status == 200 and reply["error"]["code"] == -32601, (method, reply)
    status, reply = rpc(stack, {"jsonrpc": "2.0", "id": 1, "method": "eth_newFilter", "params": [{}]})
    assert reply["error"]["code"] == -32601 and "eth_getLogs" in reply["error"]["message"]
    # An admin's call goes through, to the block producer.
    assert "pending" in call(stack, "txpool_status", key=stack.new_key("rpc-admin", "admin"))


def test_a_revert_is_passed_through_with_its_data(stack: LocalStack) -> None:
    nonce = next_nonce(stack)
    deploy = sign(nonce, to=None, value=0, gas=100_000, data=REVERTER_INIT)
    tx_hash = call(stack, "eth_sendRawTransaction", [deploy.raw_transaction.to_0x_hex()])
    receipt = wait_receipt(stack, tx_hash)
    assert to_int(receipt["status"]) == 1
    _status, reply = rpc(stack, {"jsonrpc": "2.0", "id": 9, "method": "eth_call",
                               "params": [{"to": receipt["contractAddress"], "data": "0x"}, "latest"]})
    leader = next(spec for spec in stack.manager.registry.all() if spec.role == "leader")
    direct = RpcClient(leader.url)._post(
        {"jsonrpc": "2.0", "id": 9, "method": "eth_call", "params": [{"to": receipt["contractAddress"], "data": "0x"}, "latest"]}, None)
    assert "error" in reply and "error" in direct, (reply, direct)
    assert reply["error"] == direct["error"]
    assert reply["error"]["data"] == "0xdeadbeef"


# -- raw transactions ---------------------------------------------------------------------------------


def test_raw_bytes_are_kept_before_the_answer_and_a_resend_is_a_success(stack: LocalStack) -> None:
    nonce = next_nonce(stack)
    tx = sign(nonce)
    raw = tx.raw_transaction.to_0x_hex()
    tx_hash = call(stack, "eth_sendRawTransaction", [raw])
    assert tx_hash == tx.hash.to_0x_hex()
    kept = stack.redis.get(KEPT_KEY.format(tx_hash))
    assert kept is not None and json.loads(kept)["raw"] == raw
    assert call(stack, "eth_sendRawTransaction", [raw]) == tx_hash  # already known
    receipt = wait_receipt(stack, tx_hash)
    assert call(stack, "eth_sendRawTransaction", [raw]) == tx_hash  # mined: nonce too low, but ours
    # The beat's pass forgets it once it is buried under the reorg depth.
    wait_for(lambda: stack.redis.zscore(KEPT_SET, tx_hash) is None, 20, "the kept transaction to be forgotten")
    assert to_int(receipt["status"]) == 1


def test_refused_bytes_are_passed_through_and_not_kept(stack: LocalStack) -> None:
    nonce = next_nonce(stack)
    poor = sign(nonce, value=10**30)
    status, reply = rpc(stack, {"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction",
                               "params": [poor.raw_transaction.to_0x_hex()]})
    assert "insufficient funds" in reply["error"]["message"].lower()
    assert stack.redis.get(KEPT_KEY.format(poor.hash.to_0x_hex())) is None
    wrong_chain = sign(nonce, chainId=1)
    status, reply = rpc(stack, {"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction",
                               "params": [wrong_chain.raw_transaction.to_0x_hex()]})
    assert status == 200 and "chain" in reply["error"]["message"]
    _status, reply = rpc(stack, {"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction", "params": ["0x01ff"]})
    assert reply["error"]["code"] == -32602


def test_kept_bytes_a_node_lost_are_sent_again(stack: LocalStack) -> None:
    """Bytes kept but held by no node (as when the node that took them died) reach the chain by the resend pass."""
    kept = KeptTransactions(stack.redis)
    nonce = next_nonce(stack)
    tx = sign(nonce)
    record = decode_raw(tx.raw_transaction.to_0x_hex())
    kept.keep(record, now=time.time() - 60)  # kept a minute ago, never sent since
    clients = [RpcClient(spec.url) for spec in stack.specs]
    counts = resend_pass(kept, clients, depth=2)
    assert counts["resent"] == 1
    receipt = wait_receipt(stack, record.tx_hash)
    assert to_int(receipt["status"]) == 1


# -- heads and the cache ---------------------------------------------------------------------------------


def test_deep_blocks_are_cached_and_latest_never_is(stack: LocalStack) -> None:
    wait_for(lambda: to_int(call(stack, "eth_blockNumber")) >= 5, 20, "five blocks")
    block = call(stack, "eth_getBlockByNumber", ["0x1", False])
    key = cache_key("eth_getBlockByNumber", ["0x1", False])
    # Written once the answer is out (the request does not wait for it).
    assert json.loads(wait_for(lambda: stack.redis.get(key), 5, "the cached block")) == block
    assert call(stack, "eth_getBlockByNumber", ["0x1", False]) == block
    latest = call(stack, "eth_getBlockByNumber", ["latest", False])
    assert stack.redis.get(cache_key("eth_getBlockByNumber", ["latest", False])) is None
    # A block at the head is not cached either (a reorganisation could still replace it).
    at_head = latest["number"]
    call(stack, "eth_getBlockByNumber", [at_head, False])
    assert stack.redis.get(cache_key("eth_getBlockByNumber", [at_head, False])) is None
    # Errors are never cached.
    rpc(stack, {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": ["0x1", "yes"]})
    assert stack.redis.get(cache_key("eth_getBlockByNumber", ["0x1", "yes"])) is None


def test_a_caller_reads_its_own_writes(stack: LocalStack) -> None:
    """After its receipt, the sender's balance at latest already shows the transfer, on whichever node answers."""
    other = Account.create()
    nonce = next_nonce(stack)
    for round_ in range(5):
        tx = sign(nonce + round_, to=other.address, value=10**15)
        tx_hash = call(stack, "eth_sendRawTransaction", [tx.raw_transaction.to_0x_hex()])
        assert to_int(call(stack, "eth_getTransactionCount", [SENDER.address, "pending"])) == nonce + round_ + 1
        wait_receipt(stack, tx_hash)
        assert to_int(call(stack, "eth_getBalance", [other.address, "latest"])) == (round_ + 1) * 10**15
        assert call(stack, "eth_getTransactionByHash", [tx_hash])["hash"] == tx_hash


def key_id(key: str) -> str:
    return key.split("_")[1]  # esp_<id>_<secret>


def mined_transfer(stack: LocalStack) -> dict[str, Any]:
    tx = sign(next_nonce(stack))
    return wait_receipt(stack, call(stack, "eth_sendRawTransaction", [tx.raw_transaction.to_0x_hex()]))


def refresh_task(server: RpcServer) -> asyncio.Task:
    """The server's ``Gateway.run`` task (its refresh loop and queued writes)."""
    async def find() -> asyncio.Task:
        return next(t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "Gateway.run")

    return asyncio.run_coroutine_threadsafe(find(), server.loop).result(timeout=10)


def test_a_cached_head_below_a_block_the_caller_was_shown_is_not_its_answer(stack: LocalStack) -> None:
    """A receipt can come from the block producer a moment before the quorum's head (and the cached eth_blockNumber)
    reaches its block; the caller who saw it must not then be told an older head (seen in CI: a chain scan up to
    eth_blockNumber missed the last transactions whose receipts had been returned)."""
    shown, fresh = stack.new_key("shown", "user"), stack.new_key("fresh", "user")
    receipt = mined_transfer(stack)
    tx_hash = receipt["transactionHash"]
    assert post(stack.rpc_url, {"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionReceipt",  # type: ignore[attr-defined]
                                "params": [tx_hash]}, key=shown)[1]["result"]["blockNumber"] == receipt["blockNumber"]
    head_key = cache_key("eth_blockNumber", [])
    stack.redis.set(head_key, json.dumps("0x1"), px=30_000)  # another caller's head, long ago
    try:
        def head(key: str) -> int:
            return to_int(post(stack.rpc_url, {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"},  # type: ignore[attr-defined]
                               key=key)[1]["result"])

        assert head(fresh) == 1  # the cache answers a caller who was shown nothing newer
        assert head(shown) >= to_int(receipt["blockNumber"])
    finally:
        stack.redis.delete(head_key)


def test_the_block_a_caller_was_shown_is_stored_before_the_reply(stack: LocalStack) -> None:
    """Its next request may reach another gateway process, which learns what it was shown from Redis only: the record
    is written before the reply leaves, not by the queue sent every few milliseconds (stopped here to show it)."""
    receipt = mined_transfer(stack)
    server = RpcServer(stack.settings)
    try:
        loop_task = refresh_task(server)
        server.loop.call_soon_threadsafe(server.runner.app[GATEWAY].stop)  # no queued write is sent from now on
        wait_for(loop_task.done, 5, "the refresh loop to end after stop()")
        key = stack.new_key("one-process", "user")
        status, reply, _ = post(server.url, {"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionReceipt",
                                             "params": [receipt["transactionHash"]]}, key=key)
        assert status == 200 and reply["result"]["blockNumber"] == receipt["blockNumber"]
        stored = stack.redis.hget(SEEN_KEY.format(key_id(key)), "block")
        assert stored is not None and json.loads(stored) == to_int(receipt["blockNumber"])
    finally:
        server.close()


def test_two_processes_showing_one_key_blocks_at_once_never_lower_its_record(stack: LocalStack) -> None:
    """Process A shows block 10 and process B block 9 to the same key at the same moment; B's write may land last."""
    key_id_ = "concurrent-" + str(time.time_ns())
    a, b = ShownRecords().get(key_id_, None), ShownRecords().get(key_id_, None)
    writes_a, writes_b = Deferred(), Deferred()
    a.show(10, writes_a)
    b.show(9, writes_b)
    for writes in (writes_a, writes_b):  # A's first, then B's
        pipe = stack.redis.pipeline(transaction=False)
        for name, args, kwargs in writes.commands:
            getattr(pipe, name)(*args, **kwargs)
        pipe.execute()
    stored = stack.redis.hgetall(SEEN_KEY.format(key_id_))
    assert json.loads(stored[b"block"]) == 10
    assert 0 < stack.redis.ttl(SEEN_KEY.format(key_id_)) <= SEEN_TTL
    assert ShownRecords().get(key_id_, stored).block == 10  # as a third process reads it


def cache_hits(method: str) -> float:
    """Cache hits of this process's gateways (the servers run here, in threads)."""
    return REGISTRY.get_sample_value("esp_rpc_cache_total", {"method": method, "result": "hit"}) or 0.0


def test_a_cached_answer_shows_its_block_to_the_caller_as_a_node_answer_does(stack: LocalStack) -> None:
    """A receipt from the cache (or shared with an identical call in flight) is as much "shown" as one a node gave."""
    receipt = mined_transfer(stack)
    block = to_int(receipt["blockNumber"])
    wait_for(lambda: to_int(call(stack, "eth_blockNumber")) >= block + 4, 30, "the receipt's block to be deep")
    params = [receipt["transactionHash"]]
    call(stack, "eth_getTransactionReceipt", params)
    wait_for(lambda: stack.redis.get(cache_key("eth_getTransactionReceipt", params)), 5, "the cached receipt")
    key = stack.new_key("from-the-cache", "user")
    hits = cache_hits("eth_getTransactionReceipt")
    assert post(stack.rpc_url, {"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionReceipt",  # type: ignore[attr-defined]
                                "params": params}, key=key)[1]["result"] == receipt
    assert cache_hits("eth_getTransactionReceipt") == hits + 1
    stored = stack.redis.hget(SEEN_KEY.format(key_id(key)), "block")
    assert stored is not None and json.loads(stored) == block


def test_the_rate_limit_counts_every_request_of_a_batch(stack: LocalStack) -> None:
    url = stack.serve_rpc(ESP_RPC_RATE_LIMIT="5 per minute")
    key = stack.new_key("limited", "user")
    batch = [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in range(3)]
    assert post(url, batch, key=key)[0] == 200
    status, reply, headers = post(url, batch, key=key)
    assert status == 429
    assert reply["error"]["code"] == -32005 and int(headers["Retry-After"]) >= 1
    # Another key has its own budget.
    assert post(url, batch, key=stack.new_key("unlimited", "user"))[0] == 200


def test_the_gateways_refresh_loop_ends_on_stop_alone(stack: LocalStack) -> None:
    """Shutdown stops the refresh loop with a flag, not a cancel alone: a cancel that lands in a Redis call can come
    back as that call's timeout, and a loop that rides out Redis errors would then run on while cleanup awaited it."""
    server = RpcServer(stack.settings)
    try:
        loop_task = refresh_task(server)
        time.sleep(0.2)
        assert not loop_task.done()
        server.loop.call_soon_threadsafe(server.runner.app[GATEWAY].stop)
        wait_for(loop_task.done, 5, "the refresh loop to end after stop()")
        assert not loop_task.cancelled() and loop_task.exception() is None
    finally:
        server.close()
