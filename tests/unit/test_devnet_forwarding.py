"""Gossip's pure parts: a txpool_content answer read into pending and queued hashes, anvil's refusals told apart."""

from __future__ import annotations

from typing import Any

import pytest

from nodes.devnet.forwarding import is_duplicate, is_in_pool, pool_hashes

SENDER = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
OTHER = "0x70997970c51812dc3a010c7d441d0cec6f4c79c8"
H0 = "0x57a7bde58759bd11af38ed6c3ce1efa0ff266c480d72c577958c99e37b38d536"
H2 = "0xd3cef83d088dbe7467e7f4c729d6c1505c5482ddda097ebcf3182ddf7ae9fab3"
H9 = "0x" + "ab" * 32


def _tx(nonce: int, tx_hash: str, sender: str = SENDER) -> dict[str, Any]:
    """A pool entry as anvil 1.7 answers it (the fields that matter, and a few that do not)."""
    return {"type": "0x2", "chainId": "0x7a69", "nonce": hex(nonce), "gas": "0x5208", "hash": tx_hash,
            "blockHash": None, "blockNumber": None, "from": sender}


def test_pool_hashes_reads_pending_and_queued_by_sender_and_nonce() -> None:
    # Nonce 0 executable, nonce 2 waiting behind a gap (captured from anvil, trimmed), another sender pending.
    content = {
        "pending": {SENDER: {"0": _tx(0, H0)}, OTHER: {"5": _tx(5, H9, OTHER)}},
        "queued": {SENDER: {"2": _tx(2, H2)}},
    }
    pending, queued = pool_hashes(content)
    assert sorted(pending) == sorted([H0, H9])
    assert queued == [H2]


@pytest.mark.parametrize("content", [{}, {"pending": {}, "queued": {}}, {"pending": None, "queued": None}])
def test_an_empty_pool_has_no_hashes(content: dict[str, Any]) -> None:
    assert pool_hashes(content) == ([], [])


@pytest.mark.parametrize(
    ("message", "duplicate", "in_pool"),
    [
        # What anvil 1.7 answers (captured here), and geth's wording of the same.
        ("transaction already imported", True, True),
        ("already known", True, True),
        ("nonce too low", True, False),  # one with its nonce is mined: the leader has it or a rival
        ("Nonce too low", True, False),
        ("replacement transaction underpriced", False, False),  # a conflict: the importer evicts it
        ("insufficient funds for gas * price + value", False, False),
        ("", False, False),
    ],
)
def test_refusals_are_told_apart(message: str, duplicate: bool, in_pool: bool) -> None:
    assert is_duplicate(message) is duplicate
    assert is_in_pool(message) is in_pool
