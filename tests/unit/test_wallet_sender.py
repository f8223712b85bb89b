"""The pure parts of sending: error classification, fields, fee bumps, the prepared record, signing."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from errors import ValidationError
from wallet.address import checksum, key_part
from wallet.broadcast import DEFINITE_REFUSALS, TxErrorKind, broadcast, classify_error
from wallet.signing import (
    PreparedTx,
    bump_fees,
    cancel,
    has_fast_signing,
    normalise_fields,
    replace,
    sign_transaction,
    signing_backend,
)
from wallet.unlock import check_seconds

ACCOUNT = Account.from_key("0x" + "11" * 32)
DEAD = "0x000000000000000000000000000000000000dEaD"
FIELDS = {
    "chainId": 31337, "nonce": 7, "to": DEAD, "value": 5, "gas": 21_000,
    "maxFeePerGas": 2_000_000_000, "maxPriorityFeePerGas": 1_000_000_000,
}


@pytest.mark.parametrize(
    ("message", "code", "kind"),
    [
        # anvil 1.7.1, as triggered on a real node (see wallet.broadcast's docstring)
        ("nonce too low", -32003, TxErrorKind.NONCE_TOO_LOW),
        ("transaction already imported", -32003, TxErrorKind.ALREADY_KNOWN),
        ("replacement transaction underpriced", -32003, TxErrorKind.REPLACEMENT_UNDERPRICED),
        ("Insufficient funds for gas * price + value", -32003, TxErrorKind.INSUFFICIENT_FUNDS),
        ("max fee per gas less than block base fee", -32003, TxErrorKind.FEE_CAP_TOO_LOW),
        ("intrinsic gas too low", -32000, TxErrorKind.INTRINSIC_GAS_TOO_LOW),
        ("intrinsic gas too high -- tx.gas_limit > env.block.gas_limit", -32000, TxErrorKind.GAS_LIMIT_EXCEEDED),
        # geth and others
        ("already known", -32000, TxErrorKind.ALREADY_KNOWN),
        ("known transaction: 0xabc", -32000, TxErrorKind.ALREADY_KNOWN),
        ("Transaction with the same hash was already imported.", -32010, TxErrorKind.ALREADY_KNOWN),
        ("nonce too low: next nonce 5, tx nonce 3", -32000, TxErrorKind.NONCE_TOO_LOW),
        ("transaction underpriced", -32000, TxErrorKind.UNDERPRICED),
        ("insufficient funds for gas * price + value: balance 0", -32000, TxErrorKind.INSUFFICIENT_FUNDS),
        ("exceeds block gas limit", -32000, TxErrorKind.GAS_LIMIT_EXCEEDED),
        ("max priority fee per gas higher than max fee per gas", -32000, TxErrorKind.INVALID),
        ("invalid sender", -32000, TxErrorKind.INVALID),
        ("only replay-protected (EIP-155) transactions allowed over RPC", -32000, TxErrorKind.INVALID),
        ("tx fee (1.50 ether) exceeds the configured cap (1.00 ether)", -32000, TxErrorKind.FEE_EXCEEDS_CAP),
        ("txpool is full", -32000, TxErrorKind.POOL_FULL),
        ("nonce too high", -32000, TxErrorKind.NONCE_TOO_HIGH),
        ("internal error", -32603, TxErrorKind.NODE_ERROR),
        ("something new", -32000, TxErrorKind.UNKNOWN),
    ],
)
def test_classify_error(message: str, code: int, kind: TxErrorKind) -> None:
    assert classify_error(message, code) is kind


def test_only_refusals_about_the_transaction_are_definite() -> None:
    transient = {TxErrorKind.NONCE_TOO_HIGH, TxErrorKind.POOL_FULL, TxErrorKind.NODE_ERROR, TxErrorKind.UNKNOWN}
    assert not transient & DEFINITE_REFUSALS
    assert TxErrorKind.ALREADY_KNOWN not in DEFINITE_REFUSALS and TxErrorKind.NONCE_TOO_LOW not in DEFINITE_REFUSALS


def test_signing_uses_coincurve() -> None:
    assert signing_backend() == "CoinCurveECCBackend"
    assert has_fast_signing()


def test_sign_transaction_hash_is_keccak_of_the_raw_bytes_and_recovers_the_sender() -> None:
    prepared = sign_transaction(ACCOUNT, FIELDS)
    assert prepared.tx_hash == "0x" + keccak(prepared.raw_bytes()).hex()
    assert Account.recover_transaction(prepared.raw) == ACCOUNT.address
    assert (prepared.sender, prepared.nonce, prepared.chain_id) == (ACCOUNT.address, 7, 31337)
    assert prepared.hashes == (prepared.tx_hash,)


def test_signing_is_deterministic() -> None:
    assert sign_transaction(ACCOUNT, FIELDS).raw == sign_transaction(ACCOUNT, FIELDS).raw


def test_prepared_json_round_trip() -> None:
    prepared = replace(ACCOUNT, sign_transaction(ACCOUNT, {**FIELDS, "data": b"\x01\x02"}))
    again = PreparedTx.from_json(prepared.to_json())
    assert again == prepared
    assert again.raw_bytes() == prepared.raw_bytes()


def test_normalise_fields_makes_json_safe_values() -> None:
    clean = normalise_fields({**FIELDS, "to": DEAD.lower(), "data": b"\xab", "value": "0x10", "type": 2})
    assert clean["to"] == DEAD and clean["data"] == "0xab" and clean["value"] == 16 and clean["type"] == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"nonce": None}, "nonce"),
        ({"chainId": None}, "chainId"),
        ({"gas": None}, "gas"),
        ({"value": -1}, "value"),
        ({"value": True}, "value"),
        ({"nonce": "seven"}, "nonce"),
        ({"maxPriorityFeePerGas": None}, "maxFeePerGas"),
        ({"gasPrice": 1}, "gasPrice"),
        ({"maxPriorityFeePerGas": 3_000_000_000}, "maxPriorityFeePerGas"),
        ({"to": "0x1234"}, "to"),
        ({"data": "0xzz"}, "data"),
        ({"from": DEAD}, "from"),
    ],
)
def test_normalise_fields_refuses_bad_input(change: dict[str, object], field: str) -> None:
    fields = {**FIELDS, **change}
    fields = {k: v for k, v in fields.items() if v is not None}
    with pytest.raises(ValidationError) as info:
        normalise_fields(fields)
    assert info.value.field == field


def test_bump_fees_raises_both_fees_by_at_least_ten_percent_rounded_up() -> None:
    bumped = bump_fees({**FIELDS, "maxFeePerGas": 1001, "maxPriorityFeePerGas": 0})
    assert bumped["maxFeePerGas"] == 1102  # ceil(1001 * 1.1) = 1101.1 -> 1102
    assert bumped["maxPriorityFeePerGas"] == 1  # at least +1 wei, even from 0
    assert bumped["nonce"] == FIELDS["nonce"]


def test_bump_fees_honours_a_minimum_fee_cap_and_legacy_gas_price() -> None:
    assert bump_fees(FIELDS, 10, min_max_fee_per_gas=10**10)["maxFeePerGas"] == 10**10
    legacy = {k: v for k, v in FIELDS.items() if not k.startswith("max")} | {"gasPrice": 100}
    assert bump_fees(legacy, 25)["gasPrice"] == 125


@pytest.mark.parametrize("bump", [0, 5, 9, 10.5, True])
def test_bumps_below_ten_percent_are_refused(bump: object) -> None:
    with pytest.raises(ValidationError) as info:
        bump_fees(FIELDS, bump)  # type: ignore[arg-type]
    assert info.value.field == "bump_percent"


@given(
    fee=st.integers(min_value=0, max_value=10**15),
    tip_share=st.integers(min_value=0, max_value=100),
    bump=st.integers(min_value=10, max_value=300),
)
def test_bumped_fees_always_satisfy_geths_rule(fee: int, tip_share: int, bump: int) -> None:
    tip = fee * tip_share // 100
    new = bump_fees({**FIELDS, "maxFeePerGas": fee, "maxPriorityFeePerGas": tip}, bump)
    # geth: new >= old * (100 + 10) / 100 for both fields (integer arithmetic); tip never above the cap
    assert new["maxFeePerGas"] * 100 >= fee * 110 and new["maxFeePerGas"] > fee
    assert new["maxPriorityFeePerGas"] * 100 >= tip * 110 and new["maxPriorityFeePerGas"] > tip
    assert new["maxPriorityFeePerGas"] <= new["maxFeePerGas"]


def test_replace_keeps_the_nonce_and_remembers_earlier_hashes() -> None:
    first = sign_transaction(ACCOUNT, FIELDS)
    second = replace(ACCOUNT, first, 10)
    third = replace(ACCOUNT, second, 20)
    assert third.nonce == first.nonce and third.fields["to"] == DEAD
    assert third.hashes == (first.tx_hash, second.tx_hash, third.tx_hash)
    assert len(set(third.hashes)) == 3


def test_replace_refuses_another_signer() -> None:
    with pytest.raises(ValidationError):
        replace(Account.create(), sign_transaction(ACCOUNT, FIELDS))


def test_cancel_is_a_zero_value_self_transfer_with_the_same_nonce() -> None:
    original = sign_transaction(ACCOUNT, {**FIELDS, "data": "0xdeadbeef", "gas": 90_000})
    cancelled = cancel(ACCOUNT, original)
    assert cancelled.fields["to"] == ACCOUNT.address and cancelled.fields["value"] == 0
    assert "data" not in cancelled.fields and cancelled.fields["gas"] == 21_000
    assert cancelled.nonce == original.nonce and cancelled.previous_hashes == (original.tx_hash,)


def test_broadcast_refuses_a_hash_that_is_not_of_the_bytes() -> None:
    prepared = sign_transaction(ACCOUNT, FIELDS)
    with pytest.raises(ValidationError):
        broadcast(prepared.raw_bytes(), "0x" + "00" * 32, [])


@pytest.mark.parametrize("seconds", [0, -1, 86_401, 1.5, "60", True, None])
def test_unlock_duration_is_bounded(seconds: object) -> None:
    with pytest.raises(ValidationError) as info:
        check_seconds(seconds)
    assert info.value.field == "seconds"
    assert "86400" in str(info.value)


@pytest.mark.parametrize("seconds", [1, 300, 86_400])
def test_unlock_durations_in_bounds(seconds: int) -> None:
    assert check_seconds(seconds) == seconds


def test_addresses_are_checksummed_and_typos_caught() -> None:
    assert checksum(DEAD.lower()) == DEAD
    assert checksum(DEAD.upper().replace("0X", "0x")) == DEAD
    assert key_part(DEAD) == DEAD.lower()
    typo = DEAD[:-1] + "d"  # mixed case with a wrong checksum
    with pytest.raises(ValidationError):
        checksum(typo)
