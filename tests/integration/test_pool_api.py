"""The node manager, the registry in Redis and the health endpoints, on real nodes."""

from __future__ import annotations

import threading
import time

import pytest
from eth_account import Account

from app import create_app
from errors import ConfigError, ValidationError
from nodepool.events import recent_events
from nodepool.pool import Pool
from nodepool.registry import NodeControl, NodeRegistry
from nodepool.rpc import RpcClient, to_int
from nodes.manager import NodeManager, connect_redis
from nodes.process import ProcessBackend
from services.static_nodes import add_static_node, remove_static_node
from settings import DEV_TREASURY_KEY
from tests.conftest import DB_FOUNDATION, fresh_redis, make_settings, redis_url
from tests.waiting import wait_for

DEV_ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


@pytest.fixture
def running_pool(tmp_path, anvil_binary):
    """A NodeManager serving 3 nodes, as `python -m nodes` does, in a thread."""
    client = fresh_redis(DB_FOUNDATION)
    settings = make_settings(tmp_path, ESP_REDIS_URL=redis_url(DB_FOUNDATION), ESP_BLOCK_TIME="1")
    manager = NodeManager(settings, client)
    specs = manager.start()
    thread = threading.Thread(target=manager.serve, daemon=True)
    thread.start()
    yield settings, manager, specs
    manager.stop()
    thread.join(10)
    manager.close()


def test_registry_is_shared_through_redis(running_pool):
    settings, _, specs = running_pool
    other_process_view = NodeRegistry(connect_redis(settings)).all()
    assert [s.id for s in other_process_view] == ["node-0", "node-1", "node-2"]
    assert [s.url for s in other_process_view] == [s.url for s in specs]
    assert NodeRegistry(connect_redis(settings)).leader().id == "node-0"


def test_readyz_names_every_node(running_pool):
    settings, _, specs = running_pool
    client = create_app(settings).test_client()
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["redis"]["ok"] is True
    assert [n["id"] for n in body["checks"]["nodes"]] == ["node-0", "node-1", "node-2"]
    assert all(n["ok"] and n["chain_id"] == 31337 for n in body["checks"]["nodes"])
    nodes = client.get("/api/v1/nodes").get_json()["nodes"]
    assert [(n["id"], n["url"]) for n in nodes] == [(s.id, s.url) for s in specs]


def test_readyz_fails_when_no_node_answers(running_pool):
    settings, manager, _ = running_pool
    assert manager.devnet is not None
    for spec in manager.devnet.specs():
        manager.devnet.stop_node(spec.id)
    response = create_app(settings).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["nodes_answering"] == 0


def test_restart_command_through_redis(running_pool):
    settings, _, specs = running_pool
    control = NodeControl(connect_redis(settings))
    reply = control.restart("node-2", timeout=60)
    assert reply["ok"] and reply["node"]["generation"] == 1
    leader_head = to_int(RpcClient(specs[0].url).call("eth_blockNumber"))
    assert to_int(RpcClient(specs[2].url).call("eth_blockNumber")) >= leader_head - 1  # caught up before replying


def test_unreachable_redis_is_one_clear_line(tmp_path):
    settings = make_settings(tmp_path, ESP_REDIS_URL="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError, match=r"Redis at redis://127.0.0.1:1/0 does not answer.*ESP_REDIS_URL"):
        connect_redis(settings)


def test_healthz_needs_nothing(tmp_path):
    settings = make_settings(tmp_path, ESP_REDIS_URL="redis://127.0.0.1:1/0")
    response = create_app(settings).test_client().get("/healthz")
    assert response.status_code == 200 and response.get_json()["status"] == "ok"
    ready = create_app(settings).test_client().get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["checks"]["redis"]["ok"] is False


def test_static_anvils_are_kept_on_one_chain_with_devnet_sync(tmp_path, anvil_binary):
    """ESP_DEVNET_SYNC: anvils ESP did not start (as compose/devnet.yml runs them) become one chain."""
    outside = ProcessBackend(make_settings(tmp_path / "outside", ESP_BLOCK_TIME="1"))  # "someone else's" anvils
    try:
        specs = [outside.start("leader", role="leader"), outside.start("f1", role="follower"), outside.start("f2", role="follower")]
        settings = make_settings(tmp_path, ESP_REDIS_URL=redis_url(DB_FOUNDATION), ESP_NODE_BACKEND="static",
                                 ESP_DEVNET_SYNC="1", ESP_NODE_URLS=",".join(s.url for s in specs))
        manager = NodeManager(settings, fresh_redis(DB_FOUNDATION))
        attached = manager.start()
        try:
            assert [(s.id, s.role) for s in attached] == [("node-0", "leader"), ("node-1", "follower"), ("node-2", "follower")]
            account = Account.from_key(DEV_TREASURY_KEY)
            raw = account.sign_transaction({"chainId": 31337, "nonce": 0, "to": account.address, "value": 1, "gas": 21000,
                                            "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9}).raw_transaction.to_0x_hex()
            tx_hash = RpcClient(specs[2].url).call("eth_sendRawTransaction", [raw])  # to a follower
            assert manager.devnet is not None
            head = manager.devnet.wait_all_synced(timeout=30)
            deadline = time.monotonic() + 30
            while not all(RpcClient(s.url).call("eth_getTransactionReceipt", [tx_hash]) for s in specs):
                assert time.monotonic() < deadline, "the follower's transaction was not mined on one chain"
                head = manager.devnet.wait_all_synced(timeout=30)
            blocks = [RpcClient(s.url).call("eth_getBlockByNumber", [hex(head), False]) for s in specs]
            assert len({b["hash"] for b in blocks}) == 1 and len({b["stateRoot"] for b in blocks}) == 1
        finally:
            manager.close()
        assert all(outside.stats(s).alive for s in specs), "ESP must not stop nodes it did not start"
    finally:
        outside.close()


def test_static_nodes_an_operator_added_come_back_after_a_restart_while_on_the_pools_chain(tmp_path, anvil_binary):
    """`esp node add` outlives the node manager: a restart registers each added node again, or forgets one that has
    left the pool's chain, saying why. Adding checks the history too, not only the chain id and genesis."""
    outside = ProcessBackend(make_settings(tmp_path / "outside", ESP_BLOCK_TIME="1"))
    client = fresh_redis(DB_FOUNDATION)
    try:
        leader = outside.start("leader", role="leader")
        same, late, early = (outside.start(name, role="standalone") for name in ("same", "late", "early"))  # automine
        settings = make_settings(tmp_path, ESP_REDIS_URL=redis_url(DB_FOUNDATION), ESP_NODE_BACKEND="static",
                                 ESP_NODE_URLS=leader.url)
        first = NodeManager(settings, client)
        first.start()
        pool = Pool(settings, client)
        try:
            wait_for(lambda: to_int(RpcClient(leader.url).call("eth_blockNumber")) >= 2, 30, "the pool's leader to mine 2 blocks")

            def fork(url: str) -> None:  # a block of its own: same genesis, another history from block 1
                node = RpcClient(url)
                tx_hash = node.call("eth_sendTransaction", [{"from": DEV_ACCOUNT, "to": DEV_ACCOUNT, "value": "0x1"}])
                receipt = wait_for(lambda: node.call("eth_getTransactionReceipt", [tx_hash]), 10, "the fork's block")
                assert to_int(receipt["blockNumber"]) == 1

            fork(early.url)
            with pytest.raises(ValidationError, match="another history: its block 1") as refused:
                add_static_node(pool, early.url, "ext-early")
            assert refused.value.field == "url"
            add_static_node(pool, same.url, "ext-same")
            add_static_node(pool, late.url, "ext-late")
            assert [s.id for s in NodeRegistry(client).added()] == ["ext-late", "ext-same"]
            fork(late.url)  # after it was added: it leaves the pool's chain
        finally:
            first.close()
        assert NodeRegistry(client).all() == [] and len(NodeRegistry(client).added()) == 2

        second = NodeManager(settings, client)
        try:
            specs = second.start()
            assert [s.id for s in specs] == ["node-0", "ext-same"]
            assert [s.id for s in NodeRegistry(client).all()] == ["ext-same", "node-0"]
            assert [s.id for s in NodeRegistry(client).added()] == ["ext-same"]
            events = {e["kind"]: e for e in recent_events(client, 20) if e["kind"] in ("node-readmitted", "node-forgotten")}
            assert events["node-readmitted"]["node"] == "ext-same"
            assert events["node-forgotten"]["node"] == "ext-late" and "another history" in events["node-forgotten"]["data"]["reason"]
            remove_static_node(Pool(settings, client), "ext-same")
            assert NodeRegistry(client).added() == []
        finally:
            second.close()
    finally:
        outside.close()


def test_a_static_node_that_kept_a_restarted_devnets_old_chain_is_forgotten(tmp_path, anvil_binary):
    """A managed devnet starts again from the same genesis: a young chain whose few blocks say nothing yet. An added
    node that is far ahead of its leader kept another history, and is forgotten rather than registered again."""
    client = fresh_redis(DB_FOUNDATION)
    settings = make_settings(tmp_path, ESP_REDIS_URL=redis_url(DB_FOUNDATION), ESP_BLOCK_TIME="1")
    outside = ProcessBackend(make_settings(tmp_path / "outside", ESP_BLOCK_TIME="0"))
    try:
        kept = outside.start("kept", role="standalone")
        first = NodeManager(settings, client)
        first.start()
        try:
            add_static_node(Pool(settings, client), kept.url, "ext-kept")
        finally:
            first.close()
        RpcClient(kept.url).call("anvil_mine", [hex(20)])  # its own blocks, as if it had followed the old chain on

        second = NodeManager(settings, client)
        try:
            specs = second.start()
            assert [s.id for s in specs] == ["node-0", "node-1", "node-2"]
            assert NodeRegistry(client).get("ext-kept") is None and NodeRegistry(client).added() == []
            (forgotten,) = [e for e in recent_events(client, 50) if e["kind"] == "node-forgotten"]
            assert forgotten["node"] == "ext-kept" and "ahead of the pool leader's" in forgotten["data"]["reason"]
        finally:
            second.close()
    finally:
        outside.close()
