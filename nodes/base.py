"""What every node backend shares: the protocol it implements and the resource sample it takes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from nodepool.spec import NodeSpec


@dataclass(frozen=True)
class ResourceStats:
    """A node's resource use: cpu and memory as fractions of what it may use."""

    alive: bool
    cpu: float = 0.0  # share of the node's CPU allowance, 0..1 (can briefly exceed 1)
    memory: float = 0.0  # memory use / memory cap or limit, 0..1 (above 1: over its cap)
    memory_bytes: int = 0
    memory_limit_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NodeBackend(Protocol):
    """Starts, stops, restarts and measures nodes of one kind."""

    name: str
    #: False for nodes ESP does not own (static URLs): no start, stop or restart.
    manages: bool

    def start(self, node_id: str, *, role: str, port: int | None = None) -> NodeSpec:
        """Start a node and return its record once it answers JSON-RPC."""
        ...

    def stop(self, spec: NodeSpec) -> None:
        """Stop the node; a node already gone is not an error."""
        ...

    def restart(self, spec: NodeSpec) -> NodeSpec:
        """Stop and start the node on the same port; returns the new record."""
        ...

    def stats(self, spec: NodeSpec) -> ResourceStats:
        """Sample the node's CPU and memory (alive=False when it is not running)."""
        ...

    def close(self) -> None:
        """Release clients and samplers."""
        ...
