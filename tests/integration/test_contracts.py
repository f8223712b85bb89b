"""The platform contracts on a real anvil: every function, event, fee and revert reason.

Transactions are signed locally (as ESP's write path does) and sent raw. Every
revert is checked twice: by eth_call (what the write path's pre-flight sees) and
as a mined transaction with status 0, whose reason is recovered from anvil's
call trace and decoded with ``contracts.decode_revert``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from contracts import PLATFORM_CONTRACTS, decode_revert, load_artifact
from errors import RpcError
from nodepool.rpc import RpcClient
from nodepool.spec import NodeSpec
from nodes.process import ProcessBackend
from settings import DEV_TREASURY_KEY, Settings

pytestmark = pytest.mark.timeout(300)

ZERO = "0x0000000000000000000000000000000000000000"
MAX_UINT = 2**256 - 1
GAS = 1_000_000  # explicit, so a reverting transaction is sent (and mined) rather than refused by estimation
DEPLOY_GAS = 5_000_000
REWARD = 100
FEE_BPS = 250  # 2.5 %
PRICE = 1000
FILE_HASH = keccak(b"project A: the full file")


def _account(label: str) -> LocalAccount:
    """A deterministic test account (keys derived from a label, never random)."""
    return Account.from_key(keccak(text=f"esp contracts test {label}"))


TREASURY: LocalAccount = Account.from_key(DEV_TREASURY_KEY)
ALICE = _account("alice")  # publisher
BOB = _account("bob")  # buyer
CAROL = _account("carol")  # holds a few tokens, bought nothing
DAVE = _account("dave")  # unlimited allowance from carol
STRANGER = _account("stranger")  # no rights anywhere
FEES = _account("fees")  # the platform's fee recipient
PEOPLE = (ALICE, BOB, CAROL, DAVE, STRANGER, FEES)


# -- the node and a small signing client ---------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeSpec]:
    """One automining anvil for the module, stopped at its end."""
    settings = Settings.from_env({"ESP_RUN_DIR": str(tmp_path_factory.mktemp("contracts-node")), "ESP_BLOCK_TIME": "0"})
    backend = ProcessBackend(settings)
    spec = backend.start("node-0", role="leader")
    try:
        yield spec
    finally:
        backend.stop(spec)
        backend.close()


class Chain:
    """Signs, sends and inspects transactions on one node."""

    def __init__(self, url: str) -> None:
        self.w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 10}, exception_retry_configuration=None))
        self.rpc = RpcClient(url, timeout=10)
        self.chain_id = self.w3.eth.chain_id
        self.deployments: dict[str, TxReceipt] = {}  # contract address -> its deployment receipt

    def send(self, sender: LocalAccount, tx: dict[str, Any]) -> TxReceipt:
        """Sign ``tx`` as ``sender``, send it raw and wait for its receipt."""
        full = {
            "from": sender.address,
            "nonce": self.w3.eth.get_transaction_count(sender.address, "pending"),
            "gas": GAS,
            "gasPrice": self.w3.eth.gas_price,
            "chainId": self.chain_id,
            "value": 0,
            **tx,
        }
        signed = sender.sign_transaction(full)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.005)

    def transact(self, sender: LocalAccount, contract: Contract, fn: str, *args: Any) -> TxReceipt:
        """Call ``contract.fn(*args)`` as ``sender``; the transaction must succeed."""
        receipt = self.send(sender, {"to": contract.address, "data": contract.encode_abi(fn, args=list(args))})
        assert receipt["status"] == 1, f"{fn}{args} reverted: {self.mined_revert_reason(receipt)}"
        return receipt

    def deploy(self, sender: LocalAccount, name: str, *args: Any) -> Contract:
        """Deploy the platform contract ``name`` from its committed artifact."""
        artifact = load_artifact(name)
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = self.send(sender, {"data": factory.constructor(*args).data_in_transaction, "gas": DEPLOY_GAS})
        assert receipt["status"] == 1, f"deploying {name} reverted: {self.mined_revert_reason(receipt)}"
        address = receipt["contractAddress"]
        assert address is not None
        self.deployments[address] = receipt
        contract = self.w3.eth.contract(address=address, abi=artifact["abi"])
        assert isinstance(contract, Contract)
        return contract

    def call_reason(self, sender: LocalAccount, tx: dict[str, Any], block: str | int = "latest") -> str:
        """The decoded revert reason of ``tx`` run by eth_call; fails if it does not revert."""
        block_id = block if isinstance(block, str) else hex(block)
        with pytest.raises(RpcError) as caught:
            call = {"from": sender.address, **tx, "gas": hex(tx.get("gas", GAS))}
            self.rpc.call("eth_call", [call, block_id])
        assert caught.value.code == 3, caught.value  # 3: execution reverted (EIP-1474)
        return decode_revert(caught.value.data)

    def mined_revert_reason(self, receipt: TxReceipt) -> str:
        """A mined transaction's revert reason, from anvil's call trace of it."""
        trace = self.rpc.call("debug_traceTransaction", [receipt["transactionHash"].to_0x_hex(), {"tracer": "callTracer"}])
        output = trace.get("output") or "0x"
        if output == "0x" and trace.get("error") not in (None, "execution reverted"):
            return str(trace["error"])  # e.g. out of gas: no revert data to decode
        return decode_revert(output)

    def assert_reverts(self, sender: LocalAccount, tx: dict[str, Any], reason: str) -> None:
        """``tx`` reverts with ``reason`` both as a call and as a mined transaction."""
        tx = {"gas": DEPLOY_GAS, **tx} if "to" not in tx else tx
        assert self.call_reason(sender, tx) == reason
        receipt = self.send(sender, tx)
        assert receipt["status"] == 0
        assert receipt["logs"] == []
        assert self.mined_revert_reason(receipt) == reason
        # The write path may also replay a reverted transaction at its parent block:
        # exact here, where automine puts each transaction in a block of its own.
        assert self.call_reason(sender, tx, receipt["blockNumber"] - 1) == reason

    def close(self) -> None:
        self.rpc.close()


@pytest.fixture(scope="module")
def chain(node: NodeSpec) -> Iterator[Chain]:
    """A signing client whose test accounts have ether for gas."""
    c = Chain(node.url)
    for person in PEOPLE:
        c.send(TREASURY, {"to": person.address, "value": Web3.to_wei(10, "ether")})
    yield c
    c.close()


# -- platforms ----------------------------------------------------------------------------


@dataclass
class Platform:
    """A deployed token and market (market is a token operator; treasury owns both)."""

    token: Contract
    market: Contract
    receipts: dict[str, TxReceipt]


def deploy_platform(chain: Chain, *, reward: int = REWARD, fee_bps: int = FEE_BPS, operator: bool = True) -> Platform:
    """Deploy the platform the way ESP does: token, market, then make the market an operator."""
    token = chain.deploy(TREASURY, "PlatformToken", "ESP Token", "ESP", 18)
    market = chain.deploy(TREASURY, "ProjectMarket", token.address, reward, fee_bps, FEES.address)
    receipts = {}
    if operator:
        receipts["setOperator"] = chain.transact(TREASURY, token, "setOperator", market.address, True)
    return Platform(token, market, receipts)


@pytest.fixture
def platform(chain: Chain) -> Platform:
    """A fresh platform for one test."""
    return deploy_platform(chain)


@pytest.fixture(scope="module")
def seeded(chain: Chain) -> Platform:
    """A platform in a known state, shared by the revert cases (a revert changes no state).

    alice published project 1 at PRICE (reward REWARD) and bob bought it; bob holds 4000,
    carol 10 with allowances stranger=5 and dave=unlimited.
    """
    p = deploy_platform(chain)
    chain.transact(ALICE, p.market, "publish", "Project A", FILE_HASH, PRICE)
    chain.transact(TREASURY, p.token, "add", BOB.address, 5000)
    chain.transact(BOB, p.market, "buy", 1)
    chain.transact(TREASURY, p.token, "add", CAROL.address, 10)
    chain.transact(CAROL, p.token, "approve", STRANGER.address, 5)
    chain.transact(CAROL, p.token, "approve", DAVE.address, MAX_UINT)
    return p


def events(receipt: TxReceipt, contract: Contract, name: str) -> list[dict[str, Any]]:
    """The decoded arguments of ``contract``'s ``name`` events in ``receipt``."""
    event = contract.events[name]()
    return [
        dict(event.process_log(log)["args"])
        for log in receipt["logs"]
        if log["address"] == contract.address and log["topics"] and log["topics"][0].to_0x_hex() == event.topic
    ]


def log_sequence(receipt: TxReceipt, p: Platform) -> list[str]:
    """Every log of ``receipt`` as "token.Name" / "market.Name", in order."""
    names = []
    for log in receipt["logs"]:
        for label, contract in (("token", p.token), ("market", p.market)):
            if log["address"] == contract.address:
                by_topic: dict[str, str] = {contract.events[e["name"]]().topic: e["name"] for e in contract.abi if e["type"] == "event"}
                names.append(f"{label}.{by_topic[log['topics'][0].to_0x_hex()]}")
    return names


def balances(p: Platform, *people: LocalAccount) -> list[int]:
    return [p.token.functions.balanceOf(x.address).call() for x in people]


# -- the token -------------------------------------------------------------------------------


def test_artifacts_are_the_platform_contracts() -> None:
    assert PLATFORM_CONTRACTS == ("PlatformToken", "ProjectMarket")
    for name in PLATFORM_CONTRACTS:
        artifact = load_artifact(name)
        assert artifact["bytecode"].startswith("0x60") and artifact["abi"]


def test_token_metadata_owner_and_deployment_events(chain: Chain) -> None:
    token = chain.deploy(TREASURY, "PlatformToken", "ESP Token", "ESP", 6)
    f = token.functions
    assert (f.name().call(), f.symbol().call(), f.decimals().call(), f.totalSupply().call()) == ("ESP Token", "ESP", 6, 0)
    assert f.owner().call() == TREASURY.address
    receipt = chain.deployments[token.address]
    assert events(receipt, token, "OwnershipTransferred") == [{"previousOwner": ZERO, "newOwner": TREASURY.address}]


def test_add_remove_and_set_keep_total_supply_equal_to_the_balances(chain: Chain, platform: Platform) -> None:
    token = platform.token
    total = token.functions.totalSupply

    r = chain.transact(TREASURY, token, "add", ALICE.address, 1000)
    assert events(r, token, "Transfer") == [{"from": ZERO, "to": ALICE.address, "value": 1000}]
    assert (balances(platform, ALICE), total().call()) == ([1000], 1000)

    r = chain.transact(TREASURY, token, "remove", ALICE.address, 300)
    assert events(r, token, "Transfer") == [{"from": ALICE.address, "to": ZERO, "value": 300}]
    assert (balances(platform, ALICE), total().call()) == ([700], 700)

    r = chain.transact(TREASURY, token, "set", ALICE.address, 1000)  # up: mints the difference
    assert events(r, token, "Transfer") == [{"from": ZERO, "to": ALICE.address, "value": 300}]
    assert (balances(platform, ALICE), total().call()) == ([1000], 1000)

    r = chain.transact(TREASURY, token, "set", ALICE.address, 250)  # down: burns the difference
    assert events(r, token, "Transfer") == [{"from": ALICE.address, "to": ZERO, "value": 750}]
    assert (balances(platform, ALICE), total().call()) == ([250], 250)

    r = chain.transact(TREASURY, token, "set", ALICE.address, 250)  # unchanged: no event
    assert r["logs"] == []

    chain.transact(TREASURY, token, "set", BOB.address, 40)  # from zero
    chain.transact(TREASURY, token, "add", CAROL.address, 0)  # minting nothing is allowed
    chain.transact(TREASURY, token, "remove", ALICE.address, 250)  # down to zero
    assert balances(platform, ALICE, BOB, CAROL) == [0, 40, 0]
    assert total().call() == 40

    # Rebuilding the supply from every Transfer event gives the same total.
    logs = token.events.Transfer().get_logs(from_block=0)
    minted = sum(e["args"]["value"] for e in logs if e["args"]["from"] == ZERO)
    burned = sum(e["args"]["value"] for e in logs if e["args"]["to"] == ZERO)
    assert minted - burned == total().call()


def test_transfer_approve_and_transfer_from(chain: Chain, platform: Platform) -> None:
    token = platform.token
    chain.transact(TREASURY, token, "add", CAROL.address, 100)

    r = chain.transact(CAROL, token, "transfer", BOB.address, 30)
    assert events(r, token, "Transfer") == [{"from": CAROL.address, "to": BOB.address, "value": 30}]
    assert balances(platform, CAROL, BOB) == [70, 30]
    chain.transact(CAROL, token, "transfer", BOB.address, 0)  # a zero transfer is valid ERC-20

    r = chain.transact(CAROL, token, "approve", DAVE.address, 50)
    assert events(r, token, "Approval") == [{"owner": CAROL.address, "spender": DAVE.address, "value": 50}]
    assert token.functions.allowance(CAROL.address, DAVE.address).call() == 50

    r = chain.transact(DAVE, token, "transferFrom", CAROL.address, STRANGER.address, 20)
    assert events(r, token, "Transfer") == [{"from": CAROL.address, "to": STRANGER.address, "value": 20}]
    assert token.functions.allowance(CAROL.address, DAVE.address).call() == 30
    assert balances(platform, CAROL, STRANGER) == [50, 20]

    # An unlimited allowance is never spent down.
    chain.transact(CAROL, token, "approve", DAVE.address, MAX_UINT)
    chain.transact(DAVE, token, "transferFrom", CAROL.address, DAVE.address, 50)
    assert token.functions.allowance(CAROL.address, DAVE.address).call() == MAX_UINT
    assert balances(platform, CAROL, DAVE) == [0, 50]
    assert token.functions.totalSupply().call() == 100  # transfers never change the supply


def test_operators_mint_and_move_without_allowance(chain: Chain, platform: Platform) -> None:
    token = platform.token
    assert token.functions.isOperator(platform.market.address).call() is True
    assert events(platform.receipts["setOperator"], token, "OperatorSet") == [
        {"operator": platform.market.address, "allowed": True}
    ]

    r = chain.transact(TREASURY, token, "setOperator", DAVE.address, True)
    assert events(r, token, "OperatorSet") == [{"operator": DAVE.address, "allowed": True}]
    r = chain.transact(DAVE, token, "operatorMint", CAROL.address, 70)
    assert events(r, token, "Transfer") == [{"from": ZERO, "to": CAROL.address, "value": 70}]
    r = chain.transact(DAVE, token, "operatorTransfer", CAROL.address, BOB.address, 20)
    assert events(r, token, "Transfer") == [{"from": CAROL.address, "to": BOB.address, "value": 20}]
    assert token.functions.allowance(CAROL.address, DAVE.address).call() == 0
    assert balances(platform, CAROL, BOB) == [50, 20]
    assert token.functions.totalSupply().call() == 70

    chain.transact(TREASURY, token, "setOperator", DAVE.address, False)
    assert token.functions.isOperator(DAVE.address).call() is False
    tx = {"to": token.address, "data": token.encode_abi("operatorMint", args=[DAVE.address, 1])}
    chain.assert_reverts(DAVE, tx, "not an operator")


def test_token_ownership_moves_with_its_rights(chain: Chain, platform: Platform) -> None:
    token = platform.token
    r = chain.transact(TREASURY, token, "transferOwnership", ALICE.address)
    assert events(r, token, "OwnershipTransferred") == [{"previousOwner": TREASURY.address, "newOwner": ALICE.address}]
    assert token.functions.owner().call() == ALICE.address
    chain.transact(ALICE, token, "add", ALICE.address, 5)
    tx = {"to": token.address, "data": token.encode_abi("add", args=[TREASURY.address, 5])}
    chain.assert_reverts(TREASURY, tx, "not the owner")


# -- the market ------------------------------------------------------------------------------


def test_market_configuration_and_deployment_events(chain: Chain, platform: Platform) -> None:
    m = platform.market.functions
    assert m.token().call() == platform.token.address
    assert m.owner().call() == TREASURY.address
    assert (m.publishReward().call(), m.feeBps().call(), m.feeRecipient().call()) == (REWARD, FEE_BPS, FEES.address)
    assert (m.projectCount().call(), m.MAX_FEE_BPS().call(), m.MAX_NAME_BYTES().call()) == (0, 10_000, 256)
    deployment = chain.deployments[platform.market.address]
    assert events(deployment, platform.market, "OwnershipTransferred") == [{"previousOwner": ZERO, "newOwner": TREASURY.address}]
    assert events(deployment, platform.market, "PublishRewardSet") == [{"reward": REWARD}]
    assert events(deployment, platform.market, "FeeSet") == [{"feeBps": FEE_BPS, "feeRecipient": FEES.address}]


def test_publish_records_the_project_and_rewards_the_publisher(chain: Chain, platform: Platform) -> None:
    market = platform.market
    data = market.encode_abi("publish", args=["Project A", FILE_HASH, PRICE])
    returned = chain.w3.eth.call({"from": ALICE.address, "to": market.address, "data": data})
    assert int.from_bytes(returned, "big") == 1  # the id publish() returns

    r = chain.transact(ALICE, market, "publish", "Project A", FILE_HASH, PRICE)
    assert log_sequence(r, platform) == ["market.ProjectPublished", "token.Transfer"]
    assert events(r, market, "ProjectPublished") == [
        {"id": 1, "publisher": ALICE.address, "name": "Project A", "fileHash": FILE_HASH, "price": PRICE}
    ]
    assert events(r, platform.token, "Transfer") == [{"from": ZERO, "to": ALICE.address, "value": REWARD}]
    assert balances(platform, ALICE) == [REWARD]
    timestamp = chain.w3.eth.get_block(r["blockNumber"])["timestamp"]
    assert market.functions.getProject(1).call() == [ALICE.address, "Project A", FILE_HASH, PRICE, timestamp, 0]

    r = chain.transact(BOB, market, "publish", "项目 B — 私募", keccak(b"B"), 0)  # UTF-8 names; free projects allowed
    assert events(r, market, "ProjectPublished")[0]["id"] == 2
    assert market.functions.getProject(2).call()[1] == "项目 B — 私募"
    assert market.functions.projectCount().call() == 2
    chain.transact(CAROL, market, "publish", "n" * 256, keccak(b"C"), 1)  # the longest name allowed
    assert balances(platform, ALICE, BOB, CAROL) == [REWARD, REWARD, REWARD]
    assert platform.token.functions.totalSupply().call() == 3 * REWARD


def test_publish_reward_follows_the_owner_setting(chain: Chain, platform: Platform) -> None:
    market = platform.market
    r = chain.transact(TREASURY, market, "setPublishReward", 7)
    assert events(r, market, "PublishRewardSet") == [{"reward": 7}]
    chain.transact(ALICE, market, "publish", "A", FILE_HASH, 1)
    chain.transact(TREASURY, market, "setPublishReward", 0)
    r = chain.transact(ALICE, market, "publish", "B", FILE_HASH, 1)
    assert log_sequence(r, platform) == ["market.ProjectPublished"]  # no reward, no mint
    assert balances(platform, ALICE) == [7]


def test_buy_pays_the_publisher_and_the_fee(chain: Chain, platform: Platform) -> None:
    market, token = platform.market, platform.token
    chain.transact(ALICE, market, "publish", "Project A", FILE_HASH, PRICE)
    chain.transact(TREASURY, token, "add", BOB.address, 1500)
    supply = token.functions.totalSupply().call()
    fee = PRICE * FEE_BPS // 10_000
    assert market.functions.feeFor(PRICE).call() == fee == 25

    r = chain.transact(BOB, market, "buy", 1)
    assert log_sequence(r, platform) == ["market.ProjectPurchased", "token.Transfer", "token.Transfer"]
    assert events(r, market, "ProjectPurchased") == [
        {"id": 1, "buyer": BOB.address, "publisher": ALICE.address, "price": PRICE, "fee": fee}
    ]
    assert events(r, token, "Transfer") == [
        {"from": BOB.address, "to": ALICE.address, "value": PRICE - fee},
        {"from": BOB.address, "to": FEES.address, "value": fee},
    ]
    assert balances(platform, ALICE, BOB, FEES) == [REWARD + PRICE - fee, 1500 - PRICE, fee]
    assert token.functions.totalSupply().call() == supply
    assert market.functions.hasBought(1, BOB.address).call() is True
    assert market.functions.hasBought(1, CAROL.address).call() is False
    assert market.functions.hasBought(99, BOB.address).call() is False  # unknown project: not bought
    assert market.functions.getProject(1).call()[5] == 1

    # A second buyer; the buyers count follows.
    chain.transact(TREASURY, token, "add", CAROL.address, PRICE)
    chain.transact(CAROL, market, "buy", 1)
    assert market.functions.getProject(1).call()[5] == 2
    assert balances(platform, ALICE, CAROL, FEES) == [REWARD + 2 * (PRICE - fee), 0, 2 * fee]


@pytest.mark.parametrize(
    ("fee_bps", "price", "expected"),
    [
        (0, 1000, (1000, 0, 1)),  # no fee configured: one transfer
        (250, 39, (39, 0, 1)),  # the fee rounds down to nothing
        (10_000, 1000, (0, 1000, 1)),  # everything to the platform
        (250, 0, (0, 0, 0)),  # a free project moves nothing but is recorded
    ],
)
def test_fee_edges(chain: Chain, fee_bps: int, price: int, expected: tuple[int, int, int]) -> None:
    """A purchase at each fee edge; expected is (paid to the publisher, fee, token transfers)."""
    to_publisher, fee, transfers = expected
    p = deploy_platform(chain, reward=0)
    chain.transact(ALICE, p.market, "publish", "A", FILE_HASH, price)
    chain.transact(TREASURY, p.token, "add", BOB.address, price)
    r = chain.transact(TREASURY, p.market, "setFee", fee_bps, FEES.address)
    assert events(r, p.market, "FeeSet") == [{"feeBps": fee_bps, "feeRecipient": FEES.address}]
    r = chain.transact(BOB, p.market, "buy", 1)
    assert events(r, p.market, "ProjectPurchased")[0]["fee"] == fee
    assert len(events(r, p.token, "Transfer")) == transfers
    assert balances(p, ALICE, FEES, BOB) == [to_publisher, fee, 0]
    assert p.market.functions.hasBought(1, BOB.address).call() is True


def test_fee_never_overflows(chain: Chain, platform: Platform) -> None:
    chain.transact(TREASURY, platform.market, "setFee", 10_000, FEES.address)
    assert platform.market.functions.feeFor(MAX_UINT).call() == MAX_UINT
    chain.transact(TREASURY, platform.market, "setFee", 9_999, FEES.address)
    assert platform.market.functions.feeFor(MAX_UINT).call() == MAX_UINT * 9_999 // 10_000


def test_a_zero_fee_needs_no_recipient(chain: Chain, platform: Platform) -> None:
    r = chain.transact(TREASURY, platform.market, "setFee", 0, ZERO)
    assert events(r, platform.market, "FeeSet") == [{"feeBps": 0, "feeRecipient": ZERO}]
    token = chain.deploy(TREASURY, "PlatformToken", "T", "T", 0)
    market = chain.deploy(TREASURY, "ProjectMarket", token.address, 0, 0, ZERO)
    assert market.functions.feeRecipient().call() == ZERO


def test_views_and_downloads_are_recorded_by_the_platform(chain: Chain, platform: Platform) -> None:
    market = platform.market
    chain.transact(ALICE, market, "publish", "Project A", FILE_HASH, PRICE)
    chain.transact(TREASURY, platform.token, "add", BOB.address, PRICE)
    chain.transact(BOB, market, "buy", 1)

    r = chain.transact(TREASURY, market, "recordView", 1, CAROL.address)  # anyone may view a summary
    assert events(r, market, "ProjectViewed") == [{"id": 1, "account": CAROL.address}]
    r = chain.transact(TREASURY, market, "recordDownload", 1, BOB.address)  # a buyer
    assert events(r, market, "ProjectDownloaded") == [{"id": 1, "account": BOB.address}]
    r = chain.transact(TREASURY, market, "recordDownload", 1, ALICE.address)  # the publisher
    assert events(r, market, "ProjectDownloaded") == [{"id": 1, "account": ALICE.address}]

    # An authorised recorder may record too, until the owner withdraws it.
    r = chain.transact(TREASURY, market, "setRecorder", DAVE.address, True)
    assert events(r, market, "RecorderSet") == [{"recorder": DAVE.address, "allowed": True}]
    assert market.functions.isRecorder(DAVE.address).call() is True
    chain.transact(DAVE, market, "recordView", 1, BOB.address)
    chain.transact(DAVE, market, "recordDownload", 1, BOB.address)
    chain.transact(TREASURY, market, "setRecorder", DAVE.address, False)
    tx = {"to": market.address, "data": market.encode_abi("recordView", args=[1, BOB.address])}
    chain.assert_reverts(DAVE, tx, "not a recorder")

    viewed = market.events.ProjectViewed().get_logs(from_block=0, argument_filters={"id": 1})
    downloaded = market.events.ProjectDownloaded().get_logs(from_block=0, argument_filters={"account": BOB.address})
    assert [e["args"]["account"] for e in viewed] == [CAROL.address, BOB.address]
    assert len(downloaded) == 2


def test_market_ownership_moves_with_its_rights(chain: Chain, platform: Platform) -> None:
    market = platform.market
    r = chain.transact(TREASURY, market, "transferOwnership", ALICE.address)
    assert events(r, market, "OwnershipTransferred") == [{"previousOwner": TREASURY.address, "newOwner": ALICE.address}]
    chain.transact(ALICE, market, "setPublishReward", 1)
    tx = {"to": market.address, "data": market.encode_abi("setPublishReward", args=[2])}
    chain.assert_reverts(TREASURY, tx, "not the owner")


def test_a_market_that_is_not_an_operator_cannot_reward_or_sell(chain: Chain) -> None:
    p = deploy_platform(chain, operator=False)
    tx = {"to": p.market.address, "data": p.market.encode_abi("publish", args=["A", FILE_HASH, 10])}
    chain.assert_reverts(ALICE, tx, "not an operator")  # the token's reason reaches the caller
    chain.transact(TREASURY, p.market, "setPublishReward", 0)
    chain.transact(ALICE, p.market, "publish", "A", FILE_HASH, 10)
    chain.transact(TREASURY, p.token, "add", BOB.address, 10)
    tx = {"to": p.market.address, "data": p.market.encode_abi("buy", args=[1])}
    chain.assert_reverts(BOB, tx, "not an operator")
    assert p.market.functions.hasBought(1, BOB.address).call() is False  # the whole purchase rolled back


# -- every revert reason ----------------------------------------------------------------------


REVERTS = [
    # token: owner-only
    ("token", STRANGER, "add", [STRANGER.address, 1], "not the owner"),
    ("token", STRANGER, "remove", [BOB.address, 1], "not the owner"),
    ("token", STRANGER, "set", [STRANGER.address, 1], "not the owner"),
    ("token", STRANGER, "setOperator", [STRANGER.address, True], "not the owner"),
    ("token", STRANGER, "transferOwnership", [STRANGER.address], "not the owner"),
    # token: operator-only (the owner is not an operator unless it makes itself one)
    ("token", TREASURY, "operatorMint", [TREASURY.address, 1], "not an operator"),
    ("token", STRANGER, "operatorTransfer", [BOB.address, STRANGER.address, 1], "not an operator"),
    # token: the zero address
    ("token", TREASURY, "add", [ZERO, 1], "zero address"),
    ("token", TREASURY, "remove", [ZERO, 0], "zero address"),
    ("token", TREASURY, "set", [ZERO, 5], "zero address"),
    ("token", TREASURY, "setOperator", [ZERO, True], "zero address"),
    ("token", TREASURY, "transferOwnership", [ZERO], "zero address"),
    ("token", CAROL, "transfer", [ZERO, 1], "zero address"),
    ("token", CAROL, "approve", [ZERO, 1], "zero address"),
    ("token", DAVE, "transferFrom", [CAROL.address, ZERO, 1], "zero address"),
    # token: amounts
    ("token", CAROL, "transfer", [BOB.address, 11], "insufficient balance"),
    ("token", TREASURY, "remove", [CAROL.address, 11], "insufficient balance"),
    ("token", STRANGER, "transferFrom", [CAROL.address, BOB.address, 6], "insufficient allowance"),
    ("token", BOB, "transferFrom", [CAROL.address, BOB.address, 1], "insufficient allowance"),
    ("token", DAVE, "transferFrom", [CAROL.address, BOB.address, 11], "insufficient balance"),
    ("token", TREASURY, "add", [CAROL.address, MAX_UINT], "panic 0x11: arithmetic overflow or underflow"),
    # market: unknown projects
    ("market", BOB, "buy", [0], "unknown project"),
    ("market", CAROL, "buy", [2], "unknown project"),
    ("market", TREASURY, "recordView", [2, BOB.address], "unknown project"),
    ("market", TREASURY, "recordDownload", [0, BOB.address], "unknown project"),
    # market: buying
    ("market", ALICE, "buy", [1], "publisher cannot buy own project"),
    ("market", BOB, "buy", [1], "already bought"),
    ("market", CAROL, "buy", [1], "insufficient balance"),
    # market: publishing
    ("market", ALICE, "publish", ["", FILE_HASH, 1], "empty name"),
    ("market", ALICE, "publish", ["n" * 257, FILE_HASH, 1], "name too long"),
    ("market", ALICE, "publish", ["A", b"\0" * 32, 1], "empty file hash"),
    # market: records
    ("market", STRANGER, "recordView", [1, BOB.address], "not a recorder"),
    ("market", BOB, "recordDownload", [1, BOB.address], "not a recorder"),  # a buyer cannot record for itself
    ("market", TREASURY, "recordDownload", [1, CAROL.address], "not a buyer"),
    ("market", TREASURY, "recordView", [1, ZERO], "zero address"),
    ("market", TREASURY, "recordDownload", [1, ZERO], "zero address"),
    # market: owner-only and its arguments
    ("market", ALICE, "setPublishReward", [1], "not the owner"),
    ("market", ALICE, "setFee", [0, ALICE.address], "not the owner"),
    ("market", ALICE, "setRecorder", [ALICE.address, True], "not the owner"),
    ("market", ALICE, "transferOwnership", [ALICE.address], "not the owner"),
    ("market", TREASURY, "setFee", [10_001, FEES.address], "fee too high"),
    ("market", TREASURY, "setFee", [1, ZERO], "zero address"),
    ("market", TREASURY, "setRecorder", [ZERO, True], "zero address"),
    ("market", TREASURY, "transferOwnership", [ZERO], "zero address"),
]


def _case_id(case: tuple[Any, ...]) -> str:
    contract, _, fn, _, reason = case
    return f"{contract}.{fn}-{reason}"


@pytest.mark.parametrize("case", REVERTS, ids=[_case_id(c) for c in REVERTS])
def test_every_revert_reason(chain: Chain, seeded: Platform, case: tuple[Any, ...]) -> None:
    contract_label, sender, fn, args, reason = case
    contract = seeded.token if contract_label == "token" else seeded.market
    before = (balances(seeded, ALICE, BOB, CAROL, FEES), seeded.token.functions.totalSupply().call())
    chain.assert_reverts(sender, {"to": contract.address, "data": contract.encode_abi(fn, args=args)}, reason)
    after = (balances(seeded, ALICE, BOB, CAROL, FEES), seeded.token.functions.totalSupply().call())
    assert after == before


def test_the_seeded_state_is_what_the_revert_cases_assume(seeded: Platform) -> None:
    fee = PRICE * FEE_BPS // 10_000
    assert balances(seeded, ALICE, BOB, CAROL, FEES) == [REWARD + PRICE - fee, 4000, 10, fee]
    assert seeded.token.functions.allowance(CAROL.address, STRANGER.address).call() == 5
    assert seeded.market.functions.projectCount().call() == 1


@pytest.mark.parametrize("project_id", [0, 2])
def test_get_project_of_an_unknown_id_reverts(chain: Chain, seeded: Platform, project_id: int) -> None:
    data = seeded.market.encode_abi("getProject", args=[project_id])
    assert chain.call_reason(STRANGER, {"to": seeded.market.address, "data": data}) == "unknown project"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((ZERO, REWARD, FEE_BPS, FEES.address), "zero address"),
        (("token", REWARD, 10_001, FEES.address), "fee too high"),
        (("token", REWARD, 1, ZERO), "zero address"),
    ],
    ids=["zero-token", "fee-too-high", "fee-without-recipient"],
)
def test_market_constructor_reverts(chain: Chain, seeded: Platform, args: tuple[Any, ...], reason: str) -> None:
    args = tuple(seeded.token.address if a == "token" else a for a in args)
    artifact = load_artifact("ProjectMarket")
    data = chain.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"]).constructor(*args).data_in_transaction
    chain.assert_reverts(TREASURY, {"data": data}, reason)
