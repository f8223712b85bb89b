"""Idempotency keys in Redis: claim binds a caller's key to one task, release forgets it (real Redis).

``services.submit`` claims a key before it enqueues a task and releases it when the task
could not be created, so that a retry can succeed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from errors import Conflict
from services.idempotency import IDEMPOTENCY_TTL, claim, fingerprint, release
from settings import Settings

ALICE, BOB = "key-id-alice", "key-id-bob"
REQUEST = fingerprint("send_eth", {"to": "0xdead", "value_wei": 1}, secret=None, server_secret="s")
OTHER_REQUEST = fingerprint("send_eth", {"to": "0xdead", "value_wei": 2}, secret=None, server_secret="s")
PASSWORD = "the account's own passphrase"


@pytest.fixture
def r(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


def test_the_first_claim_binds_the_key_and_a_retry_gets_that_task(r: redis.Redis) -> None:
    assert claim(r, ALICE, "order-42", REQUEST, "task-1") is None
    assert claim(r, ALICE, "order-42", REQUEST, "task-2") == "task-1"  # the retry's own id is not bound
    assert claim(r, ALICE, "order-42", REQUEST, "task-3") == "task-1"
    [name] = r.keys("esp:idem:*")
    assert 0 < r.ttl(name) <= IDEMPOTENCY_TTL  # remembered for a day, not forever


def test_the_same_key_for_a_different_request_is_a_conflict_and_keeps_its_task(r: redis.Redis) -> None:
    assert claim(r, ALICE, "order-42", REQUEST, "task-1") is None
    with pytest.raises(Conflict) as refused:
        claim(r, ALICE, "order-42", OTHER_REQUEST, "task-2")
    assert refused.value.field == "Idempotency-Key"
    assert claim(r, ALICE, "order-42", REQUEST, "task-3") == "task-1"


def test_a_key_is_scoped_to_its_caller(r: redis.Redis) -> None:
    assert claim(r, ALICE, "order-42", REQUEST, "alice-task") is None
    assert claim(r, BOB, "order-42", OTHER_REQUEST, "bob-task") is None  # not Alice's task, and no conflict with hers
    assert claim(r, BOB, "order-42", OTHER_REQUEST, "again") == "bob-task"
    assert claim(r, ALICE, "order-42", REQUEST, "again") == "alice-task"
    release(r, BOB, "order-42")
    assert claim(r, ALICE, "order-42", REQUEST, "again") == "alice-task"  # Bob's release leaves Alice's binding
    # Neither the caller nor the key is readable from Redis's key names.
    assert not [k for k in r.keys("*") if b"alice" in k or b"order-42" in k]


def test_a_released_key_can_be_claimed_again_even_for_another_request(r: redis.Redis) -> None:
    assert claim(r, ALICE, "order-42", REQUEST, "task-1") is None
    release(r, ALICE, "order-42")
    assert claim(r, ALICE, "order-42", OTHER_REQUEST, "task-2") is None
    assert claim(r, ALICE, "order-42", OTHER_REQUEST, "task-3") == "task-2"
    release(r, ALICE, "never-claimed")  # nothing to forget: no error


def test_simultaneous_claims_of_one_key_bind_exactly_one_task(r: redis.Redis) -> None:
    start = threading.Barrier(16)

    def attempt(i: int) -> str | None:
        start.wait(10)
        return claim(r, ALICE, "order-42", REQUEST, f"task-{i}")

    with ThreadPoolExecutor(16) as threads:
        answers = list(threads.map(attempt, range(16)))
    winners = [f"task-{i}" for i, answer in enumerate(answers) if answer is None]
    assert len(winners) == 1
    assert {answer for answer in answers if answer is not None} == set(winners)


def test_redis_never_holds_the_secret_of_a_request(r: redis.Redis) -> None:
    digest = fingerprint("create_account", {}, secret=PASSWORD, server_secret="server secret")
    assert claim(r, ALICE, "new-account", digest, "task-1") is None
    with pytest.raises(Conflict):  # another password under the same key is another request
        claim(r, ALICE, "new-account", fingerprint("create_account", {}, secret=PASSWORD + "!", server_secret="server secret"),
              "task-2")
    stored = b""
    for name in r.keys("*"):
        value = r.get(name)
        assert isinstance(name, bytes) and isinstance(value, bytes)  # only the binding, a plain string
        stored += name + value
    assert stored and PASSWORD.encode() not in stored and b"server secret" not in stored
