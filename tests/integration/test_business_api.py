"""The business API on real parts: 3 anvil nodes (one chain), real Celery workers and beat, real Redis.

The platform is deployed by the control worker on start (ESP_DEPLOY_PLATFORM=1),
as on `make up`; the tests then drive the token, projects, files, events, chain
reads and mining through /api/v1, check that bad input is refused with a problem
naming the field and nothing enqueued, and that reverts end tasks with their reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from pathlib import Path

import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app.context import submitter
from contracts import load_artifact
from errors import NodeError
from nodepool.rpc import RpcClient, to_int
from services.plans import OPERATIONS
from services.platform import DEPLOY_LOCK_KEY, PLATFORM_KEY, ensure_platform
from services.records import TaskStore
from tasks.writes import enqueue_on
from tests.conftest import DB_BUSINESS
from tests.stack import LocalStack, wait_task
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(600)

PASSWORD = "business test password 1"
ADMIN_KEY = "business-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FEE_BPS = 250
REWARD = 100
NOBODY = "0x000000000000000000000000000000000000dEaD"


class Stack(LocalStack):
    """The local stack with the platform's settings, deploying the platform itself on start."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(
            tmp, DB_BUSINESS, name="business", ESP_ADMIN_KEY=ADMIN_KEY, ESP_DEPLOY_PLATFORM="1",
            ESP_FEE_BPS=str(FEE_BPS), ESP_PUBLISH_REWARD=str(REWARD), ESP_MAX_FILE_MB="1",
        )

    def platform(self) -> dict:
        raw = self.redis.get(PLATFORM_KEY)
        return json.loads(raw) if raw else {}


STACKS: list[Stack] = []


@pytest.fixture(scope="module")
def stack(tmp_path_factory, anvil_binary):
    s = Stack(tmp_path_factory.mktemp("business"))
    STACKS.append(s)
    yield s
    STACKS.remove(s)
    s.close()


def confirmed(client, response, stack: Stack | None = None) -> dict:
    """Wait for the task to be confirmed, then for every node to hold its block (reads may go to any node).

    The wait reads the task as an admin: tasks here are submitted by the user's key and by the admin's.
    """
    assert response.status_code == 202, response.get_json()
    stack = STACKS[-1] if stack is None else stack
    done = wait_task(stack.client(admin=True), response.get_json()["id"])
    assert done["state"] == "confirmed", done
    synced(stack, done["result"]["block_number"])
    return done


def synced(stack: Stack, block: int, timeout: float = 10) -> None:
    """Followers import the leader's blocks a moment later: wait until each running node has ``block``."""
    clients = [stack.rpc(i) for i in range(len(stack.specs))]

    def has_block(client: RpcClient) -> bool:
        try:
            return to_int(client.call("eth_blockNumber")) >= block
        except NodeError:
            return True  # a node the test stopped

    try:
        wait_for(lambda: all(has_block(c) for c in clients), timeout,
                 lambda: f"every running node to reach block {block}; behind: {[c.url for c in clients if not has_block(c)]}",
                 interval=0.02)
    finally:
        for client in clients:
            client.close()


def new_account(stack: Stack) -> str:
    client = stack.client()
    done = confirmed(client, client.post("/api/v1/accounts", json={"password": PASSWORD}))
    address = done["result"]["address"]
    assert client.post(f"/api/v1/accounts/{address}/unlock", json={"password": PASSWORD, "seconds": 3600}).status_code == 200
    return address


def balance(client, address: str) -> int:
    response = client.get(f"/api/v1/token/balance/{address}")
    assert response.status_code == 200, response.get_json()
    return int(response.get_json()["balance"])


def mint(stack: Stack, address: str, value: int) -> None:
    client = stack.client()
    confirmed(client, client.post("/api/v1/token/add", json={"address": address, "value": value}, headers=ADMIN))


def multipart(fields: dict) -> tuple[bytes, str]:
    """A multipart body built in memory (the test client spools large ones to a file it never closes)."""
    boundary, body = encode_multipart(fields)
    return body, f"multipart/form-data; boundary={boundary}"


def publish(client, publisher: str, name: str, price: int, content: bytes):
    body, content_type = multipart({"publisher": publisher, "name": name, "price": str(price), "file": FileStorage(io.BytesIO(content), "deck.pdf")})
    return client.post("/api/v1/projects", data=body, content_type=content_type)


def assert_problem(response, status: int, field: str) -> dict:
    body = response.get_json()
    assert response.status_code == status, body
    assert response.mimetype == "application/problem+json", body
    assert body["field"] == field, body
    return body


# -- the platform on start ---------------------------------------------------------------------------


def test_platform_is_deployed_on_start_and_not_twice(stack):
    record = stack.wait_platform()
    assert record["chain_id"] == 31337 and record["deploy_block"] >= 1
    for name in ("PlatformToken", "ProjectMarket"):
        assert stack.rpc(1).call("eth_getCode", [record[name], "latest"]) not in ("0x", None)
    client = stack.client()
    listed = client.get("/api/v1/contracts").get_json()
    assert listed["platform"]["ProjectMarket"] == record["ProjectMarket"] and "PlatformToken" in listed["artifacts"]
    store = TaskStore(stack.redis, ttl=3600)
    deploys = [json.loads(stack.redis.get(k)) for k in stack.redis.keys("esp:task:*")]
    deploys = [d for d in deploys if d["operation"] == "deploy_platform"]
    assert len(deploys) == 1 and deploys[0]["state"] == "confirmed" and deploys[0]["kind"] == "deploy"
    assert deploys[0]["result"]["platform"]["PlatformToken"] == record["PlatformToken"]
    # The same check again (a second control worker, a restart): the platform is live, nothing is deployed.
    check = (stack.app.extensions["esp.pool"], store, enqueue_on(stack.celery), OPERATIONS["deploy_platform"])
    assert ensure_platform(*check)["action"] == "live"
    # A fresh devnet behind an old Redis: the recorded addresses hold no code -> one deploy, guarded by the lock.
    stack.redis.set(PLATFORM_KEY, json.dumps({**record, "PlatformToken": NOBODY, "ProjectMarket": NOBODY}))
    first = ensure_platform(*check)
    second = ensure_platform(*check)
    assert first["action"] == "enqueued" and first["reason"] == "fresh-chain"
    assert second == {"action": "in-flight", "task_id": first["task_id"]}
    done = wait_task(stack.client(admin=True), first["task_id"])  # ESP's own task: only an admin reads it
    assert done["state"] == "confirmed", done
    new = stack.platform()
    assert new["PlatformToken"] != NOBODY and new["deploy_block"] > record["deploy_block"]
    assert stack.redis.get(DEPLOY_LOCK_KEY) is None


def test_openapi_describes_every_api_route(stack):
    spec = stack.client().get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    missing = []
    for rule in stack.app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if method.lower() not in spec["paths"].get(path, {}):
                missing.append(f"{method} {path}")
    assert not missing, f"routes missing from the OpenAPI spec: {missing}"


# -- the token ------------------------------------------------------------------------------------------


def test_token_owner_operations_and_transfer(stack):
    stack.wait_platform()
    client = stack.client()
    a, b = new_account(stack), new_account(stack)
    supply = int(client.get("/api/v1/token/total").get_json()["total_supply"])
    confirmed(client, client.post("/api/v1/token/add", json={"address": a, "value": 500}, headers=ADMIN))
    assert balance(client, a) == 500
    confirmed(client, client.post("/api/v1/token/delete", json={"address": a, "value": "200"}, headers=ADMIN))
    assert balance(client, a) == 300
    confirmed(client, client.post("/api/v1/token/set", json={"address": a, "value": 1000}, headers=ADMIN))
    assert balance(client, a) == 1000
    total = client.get("/api/v1/token/total").get_json()
    assert int(total["total_supply"]) == supply + 1000 and total["symbol"] == "EQT" and total["decimals"] == 0
    done = confirmed(client, client.post("/api/v1/token/transfer", json={"from": a, "to": b, "value": 250}))
    assert done["result"]["from"] == a and done["node"]
    assert (balance(client, a), balance(client, b)) == (750, 250)
    assert client.get(f"/api/v1/accounts/{b}/balance").get_json()["token"] == "250"
    # Impossible now: refused before anything is enqueued.
    before = stack.counts()
    assert_problem(client.post("/api/v1/token/transfer", json={"from": b, "to": a, "value": 251}), 422, "value")
    assert_problem(client.post("/api/v1/token/delete", json={"address": b, "value": 251}, headers=ADMIN), 422, "value")
    assert_problem(stack.anonymous().post("/api/v1/token/add", json={"address": a, "value": 1}), 401, "Authorization")
    assert_problem(client.post("/api/v1/token/add", json={"address": a, "value": 1}), 403, "Authorization")
    assert_problem(client.post("/api/v1/token/add", json={"address": a, "value": 1},
                               headers={"Authorization": "Bearer wrong"}), 401, "Authorization")
    treasury = stack.client(admin=True).get("/api/v1/accounts").get_json()["treasury"]
    # The treasury signs only for an admin.
    assert_problem(client.post("/api/v1/token/transfer", json={"from": treasury, "to": a, "value": 0}), 403, "from")
    assert_problem(stack.anonymous().post("/api/v1/token/transfer", json={"from": treasury, "to": a, "value": 0}), 401, "Authorization")
    assert stack.counts() == before


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/v1/token/add", {"value": 1}, "address"),
    ("/api/v1/token/add", {"address": "0x123", "value": 1}, "address"),
    ("/api/v1/token/add", {"address": "0x70997970c51812dc3A010C7d01b50e0d17dc79C8", "value": 1}, "address"),  # bad checksum
    ("/api/v1/token/add", {"address": NOBODY, "value": -5}, "value"),
    ("/api/v1/token/add", {"address": NOBODY, "value": "-5"}, "value"),
    ("/api/v1/token/set", {"address": NOBODY, "value": 1.5}, "value"),
    ("/api/v1/token/set", {"address": NOBODY, "value": "ten"}, "value"),
    ("/api/v1/token/set", {"address": NOBODY, "value": True}, "value"),
    ("/api/v1/token/delete", {"address": NOBODY}, "value"),
    ("/api/v1/token/set", {"address": NOBODY, "value": 2**256}, "value"),
    ("/api/v1/token/transfer", {"from": NOBODY, "to": NOBODY}, "value"),
    ("/api/v1/token/transfer", {"from": ["x"], "to": NOBODY, "value": 1}, "from"),
    ("/api/v1/token/transfer", {"from": NOBODY, "to": NOBODY, "value": 1}, "from"),  # not an ESP account
    ("/api/v1/projects/1/buy", {}, "buyer"),
    ("/api/v1/projects/999/buy", {"buyer": NOBODY}, "id"),  # unknown project
    ("/api/v1/projects/zero/buy", {"buyer": NOBODY}, "id"),
    ("/api/v1/contracts", {"name": "NoSuchContract"}, "name"),
    ("/api/v1/contracts", {"name": "PlatformToken", "args": ["only one"]}, "args"),
    ("/api/v1/contracts", {"abi": [], "bytecode": "0xzz"}, "bytecode"),
    ("/api/v1/contracts", {"abi": "not a list", "bytecode": "0x00"}, "abi"),
    ("/api/v1/contracts", {"gas_limit": 5}, "gas_limit"),
    ("/api/v1/mining", {"action": "pause"}, "action"),
    ("/api/v1/mining", {"action": "start", "block_time": 1.5}, "block_time"),
])
def test_bad_input_is_a_problem_naming_the_field_and_enqueues_nothing(stack, path, body, field):
    stack.wait_platform()
    before = stack.counts()
    response = stack.client().post(path, json=body, headers=ADMIN)
    body_json = response.get_json()
    assert 400 <= response.status_code < 500, body_json
    assert response.mimetype == "application/problem+json" and body_json["field"] == field, body_json
    assert stack.counts() == before


# -- projects, files, purchases ------------------------------------------------------------------------------


def test_publish_buy_download_and_no_double_payment(stack):
    stack.wait_platform()
    client = stack.client()
    publisher, buyer, second = (new_account(stack) for _ in range(3))
    mint(stack, buyer, 5000)
    mint(stack, second, 5000)
    content = b"%PDF-1.7 the full investment memorandum " + bytes(range(256)) * 40
    price = 1000
    before = balance(client, publisher)
    done = confirmed(client, publish(client, publisher, "Project Alpha", price, content))
    pid = done["result"]["project_id"]
    assert done["result"]["file_hash"] == "0x" + hashlib.sha256(content).hexdigest()
    assert "file" not in json.dumps(done["params"]).lower().replace("file_hash", "").replace("file_size", "")
    assert balance(client, publisher) == before + REWARD
    stored = stack.settings.files_dir / hashlib.sha256(content).hexdigest()
    assert stored.read_bytes() == content
    # The summary; naming the viewer records a view on chain.
    summary = client.get(f"/api/v1/projects/{pid}?account={buyer}").get_json()
    assert summary["name"] == "Project Alpha" and summary["price"] == str(price) and summary["publisher"] == publisher
    assert summary["bought"] is False and wait_task(client, summary["view_task"])["state"] == "confirmed"
    listed = client.get("/api/v1/projects?limit=100").get_json()
    assert pid in [p["id"] for p in listed["projects"]] and listed["fee_bps"] == FEE_BPS
    # Nobody but the publisher and buyers gets the file; nothing is recorded for a refusal.
    counts = stack.counts()
    assert_problem(client.get(f"/api/v1/projects/{pid}/file?account={buyer}"), 403, "account")
    assert_problem(client.get(f"/api/v1/projects/{pid}/file"), 422, "account")
    assert stack.counts() == counts
    # The buyer pays the price: the publisher gets it less the fee, the treasury the fee.
    treasury = stack.client(admin=True).get("/api/v1/accounts").get_json()["treasury"]
    t0, p0, b0 = balance(client, treasury), balance(client, publisher), balance(client, buyer)
    bought = confirmed(client, client.post(f"/api/v1/projects/{pid}/buy", json={"buyer": buyer}))
    fee = price * FEE_BPS // 10_000
    assert bought["result"]["price"] == str(price) and bought["result"]["fee"] == str(fee)
    assert (balance(client, treasury), balance(client, publisher), balance(client, buyer)) == (t0 + fee, p0 + price - fee, b0 - price)
    # The buyer downloads: the bytes match, and the download is recorded on chain.
    with client.get(f"/api/v1/projects/{pid}/file?account={buyer}") as response:
        assert response.status_code == 200 and response.data == content
    record = wait_task(client, response.headers["ESP-Record-Task"])
    assert record["state"] == "confirmed" and record["operation"] == "record_download"
    synced(stack, record["result"]["block_number"])
    downloads = client.get(f"/api/v1/events?type=downloaded&project={pid}").get_json()["events"]
    assert [e["args"]["account"] for e in downloads] == [buyer]
    with client.get(f"/api/v1/projects/{pid}/file?account={publisher}") as response:
        assert response.data == content
    # Buying again is refused before anything is enqueued...
    counts = stack.counts()
    assert_problem(client.post(f"/api/v1/projects/{pid}/buy", json={"buyer": buyer}), 409, "buyer")
    assert_problem(client.post(f"/api/v1/projects/{pid}/buy", json={"buyer": publisher}), 422, "buyer")
    assert stack.counts() == counts
    # ...and two purchases racing (both pass the API's check while blocks are held back) pay once:
    # the chain reverts the second with "already bought".
    p1, s1 = balance(client, publisher), balance(client, second)
    assert client.post("/api/v1/mining", json={"action": "stop"}, headers=ADMIN).status_code == 200
    try:
        first = client.post(f"/api/v1/projects/{pid}/buy", json={"buyer": second})
        again = client.post(f"/api/v1/projects/{pid}/buy", json={"buyer": second})
        assert first.status_code == again.status_code == 202

        def both_sent() -> bool:
            states = [client.get(f"/api/v1/tasks/{r.get_json()['id']}").get_json()["state"] for r in (first, again)]
            return all(s in ("broadcast", "failed", "confirmed") for s in states)

        wait_for(both_sent, 30, "both purchases to be sent (the second estimated before the first is mined)", interval=0.1)
    finally:
        assert client.post("/api/v1/mining", json={"action": "start", "block_time": 1}, headers=ADMIN).status_code == 200
    results = [wait_task(client, r.get_json()["id"]) for r in (first, again)]
    assert [r["state"] for r in results] == ["confirmed", "failed"], results
    assert results[1]["error"]["reason"] == "already bought", results[1]["error"]
    synced(stack, results[0]["result"]["block_number"])
    assert balance(client, publisher) == p1 + price - fee and balance(client, second) == s1 - price
    assert get_project_buyers(client, pid) == 2


def get_project_buyers(client, pid: int) -> int:
    return int(client.get(f"/api/v1/projects/{pid}").get_json()["buyers"])


def test_a_revert_at_estimation_ends_the_task_with_its_reason(stack):
    """A transaction that would revert is not sent: the task fails with the decoded reason."""
    stack.wait_platform()
    client = stack.client()
    account = new_account(stack)
    record = stack.platform()
    # Past the API's checks on purpose (a transfer racing a burn): enqueue the operation as the API would.
    with stack.app.test_request_context(headers={"Authorization": f"Bearer {stack.user_key}"}):
        stack.app.preprocess_request()  # authenticates the request as the user's key
        submitted = submitter().submit("token_transfer", {"token": record["PlatformToken"], "sender": account, "to": NOBODY,
                                                          "value": "1"})
    done = wait_task(client, submitted.record.id)
    assert done["state"] == "failed" and done["error"]["type"] == "reverted", done
    assert done["error"]["reason"] == "insufficient balance"


def test_upload_limits_and_bad_publish_requests(stack):
    stack.wait_platform()
    client = stack.client()
    publisher = new_account(stack)
    before = stack.counts()
    files_before = sorted(p.name for p in stack.settings.files_dir.iterdir()) if stack.settings.files_dir.exists() else []
    too_big = publish(client, publisher, "Big", 1, b"x" * (1024 * 1024 + 1))
    assert_problem(too_big, 413, "file")
    way_too_big = publish(client, publisher, "Big", 1, b"x" * (3 * 1024 * 1024))
    assert_problem(way_too_big, 413, "file")
    body, content_type = multipart({"address": publisher, "projectName": "Big", "file": FileStorage(io.BytesIO(b"x" * (2 << 20)), "f")})
    thesis = client.post("/token/publish", data=body, content_type=content_type)
    assert thesis.status_code == 413 and thesis.get_json()["status"] == 500 and thesis.get_json()["data"]["field"] == "file"
    assert_problem(client.post("/api/v1/projects", data={"publisher": publisher, "name": "No file", "price": "1"},
                               content_type="multipart/form-data"), 422, "file")
    assert_problem(publish(client, publisher, "Empty", 1, b""), 422, "file")
    assert_problem(publish(client, publisher, "x" * 257, 1, b"data"), 422, "name")
    assert_problem(publish(client, publisher, "Negative", -1, b"data"), 422, "price")
    assert_problem(publish(client, "0xnot", "Bad", 1, b"data"), 422, "publisher")
    assert_problem(publish(client, NOBODY, "Unknown", 1, b"data"), 403, "publisher")  # not an account of this key
    assert_problem(publish(stack.client(admin=True), NOBODY, "Unknown", 1, b"data"), 422, "publisher")
    assert_problem(client.post("/api/v1/projects", json={"publisher": publisher}), 415, "body")
    assert_problem(client.get("/api/v1/projects/424242"), 404, "id")
    assert_problem(client.get("/api/v1/projects/1?account=0xbad"), 422, "account")
    assert stack.counts() == before
    files_after = sorted(p.name for p in stack.settings.files_dir.iterdir())
    assert files_after == files_before, "a refused upload left a file behind"


def test_contracts_are_deployed_by_name_or_from_abi_and_bytecode(stack):
    stack.wait_platform()
    client = stack.client()
    artifact = load_artifact("PlatformToken")
    custom = client.post("/api/v1/contracts", headers=ADMIN, json={
        "abi": artifact["abi"], "bytecode": artifact["bytecode"], "args": ["Custom", "CST", 0], "gas_limit": 2_000_000,
        "gas_price": 3_000_000_000})
    done = confirmed(client, custom)
    assert "bytecode" not in done["params"] and "abi" not in done["params"] and re.fullmatch(r"[0-9a-f]{64}", done["params"]["payload"])
    address = done["result"]["contract_address"]
    assert stack.rpc(2).call("eth_getCode", [address, "latest"]) == artifact["deployedBytecode"]
    tx = client.get(f"/api/v1/chain/transactions/{done['result']['tx_hash']}").get_json()["transaction"]
    assert tx["gas"] == 2_000_000 and tx["gasPrice"] == str(3_000_000_000)
    named = confirmed(client, client.post("/api/v1/contracts", headers=ADMIN, json={"name": "ProjectMarket"}))
    assert named["params"]["args"][0] == stack.platform()["PlatformToken"]
    assert stack.rpc().call("eth_getCode", [named["result"]["contract_address"], "latest"]) not in ("0x", None)
    assert_problem(stack.anonymous().post("/api/v1/contracts", json={"name": "platform"}), 401, "Authorization")
    assert_problem(client.post("/api/v1/contracts", json={"name": "platform"}), 403, "Authorization")


# -- events, chain reads, mining ---------------------------------------------------------------------------------


def test_events_are_filtered_and_paged(stack):
    stack.wait_platform()
    client = stack.client()
    publisher, buyer = new_account(stack), new_account(stack)
    mint(stack, buyer, 1000)
    pid = confirmed(client, publish(client, publisher, "Evented", 1000, b"events file"))["result"]["project_id"]
    confirmed(client, client.post(f"/api/v1/projects/{pid}/buy", json={"buyer": buyer}))
    everything = client.get(f"/api/v1/events?project={pid}").get_json()
    assert [e["type"] for e in everything["events"]] == ["published", "purchased"]
    assert everything["events"][1]["args"] == {"id": pid, "buyer": buyer, "publisher": publisher, "price": "1000",
                                                "fee": str(1000 * FEE_BPS // 10_000)}
    mine = client.get(f"/api/v1/events?account={buyer}").get_json()["events"]
    assert [e["type"] for e in mine] == ["transfer", "purchased", "transfer", "transfer"]  # mint, buy (publisher, fee)
    assert client.get(f"/api/v1/events?account={buyer}&type=purchased,transfer&limit=200").get_json()["count"] == 4
    # Paging one event at a time returns exactly what one page does, in order, then an empty page.
    full = client.get("/api/v1/events?limit=200").get_json()
    assert not full["has_more"]
    paged, cursor = [], None
    for _ in range(len(full["events"]) + 1):
        page = client.get("/api/v1/events?limit=1" + (f"&cursor={cursor}" if cursor else "")).get_json()
        paged += page["events"]
        cursor = page["next_cursor"]
        if not page["events"]:
            break
    assert [(e["block_number"], e["log_index"]) for e in paged] == [(e["block_number"], e["log_index"]) for e in full["events"]]
    assert_problem(client.get("/api/v1/events?cursor=garbage!"), 400, "cursor")
    assert_problem(client.get("/api/v1/events?type=minted"), 422, "type")
    assert_problem(client.get("/api/v1/events?limit=1000"), 422, "limit")


def test_mining_can_be_stopped_and_started(stack):
    client = stack.client()
    state = client.get("/api/v1/mining").get_json()
    assert state["mining"] is True and state["mode"] == "interval" and state["producers"][0]["node"] == "node-0"
    assert_problem(stack.anonymous().post("/api/v1/mining", json={"action": "stop"}), 401, "Authorization")
    assert_problem(client.post("/api/v1/mining", json={"action": "stop"}), 403, "Authorization")
    try:
        stopped = client.post("/api/v1/mining", json={"action": "stop"}, headers=ADMIN).get_json()
        assert stopped["mining"] is False and stopped["mode"] == "off"
        head = stopped["block_number"]
        time.sleep(2.2)  # the window under test: two block times in which nothing may be mined
        assert to_int(stack.rpc(0).call("eth_blockNumber")) == head
    finally:
        started = client.post("/api/v1/mining", json={"action": "start", "block_time": 1}, headers=ADMIN).get_json()
    assert started["mode"] == "interval" and started["block_time"] == 1
    leader = stack.rpc(0)
    wait_for(lambda: to_int(leader.call("eth_blockNumber")) > head, 10, f"a block after {head} once mining restarted",
             interval=0.1)
    leader.close()


def test_zz_chain_reads_answer_and_fail_over(stack):
    """Runs last: it stops a node."""
    client = stack.client()
    account = new_account(stack)
    head = client.get("/api/v1/chain/block-number").get_json()
    assert head["block_number"] >= 1 and head["node"].startswith("node-")
    assert int(client.get("/api/v1/chain/gas-price").get_json()["gas_price_wei"]) > 0
    task = [json.loads(stack.redis.get(k)) for k in stack.redis.keys("esp:task:*")]
    funded = next(t for t in task if t["operation"] == "fund_account" and t["result"] and t["result"].get("address") == account)
    tx_hash, number = funded["result"]["tx_hash"], funded["result"]["block_number"]
    block = client.get(f"/api/v1/chain/blocks/{number}").get_json()["block"]
    assert block["number"] == number and tx_hash in block["transactions"]
    by_hash = client.get(f"/api/v1/chain/blocks/{block['hash']}?full=true").get_json()["block"]
    assert by_hash["number"] == number and by_hash["transactions"][0]["hash"]
    count = client.get(f"/api/v1/chain/blocks/{number}/transaction-count").get_json()
    assert count["transaction_count"] == len(block["transactions"]) >= 1
    tx = client.get(f"/api/v1/chain/transactions/{tx_hash}").get_json()["transaction"]
    assert tx["to"].lower() == account.lower() and tx["value"] == str(stack.settings.funding_wei)
    receipt = client.get(f"/api/v1/chain/transactions/{tx_hash}/receipt").get_json()["receipt"]
    assert receipt["status"] == 1 and receipt["blockNumber"] == number
    assert client.get("/api/v1/chain/blocks/latest").status_code == 200
    assert_problem(client.get("/api/v1/chain/blocks/99999999"), 404, "block")
    assert_problem(client.get("/api/v1/chain/blocks/nope"), 422, "block")
    assert_problem(client.get("/api/v1/chain/transactions/0x1234"), 422, "hash")
    assert_problem(client.get("/api/v1/chain/transactions/0x" + "00" * 32 + "/receipt"), 404, "hash")
    # A follower dies: every read still answers, from the nodes that remain.
    assert stack.manager.devnet is not None
    stack.manager.devnet.stop_node("node-2")
    nodes = set()
    for _ in range(30):
        response = client.get("/api/v1/chain/block-number")
        assert response.status_code == 200, response.get_json()
        nodes.add(response.get_json()["node"])
        assert client.get(f"/api/v1/chain/transactions/{tx_hash}/receipt").status_code == 200
    assert "node-2" not in nodes


# -- the thesis's routes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "params", "field", "status", "via"), [
    ("/token/transfer", {"from": NOBODY, "to": "0x12", "value": 1}, "to", 422, "json"),
    ("/token/add", {"address": NOBODY, "value": -1}, "value", 422, "form"),
    ("/token/set", {"address": NOBODY, "value": "1e3"}, "value", 422, "post-query"),
    ("/token/balance", {}, "address", 422, "query"),
    ("/token/buy", {"address": NOBODY, "projectHash": "0x" + "11" * 32}, "projectHash", 404, "json"),
    ("/token", {"address": NOBODY}, "projectHash", 422, "form"),
    ("/token/publish", {"projectName": "x", "projectHash": "0x" + "11" * 32}, "address", 422, "json"),
    ("/tx/blocknumber", {"blockNum": "-1"}, "blockNum", 422, "query"),
    ("/tx/blockhash", {"blockHash": "0x12"}, "blockHash", 422, "query"),
    ("/tx/txhash", {"txHash": "0x12"}, "txHash", 422, "query"),
    ("/tx/receipt", {"txHash": "0x" + "00" * 32}, "txHash", 404, "query"),
    ("/admin/unlock", {"address": NOBODY, "password": "x"}, "address", 404, "form"),
    ("/admin/new", {}, "password", 422, "json"),
    ("/contract/deploy", {"contract": "Nope"}, "contract", 404, "form"),
])
def test_thesis_routes_refuse_bad_input_in_their_shape(stack, path, params, field, status, via):
    stack.wait_platform()
    client = stack.client()
    before = stack.counts()
    if via == "query":
        response = client.get(path, query_string=params, headers=ADMIN)
    elif via == "post-query":  # a write takes POST only, its parameters may still come in the query string
        response = client.post(path, query_string=params, headers=ADMIN)
    elif via == "form":
        response = client.post(path, data=params, headers=ADMIN)
    else:
        response = client.post(path, json=params, headers=ADMIN)
    body = response.get_json()
    assert response.status_code == status and response.mimetype == "application/json", body
    assert body["status"] == 500 and body["data"]["field"] == field and body["message"], body
    assert stack.counts() == before


def test_thesis_publish_by_hash_buy_by_id_and_admin_only_minting(stack):
    stack.wait_platform()
    client = stack.client()
    publisher, buyer = new_account(stack), new_account(stack)
    refused = stack.anonymous().post("/token/add", data={"address": buyer, "value": "10"})
    assert refused.status_code == 401 and refused.get_json()["status"] == 500
    refused = client.post("/token/add", data={"address": buyer, "value": "10"})
    assert refused.status_code == 403 and refused.get_json()["status"] == 500
    assert client.get("/token/add", query_string={"address": buyer, "value": "10"}, headers=ADMIN).status_code == 405
    minted = client.post("/token/add", json={"address": buyer, "value": 10, "wait": 30}, headers=ADMIN).get_json()
    assert minted["status"] == 200 and minted["data"]["state"] == "confirmed", minted
    digest = "0x" + hashlib.sha256(b"kept elsewhere").hexdigest()
    accepted = client.post("/token/publish", json={"address": publisher, "projectName": "Hash only", "projectHash": digest, "value": 10,
                                                   "time": "today"})
    body = accepted.get_json()
    assert accepted.status_code == 202 and body["status"] == 200 and body["data"]["state"] == "queued", body
    published = wait_task(client, body["data"]["id"])
    assert published["state"] == "confirmed" and published["result"]["time"] == "today", published
    pid = published["result"]["project_id"]
    bought = client.post("/token", query_string={"address": buyer, "project": pid, "wait": 30}).get_json()
    assert bought["status"] == 200 and bought["data"]["state"] == "confirmed" and bought["data"]["project_id"] == pid, bought
    synced(stack, bought["data"]["result"]["block_number"])
    assert client.get("/token/balance", query_string={"address": buyer}).get_json()["data"]["balance"] == "0"
    # The file was never uploaded here: a buyer is told so instead of getting bytes.
    assert_problem(client.get(f"/api/v1/projects/{pid}/file?account={buyer}"), 404, "file")
