"""Real web3 clients through ESP's JSON-RPC gateway (``POST /rpc``) over real HTTP: web3.py and ethers v6.

Neither client knows ESP exists: each gets a URL and an ``Authorization: Bearer`` header,
signs with its own key (anvil dev accounts #5 and #6; ESP's treasury is #0) and runs what
a dapp runs: an ETH transfer, a contract deployment, a view, a call that emits an event,
receipts and their logs, eth_getLogs over a block range. Behind the gateway is LocalStack's
pool: 3 anvil nodes kept on one chain, reads spread by the balancer, so a gateway that sends
a read to a node that has not seen a block, mangles a batch (ethers batches its requests) or
loses a raw transaction fails here. Every assertion is on a value the test knows in advance
(amounts, event arguments, block numbers, exact balances).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from contracts.build import compile_sources, find_node
from nodepool.rpc import to_int
from settings import ROOT
from tests.conftest import DB_RPC_CLIENTS, child_env
from tests.stack import LocalStack

MNEMONIC = "test test test test test test test test test test test junk"
WEB3PY_ACCOUNT = 5
ETHERS_ACCOUNT = 6
ETHERS_FLOW = ROOT / "tests" / "js" / "rpc_flow.mjs"
#: The ethers flow: a transfer, a deployment and two calls, each waited for at one block a second.
ETHERS_TIMEOUT = 120
RECEIPT_TIMEOUT = 60
DEAD = "0x000000000000000000000000000000000000dEaD"

#: The contract both clients deploy: a constructor argument, a state-changing call emitting an event, views.
TALLY_SOURCE = """\
// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

contract Tally {
    address public creator;
    uint256 public total;

    event Added(address indexed by, uint256 amount, uint256 total);

    constructor(uint256 start) {
        creator = msg.sender;
        total = start;
    }

    function add(uint256 amount) external returns (uint256) {
        total += amount;
        emit Added(msg.sender, amount, total);
        return total;
    }
}
"""
TALLY_START = 1000
TALLY_ADDS = (7, 35)
TRANSFER_WEI = 250_000_000_000_000_000  # 0.25 ETH


def dev_account(index: int) -> LocalAccount:
    """Anvil's funded dev account ``index`` (m/44'/60'/0'/0/index of the well-known mnemonic)."""
    Account.enable_unaudited_hdwallet_features()
    return Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, anvil_binary: Any) -> Iterator[LocalStack]:
    s = LocalStack(tmp_path_factory.mktemp("rpc-clients"), DB_RPC_CLIENTS, name="rpc-clients", ESP_DEPLOY_PLATFORM="0")
    yield s
    s.close()


@pytest.fixture(scope="module")
def gateway(stack: LocalStack) -> Iterator[str]:
    """The URL of ``/rpc`` on the stack's gateway server (``rpc.server``, stopped with the stack)."""
    yield stack.serve_rpc()


@pytest.fixture
def api_key(stack: LocalStack, request: pytest.FixtureRequest) -> str:
    """A new user's API key for each test: what a dapp's operator is given."""
    return stack.new_key(request.node.name[:40], "user")


@pytest.fixture(scope="module")
def tally(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tally compiled with the project's solc-js: abi, bytecode, deployedBytecode."""
    sources = tmp_path_factory.mktemp("tally-src")
    (sources / "Tally.sol").write_text(TALLY_SOURCE, encoding="utf-8")
    return compile_sources(sources)["Tally"]


# -- web3.py -------------------------------------------------------------------------------


def fees(w3: Web3) -> dict[str, int]:
    """EIP-1559 fees from the node: twice the latest base fee plus the suggested tip."""
    tip = w3.eth.max_priority_fee
    base = w3.eth.get_block("latest")["baseFeePerGas"]
    return {"maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base + tip}


def send_signed(w3: Web3, account: LocalAccount, tx: dict[str, Any]) -> TxReceipt:
    """Sign ``tx`` locally (nonce from the pending count), send it raw, and return its successful receipt."""
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    assert tx_hash == signed.hash, "eth_sendRawTransaction answered another hash than the signed transaction's"
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT, poll_latency=0.2)
    assert receipt["status"] == 1, receipt
    assert receipt["transactionHash"] == tx_hash and receipt["from"] == account.address
    return receipt


def base_tx(w3: Web3, account: LocalAccount) -> dict[str, Any]:
    return {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address, "pending"),
            "chainId": w3.eth.chain_id, **fees(w3)}


def cost(receipt: TxReceipt) -> int:
    return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])


def added(contract: type[Contract] | Contract, logs: Any) -> list[tuple[str, int, int, int]]:
    """(by, amount, total, block) of each Added log, decoded with the contract's ABI."""
    decoded = [contract.events.Added().process_log(log) for log in logs]
    return [(e["args"]["by"], e["args"]["amount"], e["args"]["total"], e["blockNumber"]) for e in decoded]


@pytest.fixture
def http_session() -> Iterator[requests.Session]:
    """web3.py's HTTP session, closed after the test (its own cache would leave the socket to the garbage collector)."""
    with requests.Session() as session:
        yield session


def test_web3py_transfers_deploys_calls_and_reads_events_through_the_gateway(gateway: str, api_key: str,
                                                                             tally: dict[str, Any],
                                                                             http_session: requests.Session) -> None:
    # Headers given in request_kwargs replace web3's own, Content-Type included (which nodes require).
    headers = {**Web3.HTTPProvider.get_request_headers(), "Authorization": f"Bearer {api_key}"}
    provider = Web3.HTTPProvider(gateway, request_kwargs={"headers": headers, "timeout": 30}, session=http_session,
                                 exception_retry_configuration=None)
    w3 = Web3(provider)
    me = dev_account(WEB3PY_ACCOUNT)
    assert w3.eth.chain_id == 31337

    # 1. An ETH transfer to a new address, signed here and sent raw.
    recipient = Account.create().address
    transfer = send_signed(w3, me, {**base_tx(w3, me), "to": recipient, "value": TRANSFER_WEI,
                                    "gas": w3.eth.estimate_gas({"from": me.address, "to": recipient, "value": TRANSFER_WEI})})
    block = transfer["blockNumber"]
    seen = w3.eth.get_transaction(transfer["transactionHash"])
    assert (seen["from"], seen["to"], seen["value"], seen["blockNumber"]) == (me.address, recipient, TRANSFER_WEI, block)
    assert w3.eth.get_balance(recipient, block - 1) == 0
    assert w3.eth.get_balance(recipient, block) == TRANSFER_WEI
    assert w3.eth.get_balance(recipient) == TRANSFER_WEI, "a read after the receipt does not see the transfer"
    start_balance = w3.eth.get_balance(me.address, block - 1)
    assert w3.eth.get_balance(me.address, block) == start_balance - TRANSFER_WEI - cost(transfer)

    # 2. Deploy Tally with a signed raw transaction; call its views.
    factory = w3.eth.contract(abi=tally["abi"], bytecode=tally["bytecode"])
    deploy = send_signed(w3, me, factory.constructor(TALLY_START).build_transaction(base_tx(w3, me)))
    address = deploy["contractAddress"]
    assert address is not None and deploy["to"] is None
    contract = w3.eth.contract(address=address, abi=tally["abi"])
    assert w3.eth.get_code(address).to_0x_hex() == tally["deployedBytecode"]
    assert contract.functions.total().call() == TALLY_START
    assert contract.functions.creator().call() == me.address

    # 3. State-changing calls emitting Added; the events decoded from their receipts.
    receipts = []
    expected_total = TALLY_START
    for amount in TALLY_ADDS:
        receipt = send_signed(w3, me, contract.functions.add(amount).build_transaction(base_tx(w3, me)))
        expected_total += amount
        assert added(contract, receipt["logs"]) == [(me.address, amount, expected_total, receipt["blockNumber"])]
        assert [log["address"] for log in receipt["logs"]] == [address]
        assert contract.functions.total().call(block_identifier=receipt["blockNumber"]) == expected_total
        receipts.append(receipt)
    first, last = receipts[0]["blockNumber"], receipts[-1]["blockNumber"]
    assert deploy["blockNumber"] < first < last
    assert contract.functions.total().call() == TALLY_START + sum(TALLY_ADDS)

    # 4. eth_getLogs over block ranges: both adds, the first only, none before them, by topic.
    everything = [(me.address, TALLY_ADDS[0], TALLY_START + TALLY_ADDS[0], first),
                  (me.address, TALLY_ADDS[1], TALLY_START + sum(TALLY_ADDS), last)]
    both = w3.eth.get_logs({"fromBlock": first, "toBlock": last, "address": address})
    assert added(contract, both) == everything
    assert [log["transactionHash"] for log in both] == [r["transactionHash"] for r in receipts]
    assert added(contract, w3.eth.get_logs({"fromBlock": deploy["blockNumber"], "toBlock": first, "address": address})) \
        == everything[:1]
    assert w3.eth.get_logs({"fromBlock": deploy["blockNumber"], "toBlock": first - 1, "address": address}) == []
    topic = contract.events.Added().topic
    by_me, by_dead = [topic, "0x" + me.address[2:].lower().rjust(64, "0")], [topic, "0x" + DEAD[2:].lower().rjust(64, "0")]
    assert added(contract, w3.eth.get_logs({"fromBlock": deploy["blockNumber"], "toBlock": last, "topics": by_me})) \
        == everything
    assert w3.eth.get_logs({"fromBlock": deploy["blockNumber"], "toBlock": last, "topics": by_dead}) == []

    # 5. The sender paid exactly the transfer and four fees.
    paid = TRANSFER_WEI + sum(cost(r) for r in [transfer, deploy, *receipts])
    assert w3.eth.get_balance(me.address, last) == start_balance - paid
    assert w3.eth.get_transaction_count(me.address, last) == seen["nonce"] + 4


# -- ethers v6 -----------------------------------------------------------------------------


def test_ethers_runs_the_same_flow_through_the_gateway(gateway: str, api_key: str, tally: dict[str, Any],
                                                       tmp_path: Path) -> None:
    me = dev_account(ETHERS_ACCOUNT)
    artifact = tmp_path / "tally.json"
    artifact.write_text(json.dumps({"abi": tally["abi"], "bytecode": tally["bytecode"]}), encoding="utf-8")
    env = child_env(RPC_URL=gateway, RPC_API_KEY=api_key, PRIVATE_KEY=me.key.to_0x_hex(), CONTRACT_JSON=str(artifact),
                    TRANSFER_WEI=str(TRANSFER_WEI), TALLY_START=str(TALLY_START), TALLY_ADDS=",".join(map(str, TALLY_ADDS)))
    proc = subprocess.run([find_node(), str(ETHERS_FLOW)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=ETHERS_TIMEOUT, check=False)
    assert proc.returncode == 0, f"the ethers flow failed:\n{proc.stderr[-4000:]}"
    out = json.loads(proc.stdout)
    assert (out["address"], out["chainId"]) == (me.address, "31337")

    transfer = out["transfer"]
    assert transfer["receiptHash"] == transfer["hash"]
    assert (transfer["from"], transfer["to"], int(transfer["value"])) == (me.address, transfer["recipient"], TRANSFER_WEI)
    assert (int(transfer["recipientBefore"]), int(transfer["recipientAfter"]), int(transfer["recipientLatest"])) \
        == (0, TRANSFER_WEI, TRANSFER_WEI)
    start_balance = int(transfer["senderBefore"])
    assert int(transfer["senderAfter"]) == start_balance - TRANSFER_WEI - int(transfer["fee"])

    deploy = out["deploy"]
    assert deploy["receiptAddress"] == deploy["address"]
    assert deploy["code"] == tally["deployedBytecode"]
    assert (int(deploy["total"]), deploy["creator"]) == (TALLY_START, me.address)

    expected_total = TALLY_START
    blocks = [deploy["block"]]
    for amount, step in zip(TALLY_ADDS, out["adds"], strict=True):
        expected_total += amount
        event = {"name": "Added", "by": me.address, "amount": str(amount), "total": str(expected_total),
                 "address": deploy["address"], "block": step["block"], "tx": step["hash"]}
        assert step["events"] == [event]
        assert int(step["totalThen"]) == expected_total
        blocks.append(step["block"])
    assert blocks == sorted(set(blocks)), f"deployment and calls not in increasing blocks: {blocks}"
    assert int(out["total"]) == TALLY_START + sum(TALLY_ADDS)

    logs = out["logs"]
    events = [step["events"][0] for step in out["adds"]]
    assert logs["range"] == [blocks[1], blocks[-1]]
    assert logs["all"] == events
    assert logs["firstOnly"] == events[:1]
    assert logs["before"] == []
    assert logs["byAddedTopic"] == events

    paid = TRANSFER_WEI + int(transfer["fee"]) + int(deploy["fee"]) + sum(int(step["fee"]) for step in out["adds"])
    assert int(out["senderAtEnd"]) == start_balance - paid


# -- who may do what -----------------------------------------------------------------------


def rpc_call(url: str, key: str | None, method: str, params: list[Any]) -> requests.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, headers=headers,
                         timeout=30)


def test_a_user_key_is_refused_node_key_methods_and_no_key_is_refused_everything(stack: LocalStack, gateway: str,
                                                                                  api_key: str) -> None:
    victim = dev_account(7).address  # unlocked on every anvil: eth_sendTransaction would spend its ether
    height = to_int(stack.rpc(0).call("eth_blockNumber"))
    for method, params in [("eth_sendTransaction", [{"from": victim, "to": DEAD, "value": hex(10**18)}]),
                           ("anvil_mine", ["0x64"])]:
        response = rpc_call(gateway, api_key, method, params)
        assert response.status_code == 200, (method, response.status_code, response.text)
        body = response.json()
        assert body["id"] == 1 and "result" not in body, (method, body)
        assert body["error"]["code"] == -32601, (method, body)
    assert rpc_call(gateway, None, "eth_blockNumber", []).status_code == 401
    assert rpc_call(gateway, "not-a-key", "eth_blockNumber", []).status_code == 401
    for i in range(len(stack.specs)):
        assert to_int(stack.rpc(i).call("eth_getTransactionCount", [victim, "pending"])) == 0, f"node-{i} took the transaction"
    # anvil_mine 100 would have moved every node ~100 blocks at once; interval mining adds one a second.
    assert to_int(stack.rpc(0).call("eth_blockNumber")) < height + 50
