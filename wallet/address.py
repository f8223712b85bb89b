"""Ethereum addresses as the wallet takes them in: checked once, then checksummed."""

from __future__ import annotations

import re

from eth_utils import to_checksum_address

from errors import ValidationError

_HEX_ADDRESS = re.compile(r"^(0x)?[0-9a-fA-F]{40}$")


def checksum(value: object, field: str = "address") -> str:
    """Return ``value`` as an EIP-55 checksummed address; raise ValidationError naming ``field`` otherwise.

    Lower- and upper-case input is taken as is; mixed case must carry a valid
    checksum (a typo in a mixed-case address is caught here, not on chain).
    """
    if not isinstance(value, str) or not _HEX_ADDRESS.match(value):
        raise ValidationError(field, "must be a 20-byte hex address (0x followed by 40 hex digits)")
    digits = value[2:] if value[:2] in ("0x", "0X") else value
    normalised = to_checksum_address("0x" + digits)
    is_mixed = digits != digits.lower() and digits != digits.upper()
    if is_mixed and normalised[2:] != digits:
        raise ValidationError(field, "has an invalid EIP-55 checksum (mixed case that does not match)")
    return normalised


def key_part(address: str) -> str:
    """The lower-case ``0x`` form used inside Redis key names (one spelling per account)."""
    return checksum(address).lower()
