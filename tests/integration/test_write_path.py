"""The write path end to end on real parts: API -> Redis queues -> real Celery workers -> 3 real nodes.

What users fear most is checked here: no transaction lost, none sent twice,
nonces without gap or duplicate under concurrency, priorities that hold under
a backlog, a worker killed mid-send, and no secret left in Redis.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from balancer import TaskKind
from nodepool.rpc import RpcClient, to_int
from services.outbox import Outbox
from tasks.routing import QUEUE_OF_KIND, WRITE_QUEUES
from tests.conftest import DB_WRITES
from tests.stack import LocalStack, wait_task
from tests.waiting import wait_for
from wallet.keystore import Keystore

CALLS = QUEUE_OF_KIND[TaskKind.CALL]
PASSWORD = "correct horse battery staple 42"


Stack = LocalStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory, anvil_binary):
    s = LocalStack(tmp_path_factory.mktemp("writes"), DB_WRITES, name="writes", writers=2,
                   ESP_ADMIN_KEY="test-admin-key", ESP_DEPLOY_PLATFORM="0")
    yield s
    s.close()


def wait_head(rpc: RpcClient, block: int, timeout: float = 10) -> None:
    """Wait until ``rpc``'s node has imported ``block`` (followers trail the leader by milliseconds)."""
    wait_for(lambda: to_int(rpc.call("eth_blockNumber")) >= block, timeout, f"{rpc.url} to reach block {block}")


def new_account(stack: Stack) -> str:
    client = stack.client()
    response = client.post("/api/v1/accounts", json={"password": PASSWORD})
    assert response.status_code == 202, response.get_json()
    done = wait_task(client, response.get_json()["id"])
    assert done["state"] == "confirmed", done
    address = done["result"]["address"]
    assert client.post(f"/api/v1/accounts/{address}/unlock", json={"password": PASSWORD, "seconds": 3600}).status_code == 200
    return address


def test_account_is_created_funded_and_unlocked(stack):
    client = stack.client()
    response = client.post("/api/v1/accounts", json={"password": PASSWORD})
    assert response.status_code == 202
    body = response.get_json()
    assert body["status_url"] == f"/api/v1/tasks/{body['id']}" and body["state"] == "queued"
    done = wait_task(client, body["id"])
    assert done["state"] == "confirmed", done
    address = done["result"]["address"]
    assert done["result"]["block_number"] >= 1 and done["result"]["status"] == 1 and done["node"]
    assert done["started_at"] >= done["created_at"]
    balance = client.get(f"/api/v1/accounts/{address}/balance").get_json()
    assert int(balance["wei"]) == stack.settings.funding_wei
    listed = client.get("/api/v1/accounts").get_json()
    assert address in [a["address"] for a in listed["accounts"]]
    wrong = client.post(f"/api/v1/accounts/{address}/unlock", json={"password": "not it at all", "seconds": 60})
    assert wrong.status_code == 403 and wrong.mimetype == "application/problem+json"
    assert "not it at all" not in wrong.get_data(as_text=True)
    # A locked account cannot send: refused before anything is enqueued.
    locked = client.post("/api/v1/transactions", json={"from": address, "to": address, "value_wei": 1})
    assert locked.status_code == 423
    ok = client.post(f"/api/v1/accounts/{address}/unlock", json={"password": PASSWORD, "seconds": 60})
    assert ok.status_code == 200 and ok.get_json()["unlocked"] is True
    sent = client.post("/api/v1/transactions", json={"from": address, "to": address, "value_wei": "5"})
    assert sent.status_code == 202
    result = wait_task(client, sent.get_json()["id"])
    assert result["state"] == "confirmed", result
    assert set(result["result"]) >= {"tx_hash", "nonce", "block_number", "node"}
    # Followers import the block a few milliseconds after the node that confirmed it.
    nodes = [stack.rpc(i) for i in range(3)]

    def receipt_everywhere() -> list | None:
        receipts = [node.call("eth_getTransactionReceipt", [result["result"]["tx_hash"]]) for node in nodes]
        return receipts if all(receipts) else None

    receipts = wait_for(receipt_everywhere, 10, "the transaction's receipt on every node")
    assert all(to_int(r["status"]) == 1 for r in receipts)
    for node in nodes:
        node.close()


def test_thousand_concurrent_transfers_from_one_account(stack):
    sender = new_account(stack)
    recipient = "0x000000000000000000000000000000000000dEaD"
    start_balance = to_int(stack.rpc().call("eth_getBalance", [recipient, "latest"]))
    count, value = 1000, 7

    def submit(_: int) -> str:
        response = stack.client().post("/api/v1/transactions", json={"from": sender, "to": recipient, "value_wei": value})
        assert response.status_code == 202, response.get_json()
        return response.get_json()["id"]

    with ThreadPoolExecutor(16) as pool:
        task_ids = list(pool.map(submit, range(count)))
    assert len(set(task_ids)) == count
    client = stack.client()
    results = [wait_task(client, task_id, timeout=180) for task_id in task_ids]
    states = Counter(r["state"] for r in results)
    assert states == {"confirmed": count}, (states, [r["error"] for r in results if r["state"] != "confirmed"][:3])
    nonces = sorted(r["result"]["nonce"] for r in results)
    assert nonces == list(range(count)), "nonces must be exactly 0..999: no gap, no duplicate"
    hashes = {r["result"]["tx_hash"] for r in results}
    assert len(hashes) == count
    rpc = stack.rpc(1)
    wait_head(rpc, max(r["result"]["block_number"] for r in results))
    assert to_int(rpc.call("eth_getTransactionCount", [sender, "latest"])) == count
    assert to_int(rpc.call("eth_getBalance", [recipient, "latest"])) - start_balance == count * value
    gas = sum(r["result"]["gas_used"] * r["result"]["effective_gas_price"] for r in results)
    final = to_int(rpc.call("eth_getBalance", [sender, "latest"]))
    assert final == stack.settings.funding_wei - count * value - gas  # exact to the wei


def test_a_deploy_submitted_last_starts_before_a_backlog_of_calls(stack):
    sender = new_account(stack)
    client = stack.client()
    stack.stop_writers()
    backlog = []
    for _ in range(500):
        response = client.post("/api/v1/transactions", json={"from": sender, "to": sender, "value_wei": 1})
        backlog.append(response.get_json()["id"])
    account_task = client.post("/api/v1/accounts", json={"password": PASSWORD}).get_json()["id"]
    admin = stack.client(admin=True)
    deploy = admin.post("/api/v1/contracts", json={"name": "PlatformToken"})
    assert deploy.status_code == 202, deploy.get_json()
    deploy_task = deploy.get_json()["id"]
    # The 500 calls wait in their sender's outbox, behind one drain message on the calls queue.
    assert Outbox(stack.redis).waiting(sender) == (500, 0)
    assert stack.redis.llen(CALLS) == 1
    # The node the routing hook chose travels with each task, in its headers and in what Flower shows.
    message = json.loads(stack.redis.lindex(CALLS, 0))
    node_ids = {spec.id for spec in stack.specs}
    assert message["headers"]["esp_node"] in node_ids
    assert f"'routed_to': '{message['headers']['esp_node']}'" in message["headers"]["kwargsrepr"]
    stack.start_writers()
    deployed = wait_task(admin, deploy_task, timeout=120)  # a task is readable by the key that submitted it
    account = wait_task(client, account_task, timeout=120)
    assert deployed["state"] == "confirmed" and deployed["result"]["contract_address"], deployed
    assert account["state"] == "confirmed", account
    records = [client.get(f"/api/v1/tasks/{t}?wait=60").get_json() for t in backlog]
    # With two writers of two processes each and prefetch 1, at most a handful of calls were taken before.
    for done in (deployed, account):
        before = sum(1 for r in records if r["started_at"] is not None and r["started_at"] < done["started_at"])
        assert before <= 8, f"{before} calls started before a {done['kind']} task submitted after them"
    assert deployed["started_at"] <= account["started_at"] + 0.5  # deploys are taken first, then accounts
    waits = {
        "deploy": deployed["started_at"] - deployed["created_at"],
        "accounts": account["started_at"] - account["created_at"],
        "calls_median": sorted(r["started_at"] - r["created_at"] for r in records)[250],
    }
    print("measured queue wait (s):", {k: round(v, 2) for k, v in waits.items()})
    assert waits["deploy"] < waits["calls_median"] and waits["accounts"] < waits["calls_median"]


def test_worker_killed_mid_send_sends_each_transaction_once(stack):
    sender = new_account(stack)
    client = stack.client()
    count = 150
    ids = [client.post("/api/v1/transactions", json={"from": sender, "to": sender, "value_wei": 3}).get_json()["id"] for _ in range(count)]
    # Kill pool processes with SIGKILL while they work: their tasks are re-delivered and must not send twice.
    killed = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and killed < 6:
        for writer in stack.writers:
            children = psutil.Process(writer.pid).children()
            if children:
                os.kill(children[0].pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.3)  # the pace of the kills, not a wait for a condition
    results = [wait_task(client, t, timeout=180) for t in ids]
    assert Counter(r["state"] for r in results) == {"confirmed": count}
    nonces = sorted(r["result"]["nonce"] for r in results)
    assert nonces == list(range(nonces[0], nonces[0] + count))
    rpc = stack.rpc()
    wait_head(rpc, max(r["result"]["block_number"] for r in results))
    assert to_int(rpc.call("eth_getTransactionCount", [sender, "latest"])) == nonces[0] + count
    assert killed >= 1


def test_idempotency_key_returns_the_same_task(stack):
    client = stack.client(admin=True)  # the treasury signs only for an admin
    treasury = client.get("/api/v1/accounts").get_json()["treasury"]
    body = {"from": treasury, "to": "0x000000000000000000000000000000000000bEEF", "value_wei": 11}
    first = client.post("/api/v1/transactions", json=body, headers={"Idempotency-Key": "order-77"})
    again = client.post("/api/v1/transactions", json=body, headers={"Idempotency-Key": "order-77"})
    assert first.status_code == again.status_code == 202
    assert first.get_json()["id"] == again.get_json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/api/v1/transactions", json={**body, "value_wei": 12}, headers={"Idempotency-Key": "order-77"})
    assert other.status_code == 409 and other.get_json()["field"] == "Idempotency-Key"
    confirmed = wait_task(client, first.get_json()["id"])
    assert confirmed["state"] == "confirmed"
    wait_head(stack.rpc(), confirmed["result"]["block_number"])
    assert to_int(stack.rpc().call("eth_getBalance", [body["to"], "latest"])) == 11


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"to": "0x000000000000000000000000000000000000dEaD", "value_wei": 1}, "from", 422),
        ({"from": "0x123", "to": "0x000000000000000000000000000000000000dEaD", "value_wei": 1}, "from", 422),
        ({"from": "0x000000000000000000000000000000000000DEAD", "to": "0x000000000000000000000000000000000000dEaD", "value_wei": 1}, "from", 422),
        ({"from": "TREASURY", "to": "0x000000000000000000000000000000000000dEaD", "value_wei": -1}, "value_wei", 422),
        ({"from": "TREASURY", "to": "0x000000000000000000000000000000000000dEaD", "value_wei": 1.5}, "value_wei", 422),
        ({"from": "TREASURY", "to": "0x000000000000000000000000000000000000dEaD", "value_wei": "ten"}, "value_wei", 422),
        ({"from": "TREASURY", "to": "0x000000000000000000000000000000000000dead1", "value_wei": 1}, "to", 422),
    ],
)
def test_bad_input_is_a_problem_naming_the_field_and_enqueues_nothing(stack, body, field, status):
    client = stack.client(admin=True)  # an admin, so that the treasury and unknown senders reach the checks
    treasury = client.get("/api/v1/accounts").get_json()["treasury"]
    body = {k: (treasury if v == "TREASURY" else v) for k, v in body.items()}
    before = [stack.redis.llen(q) for q in WRITE_QUEUES], len(stack.redis.keys("esp:task:*"))
    response = client.post("/api/v1/transactions", json=body)
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["field"] == field
    after = [stack.redis.llen(q) for q in WRITE_QUEUES], len(stack.redis.keys("esp:task:*"))
    assert before == after


def test_unknown_task_is_404(stack):
    response = stack.client().get("/api/v1/tasks/no-such-task")
    assert response.status_code == 404 and response.get_json()["field"] == "task_id"


def test_zz_no_password_or_private_key_anywhere_in_redis(stack):
    """Runs last in this module: everything the broker and result backend stored is searched."""
    ks = Keystore(stack.settings.keystore_dir, work_factor=4096)
    keys = [ks.decrypt(address, PASSWORD).hex() for address in ks.list()]
    assert len(keys) >= 3
    needles = [PASSWORD.encode(), stack.settings.treasury_key[2:].encode()] + [k.encode() for k in keys]
    found = []
    for key in stack.redis.scan_iter(count=1000):
        kind = stack.redis.type(key)
        if kind == b"string":
            values = [stack.redis.get(key) or b""]
        elif kind == b"list":
            values = stack.redis.lrange(key, 0, -1)
        elif kind == b"hash":
            values = [v for pair in stack.redis.hgetall(key).items() for v in pair]
        elif kind == b"set":
            values = list(stack.redis.smembers(key))
        elif kind == b"zset":
            values = [m for m, _ in stack.redis.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            values = [v for _, fields in stack.redis.xrange(key) for pair in fields.items() for v in pair]
        else:
            values = []
        for value in [key, *values]:
            lowered = value.lower() if isinstance(value, bytes) else str(value).lower().encode()
            found += [(key, n[:6]) for n in needles if n.lower() in lowered]
    assert not found, f"secrets found in Redis: {found}"
    for log in stack.tmp.glob("*.log"):
        text = log.read_bytes().lower()
        assert not [n for n in needles if n.lower() in text], f"a secret is in {log.name}"
