"""Nonce allocation against the real Redis (DB 12) and real anvil nodes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from eth_account import Account
from prometheus_client import REGISTRY

from errors import NoHealthyNode
from nodepool.rpc import RpcClient, to_int
from nodepool.spec import NodeSpec
from nodes.process import ProcessBackend, free_port
from settings import DEV_TREASURY_KEY, Settings
from tests.conftest import fresh_redis
from tests.waiting import wait_for
from wallet.nonces import NonceManager, pool_pending_count

REDIS_DB = 12
CHAIN_ID = 31337
TREASURY = Account.from_key(DEV_TREASURY_KEY)
DEAD = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = fresh_redis(REDIS_DB)
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[[str], RpcClient]]:
    """Start automining anvil nodes (separate chains); every one is stopped after the test."""
    backend = ProcessBackend(Settings.from_env({"ESP_RUN_DIR": str(tmp_path), "ESP_BLOCK_TIME": "0"}))
    started: list[tuple[NodeSpec, RpcClient]] = []

    def start(node_id: str) -> RpcClient:
        spec = backend.start(node_id, role="leader")
        client = RpcClient(spec.url, timeout=5.0, node_id=node_id)
        started.append((spec, client))
        return client

    try:
        yield start
    finally:
        for spec, client in started:
            client.close()
            backend.stop(spec)
        backend.close()


@pytest.fixture
def node(start_node: Callable[[str], RpcClient]) -> RpcClient:
    return start_node("node-0")


def dead_client() -> RpcClient:
    """A client of a loopback port nothing listens on: a real unreachable node."""
    return RpcClient(f"http://127.0.0.1:{free_port()}", timeout=1.0, node_id="dead")


def send_behind_our_back(client: RpcClient, count: int, account: object = TREASURY, start: int = 0) -> None:
    """Transfers signed and sent directly, as another wallet using the same key would."""
    for nonce in range(start, start + count):
        signed = account.sign_transaction({  # type: ignore[attr-defined]
            "chainId": CHAIN_ID, "nonce": nonce, "to": DEAD, "value": 1, "gas": 21_000,
            "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9,
        })
        client.call("eth_sendRawTransaction", [signed.raw_transaction.to_0x_hex()])


def test_1600_concurrent_allocations_from_8_threads_are_exactly_0_to_1599(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    address = Account.create().address
    barrier = threading.Barrier(8)

    def allocate_200() -> list[int]:
        barrier.wait()  # every thread starts at once, including the first-use initialisation race
        return [manager.allocate(address, [node]) for _ in range(200)]

    with ThreadPoolExecutor(8) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(allocate_200) for _ in range(8)]]
    everything = [n for chunk in results for n in chunk]
    assert len(everything) == 1600
    assert sorted(everything) == list(range(1600))  # no gap, no duplicate
    assert all(chunk == sorted(chunk) for chunk in results)  # each worker sees increasing nonces
    assert manager.state(address).next == 1600


def test_initialised_from_the_highest_pending_count_of_the_nodes_that_answer(
    r: redis.Redis, start_node: Callable[[str], RpcClient]
) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    send_behind_our_back(a, 3)
    send_behind_our_back(b, 5)
    clients = [dead_client(), a, b]
    assert pool_pending_count(TREASURY.address, clients) == 5
    manager = NonceManager(r, CHAIN_ID)
    assert manager.allocate(TREASURY.address, clients) == 5
    assert manager.allocate(TREASURY.address, [dead_client()]) == 6  # initialised once: no node needed now
    assert manager.state(TREASURY.address).floor == 5


def test_no_node_answering_is_no_healthy_node(r: redis.Redis) -> None:
    with pytest.raises(NoHealthyNode):
        NonceManager(r, CHAIN_ID).allocate(Account.create().address, [dead_client(), dead_client()])


def test_pending_count_counts_transactions_not_yet_mined(r: redis.Redis, node: RpcClient) -> None:
    node.call("evm_setAutomine", [False])
    send_behind_our_back(node, 4)
    assert to_int(node.call("eth_getTransactionCount", [TREASURY.address, "latest"])) == 0
    assert NonceManager(r, CHAIN_ID).allocate(TREASURY.address, [node]) == 4


def test_released_nonces_are_reused_first_lowest_first(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    address = Account.create().address
    assert [manager.allocate(address, [node]) for _ in range(10)] == list(range(10))
    for n in (7, 3, 5):
        assert manager.release(address, n)
    assert manager.state(address).released == (3, 5, 7)
    assert [manager.allocate(address, [node]) for _ in range(4)] == [3, 5, 7, 10]


def test_releasing_the_newest_nonce_leaves_no_hole(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    address = Account.create().address
    for _ in range(5):
        manager.allocate(address, [node])  # 0..4
    assert manager.release(address, 3)  # a hole below the top: kept for reuse
    assert manager.release(address, 4)  # the top: next goes back, and folds 3 in with it
    state = manager.state(address)
    assert (state.next, state.released) == (3, ())
    assert [manager.allocate(address, [node]) for _ in range(3)] == [3, 4, 5]


def test_release_refuses_what_was_not_handed_out_or_is_taken_on_chain(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    assert not manager.release(TREASURY.address, 0)  # never initialised
    send_behind_our_back(node, 2)
    assert manager.allocate(TREASURY.address, [node]) == 2
    assert not manager.release(TREASURY.address, 5)  # not handed out yet
    assert not manager.release(TREASURY.address, 1)  # below the floor: used on chain by someone
    assert manager.release(TREASURY.address, 2)
    assert manager.allocate(TREASURY.address, [node]) == 2


def test_an_owner_gets_its_unrecorded_nonce_back(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    address = Account.create().address
    first = manager.allocate(address, [node], owner="task-1")
    assert manager.allocate(address, [node], owner="task-2") == first + 1
    assert manager.allocate(address, [node], owner="task-1") == first  # a re-run after a crash
    manager.record(address, first, "0x" + "ab" * 32, owner="task-1")
    assert manager.tx_hash_for(address, first) == "0x" + "ab" * 32
    assert r.get(manager.mapping_key(address, first)) == ("0x" + "ab" * 32).encode()
    assert manager.mapping_key(address, first) == f"esp:nonce:{CHAIN_ID}:{address.lower()}:{first}"
    assert manager.allocate(address, [node], owner="task-1") == first + 2  # recorded: a new send needs a new nonce
    assert first not in manager.state(address).leased


def test_an_owner_never_gets_back_a_nonce_recorded_or_released_without_it(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    address = Account.create().address
    released = manager.allocate(address, [node], owner="a")
    recorded = manager.allocate(address, [node], owner="b")
    manager.allocate(address, [node])  # a third one keeps `released` below the top
    assert manager.release(address, released)  # no owner given
    manager.record(address, recorded, "0x" + "ef" * 32)  # no owner given
    assert manager.allocate(address, [node], owner="x") == released  # handed out once more, from the released set
    assert manager.allocate(address, [node], owner="a") == recorded + 2  # not `released` a second time
    assert manager.allocate(address, [node], owner="b") == recorded + 3  # not the recorded one


def test_a_nonce_whose_holder_died_is_reused_not_skipped(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID, lease_seconds=0.2)
    address = Account.create().address
    lost = manager.allocate(address, [node], owner="dies-before-signing")
    kept = manager.allocate(address, [node], owner="records")
    manager.record(address, kept, "0x" + "cd" * 32, owner="records")
    leases = f"esp:nonce:{CHAIN_ID}:{address.lower()}:leases"
    deadline_ms = r.zscore(leases, str(lost))
    assert deadline_ms is not None

    def lease_ran_out() -> bool:  # on the Redis clock, the one the scripts read
        seconds, micros = r.time()
        return seconds * 1000 + micros // 1000 > deadline_ms

    wait_for(lease_ran_out, 5.0, f"the lease of nonce {lost} to run out")
    assert manager.allocate(address, [node]) == lost  # the gap is filled first
    assert manager.allocate(address, [node]) == kept + 1  # the recorded one is never handed out again


def test_resync_jumps_past_transactions_sent_behind_our_back(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    assert [manager.allocate(TREASURY.address, [node]) for _ in range(2)] == [0, 1]
    assert manager.release(TREASURY.address, 0)
    send_behind_our_back(node, 4)  # nonces 0..3 now used on chain by someone else
    conflicts = REGISTRY.get_sample_value("esp_nonce_conflicts_total")
    assert manager.resync(TREASURY.address, [node]) == 4
    assert REGISTRY.get_sample_value("esp_nonce_conflicts_total") == conflicts + 1
    state = manager.state(TREASURY.address)
    assert (state.next, state.floor, state.released) == (4, 4, ())  # released 0 is gone: it is taken
    assert manager.allocate(TREASURY.address, [node]) == 4


def test_resync_never_moves_the_counter_back(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    address = Account.create().address
    for _ in range(10):
        manager.allocate(address, [node])  # 0..9 in flight as far as Redis knows; the chain says 0
    assert manager.resync(address, [node]) == 10
    assert manager.allocate(address, [node]) == 10


def test_accounts_and_chains_are_independent(r: redis.Redis, node: RpcClient) -> None:
    one, other = Account.create().address, Account.create().address
    main, side = NonceManager(r, CHAIN_ID), NonceManager(r, 1)
    assert [main.allocate(one, [node]) for _ in range(3)] == [0, 1, 2]
    assert main.allocate(other, [node]) == 0
    assert side.allocate(one, [node]) == 0


def test_a_range_is_allocated_and_recorded_in_one_script_each(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    address = Account.create().address
    single = manager.allocate(address, [node], owner="alone")
    assert manager.allocate_many(address, [node], [f"t{i}" for i in range(5)]) == list(range(single + 1, single + 6))
    assert manager.release(address, single + 2, owner="t1")  # a refused one, below the top
    # Owners still holding their lease get their nonce back; the others get the released one first, then fresh ones.
    assert manager.allocate_many(address, [node], ["t0", "late", "t4", "later"]) == [single + 1, single + 2, single + 5, single + 6]
    manager.record_many(address, [(single + 1, "0x" + "01" * 32, "t0"), (single + 6, "0x" + "06" * 32, "later")])
    assert manager.tx_hash_for(address, single + 6) == "0x" + "06" * 32
    assert {single + 1, single + 6}.isdisjoint(manager.state(address).leased)
    assert manager.allocate_many(address, [node], ["t0"]) == [single + 7]  # recorded: a new send needs a new nonce


def test_a_range_starts_from_the_pool_s_pending_count(r: redis.Redis, node: RpcClient) -> None:
    manager = NonceManager(r, CHAIN_ID)
    start = to_int(node.call("eth_getTransactionCount", [TREASURY.address, "pending"]))
    assert manager.allocate_many(TREASURY.address, [node], ["a", "b", "c"]) == [start, start + 1, start + 2]
    assert manager.allocate_many(TREASURY.address, [node], []) == []
