"""Who may do what, against the real stack (Redis, 3 anvil nodes, Celery workers): issue 9's findings, each refused.

- anonymous callers: 401 on every write and every private read, REST and thesis routes alike;
- a user's key acts only as the accounts it created: 403 for another key's account (unlock, send,
  token transfer, publish, buy, view, download, its tasks), and listings show only its own;
- the treasury signs only for an admin;
- files go only to the publisher and buyers, and only when the publisher uploaded the bytes;
- API keys are created by an admin (route and CLI), shown once, stored hashed, and revocable;
- an Idempotency-Key under concurrency yields one task and one keystore.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from settings import ROOT
from tests.conftest import DB_ACCESS, child_env
from tests.stack import LocalStack, wait_task

pytestmark = pytest.mark.timeout(600)

ADMIN_KEY = "access-suite-admin-key"
PASSWORD = "access suite password"
NOBODY = "0x000000000000000000000000000000000000dEaD"
HASH = "0x" + "ab" * 32


@pytest.fixture(scope="module")
def stack(tmp_path_factory, anvil_binary) -> Iterator[LocalStack]:
    s = LocalStack(tmp_path_factory.mktemp("access"), DB_ACCESS, name="access", ESP_ADMIN_KEY=ADMIN_KEY,
                   ESP_DEPLOY_PLATFORM="1", ESP_MAX_FILE_MB="1")
    yield s
    s.close()


def multipart(fields: dict) -> dict:
    boundary, body = encode_multipart(fields)
    return {"data": body, "content_type": f"multipart/form-data; boundary={boundary}"}


def confirmed(stack: LocalStack, response) -> dict:
    assert response.status_code == 202, response.get_json()
    done = wait_task(stack.client(admin=True), response.get_json()["id"])
    assert done["state"] == "confirmed", done
    return done


def account_of(stack: LocalStack, client) -> str:
    """A new account owned by ``client``'s key, funded and unlocked."""
    address = confirmed(stack, client.post("/api/v1/accounts", json={"password": PASSWORD}))["result"]["address"]
    assert client.post(f"/api/v1/accounts/{address}/unlock", json={"password": PASSWORD, "seconds": 3600}).status_code == 200
    return address


@pytest.fixture(scope="module")
def world(stack: LocalStack) -> dict:
    """Alice publishes a project with its file; Bob buys it; Mallory, a third user, owns an account too."""
    stack.wait_platform()
    admin = stack.client(admin=True)
    keys = {name: admin.post("/api/v1/keys", json={"name": name}).get_json()["key"] for name in ("alice", "bob", "mallory")}
    clients = {name: stack.client(key) for name, key in keys.items()}
    accounts = {name: account_of(stack, clients[name]) for name in keys}
    content = b"alice's confidential memo " + hashlib.sha256(b"memo").digest() * 100
    confirmed(stack, admin.post("/api/v1/token/add", json={"address": accounts["bob"], "value": 100}))
    published = confirmed(stack, clients["alice"].post("/api/v1/projects", **multipart({
        "publisher": accounts["alice"], "name": "Alice's project", "price": "10",
        "file": FileStorage(io.BytesIO(content), "memo.pdf")})))
    pid = published["result"]["project_id"]
    confirmed(stack, clients["bob"].post(f"/api/v1/projects/{pid}/buy", json={"buyer": accounts["bob"]}))
    return {"keys": keys, "clients": clients, "accounts": accounts, "pid": pid, "content": content,
            "digest": "0x" + hashlib.sha256(content).hexdigest(), "task": published["id"]}


def assert_problem(response, status: int, field: str | None = None) -> dict:
    body = response.get_json()
    assert response.status_code == status, body
    if "data" in body and "status" in body and isinstance(body["data"], dict):  # a thesis BaseResult
        body = body["data"]
    if field is not None:
        assert body["field"] == field, body
    return body


# -- anonymous callers --------------------------------------------------------------------------------


def anonymous_requests(world: dict) -> list[tuple[str, str, dict]]:
    """Every write and every private read, with a body that would otherwise be accepted."""
    a, b = world["accounts"]["alice"], world["accounts"]["bob"]
    pid = world["pid"]
    return [
        ("POST", "/api/v1/accounts", {"json": {"password": PASSWORD}}),
        ("GET", "/api/v1/accounts", {}),
        ("POST", f"/api/v1/accounts/{a}/unlock", {"json": {"password": PASSWORD}}),
        ("POST", "/api/v1/transactions", {"json": {"from": a, "to": NOBODY, "value_wei": 1}}),
        ("POST", "/api/v1/token/transfer", {"json": {"from": a, "to": b, "value": 1}}),
        ("POST", "/api/v1/token/add", {"json": {"address": a, "value": 1}}),
        ("POST", "/api/v1/token/delete", {"json": {"address": a, "value": 1}}),
        ("POST", "/api/v1/token/set", {"json": {"address": a, "value": 1}}),
        ("POST", "/api/v1/contracts", {"json": {"name": "platform"}}),
        ("POST", "/api/v1/projects", multipart({"publisher": a, "name": "x", "price": "1", "file": FileStorage(io.BytesIO(b"x"), "f")})),
        ("POST", f"/api/v1/projects/{pid}/buy", {"json": {"buyer": b}}),
        ("GET", f"/api/v1/projects/{pid}?account={b}", {}),
        ("GET", f"/api/v1/projects/{pid}/file?account={b}", {}),
        ("GET", f"/api/v1/tasks/{world['task']}", {}),
        ("POST", "/api/v1/mining", {"json": {"action": "stop"}}),
        ("POST", "/api/v1/keys", {"json": {"name": "x"}}),
        ("GET", "/api/v1/keys", {}),
        ("DELETE", "/api/v1/keys/0000000000000000", {}),
        ("POST", "/admin/new", {"data": {"password": PASSWORD}}),
        ("POST", "/admin/unlock", {"data": {"address": a, "password": PASSWORD}}),
        ("GET", "/admin/list", {}),
        ("POST", "/token/add", {"data": {"address": a, "value": "1"}}),
        ("POST", "/token/delete", {"data": {"address": a, "value": "1"}}),
        ("POST", "/token/set", {"data": {"address": a, "value": "1"}}),
        ("POST", "/token/transfer", {"data": {"from": a, "to": b, "value": "1"}}),
        ("POST", "/token/publish", {"data": {"address": a, "projectName": "x", "projectHash": HASH}}),
        ("POST", "/token/buy", {"data": {"address": b, "project": str(pid)}}),
        ("POST", "/token", {"data": {"address": b, "project": str(pid)}}),
        ("POST", "/contract/deploy", {"data": {"contract": "platform"}}),
    ]


def test_anonymous_callers_are_refused_every_write_and_private_read(stack, world):
    anonymous = stack.anonymous()
    before = stack.counts()
    refused = []
    for method, path, kwargs in anonymous_requests(world):
        response = anonymous.open(path, method=method, **kwargs)
        body = assert_problem(response, 401, "Authorization")
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), path
        refused.append((method, path, body["status"]))
    assert stack.counts() == before, "an anonymous request enqueued something"
    assert len(refused) == len(anonymous_requests(world))


def test_a_key_that_is_not_live_is_401_even_on_public_reads(stack):
    for header in ("Bearer esp_0000000000000000_" + "A" * 43, "Bearer wrong", "Basic dXNlcjpwYXNz", "Bearer "):
        assert_problem(stack.client().get("/api/v1/chain/block-number", headers={"Authorization": header}), 401, "Authorization")
    assert stack.anonymous().get("/api/v1/chain/block-number").status_code == 200  # public data needs no key


def test_thesis_writes_refuse_get(stack, world):
    a = world["accounts"]["alice"]
    client = world["clients"]["alice"]
    for path in ("/admin/new", "/admin/unlock", "/token/add", "/token/delete", "/token/set", "/token/transfer",
                 "/token/publish", "/token/buy", "/token", "/contract/deploy"):
        response = client.get(path, query_string={"address": a})
        assert response.status_code == 405 and "GET" not in response.headers["Allow"], path
    for path in ("/conn/blockNum", "/token/total", "/admin/list"):  # reads keep GET
        assert client.get(path).status_code == 200, path


# -- a user's key acts only as its own accounts ---------------------------------------------------------


def test_another_keys_account_cannot_be_used(stack, world):
    mallory = world["clients"]["mallory"]
    a, b, m = world["accounts"]["alice"], world["accounts"]["bob"], world["accounts"]["mallory"]
    pid = world["pid"]
    before = stack.counts()
    assert_problem(mallory.post(f"/api/v1/accounts/{a}/unlock", json={"password": PASSWORD}), 403, "address")
    assert_problem(mallory.post("/api/v1/transactions", json={"from": a, "to": m, "value_wei": 1}), 403, "from")
    assert_problem(mallory.post("/api/v1/token/transfer", json={"from": b, "to": m, "value": 1}), 403, "from")
    assert_problem(mallory.post("/api/v1/projects", **multipart({
        "publisher": a, "name": "as alice", "price": "1", "file": FileStorage(io.BytesIO(b"x"), "f")})), 403, "publisher")
    assert_problem(mallory.post(f"/api/v1/projects/{pid}/buy", json={"buyer": b}), 403, "buyer")
    assert_problem(mallory.get(f"/api/v1/projects/{pid}?account={b}"), 403, "account")  # no view recorded in Bob's name
    assert_problem(mallory.get(f"/api/v1/projects/{pid}/file?account={b}"), 403, "account")
    assert_problem(mallory.get(f"/api/v1/tasks/{world['task']}"), 403, "task_id")
    # The thesis's routes follow the same rules.
    assert_problem(mallory.post("/admin/unlock", data={"address": a, "password": PASSWORD}), 403, "address")
    assert_problem(mallory.post("/token/transfer", data={"from": b, "to": m, "value": "1"}), 403, "from")
    assert_problem(mallory.post("/token/publish", data={"address": a, "projectName": "x", "projectHash": HASH}), 403, "address")
    assert_problem(mallory.post("/token/buy", data={"address": b, "project": str(pid)}), 403, "address")
    assert_problem(mallory.post("/token/add", data={"address": m, "value": "1"}), 403, "Authorization")
    assert stack.counts() == before, "a refused request enqueued something"
    # Mallory's own account still works for Mallory.
    assert mallory.post("/api/v1/transactions", json={"from": m, "to": NOBODY, "value_wei": 1}).status_code == 202


def test_listings_show_a_user_only_its_own_accounts_and_nothing_of_others_locks(stack, world):
    for name, client in world["clients"].items():
        listed = client.get("/api/v1/accounts").get_json()
        assert [entry["address"] for entry in listed["accounts"]] == [world["accounts"][name]]
        assert "treasury" not in listed
        assert client.get("/admin/list").get_json()["data"] == {"accounts": [world["accounts"][name]]}
    everything = stack.client(admin=True).get("/api/v1/accounts").get_json()
    assert set(world["accounts"].values()) <= {entry["address"] for entry in everything["accounts"]}
    assert everything["treasury"]


def test_the_treasury_signs_only_for_an_admin(stack, world):
    admin = stack.client(admin=True)
    treasury = admin.get("/api/v1/accounts").get_json()["treasury"]
    body = {"from": treasury, "to": "0x00000000000000000000000000000000000b0b05", "value_wei": 5 * 10**18}
    before = stack.counts()
    for client in world["clients"].values():
        assert_problem(client.post("/api/v1/transactions", json=body), 403, "from")
        assert_problem(client.post("/api/v1/token/transfer", json={"from": treasury, "to": NOBODY, "value": 1}), 403, "from")
        assert_problem(client.post("/token/transfer", data={"from": treasury, "to": NOBODY, "value": "1"}), 403, "from")
    assert stack.counts() == before
    done = confirmed(stack, admin.post("/api/v1/transactions", json=body))
    assert done["params"]["sender"] == treasury


# -- files ------------------------------------------------------------------------------------------------


def test_files_go_only_to_the_publisher_and_buyers(stack, world):
    pid, content = world["pid"], world["content"]
    for name in ("alice", "bob"):
        with world["clients"][name].get(f"/api/v1/projects/{pid}/file?account={world['accounts'][name]}") as response:
            assert response.status_code == 200 and response.data == content, name
    mallory = world["clients"]["mallory"]
    assert_problem(mallory.get(f"/api/v1/projects/{pid}/file?account={world['accounts']['mallory']}"), 403, "account")
    assert_problem(mallory.get(f"/api/v1/projects/{pid}/file?account={world['accounts']['alice']}"), 403, "account")


def test_someone_elses_file_hash_cannot_be_published_without_its_bytes(stack, world):
    mallory, m = world["clients"]["mallory"], world["accounts"]["mallory"]
    before = stack.counts()
    # The thesis's price-0 route with Alice's hash and no upload: refused, nothing enqueued.
    refused = mallory.post("/token/publish", data={"address": m, "projectName": "free copy", "projectHash": world["digest"], "value": "0"})
    assert_problem(refused, 403, "projectHash")
    assert stack.counts() == before
    # With the bytes, Mallory may publish them (she has them), and is then bound to them like Alice.
    accepted = mallory.post("/token/publish", **multipart({
        "address": m, "projectName": "own copy", "value": "0", "wait": "60",
        "file": FileStorage(io.BytesIO(world["content"]), "memo.pdf")}))
    assert accepted.get_json()["data"]["state"] == "confirmed", accepted.get_json()


def test_a_hash_published_without_bytes_never_serves_a_later_upload(stack, world):
    """Hash-only projects are allowed for files kept elsewhere; bytes someone uploads later are not served for them."""
    alice, a = world["clients"]["alice"], world["accounts"]["alice"]
    mallory, m = world["clients"]["mallory"], world["accounts"]["mallory"]
    secret_file = b"uploaded later by alice " + hashlib.sha256(b"later").digest()
    digest = "0x" + hashlib.sha256(secret_file).hexdigest()
    squatted = mallory.post("/token/publish", data={"address": m, "projectName": "squat", "projectHash": digest, "wait": "60"})
    squat_id = squatted.get_json()["data"]["result"]["project_id"]
    confirmed(stack, alice.post("/api/v1/projects", **multipart({
        "publisher": a, "name": "real", "price": "1", "file": FileStorage(io.BytesIO(secret_file), "later.pdf")})))
    assert_problem(mallory.get(f"/api/v1/projects/{squat_id}/file?account={m}"), 404, "file")


# -- keys ----------------------------------------------------------------------------------------------


def test_keys_are_created_by_admins_shown_once_stored_hashed_and_revocable(stack, world):
    admin = stack.client(admin=True)
    assert_problem(world["clients"]["alice"].post("/api/v1/keys", json={"name": "escalate", "role": "admin"}), 403, "Authorization")
    assert_problem(admin.post("/api/v1/keys", json={"name": "x", "role": "root"}), 422, "role")
    assert_problem(admin.post("/api/v1/keys", json={"name": "\u202e"}), 422, "name")
    created = admin.post("/api/v1/keys", json={"name": "ci bot", "role": "user"})
    assert created.status_code == 201 and created.headers["Cache-Control"] == "no-store"
    body = created.get_json()
    key = body["key"]
    listed = admin.get("/api/v1/keys").get_json()
    assert body["id"] in [k["id"] for k in listed["keys"]] and key not in created.request.url
    assert key not in str(listed) and "digest" not in str(listed)
    # Redis holds its SHA-256, never the key.
    every_value = b"".join(stack.redis.dump(k) or b"" for k in stack.redis.keys("*"))
    assert key.encode() not in every_value
    assert hashlib.sha256(key.encode()).hexdigest().encode() in every_value
    client = stack.client(key)
    assert client.get("/api/v1/accounts").status_code == 200
    assert admin.delete(f"/api/v1/keys/{body['id']}").get_json()["active"] is False
    assert_problem(client.get("/api/v1/accounts"), 401, "Authorization")
    assert_problem(admin.delete("/api/v1/keys/nope"), 404, "id")


def test_keys_cli_creates_lists_and_revokes(stack):
    env = child_env(**stack.env)
    flask = [sys.executable, "-m", "flask", "--app", "app"]
    created = subprocess.run([*flask, "keys", "create", "--name", "operator", "--role", "admin"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60, check=True)
    key = created.stdout.strip().splitlines()[-1]
    key_id = key.split("_")[1]
    assert stack.client(key).get("/api/v1/keys").status_code == 200  # an admin key
    listed = subprocess.run([*flask, "keys", "list"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert key_id in listed.stdout and key not in listed.stdout
    subprocess.run([*flask, "keys", "revoke", key_id], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert_problem(stack.client(key).get("/api/v1/keys"), 401, "Authorization")
    bad = subprocess.run([*flask, "keys", "create", "--name", "x", "--role", "root"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0 and "root" in bad.stderr


# -- idempotency under concurrency ------------------------------------------------------------------------


def test_one_idempotency_key_under_twenty_concurrent_requests_makes_one_task_and_one_keystore(stack, world):
    client_key = world["keys"]["alice"]
    keystore: Path = stack.settings.keystore_dir
    files_before = set(keystore.iterdir())
    responses: list = []
    barrier = threading.Barrier(20)

    def create() -> None:
        client = stack.client(client_key)
        barrier.wait()
        responses.append(client.post("/api/v1/accounts", json={"password": PASSWORD}, headers={"Idempotency-Key": "signup-1"}))

    threads = [threading.Thread(target=create) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(responses) == 20
    assert {r.status_code for r in responses} == {202}, [r.get_json() for r in responses if r.status_code != 202]
    assert len({r.get_json()["id"] for r in responses}) == 1
    assert len(set(keystore.iterdir()) - files_before) == 1, "more than one keystore was created"
    # The same key with another password is another request: 409, and no keystore.
    other = stack.client(client_key).post("/api/v1/accounts", json={"password": "another one"}, headers={"Idempotency-Key": "signup-1"})
    assert_problem(other, 409, "Idempotency-Key")
    # Another caller's identical key is its own: a task of its own, never Alice's.
    bobs = stack.client(world["keys"]["bob"]).post("/api/v1/accounts", json={"password": PASSWORD}, headers={"Idempotency-Key": "signup-1"})
    assert bobs.status_code == 202 and bobs.get_json()["id"] != responses[0].get_json()["id"]
    assert len(set(keystore.iterdir()) - files_before) == 2
