"""The leader of a 3-node devnet killed while clients read and send raw transactions through ``/rpc``.

What must hold: no read a client made failed, and every raw transaction ``/rpc`` accepted is mined
exactly once (the sender's nonces 0..n-1, each by the accepted hash, once in the chain).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import requests
from eth_account import Account

from nodepool.registry import NodeRegistry
from nodepool.rpc import to_int
from nodepool.spec import ROLE_LEADER
from tests.conftest import DB_RPC_FAULTS
from tests.stack import LocalStack
from tests.waiting import wait_for

Account.enable_unaudited_hdwallet_features()
SENDER = Account.from_mnemonic("test test test test test test test test test test test junk", account_path="m/44'/60'/0'/0/8")
TRANSFERS = 60
READERS = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, str, str]]:
    stack = LocalStack(tmp_path_factory.mktemp("rpc-faults"), DB_RPC_FAULTS, name="rpcfaults", writers=1,
                       ESP_DEPLOY_PLATFORM="0", ESP_RPC_REORG_DEPTH="2")
    try:
        yield stack, stack.serve_rpc(), stack.user_key
    finally:
        stack.close()


class Client:
    """A plain JSON-RPC client over HTTP, as any web3 library is."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def reply(self, method: str, params: list[Any]) -> dict[str, Any]:
        response = self.session.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                                     timeout=30)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def close(self) -> None:
        self.session.close()

    def result(self, method: str, params: list[Any]) -> Any:
        body = self.reply(method, params)
        assert "error" not in body, (method, params, body)
        return body["result"]


def test_leader_killed_mid_run_no_read_fails_and_every_accepted_transaction_is_mined_once(
        served: tuple[LocalStack, str, str]) -> None:
    stack, url, key = served
    client = Client(url, key)
    try:
        run_the_load(stack, url, key, client)
    finally:
        client.close()


def run_the_load(stack: LocalStack, url: str, key: str, client: Client) -> None:
    wait_for(lambda: to_int(client.result("eth_blockNumber", [])) >= 3, 20, "three blocks")
    stop = threading.Event()
    reads: list[int] = []
    failures: list[str] = []

    def read_load(i: int) -> None:
        mine = Client(url, key)
        calls = [("eth_blockNumber", []), ("eth_getBalance", [SENDER.address, "latest"]),
                 ("eth_getBlockByNumber", ["latest", False]), ("eth_getBlockByNumber", ["0x1", False]),
                 ("eth_chainId", []), ("eth_getTransactionCount", [SENDER.address, "latest"])]
        n = 0
        while not stop.is_set():
            method, params = calls[(n + i) % len(calls)]
            try:
                body = mine.reply(method, params)
                if "error" in body or body.get("result") is None:
                    failures.append(f"{method}: {body}")
            except (requests.RequestException, AssertionError) as exc:
                failures.append(f"{method}: {exc}")
            n += 1
        mine.close()
        reads.append(n)

    readers = [threading.Thread(target=read_load, args=(i,)) for i in range(READERS)]
    for reader in readers:
        reader.start()
    registry = NodeRegistry(stack.redis)
    leader = registry.leader()
    assert leader is not None and leader.role == ROLE_LEADER and leader.pid
    nonce = to_int(client.result("eth_getTransactionCount", [SENDER.address, "pending"]))
    first_nonce = nonce
    accepted: dict[int, str] = {}
    killed_at = None
    for i in range(TRANSFERS):
        tx = SENDER.sign_transaction({"to": SENDER.address, "value": 1, "gas": 21000, "maxFeePerGas": 10**10,
                                      "maxPriorityFeePerGas": 10**9, "nonce": nonce, "chainId": 31337})
        body = client.reply("eth_sendRawTransaction", [tx.raw_transaction.to_0x_hex()])
        if "result" in body:
            assert body["result"] == tx.hash.to_0x_hex()
            accepted[nonce] = body["result"]
            nonce += 1
        if i == TRANSFERS // 3:
            os.kill(leader.pid, signal.SIGKILL)  # the block producer dies with transactions in its pool
            killed_at = time.monotonic()
        time.sleep(0.1)
    assert killed_at is not None
    # Every accepted transaction is mined: asked through /rpc, as the client would.
    for n, tx_hash in accepted.items():
        receipt = wait_for(partial(client.result, "eth_getTransactionReceipt", [tx_hash]), 60, f"the receipt of nonce {n}")
        assert to_int(receipt["status"]) == 1
    stop.set()
    for reader in readers:
        reader.join(timeout=60)
    new_leader = registry.leader()
    assert new_leader is not None and new_leader.id != leader.id
    # Exactly once: the sender's transactions in the chain are the accepted ones, each once, nonces in order.
    head = to_int(client.result("eth_blockNumber", []))
    in_chain: list[tuple[int, str]] = []
    for number in range(head + 1):
        block = client.result("eth_getBlockByNumber", [hex(number), True])
        in_chain += [(to_int(t["nonce"]), t["hash"]) for t in block["transactions"] if t["from"].lower() == SENDER.address.lower()]
    mine = [(n, h) for n, h in in_chain if n >= first_nonce]
    assert mine == sorted(accepted.items()), f"chain {mine[:5]}... vs accepted {len(accepted)}"
    assert len(accepted) >= TRANSFERS - 5, f"only {len(accepted)} of {TRANSFERS} accepted"
    assert not failures, f"{len(failures)} of {sum(reads)} reads failed: {failures[:5]}"
    assert sum(reads) > 100
    print(f"\n{sum(reads)} reads, 0 failed; {len(accepted)} of {TRANSFERS} raw transactions accepted, each mined once; "
          f"leader {leader.id} -> {new_leader.id}")
