"""Field checks that name the field at fault: every check raises ValidationError(field, why).

Numbers are ASCII digits (``str.isdigit`` and ``\\d`` also accept '²' and '٣', which
``int()`` then refuses or, worse, reads as 3), at most 78 of them, within stated
bounds; 0x hex only where documented (block numbers); strings are valid Unicode (a
lone surrogate cannot be encoded, so it would fail wherever the value is hashed,
stored or signed). No web here: the API's request parsing (``app.validation``)
and the services call these alike.
"""

from __future__ import annotations

import re
from typing import Any

from eth_utils import is_checksum_address, to_checksum_address

from errors import ValidationError

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_UINT256 = 2**256 - 1
#: 2**256 - 1 has 78 decimal digits: no uint256 needs more, and int() of a longer string is refused or slow.
MAX_DIGITS = 78
DECIMAL = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
_SIGNED_DECIMAL = re.compile(rf"-?[0-9]{{1,{MAX_DIGITS}}}")
#: Block numbers are uint64 on the nodes; ESP takes the signed range every client language can hold.
MAX_BLOCK_NUMBER = 2**63 - 1
INVALID_TEXT = "must be valid Unicode text (UTF-8, no lone surrogates)"
#: The longest project name the market accepts, in UTF-8 bytes (ProjectMarket.MAX_NAME_BYTES).
MAX_NAME_BYTES = 256


def is_valid_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode: no lone surrogate, so it encodes as UTF-8."""
    return _SURROGATE.search(value) is None


def required(data: dict[str, Any], name: str, *, field: str | None = None) -> Any:
    """``data[name]``; ValidationError naming ``field`` (default: ``name``) when it is missing or null."""
    if name not in data or data[name] is None:
        raise ValidationError(field or name, "is required")
    return data[name]


def address(value: Any, name: str) -> str:
    """A 20-byte hex address; mixed case must be a valid EIP-55 checksum. Returns it checksummed."""
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise ValidationError(name, "must be a 0x-prefixed 20-byte hex address")
    body = value[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(value):
        raise ValidationError(name, "has an invalid EIP-55 checksum (check the letter case)")
    return str(to_checksum_address(value))


def tx_hash(value: Any, name: str) -> str:
    """A 32-byte hash as 0x hex, lower-cased."""
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise ValidationError(name, "must be a 0x-prefixed 32-byte hex hash")
    return value.lower()


def amount(value: Any, name: str, *, allow_zero: bool = True) -> int:
    """A whole, non-negative amount that fits uint256: a JSON integer, or a string of 1 to 78 ASCII digits."""
    if isinstance(value, bool):
        raise ValidationError(name, "must be a whole number, not a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and DECIMAL.fullmatch(value):
        number = int(value)
    elif isinstance(value, str) and value.startswith("-") and DECIMAL.fullmatch(value[1:]):
        raise ValidationError(name, "must not be negative")
    else:
        raise ValidationError(name, f"must be a whole number: a JSON integer or a string of 1 to {MAX_DIGITS} ASCII digits")
    if number < 0:
        raise ValidationError(name, "must not be negative")
    if number == 0 and not allow_zero:
        raise ValidationError(name, "must be greater than zero")
    if number > MAX_UINT256:
        raise ValidationError(name, "is larger than uint256 (2**256 - 1)")
    return number


def integer(value: Any, name: str, *, low: int, high: int, status: int = 422) -> int:
    """A whole number in ``low..high``: a JSON integer, or ASCII digits with an optional leading minus."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and _SIGNED_DECIMAL.fullmatch(value))):
        raise ValidationError(name, f"must be a whole number (ASCII digits) from {low} to {high}", status=status)
    number = int(value)
    if not low <= number <= high:
        raise ValidationError(name, f"must be from {low} to {high}", status=status)
    return number


def text(value: Any, name: str, *, max_length: int, min_length: int = 1) -> str:
    """A string of ``min_length``..``max_length`` characters of valid Unicode."""
    if not isinstance(value, str):
        raise ValidationError(name, "must be a string")
    if not is_valid_text(value):
        raise ValidationError(name, INVALID_TEXT, status=400)
    if not min_length <= len(value) <= max_length:
        raise ValidationError(name, f"must be {min_length} to {max_length} characters long")
    return value


def project_name(value: Any, field: str = "name") -> str:
    """A project name the market accepts: 1..256 UTF-8 bytes."""
    name = text(value, field, max_length=MAX_NAME_BYTES)
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValidationError(field, f"must be at most {MAX_NAME_BYTES} bytes in UTF-8")
    return name


def file_hash(value: Any, field: str) -> str:
    """A 32-byte hash as 0x hex (the file's SHA-256), not all zeros."""
    digest = tx_hash(value, field)
    if int(digest, 16) == 0:
        raise ValidationError(field, "must not be zero")
    return digest
