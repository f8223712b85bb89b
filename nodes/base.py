"""What every node backend shares: the node record and the resource sample."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Protocol

ROLE_LEADER = "leader"
ROLE_FOLLOWER = "follower"
ROLE_STANDALONE = "standalone"


@dataclass(frozen=True)
class NodeSpec:
    """One node of the pool as the registry in Redis keeps it."""

    id: str
    url: str
    backend: str
    role: str = ROLE_STANDALONE
    port: int | None = None
    pid: int | None = None
    container: str | None = None
    generation: int = 0
    started_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> NodeSpec:
        data = json.loads(raw)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> NodeSpec:
        return dataclasses.replace(self, **changes)


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
