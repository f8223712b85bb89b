"""Block import's pure part: which empty leader blocks import in one call (a run a fixed interval apart)."""

from __future__ import annotations

from typing import Any

from nodes.devnet.importer import EMPTY_RUN_MAX, empty_run

GENESIS = 1_700_000_000


def block(number: int, timestamp: int, *transactions: str) -> dict[str, Any]:
    """A leader block as eth_getBlockByNumber(n, false) answers it (hex numbers, transaction hashes)."""
    return {"number": hex(number), "timestamp": hex(timestamp), "transactions": list(transactions), "hash": f"0x{number:064x}"}


def numbers(run: list[dict[str, Any]]) -> list[int]:
    return [int(b["number"], 16) for b in run]


def test_empty_blocks_one_interval_apart_are_one_run() -> None:
    blocks = [block(n, GENESIS + 12 * n) for n in range(1, 6)]
    assert numbers(empty_run(blocks, 0)) == [1, 2, 3, 4, 5]
    assert numbers(empty_run(blocks, 3)) == [4, 5]


def test_a_run_ends_at_a_block_with_transactions() -> None:
    blocks = [block(1, GENESIS + 1), block(2, GENESIS + 2), block(3, GENESIS + 3, "0xaa"), block(4, GENESIS + 4)]
    assert numbers(empty_run(blocks, 0)) == [1, 2]


def test_a_run_ends_where_the_interval_changes_or_stands_still() -> None:
    # 1 s, 1 s, then 2 s: the third gap does not match the first two.
    assert numbers(empty_run([block(1, GENESIS), block(2, GENESIS + 1), block(3, GENESIS + 2), block(4, GENESIS + 4)], 0)) == [1, 2, 3]
    # Two blocks in the same second (sub-second block time): no whole interval to step by.
    assert numbers(empty_run([block(1, GENESIS), block(2, GENESIS), block(3, GENESIS + 1)], 0)) == [1]


def test_a_run_ends_at_a_missing_block() -> None:
    blocks: list[dict[str, Any] | None] = [block(1, GENESIS + 1), block(2, GENESIS + 2), None, block(4, GENESIS + 4)]
    assert numbers(empty_run(blocks, 0)) == [1, 2]


def test_a_run_is_no_longer_than_anvil_can_roll_back() -> None:
    blocks = [block(n, GENESIS + n) for n in range(1, EMPTY_RUN_MAX + 10)]
    assert len(empty_run(blocks, 0)) == EMPTY_RUN_MAX
    assert len(empty_run(blocks, 0, limit=3)) == 3


def test_a_last_block_alone_is_a_run_of_one() -> None:
    assert numbers(empty_run([block(7, GENESIS + 7)], 0)) == [7]
