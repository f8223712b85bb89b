"""Request parsing that names the field at fault: every check raises ValidationError(field, why)."""

from __future__ import annotations

import re
from typing import Any

from eth_utils import is_checksum_address, to_checksum_address
from flask import Request

from errors import ValidationError

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
MAX_UINT256 = 2**256 - 1


def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; a missing or malformed body is a 400 naming ``body``."""
    if not request.data:
        return {}
    if not request.is_json:
        raise ValidationError("body", "must be JSON (Content-Type: application/json)", status=415)
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ValidationError("body", "must be a JSON object", status=400)
    return data


def required(data: dict[str, Any], name: str) -> Any:
    if name not in data or data[name] is None:
        raise ValidationError(name, "is required")
    return data[name]


def address(value: Any, name: str) -> str:
    """A 20-byte hex address; mixed case must be a valid EIP-55 checksum. Returns it checksummed."""
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise ValidationError(name, "must be a 0x-prefixed 20-byte hex address")
    body = value[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(value):
        raise ValidationError(name, "has an invalid EIP-55 checksum (check the letter case)")
    return str(to_checksum_address(value))


def tx_hash(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _HASH.match(value):
        raise ValidationError(name, "must be a 0x-prefixed 32-byte hex hash")
    return value.lower()


def amount(value: Any, name: str, *, allow_zero: bool = True) -> int:
    """A whole, non-negative amount (JSON integer or decimal string) that fits uint256."""
    if isinstance(value, bool):
        raise ValidationError(name, "must be a whole number, not a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isdigit():
        number = int(value)
    elif isinstance(value, str) and value.startswith("-") and value[1:].isdigit():
        raise ValidationError(name, "must not be negative")
    else:
        raise ValidationError(name, "must be a whole number (JSON integer or decimal string)")
    if number < 0:
        raise ValidationError(name, "must not be negative")
    if number == 0 and not allow_zero:
        raise ValidationError(name, "must be greater than zero")
    if number > MAX_UINT256:
        raise ValidationError(name, "is larger than uint256")
    return number


def integer(value: Any, name: str, *, low: int, high: int) -> int:
    """A whole number in ``low..high`` (JSON integer or decimal string)."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())):
        raise ValidationError(name, f"must be a whole number from {low} to {high}")
    number = int(value)
    if not low <= number <= high:
        raise ValidationError(name, f"must be from {low} to {high}")
    return number


def text(value: Any, name: str, *, max_length: int, min_length: int = 1) -> str:
    if not isinstance(value, str):
        raise ValidationError(name, "must be a string")
    if not min_length <= len(value) <= max_length:
        raise ValidationError(name, f"must be {min_length} to {max_length} characters long")
    return value
