"""``sign_many``: a batch's transactions signed without eth_account's formatting, byte for byte the same."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from wallet.signing import sign_many, sign_transaction

ACCOUNT = Account.from_key("0x" + "42" * 32)
UINT = st.integers(min_value=0, max_value=2**64)
ADDRESS = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())


@st.composite
def transactions(draw: Any) -> dict[str, Any]:
    tip = draw(st.integers(min_value=0, max_value=10**12))
    fields: dict[str, Any] = {
        "chainId": draw(st.integers(min_value=1, max_value=2**32)), "nonce": draw(UINT),
        "gas": draw(st.integers(min_value=21_000, max_value=30_000_000)), "value": draw(st.integers(min_value=0, max_value=10**24)),
        "maxPriorityFeePerGas": tip, "maxFeePerGas": tip + draw(st.integers(min_value=0, max_value=10**12)),
    }
    if draw(st.booleans()):
        fields["to"] = draw(ADDRESS)
    if draw(st.booleans()):
        fields["data"] = "0x" + draw(st.binary(max_size=300)).hex()
    return fields


@settings(max_examples=200, deadline=None)
@given(st.lists(transactions(), min_size=1, max_size=4))
def test_sign_many_makes_the_bytes_and_hash_eth_account_makes(many: list[dict[str, Any]]) -> None:
    assert sign_many(ACCOUNT, many) == [sign_transaction(ACCOUNT, fields) for fields in many]


def test_legacy_transactions_go_through_eth_account() -> None:
    legacy = {"chainId": 1337, "nonce": 3, "gas": 21_000, "gasPrice": 10**9, "to": "0x" + "11" * 20, "value": 1}
    assert sign_many(ACCOUNT, [legacy]) == [sign_transaction(ACCOUNT, legacy)]
