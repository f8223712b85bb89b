"""ABI encoding and decoding over contract artifacts, with eth_abi (no web3 objects).

What the write tasks and the API need, and nothing more:

- ``encode_call(abi, "transfer", [to, value])`` -> call data (``0x`` + selector + args);
- ``encode_deploy(abi, bytecode, args)`` -> creation code with constructor arguments;
- ``decode_output(abi, "getProject", data)`` -> the returned values;
- ``EventDecoder(abi).decode(log)`` -> a log's event name and arguments;
- ``coerce(type, value)`` turns JSON values (decimal strings, hex strings, lists)
  into what eth_abi encodes, naming the argument at fault.

Decoded values are JSON-friendly: addresses checksummed, ``bytesN``/``bytes`` as
``0x`` hex, integers as ``int`` (the API turns large ones into decimal strings).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_abi.exceptions import DecodingError, EncodingError
from eth_utils import is_address, is_checksum_address, keccak, to_checksum_address

from contracts import load_artifact

ABI = Sequence[dict[str, Any]]

_INT = re.compile(r"^(u?)int(\d*)$")
_BYTES_N = re.compile(r"^bytes(\d+)$")
_ARRAY = re.compile(r"^(.*)\[(\d*)\]$")
_HEX = re.compile(r"^0x([0-9a-fA-F]{2})*$")
_MAX_DEPTH = 8


class AbiError(ValueError):
    """Raised when values do not fit an ABI (wrong count, type or size) or data does not decode."""

    def __init__(self, message: str, *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


# -- types and signatures -------------------------------------------------------------


def canonical_type(param: dict[str, Any]) -> str:
    """The canonical ABI type of a parameter, with tuples spelled out: ``(address,uint256)[]``."""
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(canonical_type(c) for c in param.get("components", []))
        return f"({inner}){kind[len('tuple'):]}"
    return kind


def signature(item: dict[str, Any]) -> str:
    """``name(type,...)`` of a function or event."""
    return f"{item['name']}({','.join(canonical_type(p) for p in item.get('inputs', []))})"


def selector(item: dict[str, Any]) -> str:
    """The 4-byte function selector as ``0x`` hex."""
    return "0x" + keccak(text=signature(item))[:4].hex()


def event_topic(item: dict[str, Any]) -> str:
    """An event's topic 0 (keccak of its signature) as ``0x`` hex."""
    return "0x" + keccak(text=signature(item)).hex()


def find_function(abi: ABI, name: str, arg_count: int | None = None) -> dict[str, Any]:
    """The function ``name`` of ``abi`` (the overload taking ``arg_count`` arguments when given)."""
    found = [i for i in abi if i.get("type") == "function" and i.get("name") == name]
    if arg_count is not None:
        found = [i for i in found if len(i.get("inputs", [])) == arg_count]
    if not found:
        raise AbiError(f"the ABI has no function {name!r}" + (f" taking {arg_count} arguments" if arg_count is not None else ""))
    if len(found) > 1:
        raise AbiError(f"function {name!r} is overloaded: give the argument count")
    return found[0]


def constructor_inputs(abi: ABI) -> list[dict[str, Any]]:
    """The constructor's parameters (none when the ABI has no constructor)."""
    for item in abi:
        if item.get("type") == "constructor":
            return list(item.get("inputs", []))
    return []


# -- JSON values -> eth_abi values ------------------------------------------------------


def coerce(kind: str, value: Any, name: str = "value", *, components: Sequence[dict[str, Any]] = (), _depth: int = 0) -> Any:
    """Turn a JSON value into what eth_abi encodes for ``kind``; AbiError names ``name`` when it cannot."""
    if _depth > _MAX_DEPTH:
        raise AbiError(f"{name}: nested too deeply", argument=name)
    array = _ARRAY.match(kind)
    if array:
        inner, size = array.group(1), array.group(2)
        if not isinstance(value, list):
            raise AbiError(f"{name}: must be a list for {kind}", argument=name)
        if size and len(value) != int(size):
            raise AbiError(f"{name}: must have exactly {size} items", argument=name)
        return [coerce(inner, v, f"{name}[{i}]", components=components, _depth=_depth + 1) for i, v in enumerate(value)]
    if kind == "tuple":
        if isinstance(value, dict):
            value = [value.get(c.get("name", "")) for c in components]
        if not isinstance(value, list) or len(value) != len(components):
            raise AbiError(f"{name}: must be a list of {len(components)} values (or an object by name)", argument=name)
        return tuple(
            coerce(c["type"], v, f"{name}.{c.get('name') or i}", components=c.get("components", []), _depth=_depth + 1)
            for i, (c, v) in enumerate(zip(components, value, strict=True))
        )
    if kind == "address":
        body = value[2:] if isinstance(value, str) else ""
        mixed = body != body.lower() and body != body.upper()
        if not isinstance(value, str) or not is_address(value) or (mixed and not is_checksum_address(value)):
            raise AbiError(f"{name}: must be a 0x-prefixed 20-byte address (valid checksum if mixed case)", argument=name)
        return to_checksum_address(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise AbiError(f"{name}: must be true or false", argument=name)
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise AbiError(f"{name}: must be a string", argument=name)
        return value
    if kind == "bytes" or _BYTES_N.match(kind):
        if not isinstance(value, str) or not _HEX.match(value):
            raise AbiError(f"{name}: must be 0x-prefixed hex bytes", argument=name)
        raw = bytes.fromhex(value[2:])
        size = _BYTES_N.match(kind)
        if size and len(raw) != int(size.group(1)):
            raise AbiError(f"{name}: must be exactly {size.group(1)} bytes", argument=name)
        return raw
    number = _INT.match(kind)
    if number:
        return _coerce_int(kind, number.group(1) == "u", int(number.group(2) or 256), value, name)
    raise AbiError(f"{name}: type {kind} is not supported", argument=name)


def _coerce_int(kind: str, unsigned: bool, bits: int, value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise AbiError(f"{name}: must be a whole number for {kind}, not a boolean", argument=name)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"-?\d{1,80}", value):
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"0x[0-9a-fA-F]{1,64}", value):
        number = int(value, 16)
    else:
        raise AbiError(f"{name}: must be a whole number (JSON integer, decimal or 0x hex string) for {kind}", argument=name)
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if not low <= number <= high:
        raise AbiError(f"{name}: {number} does not fit {kind}", argument=name)
    return number


def coerce_args(inputs: Sequence[dict[str, Any]], args: Sequence[Any], *, label: str = "args") -> list[Any]:
    """Coerce a JSON argument list against a function's or constructor's inputs."""
    if not isinstance(args, (list, tuple)):
        raise AbiError(f"{label}: must be a list of arguments", argument=label)
    if len(args) != len(inputs):
        raise AbiError(f"{label}: expected {len(inputs)} arguments ({', '.join(canonical_type(p) for p in inputs) or 'none'}), "
                       f"got {len(args)}", argument=label)
    return [
        coerce(p["type"], v, f"{label}[{i}]" + (f" ({p['name']})" if p.get("name") else ""), components=p.get("components", []))
        for i, (p, v) in enumerate(zip(inputs, args, strict=True))
    ]


# -- encoding and decoding --------------------------------------------------------------------


def encode_args(inputs: Sequence[dict[str, Any]], args: Sequence[Any], *, label: str = "args") -> bytes:
    """ABI-encode ``args`` (JSON values) for ``inputs``."""
    values = coerce_args(inputs, args, label=label)
    try:
        return bytes(abi_encode([canonical_type(p) for p in inputs], values))
    except EncodingError as exc:
        raise AbiError(f"{label}: {exc}", argument=label) from None


def encode_call(abi: ABI, name: str, args: Sequence[Any] = ()) -> str:
    """Call data for ``name(args)`` as ``0x`` hex."""
    item = find_function(abi, name, len(args))
    return selector(item) + encode_args(item.get("inputs", []), args, label=name).hex()


def encode_deploy(abi: ABI, bytecode: str, args: Sequence[Any] = ()) -> str:
    """Creation code (bytecode + encoded constructor arguments) as ``0x`` hex."""
    code = bytecode[2:] if bytecode.startswith(("0x", "0X")) else bytecode
    if not code or not re.fullmatch(r"([0-9a-fA-F]{2})+", code):
        raise AbiError("bytecode: must be non-empty hex creation code", argument="bytecode")
    return "0x" + code.lower() + encode_args(constructor_inputs(abi), args).hex()


def decode_values(outputs: Sequence[dict[str, Any]], data: bytes | str) -> list[Any]:
    """Decode ABI-encoded ``data`` for ``outputs`` into JSON-friendly values."""
    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else bytes(data)
    try:
        values = abi_decode([canonical_type(p) for p in outputs], raw)
    except (DecodingError, ValueError) as exc:
        raise AbiError(f"cannot decode {len(raw)} bytes as ({', '.join(canonical_type(p) for p in outputs)}): {exc}") from None
    return [jsonable(v) for v in values]


def decode_output(abi: ABI, name: str, data: bytes | str) -> list[Any]:
    """The values function ``name`` returned in ``data`` (an eth_call result)."""
    return decode_values(find_function(abi, name).get("outputs", []), data)


def jsonable(value: Any) -> Any:
    """An eth_abi value as JSON: bytes as 0x hex, addresses checksummed, tuples as lists."""
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, str) and len(value) == 42 and value.startswith("0x") and is_address(value):
        return to_checksum_address(value)
    return value


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedLog:
    """One decoded event log."""

    event: str
    args: dict[str, Any]
    address: str
    block_number: int
    log_index: int
    tx_hash: str
    block_hash: str | None = None


class EventDecoder:
    """Decodes the logs of the events of one or more ABIs, by topic 0."""

    def __init__(self, *abis: ABI) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        for abi in abis:
            for item in abi:
                if item.get("type") == "event" and not item.get("anonymous"):
                    self.events[event_topic(item)] = item

    def topic(self, name: str) -> str:
        """Topic 0 of event ``name``."""
        for topic, item in self.events.items():
            if item["name"] == name:
                return topic
        raise AbiError(f"no event named {name!r}")

    def decode(self, log: dict[str, Any]) -> DecodedLog | None:
        """Decode a JSON-RPC log object; None when its event is not one of ours."""
        topics = [t.lower() for t in log.get("topics") or []]
        if not topics or topics[0] not in self.events:
            return None
        item = self.events[topics[0]]
        indexed = [p for p in item["inputs"] if p.get("indexed")]
        plain = [p for p in item["inputs"] if not p.get("indexed")]
        if len(topics) - 1 != len(indexed):
            return None  # same signature, different indexing: not our event
        args: dict[str, Any] = {}
        for param, topic in zip(indexed, topics[1:], strict=True):
            kind = canonical_type(param)
            if kind in ("string", "bytes") or kind.endswith("]") or kind.startswith("("):
                args[param["name"]] = topic  # dynamic indexed values are stored as their hash
            else:
                args[param["name"]] = decode_values([param], topic)[0]
        for param, value in zip(plain, decode_values(plain, log.get("data") or "0x"), strict=True):
            args[param["name"]] = value
        return DecodedLog(
            event=item["name"], args={p["name"]: args[p["name"]] for p in item["inputs"]},
            address=to_checksum_address(log["address"]), block_number=_quantity(log.get("blockNumber")),
            log_index=_quantity(log.get("logIndex")), tx_hash=str(log.get("transactionHash")), block_hash=log.get("blockHash"),
        )

    def decode_all(self, logs: Sequence[dict[str, Any]], *, address: str | None = None) -> list[DecodedLog]:
        """Decode every log of ours (from ``address`` only, when given)."""
        out = []
        for log in logs:
            if address is not None and str(log.get("address", "")).lower() != address.lower():
                continue
            decoded = self.decode(log)
            if decoded is not None:
                out.append(decoded)
        return out


def _quantity(value: Any) -> int:
    if value is None:
        return -1
    return int(value, 16) if isinstance(value, str) else int(value)


@functools.lru_cache(maxsize=16)
def artifact_abi(name: str) -> tuple[dict[str, Any], ...]:
    """The ABI of the artifact ``name`` (cached, read-only)."""
    return tuple(load_artifact(name)["abi"])


@functools.lru_cache(maxsize=1)
def platform_decoder() -> EventDecoder:
    """A decoder for the events of ESP's platform contracts."""
    return EventDecoder(artifact_abi("PlatformToken"), artifact_abi("ProjectMarket"))
