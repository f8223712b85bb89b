"""The gateway's pure parts: methods and their params, the pool's head, what may be cached, calls in flight."""

from __future__ import annotations

import asyncio

import pytest
from eth_account import Account

from errors import NodeUnreachable, RpcError
from gateway.breakers import Breakers
from gateway.cache import CachePolicy, InFlight, cache_key
from gateway.heads import Heads, at_least, pool_head
from gateway.kept import decode_raw
from gateway.methods import AT_HEAD, NO_NEED, BlockNeed, InvalidParams, Kind, block_need, check_params, lookup
from gateway.shown import MAX_SEEN_KEYS, RAISE_BLOCK, READ_OWN_WRITE_FOR, SEEN_KEY, SEEN_TTL, ShownRecords
from gateway.state import Deferred

ADDRESS = "0x" + "ab" * 20
HASH = "0x" + "cd" * 32


def method(name: str):  # type: ignore[no-untyped-def]
    found = lookup(name)
    assert found is not None
    return found


@pytest.mark.parametrize(("name", "kind"), [
    ("eth_getBalance", Kind.READ), ("eth_sendRawTransaction", Kind.SEND_RAW), ("eth_sendTransaction", Kind.NODE_KEY),
    ("eth_signTypedData_v4", Kind.NODE_KEY), ("personal_sign", Kind.NODE_KEY), ("anvil_mine", Kind.ADMIN),
    ("evm_snapshot", Kind.ADMIN), ("debug_traceCall", Kind.ADMIN), ("hardhat_reset", Kind.ADMIN), ("admin_peers", Kind.ADMIN),
    ("miner_start", Kind.ADMIN), ("eth_newFilter", Kind.UNSUPPORTED), ("eth_subscribe", Kind.UNSUPPORTED),
])
def test_methods_are_classified(name: str, kind: Kind) -> None:
    assert method(name).kind is kind


def test_unknown_methods_are_none() -> None:
    assert lookup("eth_noSuch") is None and lookup("") is None


@pytest.mark.parametrize(("name", "params", "where"), [
    ("eth_getBalance", [ADDRESS, "0xZZ"], "params[1]"),
    ("eth_getBalance", ["0x12", "latest"], "params[0]"),
    ("eth_getBalance", [], "takes 1 to 2"),
    ("eth_getBalance", {"address": ADDRESS}, "array"),
    ("eth_getBlockByNumber", ["0x1", "yes"], "params[1]"),
    ("eth_getTransactionByHash", ["0x12"], "params[0]"),
    ("eth_getLogs", [{"fromBlock": "soon"}], "params[0].fromBlock"),
    ("eth_getLogs", [{"blockHash": "0x1"}], "params[0].blockHash"),
    ("eth_call", [{"to": ADDRESS}, {"blockNumber": "nope"}], "params[1].blockNumber"),
    ("eth_sendRawTransaction", ["0x1"], "params[0]"),
    ("eth_chainId", [1], "takes 0"),
])
def test_bad_params_are_named(name: str, params: object, where: str) -> None:
    with pytest.raises(InvalidParams, match=where.replace("[", r"\[").replace("]", r"\]")):
        check_params(method(name), params)


def test_good_params_pass_and_absent_params_are_empty() -> None:
    assert check_params(method("eth_blockNumber"), None) == []
    assert check_params(method("eth_call"), [{"to": ADDRESS}, {"blockHash": HASH}]) == [{"to": ADDRESS}, {"blockHash": HASH}]
    assert check_params(method("eth_getLogs"), [{"fromBlock": "0x1", "toBlock": "latest"}])


@pytest.mark.parametrize(("name", "params", "need"), [
    ("eth_blockNumber", [], AT_HEAD),
    ("eth_gasPrice", [], AT_HEAD),
    ("eth_getBalance", [ADDRESS], AT_HEAD),
    ("eth_getBalance", [ADDRESS, "pending"], AT_HEAD),
    ("eth_getBalance", [ADDRESS, "0x10"], BlockNeed(number=16)),
    ("eth_getBalance", [ADDRESS, "earliest"], BlockNeed(number=0)),
    ("eth_call", [{"to": ADDRESS}, {"blockHash": HASH}], NO_NEED),
    ("eth_call", [{"to": ADDRESS}, {"blockNumber": "0x5"}], BlockNeed(number=5)),
    ("eth_getBlockByNumber", ["0x7", False], BlockNeed(number=7)),
    ("eth_getTransactionReceipt", [HASH], NO_NEED),
    ("eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0x9"}], BlockNeed(number=9)),
    ("eth_getLogs", [{"fromBlock": "0x1"}], AT_HEAD),
    ("eth_getLogs", [{"blockHash": HASH}], NO_NEED),
])
def test_the_block_a_request_needs(name: str, params: list[object], need: BlockNeed) -> None:
    assert block_need(method(name), params) == need


def test_the_pools_head_is_the_highest_a_quorum_has() -> None:
    heads = {"a": 10, "b": 9, "c": 7}
    assert pool_head(heads, ["a", "b", "c"]) == 9  # 2 of 3 have 9; only one has 10
    assert pool_head(heads, ["a"]) == 10
    assert pool_head(heads, ["a", "c"]) == 7  # 2 of 2 needed
    assert pool_head({"a": -1}, ["a"]) is None
    assert at_least(heads, 9) == {"a", "b"}


def test_observed_heads_count_only_while_recent() -> None:
    now = [100.0]
    heads = Heads(clock=lambda: now[0])
    heads.observe("a", 12)
    heads.observe("a", 11)  # older news does not lower it
    assert heads.known(["a", "b"], None, {"b": {"head": 5}}) == {"a": 12, "b": 5}
    now[0] += 5
    assert heads.known(["a"], None, {"a": {"head": 8}}) == {"a": 8}


def test_only_final_answers_are_cached() -> None:
    policy = CachePolicy(enabled=True, reorg_depth=12, head_ttl=0.25, long_ttl=86400)
    assert policy.ttl(method("eth_chainId"), NO_NEED, "0x1", None) == 86400
    assert policy.ttl(method("eth_blockNumber"), AT_HEAD, "0x1", 100) == 0.25
    block = method("eth_getBlockByNumber")
    assert policy.ttl(block, BlockNeed(number=88), {"number": "0x58"}, 100) == 86400
    assert policy.ttl(block, BlockNeed(number=89), {"number": "0x59"}, 100) is None  # within the reorg depth
    assert policy.ttl(block, AT_HEAD, {"number": "0x64"}, 100) is None  # latest
    assert policy.ttl(block, BlockNeed(number=10), None, 100) is None  # null
    receipt = method("eth_getTransactionReceipt")
    assert policy.ttl(receipt, NO_NEED, {"blockNumber": "0x10"}, 100) == 86400
    assert policy.ttl(receipt, NO_NEED, {"blockNumber": "0x60"}, 100) is None
    logs = method("eth_getLogs")
    assert policy.ttl(logs, BlockNeed(number=50), [], 100) == 86400  # an empty range deep in the chain is final
    assert policy.ttl(logs, BlockNeed(number=95), [], 100) is None
    assert policy.ttl(method("eth_estimateGas"), AT_HEAD, "0x5208", 100) is None
    off = CachePolicy(enabled=False, reorg_depth=12, head_ttl=0.25, long_ttl=86400)
    assert off.ttl(method("eth_chainId"), NO_NEED, "0x1", None) is None


def test_cache_keys_ignore_key_order_but_not_values() -> None:
    assert cache_key("eth_call", [{"to": ADDRESS, "data": "0x"}]) == cache_key("eth_call", [{"data": "0x", "to": ADDRESS}])
    assert cache_key("eth_call", [{"to": ADDRESS}]) != cache_key("eth_getCode", [{"to": ADDRESS}])


def test_identical_calls_in_flight_are_made_once() -> None:
    async def scenario() -> tuple[list[int], list[tuple[str, bool]], tuple[str, bool]]:
        inflight = InFlight()
        made: list[int] = []
        gate = asyncio.Event()

        async def slow() -> str:
            made.append(1)
            await gate.wait()
            return "answer"

        waiting = [asyncio.ensure_future(inflight.run("k", slow)) for _ in range(8)]
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(*waiting)

        async def again() -> str:
            return "again"

        return made, results, await inflight.run("k", again)

    made, results, after = asyncio.run(scenario())
    assert len(made) == 1
    assert sorted(results) == [("answer", False)] + [("answer", True)] * 7
    assert after == ("again", False)  # nothing kept after the call


def test_a_shared_failure_reaches_every_waiter() -> None:
    async def scenario() -> list[BaseException | str]:
        inflight = InFlight()
        gate = asyncio.Event()

        async def failing() -> str:
            await gate.wait()
            raise RuntimeError("node gone")

        waiting = [asyncio.ensure_future(inflight.run("k", failing)) for _ in range(3)]
        await asyncio.sleep(0.01)
        gate.set()
        return [str(r) for r in await asyncio.gather(*waiting, return_exceptions=True)]

    assert asyncio.run(scenario()) == ["node gone"] * 3


def test_raw_transactions_are_decoded_without_their_sender() -> None:
    account = Account.create()
    to = account.address
    typed = account.sign_transaction({"to": to, "value": 1, "gas": 21000, "maxFeePerGas": 10**9,
                                      "maxPriorityFeePerGas": 1, "nonce": 7, "chainId": 31337})
    decoded = decode_raw(typed.raw_transaction.to_0x_hex())
    assert (decoded.tx_hash, decoded.nonce, decoded.chain_id) == (typed.hash.to_0x_hex(), 7, 31337)
    legacy = account.sign_transaction({"to": to, "value": 1, "gas": 21000, "gasPrice": 10**9, "nonce": 3, "chainId": 5})
    decoded = decode_raw(legacy.raw_transaction.to_0x_hex())
    assert (decoded.nonce, decoded.chain_id) == (3, 5)
    for bad in ("0x", "0xc0", "0x02c0", "0xzz"):
        with pytest.raises(InvalidParams):
            decode_raw(bad)


def test_a_breaker_opens_after_failures_in_a_row_and_a_probe_closes_it() -> None:
    now = [1000.0]

    class Marks:
        def __init__(self) -> None:
            self.commands: list[tuple[str, tuple[object, ...]]] = []

        def hset(self, *args: object) -> None:
            self.commands.append(("hset", args))

        def hdel(self, *args: object) -> None:
            self.commands.append(("hdel", args))

    async def scenario() -> None:
        breakers = Breakers(fail_max=3, reset_timeout=0.2, clock=lambda: now[0])

        async def dead() -> str:
            raise NodeUnreachable("refused", node_id="node-1")

        async def alive() -> str:
            return "0x1"

        async def reverting() -> str:
            raise RpcError(3, "execution reverted", "0xdeadbeef")

        for _ in range(5):  # an error answer is the node working: it never opens the breaker
            with pytest.raises(RpcError):
                await breakers.call("node-1", reverting)
        assert breakers.blocked() == set()
        for _ in range(3):
            with pytest.raises(NodeUnreachable):
                await breakers.call("node-1", dead)
        assert breakers.blocked() == {"node-1"}
        with pytest.raises(NodeUnreachable, match="circuit breaker open"):
            await breakers.call("node-1", alive)  # open: not even tried
        marks = Marks()
        breakers.flush_on(marks)
        assert marks.commands and marks.commands[0][0] == "hset" and marks.commands[0][1][1] == "node-1"
        # Another process's mark keeps this one off the node too, until its time.
        assert breakers.blocked({b"node-2": str(now[0] + 5)}) == {"node-1", "node-2"}
        assert breakers.blocked({b"node-2": str(now[0] - 5)}) == {"node-1"}
        now[0] += 1.0
        await asyncio.sleep(0.25)  # purgatory's own clock: past the reset timeout, one probe goes through
        assert await breakers.call("node-1", alive) == "0x1"
        assert breakers.blocked() == set()
        marks = Marks()
        breakers.flush_on(marks)
        assert marks.commands == [("hdel", ("esp:rpc:breakers", "node-1"))]

    asyncio.run(scenario())


# -- what a caller was shown ------------------------------------------------------------------------


def test_a_caller_record_takes_only_what_is_newer_and_records_only_a_newer_block() -> None:
    records = ShownRecords()
    seen = records.get("k1", {b"block": b"7", b"node": b'"node-1"', b"at": b"100.0"})
    assert (seen.block, seen.node, seen.at) == (7, "node-1", 100.0)
    assert records.get("k1", {b"block": b"5", b"node": b'"node-2"', b"at": b"50.0"}) is seen  # one record per key
    assert (seen.block, seen.node) == (7, "node-1")  # an older stored value does not take it back
    writes = Deferred()
    seen.show(6, writes)
    assert writes.commands == [] and seen.block == 7
    seen.show(9, writes)
    assert seen.block == 9 and writes.commands == [("eval", (RAISE_BLOCK, 1, SEEN_KEY.format("k1"), 9, SEEN_TTL), {})]
    assert seen.is_above(8) and not seen.is_above(9)


def test_pending_reads_follow_the_callers_raw_transaction_for_a_while_unless_its_node_is_blocked() -> None:
    seen = ShownRecords().get("k2", None)
    assert seen.own_write_node(1000.0, set()) is None
    seen.wrote("node-2", 1000.0, Deferred())
    assert seen.own_write_node(1000.0 + READ_OWN_WRITE_FOR - 1, set()) == "node-2"
    assert seen.own_write_node(1000.0 + READ_OWN_WRITE_FOR + 1, set()) is None
    assert seen.own_write_node(1001.0, {"node-2"}) is None


def test_a_process_keeps_a_bounded_number_of_caller_records_dropping_the_least_recent() -> None:
    records = ShownRecords()
    first = records.get("first", {b"block": b"3"})
    for i in range(MAX_SEEN_KEYS):
        records.get(f"k{i}", None)
    assert records.get("first", None) is not first  # dropped: read again from Redis at its next request
