"""The operations of the thesis's Table 5.1 and the mixes of them; a deterministic op sequence for a seed.

Every target (ESP, the monolith) performs the same vocabulary of operations. A mix
gives each a weight in percent; ``sequence`` turns a mix into exactly ``count``
operations in those proportions (largest remainder), shuffled by a seeded RNG, so
that every system, concurrency and repeat is sent the very same list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from random import Random

BALANCE = "balance"
MAIN_ACCOUNT = "main_account"
CLIENT_ACCOUNTS = "client_accounts"
BLOCK_NUMBER = "block_number"
CREATE_ACCOUNT = "create_account"
LIST_ACCOUNTS = "list_accounts"
UNLOCK_ACCOUNT = "unlock_account"
SEND_TRANSACTION = "send_transaction"
TX_RECEIPT = "tx_receipt"
TX_BY_HASH = "tx_by_hash"
DEPLOY_CONTRACT = "deploy_contract"

OPERATIONS = (BALANCE, MAIN_ACCOUNT, CLIENT_ACCOUNTS, BLOCK_NUMBER, CREATE_ACCOUNT, LIST_ACCOUNTS, UNLOCK_ACCOUNT,
              SEND_TRANSACTION, TX_RECEIPT, TX_BY_HASH, DEPLOY_CONTRACT)
# Operations that change the chain: on ESP a task (202, then confirmed), on the monolith a call that returns once mined.
CHAIN_WRITES = frozenset({CREATE_ACCOUNT, SEND_TRANSACTION, DEPLOY_CONTRACT})


@dataclass(frozen=True)
class Mix:
    """A named weighting of the operations, in percent (the weights sum to 100)."""

    name: str
    weights: Mapping[str, int]

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"unknown operations in mix {self.name}: {sorted(unknown)}")
        if sum(self.weights.values()) != 100 or min(self.weights.values()) < 0:
            raise ValueError(f"the weights of mix {self.name} must be non-negative and sum to 100")

    def write_share(self) -> float:
        """The fraction of operations that change the chain."""
        return sum(w for op, w in self.weights.items() if op in CHAIN_WRITES) / 100


# Table 5.1 of the thesis.
THESIS = Mix("thesis", {
    BALANCE: 20, MAIN_ACCOUNT: 5, CLIENT_ACCOUNTS: 5, BLOCK_NUMBER: 10, CREATE_ACCOUNT: 5, LIST_ACCOUNTS: 5,
    UNLOCK_ACCOUNT: 5, SEND_TRANSACTION: 30, TX_RECEIPT: 5, TX_BY_HASH: 5, DEPLOY_CONTRACT: 5,
})
# Mostly reads, as a dashboard or explorer backend: 8% chain writes.
READ_HEAVY = Mix("read_heavy", {
    BALANCE: 35, MAIN_ACCOUNT: 3, CLIENT_ACCOUNTS: 5, BLOCK_NUMBER: 20, CREATE_ACCOUNT: 1, LIST_ACCOUNTS: 5,
    UNLOCK_ACCOUNT: 2, SEND_TRANSACTION: 6, TX_RECEIPT: 10, TX_BY_HASH: 12, DEPLOY_CONTRACT: 1,
})
# Mostly writes, as a payment backend: 70% chain writes.
WRITE_HEAVY = Mix("write_heavy", {
    BALANCE: 10, MAIN_ACCOUNT: 1, CLIENT_ACCOUNTS: 2, BLOCK_NUMBER: 5, CREATE_ACCOUNT: 10, LIST_ACCOUNTS: 2,
    UNLOCK_ACCOUNT: 5, SEND_TRANSACTION: 50, TX_RECEIPT: 3, TX_BY_HASH: 2, DEPLOY_CONTRACT: 10,
})
MIXES = {mix.name: mix for mix in (THESIS, READ_HEAVY, WRITE_HEAVY)}


def counts(mix: Mix, count: int) -> dict[str, int]:
    """How many of each operation ``count`` operations of the mix hold (largest remainder; ties in OPERATIONS order)."""
    if count < 0:
        raise ValueError("count must be >= 0")
    exact = {op: mix.weights.get(op, 0) * count / 100 for op in OPERATIONS}
    whole = {op: int(share) for op, share in exact.items()}
    left = count - sum(whole.values())
    by_remainder = sorted(OPERATIONS, key=lambda op: (-(exact[op] - whole[op]), OPERATIONS.index(op)))
    for op in by_remainder[:left]:
        whole[op] += 1
    return {op: n for op, n in whole.items() if n or op in mix.weights}


def sequence(mix: Mix, count: int, seed: int) -> list[str]:
    """Exactly ``count`` operations in the mix's proportions, in an order fixed by ``seed``."""
    ops = [op for op, n in counts(mix, count).items() for _ in range(n)]
    Random(seed).shuffle(ops)
    return ops
