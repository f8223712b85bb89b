"""A node's raw sample, its normalised state vector and its distance from the origin."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from balancer.config import BalancerConfig

STATUS_UP = "up"
STATUS_DOWN = "down"
STATUS_DRAINING = "draining"
STATUS_RECYCLING = "recycling"
STATUSES = (STATUS_UP, STATUS_DOWN, STATUS_DRAINING, STATUS_RECYCLING)


@dataclass(frozen=True)
class NodeSample:
    """What the monitor measured of one node at one instant (raw, not normalised)."""

    node_id: str
    url: str
    backend: str
    status: str = STATUS_UP  # "up", "down", "draining", "recycling" (the registry's word)
    alive: bool = True  # the node's process/container runs and answered the probe
    cpu: float = 0.0  # share of the node's CPU allowance, 0..1 (may briefly exceed 1)
    memory: float = 0.0  # used / cap, 0..1; above 1 the node is over its cap
    memory_bytes: int = 0
    memory_limit_bytes: int = 0  # 0 when unknown: admission then cannot judge and admits
    latency_ms: float | None = None  # probe round trip; None when the probe failed
    error_rate: float = 0.0  # failed / all calls over the monitor's sliding window, 0..1
    head: int | None = None  # latest block number; None when unknown
    inflight: int = 0  # requests and tasks on the node when sampled

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")
        for name in ("cpu", "memory", "error_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if self.latency_ms is not None and not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ValueError(f"latency_ms must be a finite number >= 0 or None, not {self.latency_ms!r}")
        if self.inflight < 0 or self.memory_bytes < 0 or self.memory_limit_bytes < 0:
            raise ValueError("inflight, memory_bytes and memory_limit_bytes must be >= 0")

    @property
    def is_answering(self) -> bool:
        """True when the node runs, answered its probe and is not marked down."""
        return self.alive and self.latency_ms is not None and self.status != STATUS_DOWN

    @property
    def memory_free_bytes(self) -> int | None:
        """Bytes left under the node's memory limit; None when the limit is unknown."""
        if self.memory_limit_bytes <= 0:
            return None
        return max(self.memory_limit_bytes - self.memory_bytes, 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for Redis)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeSample:
        """Inverse of ``to_dict``; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _unit(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def pool_max_head(samples: Sequence[NodeSample]) -> int | None:
    """The highest head among answering nodes (the lag reference); None when none is known."""
    heads = [s.head for s in samples if s.head is not None and s.is_answering]
    return max(heads) if heads else None


def normalise(sample: NodeSample, config: BalancerConfig, max_head: int | None) -> dict[str, float]:
    """The node's state vector: each configured dimension mapped to [0, 1] (see ``balancer.config``)."""
    state: dict[str, float] = {}
    for name in config.dimensions:
        if name == "memory":
            value = _unit(sample.memory)
        elif name == "cpu":
            value = _unit(sample.cpu)
        elif name == "latency":
            # A failed probe is the worst latency there is.
            value = 1.0 if sample.latency_ms is None else _unit(
                sample.latency_ms / (config.latency_saturation * config.latency_target_ms))
        elif name == "errors":
            value = _unit(sample.error_rate)
        elif name == "lag":
            if max_head is None:
                value = 0.0  # nobody's head is known: no evidence of lag
            elif sample.head is None:
                value = 1.0
            else:
                value = _unit((max_head - sample.head) / config.lag_scale)
        else:  # inflight (config validation admits nothing else)
            value = inflight_value(sample.inflight, config)
        state[name] = value
    return state


def inflight_value(inflight: int, config: BalancerConfig) -> float:
    """The inflight dimension for ``inflight`` requests."""
    return _unit(inflight / config.inflight_scale)


def distance(state: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """d = sqrt(2 · Σ w_i x_i² / Σ w_i): in [0, sqrt(2)]; the thesis's sqrt(x1² + x2²) for two unit weights."""
    total_weight = sum(weights.values())
    weighted = sum(weight * state[name] ** 2 for name, weight in weights.items())
    return math.sqrt(2.0 / total_weight * weighted)
