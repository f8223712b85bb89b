"""Unlocking against the real Redis (DB 12): TTL, locking, and no secret left in Redis or in logs."""

from __future__ import annotations

import base64
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from errors import ConfigError, ValidationError
from tests import conftest
from tests.waiting import wait_for
from wallet.errors import AccountLocked, UnknownAccount, WrongPassword
from wallet.keystore import Keystore
from wallet.unlock import KEY_PREFIX, UnlockStore

REDIS_DB = 12  # the wallet's own database: tests flush only this one
SECRET = "test-server-secret-0123456789abcdef"
PASSWORD = "s3cret-unlock-pässword"


def _redis(**kwargs: object) -> redis.Redis:
    client = redis.Redis(host=conftest.REDIS_HOST, port=conftest.REDIS_PORT, db=REDIS_DB, socket_connect_timeout=2, **kwargs)  # type: ignore[arg-type]
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"the test session's Redis does not answer: {exc}")
    return client


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = _redis()
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def keystore(tmp_path: Path) -> Keystore:
    return Keystore(tmp_path / "keystore", work_factor=2**12)


@pytest.fixture
def account(keystore: Keystore) -> tuple[str, bytes]:
    address = keystore.create(PASSWORD)
    return address, keystore.decrypt(address, PASSWORD)


def _dump_db(client: Any) -> bytes:
    """Every key name and every value of the database, as bytes, whatever the type."""
    out = bytearray()
    for key in client.scan_iter(count=1000):
        out += key + b"\n"
        kind = client.type(key)
        if kind == b"string":
            out += client.get(key) or b""
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                out += field + b"=" + value + b"\n"
        elif kind == b"zset":
            for member, score in client.zrange(key, 0, -1, withscores=True):
                out += member + b" " + str(score).encode() + b"\n"
        elif kind == b"list":
            out += b"\n".join(client.lrange(key, 0, -1))
        elif kind == b"set":
            out += b"\n".join(client.smembers(key))
        out += b"\n"
    return bytes(out)


def _secret_forms(key: bytes, password: str) -> list[bytes]:
    """The ways a key or password could leak: hex (both cases, with and without 0x), raw, base64, UTF-8."""
    return [
        key.hex().encode(), key.hex().upper().encode(), ("0x" + key.hex()).encode(), key,
        base64.b64encode(key), password.encode(), password.encode("utf-16-le"),
    ]


def test_unlock_lets_the_account_sign_then_lock_stops_it(r: redis.Redis, keystore: Keystore, account: tuple[str, bytes]) -> None:
    address, key = account
    store = UnlockStore(r, SECRET)
    assert not store.is_unlocked(address) and store.ttl(address) == 0
    store.unlock(address, PASSWORD, 600, keystore)
    assert store.is_unlocked(address)
    assert 590 <= store.ttl(address) <= 600
    signer = store.signer(address)
    assert signer.address == address and bytes(signer.key) == key
    assert store.lock(address) is True
    assert store.lock(address) is False
    with pytest.raises(AccountLocked) as info:
        store.signer(address)
    assert info.value.status == 423


def test_no_plaintext_key_or_password_anywhere_in_redis(r: redis.Redis, keystore: Keystore, account: tuple[str, bytes]) -> None:
    address, key = account
    UnlockStore(r, SECRET).unlock(address, PASSWORD, 600, keystore)
    other = keystore.create("another-password-entirely")
    UnlockStore(r, SECRET).unlock(other, "another-password-entirely", 600, keystore)
    dump = _dump_db(r)
    assert (KEY_PREFIX + address.lower()).encode() in dump  # the scan did see the entries
    secrets = _secret_forms(key, PASSWORD) + _secret_forms(keystore.decrypt(other, "another-password-entirely"),
                                                           "another-password-entirely")
    for secret in secrets:
        assert secret not in dump
    assert SECRET.encode() not in dump


def test_unlock_expires_after_its_ttl(r: redis.Redis, keystore: Keystore, account: tuple[str, bytes]) -> None:
    address, _ = account
    store = UnlockStore(r, SECRET)
    store.unlock(address, PASSWORD, 1, keystore)
    assert store.signer(address).address == address
    wait_for(lambda: not store.is_unlocked(address), 5.0, "Redis to expire the unlock (TTL 1 s)")
    with pytest.raises(AccountLocked):
        store.signer(address)


def test_a_second_unlock_replaces_the_duration(r: redis.Redis, keystore: Keystore, account: tuple[str, bytes]) -> None:
    address, _ = account
    store = UnlockStore(r, SECRET)
    store.unlock(address, PASSWORD, 86_400, keystore)
    store.unlock(address, PASSWORD, 30, keystore)
    assert 25 <= store.ttl(address) <= 30


def test_wrong_password_unlocks_nothing_and_leaks_nothing(
    r: redis.Redis, keystore: Keystore, account: tuple[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    address, key = account
    store = UnlockStore(r, SECRET)
    caplog.set_level(logging.DEBUG)
    wrong = "definitely-wrong-guess"
    with pytest.raises(WrongPassword) as info:
        store.unlock(address, wrong, 60, keystore)
    assert not store.is_unlocked(address)
    assert r.dbsize() == 0
    text = "".join(traceback.format_exception(info.value)) + caplog.text
    for secret in (wrong, PASSWORD, key.hex()):
        assert secret not in text


def test_logs_of_a_successful_unlock_hold_no_secret(
    r: redis.Redis, keystore: Keystore, account: tuple[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    address, key = account
    caplog.set_level(logging.DEBUG)
    store = UnlockStore(r, SECRET)
    store.unlock(address, PASSWORD, 60, keystore)
    store.signer(address)
    assert address in caplog.text
    for secret in (PASSWORD, key.hex(), SECRET):
        assert secret not in caplog.text
    assert SECRET not in repr(store)


@pytest.mark.parametrize("seconds", [0, 86_401, -5, 2.5])
def test_unlock_duration_out_of_bounds_is_refused_before_decrypting(
    r: redis.Redis, keystore: Keystore, account: tuple[str, bytes], seconds: object
) -> None:
    address, _ = account
    with pytest.raises(ValidationError) as info:
        UnlockStore(r, SECRET).unlock(address, "even-a-wrong-password", seconds, keystore)  # type: ignore[arg-type]
    assert info.value.field == "seconds"
    assert r.dbsize() == 0


def test_unknown_account(r: redis.Redis, keystore: Keystore) -> None:
    with pytest.raises(UnknownAccount):
        UnlockStore(r, SECRET).unlock("0x" + "ab" * 20, PASSWORD, 60, keystore)


def test_a_new_server_secret_invalidates_unlocks(r: redis.Redis, keystore: Keystore, account: tuple[str, bytes]) -> None:
    address, _ = account
    UnlockStore(r, SECRET).unlock(address, PASSWORD, 600, keystore)
    with pytest.raises(AccountLocked) as info:
        UnlockStore(r, SECRET + "-rotated").signer(address)
    assert "unlocked again" in str(info.value)


def test_an_entry_moved_to_another_address_does_not_open(r: redis.Redis, keystore: Keystore, account: tuple[str, bytes]) -> None:
    address, _ = account
    victim = keystore.create("victim-password")
    store = UnlockStore(r, SECRET)
    store.unlock(address, PASSWORD, 600, keystore)
    # Someone with write access to Redis copies our sealed key under the victim's name.
    r.set(KEY_PREFIX + victim.lower(), r.get(KEY_PREFIX + address.lower()) or b"", ex=600)
    with pytest.raises(AccountLocked):
        store.signer(victim)


def test_garbage_entries_read_as_locked(r: redis.Redis, account: tuple[str, bytes]) -> None:
    address, _ = account
    r.set(KEY_PREFIX + address.lower(), "not base64 !!", ex=60)
    with pytest.raises(AccountLocked):
        UnlockStore(r, SECRET).signer(address)


def test_works_with_a_decoding_redis_client(keystore: Keystore, account: tuple[str, bytes]) -> None:
    address, key = account
    client = _redis(decode_responses=True)
    client.flushdb()
    try:
        store = UnlockStore(client, SECRET)
        store.unlock(address, PASSWORD, 60, keystore)
        assert bytes(store.signer(address).key) == key
    finally:
        client.flushdb()
        client.close()


def test_a_short_server_secret_is_a_config_error(r: redis.Redis) -> None:
    with pytest.raises(ConfigError):
        UnlockStore(r, "short")
