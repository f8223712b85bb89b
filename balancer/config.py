"""The balancer's configuration: which state dimensions count, their weights, scales and thresholds.

Every dimension of a node's state is normalised to [0, 1] (see ``state.normalise``):

    memory    used / cap (clamped; a node over its cap is zone III anyway)
    cpu       share of the node's CPU allowance (clamped)
    latency   min(latency_ms / (latency_saturation * latency_target_ms), 1); 1 when the probe failed.
              With the default factor 2 a node answering at the target sits at 0.5.
    errors    error rate over the monitor's sliding window
    lag       min((pool's highest head - head) / lag_scale, 1); 1 when the head is unknown
    inflight  min(inflight / inflight_scale, 1)

The distance of a state x with weights w is

    d = sqrt(2 * sum(w_i * x_i**2) / sum(w_i))

so d always lies in [0, sqrt(2)] whatever the dimensions, and thresholds (recycle
distance, calibration defaults) mean the same in every configuration. With the
thesis's two dimensions at weight 1 the factor 2/sum(w) is exactly 1 and d is the
thesis's sqrt(x1**2 + x2**2) (``BalancerConfig.thesis()``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from balancer.kinds import DEFAULT_MEMORY_NEEDS, TaskKind

#: Every dimension a configuration may choose from, in display order.
DIMENSIONS = ("memory", "cpu", "latency", "errors", "lag", "inflight")

#: ESP's default: every dimension at equal weight.
ESP_WEIGHTS: dict[str, float] = {name: 1.0 for name in DIMENSIONS}
#: The thesis's model: memory and CPU use only, equal weight.
THESIS_WEIGHTS: dict[str, float] = {"memory": 1.0, "cpu": 1.0}

#: Which nodes the health index LBH sums over.
LBH_SCOPES = ("serving", "all")

MAX_DISTANCE = math.sqrt(2.0)


@dataclass(frozen=True)
class BalancerConfig:
    """Dimensions, weights, scales and thresholds of the state-feedback balancer (frozen; not hashable)."""

    #: Chosen dimensions and their weights (> 0); order is kept for display.
    weights: Mapping[str, float] = field(default_factory=lambda: dict(ESP_WEIGHTS))
    #: Probe latency a healthy node should answer within, in ms.
    latency_target_ms: float = 50.0
    #: Latency saturates (dimension = 1) at this multiple of the target.
    latency_saturation: float = 2.0
    #: Blocks behind the pool's highest head at which the lag dimension saturates.
    lag_scale: float = 10.0
    #: In-flight requests at which the inflight dimension saturates.
    inflight_scale: float = 16.0
    #: A node at or beyond this distance is zone III and recycled; None disables the rule.
    recycle_distance: float | None = 1.2
    #: "serving": LBH sums over zone I and II nodes only (a dead node does not pause
    #: the rest of the pool); "all": over every node, as the thesis writes it.
    lbh_over: str = "serving"
    #: Free memory (bytes) a task of each kind needs on its node (admission). Keys are
    #: TaskKinds or their names; kinds left out keep DEFAULT_MEMORY_NEEDS.
    memory_needs: Mapping[Any, int] = field(default_factory=lambda: dict(DEFAULT_MEMORY_NEEDS))
    #: "esp" leaves the preferred zone when its pick carries more than this many times the
    #: load of the other zone's pick; None keeps the thesis's strict zone preference.
    spill_ratio: float | None = 2.0
    #: Fixed calibration; None lets the calibrator learn that bound.
    dis_ave_min: float | None = None
    dis_ave_max: float | None = None
    #: Bounds used until the calibrator has seen an idle / a poorly serving pool. The max
    #: defaults to the farthest state there is: without evidence of where service degrades,
    #: the boundary sits halfway out and a pause needs a pool that is loaded in earnest.
    default_dis_ave_min: float = 0.05
    default_dis_ave_max: float = MAX_DISTANCE
    #: Learned bounds are kept at least this far apart, so an idle pool is never paused.
    calibration_min_spread: float = 0.1
    #: Observations averaged before a learned bound becomes a moving average of this window.
    calibration_window: int = 10
    #: The pool serves poorly when its median node's error rate reaches this ...
    poor_error_rate: float = 0.05
    #: ... or its median node's probe latency exceeds this (ms); None means latency_target_ms.
    poor_latency_ms: float | None = None
    #: Consecutive poor, loaded observations before they teach Dis_ave_max: one slow beat
    #: (a GC pause, a burst) must not move the boundary and pause the pool.
    calibration_poor_streak: int = 3

    def __post_init__(self) -> None:
        # Copy mappings so a caller's later mutation cannot change a frozen config.
        object.__setattr__(self, "weights", dict(self.weights))
        needs = {TaskKind.parse(k): int(v) for k, v in self.memory_needs.items()}
        object.__setattr__(self, "memory_needs", {**DEFAULT_MEMORY_NEEDS, **needs})
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field when a value cannot work."""
        if not self.weights:
            raise ValueError("weights: choose at least one dimension")
        for name, weight in self.weights.items():
            if name not in DIMENSIONS:
                raise ValueError(f"weights: unknown dimension {name!r}; expected some of {', '.join(DIMENSIONS)}")
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
                raise ValueError(f"weights: {name} must be a finite number > 0, not {weight!r}")
        for name in ("latency_target_ms", "latency_saturation", "lag_scale", "inflight_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, not {value!r}")
        if self.recycle_distance is not None and not 0 < self.recycle_distance:
            raise ValueError(f"recycle_distance must be > 0 or None, not {self.recycle_distance!r}")
        if self.spill_ratio is not None and not (math.isfinite(self.spill_ratio) and self.spill_ratio >= 1):
            raise ValueError(f"spill_ratio must be >= 1 or None, not {self.spill_ratio!r}")
        if self.lbh_over not in LBH_SCOPES:
            raise ValueError(f"lbh_over must be one of {', '.join(LBH_SCOPES)}, not {self.lbh_over!r}")
        for kind, need in self.memory_needs.items():
            if need < 0:
                raise ValueError(f"memory_needs: {kind.value} must be >= 0 bytes, not {need}")
        for name in ("dis_ave_min", "dis_ave_max", "default_dis_ave_min", "default_dis_ave_max"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_DISTANCE):
                raise ValueError(f"{name} must lie in [0, sqrt(2)], not {value!r}")
        if self.dis_ave_min is not None and self.dis_ave_max is not None and self.dis_ave_max <= self.dis_ave_min:
            raise ValueError(f"dis_ave_max ({self.dis_ave_max}) must exceed dis_ave_min ({self.dis_ave_min})")
        if self.default_dis_ave_max <= self.default_dis_ave_min:
            raise ValueError("default_dis_ave_max must exceed default_dis_ave_min")
        if not 0 <= self.calibration_min_spread < MAX_DISTANCE:
            raise ValueError(f"calibration_min_spread must lie in [0, sqrt(2)), not {self.calibration_min_spread!r}")
        if self.calibration_poor_streak < 1:
            raise ValueError(f"calibration_poor_streak must be >= 1, not {self.calibration_poor_streak}")
        if self.calibration_window < 1:
            raise ValueError(f"calibration_window must be >= 1, not {self.calibration_window}")
        if not 0 < self.poor_error_rate <= 1:
            raise ValueError(f"poor_error_rate must lie in (0, 1], not {self.poor_error_rate!r}")
        if self.poor_latency_ms is not None and not self.poor_latency_ms > 0:
            raise ValueError(f"poor_latency_ms must be > 0 or None, not {self.poor_latency_ms!r}")

    @classmethod
    def thesis(cls, **changes: Any) -> BalancerConfig:
        """The thesis's model exactly: memory and CPU at weight 1, d = sqrt(x1² + x2²), LBH over every node."""
        return cls(**{"weights": dict(THESIS_WEIGHTS), "lbh_over": "all", **changes})

    @property
    def dimensions(self) -> tuple[str, ...]:
        """The chosen dimensions, in configuration order."""
        return tuple(self.weights)

    @property
    def poor_latency(self) -> float:
        """Mean probe latency (ms) above which the pool counts as serving poorly."""
        return self.poor_latency_ms if self.poor_latency_ms is not None else self.latency_target_ms

    def memory_need(self, kind: TaskKind) -> int:
        """Free memory in bytes a task of ``kind`` needs on its node."""
        return self.memory_needs[kind]


def parse_weights(text: str) -> dict[str, float]:
    """Parse "memory=1,cpu=2,latency" (bare name = weight 1) into a weights mapping."""
    weights: dict[str, float] = {}
    for raw_part in text.split(","):
        part = raw_part.strip()
        if not part:
            continue
        name, sep, raw = part.partition("=")
        name = name.strip().lower()
        try:
            weight = float(raw) if sep else 1.0
        except ValueError:
            raise ValueError(f"weight of {name!r} is not a number: {raw!r}") from None
        if name not in DIMENSIONS:
            raise ValueError(f"unknown dimension {name!r}; expected some of {', '.join(DIMENSIONS)}")
        weights[name] = weight
    if not weights:
        raise ValueError("no dimension given")
    return weights
