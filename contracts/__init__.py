"""ESP's platform contracts: their compiled artifacts and the decoding of their reverts.

The Solidity sources live next to this file; ``python -m contracts.build`` compiles
them into ``contracts/build/<Name>.json`` (abi, bytecode, deployedBytecode, stamp).

Deploying the platform takes three transactions from the treasury account:
``PlatformToken(name, symbol, decimals)``, then ``ProjectMarket(token, publishReward,
feeBps, feeRecipient)``, then ``token.setOperator(market, true)`` so that the market
may mint publish rewards and move a buyer's tokens. The treasury owns both contracts
and so may call ``recordView``/``recordDownload``; other senders need ``setRecorder``.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from errors import NotFound

BUILD_DIR = Path(__file__).resolve().parent / "build"

#: The contracts ESP deploys for the private-equity platform, in deployment order.
PLATFORM_CONTRACTS: tuple[str, ...] = ("PlatformToken", "ProjectMarket")

ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string), what require(cond, "reason") reverts with
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256), what failed asserts and checked arithmetic raise

#: Solidity's panic codes (docs: "Panic via assert and Error via require").
PANIC_CODES = {
    0x00: "generic compiler panic",
    0x01: "assertion failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division or modulo by zero",
    0x21: "invalid enum value",
    0x22: "invalid storage byte array encoding",
    0x31: "pop on an empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to an uninitialised function",
}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def artifact_names() -> list[str]:
    """Names of every contract with an artifact in ``contracts/build/``."""
    return sorted(path.stem for path in BUILD_DIR.glob("*.json"))


def load_artifact(name: str) -> dict[str, Any]:
    """The artifact of contract ``name`` (abi, bytecode, deployedBytecode, stamp); raise NotFound."""
    if not isinstance(name, str) or not _NAME.match(name) or not (BUILD_DIR / f"{name}.json").is_file():
        known = ", ".join(artifact_names())
        raise NotFound(f"no contract named {name!r} (known: {known})", field="name")
    # A fresh dict every call: callers may change theirs without touching anyone else's.
    artifact: dict[str, Any] = json.loads(_read_artifact(name))
    return artifact


@functools.lru_cache(maxsize=32)
def _read_artifact(name: str) -> str:
    return (BUILD_DIR / f"{name}.json").read_text(encoding="utf-8")


def decode_revert(data: bytes | str | None) -> str:
    """A human-readable reason from a revert's return data (Error(string), Panic(uint256) or other)."""
    raw = _as_bytes(data)
    if raw is None:
        return f"undecodable revert data {data!r:.80}"
    if not raw:
        return "reverted without a reason"
    selector, payload = raw[:4], raw[4:]
    if selector == ERROR_SELECTOR:
        reason = _abi_string(payload)
        return reason if reason is not None else f"malformed Error(string) revert data 0x{raw.hex()[:200]}"
    if selector == PANIC_SELECTOR:
        if len(payload) != 32:
            return f"malformed Panic(uint256) revert data 0x{raw.hex()[:200]}"
        code = int.from_bytes(payload, "big")
        return f"panic 0x{code:02x}: {PANIC_CODES.get(code, 'unknown panic code')}"
    if len(raw) < 4:
        return f"reverted with 0x{raw.hex()}"
    return f"custom error 0x{selector.hex()} ({len(payload)} bytes of arguments)"


def _as_bytes(data: bytes | str | None) -> bytes | None:
    if data is None:
        return b""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        text = data[2:] if data[:2] in ("0x", "0X") else data
        try:
            return bytes.fromhex(text)
        except ValueError:
            return None
    return None


def _abi_string(payload: bytes) -> str | None:
    """Decode one ABI-encoded ``string`` (head offset, length, bytes); None when malformed."""
    if len(payload) < 64:
        return None
    offset = int.from_bytes(payload[:32], "big")
    if offset > len(payload) - 32:
        return None
    length = int.from_bytes(payload[offset : offset + 32], "big")
    start = offset + 32
    if length > len(payload) - start:
        return None
    # A reason is for people to read: replace invalid UTF-8 rather than hide the rest.
    return payload[start : start + length].decode("utf-8", errors="replace")
