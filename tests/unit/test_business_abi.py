"""contracts.abi: encoding and decoding over the artifacts, checked against web3.py's own codec."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import keccak
from web3 import Web3

from contracts import load_artifact
from contracts.abi import (
    AbiError,
    EventDecoder,
    artifact_abi,
    coerce,
    decode_output,
    encode_call,
    encode_deploy,
    event_topic,
    platform_decoder,
    signature,
)

ALICE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def web3_contract(name: str):
    return Web3().eth.contract(abi=load_artifact(name)["abi"], bytecode=load_artifact(name)["bytecode"])


@pytest.mark.parametrize(("function", "args"), [
    ("transfer", [ALICE, 12345]),
    ("add", [ALICE.lower(), "1000000000000000000000"]),
    ("setOperator", [ALICE, True]),
])
def test_call_data_matches_web3(function, args):
    expected = web3_contract("PlatformToken").encode_abi(function, [coerce_like_web3(a) for a in args])
    assert encode_call(artifact_abi("PlatformToken"), function, args) == expected


def coerce_like_web3(value):
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return Web3.to_checksum_address(value)
    return value


def test_market_publish_with_bytes32_and_string():
    digest = "0x" + keccak(b"file").hex()
    expected = web3_contract("ProjectMarket").encode_abi("publish", ["Project A", bytes.fromhex(digest[2:]), 10])
    assert encode_call(artifact_abi("ProjectMarket"), "publish", ["Project A", digest, "10"]) == expected


def test_constructor_data_matches_web3():
    contract = web3_contract("ProjectMarket")
    expected = contract.constructor(TOKEN, 100, 250, ALICE).data_in_transaction
    artifact = load_artifact("ProjectMarket")
    assert encode_deploy(artifact["abi"], artifact["bytecode"], [TOKEN, 100, 250, ALICE]) == expected


def test_outputs_decode_to_json_values():
    abi = artifact_abi("ProjectMarket")
    digest = keccak(b"x")
    data = encode(["address", "string", "bytes32", "uint256", "uint64", "uint256"], [ALICE, "P", digest, 5, 1700000000, 2])
    assert decode_output(abi, "getProject", "0x" + data.hex()) == [ALICE, "P", "0x" + digest.hex(), 5, 1700000000, 2]


def test_event_logs_decode():
    decoder = platform_decoder()
    digest = keccak(b"y")
    log = {
        "address": TOKEN.lower(), "blockNumber": "0x5", "logIndex": "0x1", "transactionHash": "0x" + "ab" * 32,
        "topics": [decoder.topic("ProjectPublished"), "0x" + (7).to_bytes(32, "big").hex(), "0x" + bytes(12).hex() + ALICE[2:].lower()],
        "data": "0x" + encode(["string", "bytes32", "uint256"], ["Name", digest, 99]).hex(),
    }
    decoded = decoder.decode(log)
    assert decoded is not None
    assert decoded.event == "ProjectPublished" and decoded.block_number == 5 and decoded.log_index == 1
    assert decoded.args == {"id": 7, "publisher": ALICE, "name": "Name", "fileHash": "0x" + digest.hex(), "price": 99}
    assert decoded.address == Web3.to_checksum_address(TOKEN)
    assert decoder.decode({**log, "topics": ["0x" + "00" * 32]}) is None


def test_topics_and_signatures():
    abi = artifact_abi("PlatformToken")
    transfer = next(i for i in abi if i.get("name") == "Transfer" and i["type"] == "event")
    assert signature(transfer) == "Transfer(address,address,uint256)"
    assert event_topic(transfer) == "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
    assert EventDecoder(abi).topic("Transfer") == event_topic(transfer)


@pytest.mark.parametrize(("kind", "value", "why"), [
    ("uint256", -1, "does not fit"),
    ("uint8", 256, "does not fit"),
    ("uint256", "1.5", "whole number"),
    ("uint256", True, "boolean"),
    ("address", "0x123", "20-byte"),
    ("address", "0x70997970c51812dc3A010C7d01b50e0d17dc79C8", "20-byte"),  # bad checksum
    ("bytes32", "0x1234", "exactly 32 bytes"),
    ("bool", "true", "true or false"),
    ("string", 5, "must be a string"),
    ("uint256[2]", [1], "exactly 2"),
    ("fixed128x18", 1, "not supported"),
])
def test_bad_values_name_the_argument(kind, value, why):
    with pytest.raises(AbiError, match=why) as caught:
        coerce(kind, value, "args[0]")
    assert caught.value.argument == "args[0]"


def test_wrong_argument_count_and_bad_bytecode():
    artifact = load_artifact("PlatformToken")
    with pytest.raises(AbiError, match="expected 3 arguments"):
        encode_deploy(artifact["abi"], artifact["bytecode"], ["name", "SYM"])
    with pytest.raises(AbiError, match="bytecode"):
        encode_deploy(artifact["abi"], "0xzz", ["n", "s", 0])
    with pytest.raises(AbiError, match="no function"):
        encode_call(artifact["abi"], "mint", [ALICE, 1])
