"""Idempotency fingerprints and keys: pure (no Redis).

A fingerprint tells a retry from a different request under the same Idempotency-Key; a
secret in the request (an account's password) enters it only sealed under the server secret.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from errors import ValidationError
from services.idempotency import MAX_KEY_LENGTH, check_key, fingerprint

SERVER_SECRET = "server-secret-for-tests"
PASSWORD = "correct horse battery staple"
PARAMS = {"address": "0x000000000000000000000000000000000000dEaD", "value_wei": 1000}


def digest(operation: str = "send_eth", params: dict | None = None, secret: str | None = None,
           server_secret: str = SERVER_SECRET) -> str:
    return fingerprint(operation, PARAMS if params is None else params, secret=secret, server_secret=server_secret)


def test_the_same_request_has_the_same_fingerprint_whatever_the_order_of_its_fields() -> None:
    assert digest() == digest() == digest(params=dict(reversed(PARAMS.items())))
    assert digest(secret=PASSWORD) == digest(secret=PASSWORD)
    assert re.fullmatch(r"[0-9a-f]{64}", digest(secret=PASSWORD))


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"operation": "fund_account"}, id="operation"),
        pytest.param({"params": {**PARAMS, "value_wei": 1001}}, id="a-param-value"),
        pytest.param({"params": {**PARAMS, "value_wei": "1000"}}, id="a-param-type"),
        pytest.param({"params": {**PARAMS, "memo": None}}, id="an-extra-param"),
        pytest.param({"params": {}}, id="no-params"),
        pytest.param({"secret": PASSWORD}, id="a-secret-added"),
    ],
)
def test_a_different_request_has_a_different_fingerprint(other: dict) -> None:
    assert digest(**other) != digest()


def test_the_secret_changes_the_fingerprint_but_never_appears_in_it() -> None:
    assert digest(secret=PASSWORD) != digest(secret=PASSWORD + "!")
    for secret in (PASSWORD, "z", "pässwörd \U0001f511", "\ud800 lone surrogate"):
        sealed = digest(secret=secret)
        assert secret not in sealed
        # Nor anything a guess could be checked against without the server secret:
        assert sealed != digest(secret=secret, server_secret="another server")
        assert hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest() != sealed
        assert fingerprint("send_eth", PARAMS, secret=secret, server_secret="") != sealed


def test_without_a_secret_the_server_secret_plays_no_part() -> None:
    assert digest(server_secret="one") == digest(server_secret="two")


@pytest.mark.parametrize("key", ["a", "order-42", "x" * MAX_KEY_LENGTH, "~!@#$%^&*() {}"])
def test_a_printable_ascii_key_up_to_the_limit_is_accepted(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * (MAX_KEY_LENGTH + 1), id="too-long"),
        pytest.param("ordre-été", id="not-ascii"),
        pytest.param("line\nbreak", id="control-character"),
        pytest.param("tab\there", id="tab"),
    ],
)
def test_any_other_key_is_a_400_naming_the_header(key: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_key(key)
    assert (refused.value.field, refused.value.status) == ("Idempotency-Key", 400)
