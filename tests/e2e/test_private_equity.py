"""The private-equity platform end to end, through the HTTP API, on real nodes and real processes.

The node pool (``python -m nodes``), the write and control workers and beat run as
processes; the API is ``create_app(settings)``'s test client. The admin deploys
the contracts; two accounts are created and funded; A publishes a project with a
file and is rewarded; B buys it and downloads the file (the bytes match and the
download is recorded on chain); A cannot be paid twice for the same purchase;
every event shows up in the events API. Then the same flow runs through the
thesis's routes on a fresh deployment, and both give the same chain state.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app import create_app
from errors import NodeError
from nodepool.registry import NodeRegistry
from nodepool.rpc import RpcClient, to_int
from settings import ROOT
from tasks.routing import CONTROL_QUEUE
from tests.conftest import (
    DB_BUSINESS,
    child_env,
    fresh_redis,
    make_settings,
    redis_url,
    start_worker,
    stop_process,
    wait_for_worker,
)
from tests.stack import wait_task
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

PASSWORD = "private equity e2e password"
ADMIN = {"Authorization": "Bearer e2e-business-admin"}
REWARD, FEE_BPS, PRICE, GRANT = 100, 500, 1200, 5000
FEE = PRICE * FEE_BPS // 10_000


class Stack:
    """Every process of the stack but the API, which runs in the test through its test client."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis: redis.Redis = fresh_redis(DB_BUSINESS)
        self.env = {
            "ESP_REDIS_URL": redis_url(DB_BUSINESS), "ESP_RUN_DIR": str(tmp / "run"), "ESP_KEYSTORE_DIR": str(tmp / "keystore"),
            "ESP_FILES_DIR": str(tmp / "files"), "ESP_KEYSTORE_SCRYPT_N": "4096", "ESP_ADMIN_KEY": ADMIN["Authorization"][7:],
            "ESP_RECEIPT_INTERVAL": "0.25", "ESP_DEPLOY_PLATFORM": "0", "ESP_PUBLISH_REWARD": str(REWARD),
            "ESP_FEE_BPS": str(FEE_BPS), "ESP_NODE_COUNT": "3",
        }
        self.settings = make_settings(tmp / "run", **self.env)
        env = child_env(**self.env)
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            with open(tmp / "nodes.log", "ab") as log:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "nodes"], cwd=ROOT, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True))
            self.procs.append(start_worker(env, queues=CONTROL_QUEUE, name="pe-control", log_path=tmp / "control.log"))
            self.procs.append(start_worker(env, queues="esp.deploy,esp.accounts,esp.calls", name="pe-writer", pool="prefork",
                                           concurrency=2, log_path=tmp / "writer.log"))
            with open(tmp / "beat.log", "ab") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "tasks.worker", "beat", "--schedule", str(tmp / "beat-schedule"),
                     "--loglevel=INFO"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            self.wait_for_nodes(3)
            self.app = create_app(self.settings)
            wait_for_worker(self.app.extensions["esp.celery"], "pe-control")
            wait_for_worker(self.app.extensions["esp.celery"], "pe-writer")
        except BaseException:
            self.close()
            raise

    def wait_for_nodes(self, count: int, timeout: float = 60) -> None:
        registry = NodeRegistry(self.redis)

        def nodes_log() -> str:
            return (self.tmp / "nodes.log").read_text()[-2000:]

        def pool_up() -> bool:
            assert self.procs[0].poll() is None, nodes_log()
            return len(registry.all()) == count and bool(registry.pool().get("leader"))

        wait_for(pool_up, timeout, lambda: f"{count} nodes and a leader: " + nodes_log(), interval=0.1)

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc, timeout=20)

    def synced(self, block: int, timeout: float = 10) -> None:
        """Reads may go to any node: wait until every node has imported ``block``."""
        clients = {spec.id: RpcClient(spec.url, timeout=2) for spec in NodeRegistry(self.redis).all()}

        def has_block(client: RpcClient) -> bool:
            try:
                return to_int(client.call("eth_blockNumber")) >= block
            except NodeError:
                return False  # restarting: ask again

        try:
            wait_for(lambda: all(has_block(c) for c in clients.values()), timeout,
                     lambda: f"every node to reach block {block}; behind: {[i for i, c in clients.items() if not has_block(c)]}",
                     interval=0.02)
        finally:
            for client in clients.values():
                client.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, anvil_binary):
    s = Stack(tmp_path_factory.mktemp("private-equity"))
    yield s
    s.close()


# -- helpers ---------------------------------------------------------------------------------------


def done(stack: Stack, client, response) -> dict:
    """The confirmed task of a 202 response, once every node has its block."""
    assert response.status_code == 202, response.get_json()
    record = wait_task(client, response.get_json()["id"])
    assert record["state"] == "confirmed", record
    stack.synced(record["result"]["block_number"])
    return record


def thesis_done(stack: Stack, response) -> dict:
    """The confirmed task in a thesis BaseResult (the route was called with wait=)."""
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == 200, body
    assert body["data"]["state"] == "confirmed", body
    stack.synced(body["data"]["result"]["block_number"])
    return body["data"]


def multipart(fields: dict) -> dict:
    boundary, body = encode_multipart(fields)
    return {"data": body, "content_type": f"multipart/form-data; boundary={boundary}"}


def view(stack: Stack, client, pid: int, account: str) -> dict:
    """The project's summary as ``account`` sees it, once its view is recorded on chain."""
    summary = client.get(f"/api/v1/projects/{pid}?account={account}").get_json()
    recorded = wait_task(client, summary["view_task"])
    assert recorded["state"] == "confirmed", recorded
    stack.synced(recorded["result"]["block_number"])
    return summary


def chain_state(client, a: str, b: str, treasury: str, pid: int) -> dict:
    """What both flows must leave identical (accounts named by role, not address)."""
    def bal(who: str) -> int:
        return int(client.get(f"/api/v1/token/balance/{who}").get_json()["balance"])

    project = client.get(f"/api/v1/projects/{pid}").get_json()
    events = client.get("/api/v1/events?limit=200").get_json()["events"]
    kinds: dict[str, int] = {}
    for event in events:
        kinds[event["type"]] = kinds.get(event["type"], 0) + 1
    return {
        "A": bal(a), "B": bal(b), "treasury": bal(treasury),
        "total_supply": client.get("/api/v1/token/total").get_json()["total_supply"],
        "projects": client.get("/api/v1/projects").get_json()["count"],
        "price": project["price"], "buyers": project["buyers"], "project_id": pid,
        "events": kinds,
    }


# -- the flows ----------------------------------------------------------------------------------------


def clients(stack: Stack) -> tuple[Any, Any, Any]:
    """Test clients of the admin and of two users, A (the publisher) and B (the buyer), each with an API key of its own."""
    admin = stack.app.test_client()
    admin.environ_base["HTTP_AUTHORIZATION"] = ADMIN["Authorization"]
    users = []
    for name in ("publisher-a", "buyer-b"):
        created = admin.post("/api/v1/keys", json={"name": name, "role": "user"})
        assert created.status_code == 201, created.get_json()
        user = stack.app.test_client()
        user.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {created.get_json()['key']}"
        users.append(user)
    return admin, users[0], users[1]


def rest_flow(stack: Stack, content: bytes) -> dict:
    """The whole story through /api/v1."""
    admin, client_a, client_b = clients(stack)
    client = client_a
    # The admin deploys the platform.
    deployed = done(stack, admin, admin.post("/api/v1/contracts", json={"name": "platform"}))
    platform = deployed["result"]["platform"]
    assert client.get("/api/v1/contracts").get_json()["platform"]["PlatformToken"] == platform["PlatformToken"]
    # Two accounts, one per user, created and funded with gas money (in parallel), then unlocked by their owners.
    created = [(user, user.post("/api/v1/accounts", json={"password": PASSWORD})) for user in (client_a, client_b)]
    a, b = (done(stack, user, r)["result"]["address"] for user, r in created)
    for user, who in ((client_a, a), (client_b, b)):
        assert int(client.get(f"/api/v1/accounts/{who}/balance").get_json()["wei"]) == stack.settings.funding_wei
        assert user.post(f"/api/v1/accounts/{who}/unlock", json={"password": PASSWORD, "seconds": 600}).status_code == 200
    treasury = admin.get("/api/v1/accounts").get_json()["treasury"]
    done(stack, admin, admin.post("/api/v1/token/add", json={"address": b, "value": GRANT}))
    # A publishes a project with its file and is rewarded.
    published = done(stack, client_a, client_a.post("/api/v1/projects", **multipart({
        "publisher": a, "name": "Series A: Example Robotics", "price": str(PRICE), "file": FileStorage(io.BytesIO(content), "memo.pdf")})))
    pid = published["result"]["project_id"]
    assert published["result"]["file_hash"] == "0x" + hashlib.sha256(content).hexdigest()
    assert client.get(f"/api/v1/token/balance/{a}").get_json()["balance"] == str(REWARD)
    # B looks at its summary (the view is recorded on chain), then buys it: A receives the price less the fee.
    viewed = view(stack, client_b, pid, b)
    assert viewed["name"] == "Series A: Example Robotics" and viewed["price"] == str(PRICE) and viewed["bought"] is False
    bought = done(stack, client_b, client_b.post(f"/api/v1/projects/{pid}/buy", json={"buyer": b}))
    assert bought["result"]["price"] == str(PRICE) and bought["result"]["fee"] == str(FEE)
    # B downloads the file: its bytes match, and the download is recorded on chain.
    with client_b.get(f"/api/v1/projects/{pid}/file?account={b}") as response:
        assert response.status_code == 200 and response.data == content
        record_task = response.headers["ESP-Record-Task"]
    recorded = wait_task(client_b, record_task)
    assert recorded["state"] == "confirmed", recorded
    stack.synced(recorded["result"]["block_number"])
    # A cannot be paid twice for the same purchase.
    again = client_b.post(f"/api/v1/projects/{pid}/buy", json={"buyer": b})
    assert again.status_code == 409 and again.get_json()["field"] == "buyer"
    assert client.get(f"/api/v1/token/balance/{a}").get_json()["balance"] == str(REWARD + PRICE - FEE)
    # Every event is in the events API.
    events = client.get(f"/api/v1/events?project={pid}").get_json()["events"]
    assert [e["type"] for e in events] == ["published", "viewed", "purchased", "downloaded"]
    assert [e["args"].get("account") or e["args"].get("buyer") for e in events[1:]] == [b, b, b]
    assert events[0]["tx_hash"] == published["result"]["tx_hash"] and events[2]["tx_hash"] == bought["result"]["tx_hash"]
    transfers = client.get("/api/v1/events?type=transfer").get_json()["events"]
    assert [(t["args"]["from"], t["args"]["to"], t["args"]["value"]) for t in transfers] == [
        ("0x0000000000000000000000000000000000000000", b, str(GRANT)),  # the admin's grant
        ("0x0000000000000000000000000000000000000000", a, str(REWARD)),  # the publish reward
        (b, a, str(PRICE - FEE)),  # the purchase
        (b, treasury, str(FEE)),  # the platform fee
    ]
    # A is named by its publish, its reward, the purchase (as publisher) and the payment.
    assert [e["type"] for e in client.get(f"/api/v1/events?account={a}").get_json()["events"]] == [
        "published", "transfer", "purchased", "transfer"]
    return chain_state(client, a, b, treasury, pid)


def thesis_flow(stack: Stack, content: bytes) -> dict:
    """The same story through the thesis's routes (its parameter names and BaseResult answers)."""
    admin, client_a, client_b = clients(stack)
    client = client_a
    deployed = thesis_done(stack, admin.post("/contract/deploy", data={"contract": "platform", "wait": "30"}))
    assert deployed["result"]["platform"]["PlatformToken"]
    accounts = []
    for user in (client_a, client_b):
        created = thesis_done(stack, user.post("/admin/new", json={"password": PASSWORD, "wait": 30}))
        accounts.append(created["result"]["address"])
        unlocked = user.post("/admin/unlock", data={"address": created["result"]["address"], "password": PASSWORD})
        assert unlocked.get_json() == {"status": 200, "message": "success",
                                       "data": {"address": created["result"]["address"], "unlocked": True, "seconds": 300}}
        assert user.get("/admin/list").get_json()["data"] == {"accounts": [created["result"]["address"]]}  # its own only
    a, b = accounts
    listed = admin.get("/admin/list").get_json()["data"]
    assert {a, b} <= set(listed["accounts"])
    treasury = listed["treasury"]
    thesis_done(stack, admin.post("/token/add", data={"address": b, "value": str(GRANT), "wait": "30"}))
    digest = "0x" + hashlib.sha256(content).hexdigest()
    published = thesis_done(stack, client_a.post("/token/publish", **multipart({
        "address": a, "time": "2026-11-24T10:00:00Z", "projectName": "Series A: Example Robotics", "projectHash": digest,
        "value": str(PRICE), "wait": "30", "file": FileStorage(io.BytesIO(content), "memo.pdf")})))
    pid = published["result"]["project_id"]
    assert client.get("/token/balance", query_string={"address": a}).get_json()["data"]["balance"] == str(REWARD)
    view(stack, client_b, pid, b)  # the thesis has no view route: the summary comes from /api/v1 and is recorded alike
    bought = thesis_done(stack, client_b.post("/token/buy", json={
        "address": b, "time": "2026-11-24T10:05:00Z", "projectName": "Series A: Example Robotics", "projectHash": digest, "wait": 30}))
    assert bought["project_id"] == pid and bought["result"]["fee"] == str(FEE)
    # The thesis has no download route: the file comes from /api/v1, recorded the same way.
    with client_b.get(f"/api/v1/projects/{pid}/file?account={b}") as response:
        assert response.data == content
        record_task = response.headers["ESP-Record-Task"]
    recorded = wait_task(client_b, record_task)
    assert recorded["state"] == "confirmed", recorded
    stack.synced(recorded["result"]["block_number"])
    # Paying twice through the thesis's /token alias is refused: HTTP 409, BaseResult status 500, nothing sent.
    again = client_b.post("/token", data={"address": b, "projectHash": digest})
    body = again.get_json()
    assert again.status_code == 409 and body["status"] == 500 and body["data"]["field"] == "address", body
    # The thesis's reads agree with the chain.
    receipt = client.get("/tx/receipt", query_string={"txHash": bought["result"]["tx_hash"]}).get_json()
    market = deployed["result"]["platform"]["ProjectMarket"]
    assert receipt["status"] == 200 and receipt["data"]["to"].lower() == market.lower() and receipt["data"]["status"] == 1
    tx = client.get("/tx/txhash", query_string={"txHash": bought["result"]["tx_hash"]}).get_json()["data"]
    number = tx["blockNumber"]
    block = client.get("/tx/blocknumber", query_string={"blockNum": number}).get_json()["data"]
    assert bought["result"]["tx_hash"] in block["transactions"]
    assert client.get("/tx/blockhash", query_string={"blockHash": block["hash"]}).get_json()["data"]["number"] == number
    assert client.get("/tx/txNum", query_string={"blockNum": number}).get_json()["data"] == len(block["transactions"])
    connect = client.get("/conn/connect").get_json()
    assert connect["status"] == 200 and connect["data"]["connected"] and connect["data"]["chain_id"] == 31337
    assert client.get("/conn/blockNum").get_json()["data"] >= number
    assert int(client.get("/conn/gasPrice").get_json()["data"]) > 0
    total = client.get("/token/total").get_json()["data"]["total_supply"]
    assert total == str(GRANT + REWARD)
    return chain_state(client, a, b, treasury, pid)


def test_private_equity_end_to_end(stack):
    content = b"%PDF-1.7\n" + hashlib.sha512(b"memorandum").digest() * 2000 + b"\n%%EOF"
    t0 = time.monotonic()
    rest = rest_flow(stack, content)
    t1 = time.monotonic()
    thesis = thesis_flow(stack, content)
    t2 = time.monotonic()
    print(f"REST flow {t1 - t0:.1f} s, thesis flow {t2 - t1:.1f} s")
    assert rest == thesis
    assert rest["A"] == REWARD + PRICE - FEE and rest["B"] == GRANT - PRICE and rest["treasury"] == FEE
    assert rest["events"] == {"transfer": 4, "published": 1, "viewed": 1, "purchased": 1, "downloaded": 1}
    assert rest["projects"] == 1 and rest["buyers"] == 1
