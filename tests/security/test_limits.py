"""Rate limits, body limits and passwords in URLs, against a real stack (Redis DB 5, 3 anvils, Celery) through the app.

Limits are the defaults except the anonymous one, lowered so that a test can cross it:
unlocking is limited per account (ESP_UNLOCK_RATE_LIMIT checks, ESP_UNLOCK_FAILURE_LIMIT
wrong passwords, then a lockout), whoever asks and by either route; every answer past a
limit is a 429 problem with Retry-After.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from settings import Settings
from tests.conftest import DB_LIMITS
from tests.stack import LocalStack
from wallet.unlock import UnlockStore

ADMIN_KEY = "security-admin-key-0123456789"
PASSWORD = "the right passphrase"
WRONG = "not the passphrase"
ANONYMOUS_LIMIT = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack(tmp_path_factory.mktemp("limits"), DB_LIMITS, name="limits", ESP_ADMIN_KEY=ADMIN_KEY,
                   ESP_RATE_LIMIT_ANONYMOUS=f"{ANONYMOUS_LIMIT} per minute", ESP_MAX_FILE_MB="2")
    try:
        yield s
    finally:
        s.close()


def client(stack: LocalStack, remote_addr: str = "127.0.0.1"):  # type: ignore[no-untyped-def]
    """A test client sending the admin key (ESP_ADMIN_KEY stays an admin key) from ``remote_addr``."""
    c = stack.app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_KEY}"
    c.environ_base["REMOTE_ADDR"] = remote_addr
    return c


def new_account(stack: LocalStack, remote_addr: str) -> str:
    response = client(stack, remote_addr).post("/api/v1/accounts", json={"password": PASSWORD})
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["params"]["address"])


def unlock(stack: LocalStack, account: str, password: str, remote_addr: str):  # type: ignore[no-untyped-def]
    return client(stack, remote_addr).post(f"/api/v1/accounts/{account}/unlock", json={"password": password, "seconds": 60})


def assert_429_problem(response, field: str | None) -> int:  # type: ignore[no-untyped-def]
    """The answer is a 429 RFC 9457 problem with a Retry-After in whole seconds; returns them."""
    assert response.status_code == 429, response.get_json()
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == 429 and body["type"].endswith("/rate-limited") and body.get("field") == field
    retry = int(response.headers["Retry-After"])
    assert retry >= 1
    return retry


def test_wrong_passwords_lock_the_account_out_whoever_asks_and_by_either_route(stack: LocalStack) -> None:
    settings: Settings = stack.settings
    failures = int(settings.unlock_failure_limit.split()[0])  # the default: "5 per 15 minutes; 20 per day"
    account, other = new_account(stack, "10.0.1.1"), new_account(stack, "10.0.1.1")
    for i in range(failures):  # each from another address: the count is the account's, not the caller's
        response = unlock(stack, account, WRONG, f"10.0.1.{10 + i}")
        assert response.status_code == 403, response.get_json()
        assert response.get_json()["type"].endswith("/wrong-password")

    locked_out = unlock(stack, account, PASSWORD, "10.0.1.99")  # even the right password: the account is locked out
    retry = assert_429_problem(locked_out, "address")
    assert "wrong passwords" in locked_out.get_json()["detail"]
    assert retry <= 15 * 60
    assert not UnlockStore(stack.redis, settings.secret_key).is_unlocked(account)

    thesis = client(stack, "10.0.1.98").post("/admin/unlock", json={"address": account.lower(), "password": PASSWORD})
    assert thesis.status_code == 429  # the thesis's route shares the account's budget (its BaseResult shape)
    assert thesis.get_json()["status"] == 500 and thesis.get_json()["data"]["field"] == "address"
    assert int(thesis.headers["Retry-After"]) >= 1

    assert unlock(stack, other, PASSWORD, "10.0.1.99").status_code == 200  # another account is not affected


def test_password_checks_per_account_are_limited_even_when_right(stack: LocalStack) -> None:
    attempts = int(stack.settings.unlock_rate_limit.split()[0])  # the default: "10 per minute"
    account = new_account(stack, "10.0.2.1")
    for i in range(attempts):
        assert unlock(stack, account, PASSWORD, f"10.0.2.{10 + i}").status_code == 200
    refused = unlock(stack, account, PASSWORD, "10.0.2.99")
    assert_429_problem(refused, "address")
    assert "unlock attempts" in refused.get_json()["detail"]


def test_refusals_before_the_password_check_cost_the_account_nothing(stack: LocalStack) -> None:
    attempts = int(stack.settings.unlock_rate_limit.split()[0])
    account = new_account(stack, "10.0.3.1")
    for i in range(attempts + 5):  # an impossible duration: refused (422) before any KDF, so not counted
        response = client(stack, f"10.0.3.{10 + i}").post(f"/api/v1/accounts/{account}/unlock",
                                                          json={"password": WRONG, "seconds": 0})
        assert response.status_code == 422
    assert unlock(stack, account, PASSWORD, "10.0.3.99").status_code == 200


def test_each_anonymous_caller_has_its_own_budget_and_health_has_none(stack: LocalStack) -> None:
    anonymous = stack.app.test_client()
    anonymous.environ_base["REMOTE_ADDR"] = "10.0.4.1"
    for _ in range(ANONYMOUS_LIMIT):
        assert anonymous.get("/api/v1/chain/gas-price").status_code == 200
    assert_429_problem(anonymous.get("/api/v1/chain/gas-price"), None)
    assert_429_problem(anonymous.get("/api/v1/nodes"), None)  # one budget across routes
    for _ in range(5):  # liveness and readiness answer whatever the caller did
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200
    elsewhere = stack.app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "10.0.4.2"
    assert elsewhere.get("/api/v1/chain/gas-price").status_code == 200


def test_an_oversized_json_body_is_a_413_naming_body(stack: LocalStack) -> None:
    limit = stack.settings.max_body_kb * 1024
    before = stack.counts()
    response = client(stack, "10.0.5.1").post("/api/v1/accounts", data=b'{"password": "' + b"x" * limit + b'"}',
                                              content_type="application/json")
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["field"] == "body"
    assert stack.counts() == before  # nothing created, nothing enqueued
    # The same on a route that never reads a body, and on a thesis route (its BaseResult shape).
    unread = client(stack, "10.0.5.1").get("/api/v1/chain/gas-price", data=b"x" * (limit + 1))
    assert unread.status_code == 413 and unread.get_json()["field"] == "body"
    thesis = client(stack, "10.0.5.1").post("/admin/unlock", data=b"{" + b" " * limit + b"}", content_type="application/json")
    assert thesis.status_code == 413 and thesis.get_json()["data"]["field"] == "body"


def upload(stack: LocalStack, size: int):  # type: ignore[no-untyped-def]
    """POST /api/v1/projects with a file of ``size`` bytes (the body built in memory: the test client leaks its spool file)."""
    boundary, body = encode_multipart({"publisher": "0x" + "ab" * 20, "name": "memo", "price": "1",
                                       "file": FileStorage(io.BytesIO(b"m" * size), "memo.pdf")})
    return client(stack, "10.0.6.1").post("/api/v1/projects", data=body, content_type=f"multipart/form-data; boundary={boundary}")


def test_uploads_keep_their_own_allowance(stack: LocalStack) -> None:
    stack.wait_platform()  # a publish is checked against the platform before its publisher
    past_the_body_limit = upload(stack, stack.settings.max_body_kb * 1024 + 1)
    # Read whole (under ESP_MAX_FILE_MB, 2 MiB here), then refused for its made-up publisher: not for its size.
    assert past_the_body_limit.status_code == 422, past_the_body_limit.get_json()
    assert past_the_body_limit.get_json()["field"] == "publisher"
    too_big = upload(stack, 3 * 1024 * 1024)
    assert too_big.status_code == 413 and too_big.get_json()["field"] == "file"


@pytest.mark.parametrize("name", ["password", "Password", "PASSWORD"])
def test_a_password_in_the_query_string_is_refused_before_anything_runs(stack: LocalStack, name: str) -> None:
    secret = "query-secret-value"
    account = "0x" + "cd" * 20
    before = stack.counts()
    rest = client(stack, "10.0.7.1").get(f"/api/v1/chain/gas-price?{name}={secret}")
    assert rest.status_code == 400 and rest.mimetype == "application/problem+json"
    assert rest.get_json()["field"] == "password"
    thesis = client(stack, "10.0.7.1").post(f"/admin/new?{name}={secret}")
    assert thesis.status_code == 400 and thesis.get_json()["data"]["field"] == "password"
    unlock_in_url = client(stack, "10.0.7.1").post(f"/api/v1/accounts/{account}/unlock?{name}={secret}", json={"password": "x"})
    assert unlock_in_url.status_code == 400 and unlock_in_url.get_json()["field"] == "password"
    for response in (rest, thesis, unlock_in_url):
        assert secret not in response.get_data(as_text=True)
    assert stack.counts() == before
