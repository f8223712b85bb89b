"""The kinds of work the balancer places, their priority and their memory need.

The thesis (§3.2.3) splits tasks into reads and writes, and writes into contract
deploys, account management and contract calls. Reads go first, in arrival order;
among writes, the rarer kind goes first: deploy, then account, then call.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")

MIB = 1024 * 1024


class TaskKind(enum.Enum):
    """What a task does to a node; the value is its wire name."""

    READ = "read"
    DEPLOY = "deploy"
    ACCOUNT = "account"
    CALL = "call"

    @property
    def priority(self) -> int:
        """Rank of the kind, 0 first: read, deploy, account, call."""
        return _PRIORITY[self]

    @property
    def is_write(self) -> bool:
        """True for every kind that changes chain state (all but READ)."""
        return self is not TaskKind.READ

    @classmethod
    def parse(cls, name: str | TaskKind) -> TaskKind:
        """Return the kind named ``name`` ("read", "deploy", "account", "call"; any case)."""
        if isinstance(name, TaskKind):
            return name
        try:
            return cls(name.strip().lower())
        except ValueError:
            raise ValueError(f"unknown task kind {name!r}; expected one of {', '.join(k.value for k in cls)}") from None


_PRIORITY = {TaskKind.READ: 0, TaskKind.DEPLOY: 1, TaskKind.ACCOUNT: 2, TaskKind.CALL: 3}

#: Free node memory a task of each kind needs before it is placed (the thesis's
#: t_memory <= con_memory). Deploys carry bytecode and run constructors; reads are
#: small. Sized against anvil's measured footprint (20-90 MB RSS), not exact.
DEFAULT_MEMORY_NEEDS: dict[TaskKind, int] = {
    TaskKind.READ: 1 * MIB,
    TaskKind.DEPLOY: 64 * MIB,
    TaskKind.ACCOUNT: 8 * MIB,
    TaskKind.CALL: 16 * MIB,
}


def order_by_priority(tasks: Iterable[T], kind_of: Callable[[T], TaskKind]) -> list[T]:
    """Order tasks as the thesis runs them: reads first, then deploy, account, call; arrival order within a kind."""
    # sorted() is stable, so equal kinds keep their arrival order.
    return sorted(tasks, key=lambda task: kind_of(task).priority)
