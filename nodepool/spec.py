"""A node of the pool as every process sees it: its id, URL, role and generation, as the registry keeps it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

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
