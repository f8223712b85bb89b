"""Batched writes through the whole write path: API -> outbox and calls queue -> real workers -> 3 real nodes.

``tests/integration/test_batch.py`` drives one drain at a time; here the drains are
the write workers' own, started by the calls' messages.
"""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from eth_account import Account

from nodepool.rpc import to_int
from services.outbox import Outbox
from services.records import TaskStore
from tests.conftest import DB_BATCH
from tests.stack import LocalStack, wait_task
from tests.waiting import wait_for

PASSWORD = "batched writes passphrase"
DEAD = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, anvil_binary):
    s = LocalStack(tmp_path_factory.mktemp("batch"), DB_BATCH, name="batch", writers=1, ESP_DEPLOY_PLATFORM="0")
    yield s
    s.close()


def new_account(stack: LocalStack) -> str:
    client = stack.client()
    done = wait_task(client, client.post("/api/v1/accounts", json={"password": PASSWORD}).get_json()["id"])
    assert done["state"] == "confirmed", done
    address = done["result"]["address"]
    assert client.post(f"/api/v1/accounts/{address}/unlock", json={"password": PASSWORD, "seconds": 3600}).status_code == 200
    return address


def chain_count(stack: LocalStack, address: str, at_least: int) -> int:
    """The account's mined transaction count on a follower, once it has imported them."""
    rpc = stack.rpc(1)
    return int(wait_for(lambda: (n := to_int(rpc.call("eth_getTransactionCount", [address, "latest"]))) >= at_least and n,
                        10, f"{address}'s transactions on node-1"))


def test_two_hundred_transfers_of_one_sender_go_out_in_a_few_batches(stack: LocalStack) -> None:
    sender = new_account(stack)
    outbox = Outbox(stack.redis)
    before = outbox.stats()

    def submit(i: int) -> str:
        response = stack.client().post("/api/v1/transactions", json={"from": sender, "to": DEAD, "value_wei": i + 1})
        assert response.status_code == 202, response.get_json()
        return str(response.get_json()["id"])

    # Queued while no writer runs, so what is measured is the batching, not how fast the API takes them
    # (with writers running, batches are as large as what arrives while the previous one is sent).
    stack.stop_writers()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, range(200)))
    assert stack.redis.llen("esp.calls") == 1, "one drain message for the sender's writes, not one per write"
    assert outbox.waiting(sender) == (200, 0)
    stack.start_writers()
    records = [wait_task(stack.client(), t, timeout=120) for t in ids]
    assert Counter(r["state"] for r in records) == {"confirmed": 200}
    assert sorted(r["result"]["nonce"] for r in records) == list(range(200))
    after = outbox.stats()
    batches = after.get("batches", 0) - before.get("batches", 0)
    assert after["transactions"] - before.get("transactions", 0) == 200
    print(f"200 transfers of one sender went out in {batches} batches")
    assert batches <= 4, f"{batches} batches for 200 queued transfers: the drains did not batch"
    assert chain_count(stack, sender, 200) == 200
    assert outbox.waiting(sender) == (0, 0)


def test_a_queued_transfer_the_balance_cannot_cover_fails_alone_and_leaves_no_gap(stack: LocalStack) -> None:
    sender = new_account(stack)  # funded with ESP_FUNDING_WEI: 1 ETH
    client = stack.client()
    stack.stop_writers()  # so that one drain finds them all queued
    values = [1, 2, 2 * 10**18, 3, 4]
    ids = [client.post("/api/v1/transactions", json={"from": sender, "to": DEAD, "value_wei": str(v)}).get_json()["id"]
           for v in values]
    stack.start_writers()
    records = [wait_task(client, t, timeout=60) for t in ids]
    assert [r["state"] for r in records] == ["confirmed", "confirmed", "failed", "confirmed", "confirmed"], records
    error = records[2]["error"]
    assert error["type"] == "insufficient-funds" and "cannot pay" in error["message"] and error["field"] == "from"
    assert [r["result"]["nonce"] for r in records if r["state"] == "confirmed"] == [0, 1, 2, 3]
    assert records[2]["result"] is None
    assert chain_count(stack, sender, 4) == 4


def test_a_write_whose_message_was_lost_is_drained_by_the_sweep(stack: LocalStack) -> None:
    sender = new_account(stack)
    store = TaskStore(stack.redis, ttl=3600)
    task_id = str(uuid.uuid4())
    # Queued as the API queues it, but its message never reaches a worker (lost with a killed worker, say).
    store.create(task_id, "send_eth", "call", {"sender": sender, "to": DEAD, "value_wei": 9})
    Outbox(stack.redis).push(sender, task_id)
    record = wait_for(lambda: (r := store.get(task_id)).is_final and r, 30, "the sweep to have the write sent")
    assert record.state == "confirmed" and record.result and record.result["nonce"] == 0, record


def test_a_batch_request_is_accepted_together_and_sent_in_its_order(stack: LocalStack) -> None:
    sender = new_account(stack)
    client = stack.client()
    body = {"transactions": [{"from": sender, "to": DEAD, "value_wei": i + 1} for i in range(300)]}
    response = client.post("/api/v1/transactions/batch", json=body, headers={"Idempotency-Key": f"payout-{sender}"})
    assert response.status_code == 202, response.get_json()
    tasks = response.get_json()["tasks"]
    assert response.get_json()["count"] == 300 and len({t["id"] for t in tasks}) == 300
    assert [t["params"]["value_wei"] for t in tasks] == [i + 1 for i in range(300)]
    # The same request again (a client retrying after a timeout): the same tasks, nothing sent twice.
    again = client.post("/api/v1/transactions/batch", json=body, headers={"Idempotency-Key": f"payout-{sender}"})
    assert again.status_code == 202 and again.headers.get("Idempotent-Replayed") == "true"
    assert [t["id"] for t in again.get_json()["tasks"]] == [t["id"] for t in tasks]
    records = [wait_task(client, t["id"], timeout=120) for t in tasks]
    assert Counter(r["state"] for r in records) == {"confirmed": 300}
    assert [r["result"]["nonce"] for r in records] == list(range(300)), "nonces follow the request's order, no gap"
    # Read back all at once, in the order asked; another user's key sees none of them.
    ids = [t["id"] for t in tasks]
    looked = client.post("/api/v1/tasks/lookup", json={"ids": [*ids, "no-such-task"]}).get_json()
    assert [t["id"] for t in looked["tasks"]] == ids and looked["missing"] == ["no-such-task"]
    assert [t["state"] for t in looked["tasks"]] == ["confirmed"] * 300
    other = stack.client(stack.new_key("other user", "user"))
    assert other.post("/api/v1/tasks/lookup", json={"ids": ids[:5]}).get_json() == {"tasks": [], "missing": ids[:5]}
    refused = client.post("/api/v1/tasks/lookup", json={"ids": "not a list"})
    assert refused.status_code == 422 and refused.get_json()["field"] == "ids"
    assert chain_count(stack, sender, 300) == 300
    assert outbox_is_empty(stack, sender)


def test_a_batch_with_one_bad_transfer_is_refused_whole_before_anything_is_queued(stack: LocalStack) -> None:
    sender = new_account(stack)
    client = stack.client()
    good = {"from": sender, "to": DEAD, "value_wei": 1}
    calls_before = stack.redis.llen("esp.calls")
    cases = [
        ([good, good, {**good, "to": "0x1234"}], 422, "transactions[2].to"),
        ([good, {"from": sender, "value_wei": 1}], 422, "transactions[1].to"),
        ([good, {**good, "value_wei": -1}], 422, "transactions[1].value_wei"),
        ([good, "not an object"], 422, "transactions[1]"),
        ([], 422, "transactions"),
        ([good] * (stack.settings.max_submit_batch + 1), 413, "transactions"),
        # A sender the caller's key did not create (the treasury: an admin's) is refused with its index.
        ([good, {**good, "from": Account.from_key(stack.settings.treasury_key).address}], 403, "transactions[1].from"),
    ]
    for items, status, field in cases:
        response = client.post("/api/v1/transactions/batch", json={"transactions": items})
        problem = response.get_json()
        assert response.status_code == status and problem["field"] == field, (field, problem)
        assert response.mimetype == "application/problem+json"
    assert outbox_is_empty(stack, sender) and stack.redis.llen("esp.calls") == calls_before


def outbox_is_empty(stack: LocalStack, sender: str) -> bool:
    return Outbox(stack.redis).waiting(sender) == (0, 0)
