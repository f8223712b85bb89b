"""Calibration of the zone boundary: Dis_ave_min, Dis_ave_max and Dis_ave (thesis formulas 3.3-3.6).

    Dis_ave_min  mean distance of the pool when idle
    Dis_ave_max  mean distance of the pool when it serves poorly under load
    Dis_ave      (Dis_ave_min + Dis_ave_max) / 2

Each bound is either fixed in configuration ("configured"), learned from the
monitor's observations ("learned") or, until it has been observed, the configured
fallback ("default"). No hand step is needed:

- an observation is the mean distance over the pool's answering, "up" nodes;
- it is *idle* when no request is in flight on any of them and the pool does not
  serve poorly: it teaches Dis_ave_min (so the first samples after start measure it);
- it is *poor* when the pool's median node has an error rate of ``poor_error_rate``
  or more, or a probe latency above ``poor_latency``. The median, not the mean: one
  struggling node is for the policies to route around (it is zone II or III); it
  says nothing about where load makes the whole pool serve poorly, and with the mean
  one stalled node's 150 ms probe dragged Dis_ave_max down and paused a healthy pool.
  Poor observations teach Dis_ave_max only after ``calibration_poor_streak`` of them
  in a row, and only when the pool is loaded (work in flight, mean distance at least
  ``calibration_min_spread`` beyond Dis_ave_min): poor service near the idle state
  (say, a client flooding reverted calls) is not caused by load, says nothing about
  where load becomes harmful, and would otherwise drag the boundary down to idle;
- a learned bound is the plain mean of its first ``calibration_window`` observations,
  then a moving average over that window (weight 1/window), so it follows slow drift
  (anvil's memory grows with its chain);
- learned bounds are kept ``calibration_min_spread`` apart (the max is raised, or a
  configured max pulls the learned min down). Because Dis_ave_min follows the idle
  distance and Dis_ave >= Dis_ave_min + spread/2, an idle pool has LBH > 0: a pause
  can never outlive the load that caused it.

The object is immutable: ``observe`` returns the next state, ``to_dict``/``from_dict``
let the monitor keep it in Redis between beats.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from balancer.config import BalancerConfig
from balancer.state import STATUS_UP, NodeSample, distance, normalise, pool_max_head

SOURCE_CONFIGURED = "configured"
SOURCE_LEARNED = "learned"
SOURCE_DEFAULT = "default"
SOURCES = (SOURCE_DEFAULT, SOURCE_LEARNED, SOURCE_CONFIGURED)  # weakest first


@dataclass(frozen=True)
class Observation:
    """One look at the pool for calibration: its mean distance, whether work was in flight, whether it served poorly."""

    mean_distance: float
    busy: bool  # some serving node had work in flight
    poor: bool

    @property
    def idle(self) -> bool:
        """No work in flight and serving well: this observation measures Dis_ave_min."""
        return not self.busy and not self.poor


def observe_pool(samples: Sequence[NodeSample], config: BalancerConfig) -> Observation | None:
    """Summarise the answering, "up" nodes of ``samples``; None when there are none."""
    serving = [s for s in samples if s.is_answering and s.status == STATUS_UP]
    if not serving:
        return None
    max_head = pool_max_head(samples)
    distances = [distance(normalise(s, config, max_head), config.weights) for s in serving]
    # is_answering guarantees a latency for every serving node.
    typical_error = statistics.median(s.error_rate for s in serving)
    typical_latency = statistics.median(s.latency_ms or 0.0 for s in serving)
    poor = typical_error >= config.poor_error_rate or typical_latency > config.poor_latency
    busy = any(s.inflight > 0 for s in serving)
    return Observation(mean_distance=sum(distances) / len(distances), busy=busy, poor=poor)


@dataclass(frozen=True)
class Calibrator:
    """The calibration state: both bounds, where each came from, and how many observations taught it."""

    dis_ave_min: float
    dis_ave_max: float
    source_min: str
    source_max: str
    idle_seen: int = 0
    poor_seen: int = 0
    poor_streak: int = 0  # consecutive poor, loaded observations so far

    @classmethod
    def start(cls, config: BalancerConfig) -> Calibrator:
        """The calibration before any observation: configured bounds, else the defaults."""
        lo, src_lo = ((config.dis_ave_min, SOURCE_CONFIGURED) if config.dis_ave_min is not None
                      else (config.default_dis_ave_min, SOURCE_DEFAULT))
        hi, src_hi = ((config.dis_ave_max, SOURCE_CONFIGURED) if config.dis_ave_max is not None
                      else (config.default_dis_ave_max, SOURCE_DEFAULT))
        return cls(lo, hi, src_lo, src_hi)._spread(config)

    @property
    def dis_ave(self) -> float:
        """The zone boundary, (Dis_ave_min + Dis_ave_max) / 2."""
        return (self.dis_ave_min + self.dis_ave_max) / 2.0

    @property
    def source(self) -> str:
        """The weaker source of the two bounds: "default" until both are configured or learned."""
        return min(self.source_min, self.source_max, key=SOURCES.index)

    def observe(self, samples: Sequence[NodeSample], config: BalancerConfig) -> Calibrator:
        """The calibration after one more monitor sample of the pool."""
        seen = observe_pool(samples, config)
        if seen is None:
            return self
        new = self
        if seen.idle and self.source_min != SOURCE_CONFIGURED:
            n = self.idle_seen + 1
            value = _average(self.dis_ave_min, seen.mean_distance, n, config.calibration_window)
            new = dataclasses.replace(new, dis_ave_min=value, source_min=SOURCE_LEARNED, idle_seen=n)
        loaded = seen.busy and seen.mean_distance >= new.dis_ave_min + config.calibration_min_spread
        streak = self.poor_streak + 1 if seen.poor and loaded else 0
        new = dataclasses.replace(new, poor_streak=streak)
        if streak >= config.calibration_poor_streak and self.source_max != SOURCE_CONFIGURED:
            n = self.poor_seen + 1
            value = _average(self.dis_ave_max, seen.mean_distance, n, config.calibration_window)
            new = dataclasses.replace(new, dis_ave_max=value, source_max=SOURCE_LEARNED, poor_seen=n)
        return new._spread(config)

    def reconcile(self, config: BalancerConfig) -> Calibrator:
        """This calibration under a possibly changed ``config``: configured bounds win, dropped ones revert to default."""
        fresh = Calibrator.start(config)
        new = self
        if SOURCE_CONFIGURED in (fresh.source_min, self.source_min):
            new = dataclasses.replace(new, dis_ave_min=fresh.dis_ave_min, source_min=fresh.source_min, idle_seen=0)
        if SOURCE_CONFIGURED in (fresh.source_max, self.source_max):
            new = dataclasses.replace(new, dis_ave_max=fresh.dis_ave_max, source_max=fresh.source_max, poor_seen=0)
        return new._spread(config)

    def _spread(self, config: BalancerConfig) -> Calibrator:
        """Keep the bounds at least ``calibration_min_spread`` apart, moving only a bound that is not configured."""
        spread = config.calibration_min_spread
        if self.dis_ave_max - self.dis_ave_min >= spread:
            return self
        if self.source_max != SOURCE_CONFIGURED:
            return dataclasses.replace(self, dis_ave_max=self.dis_ave_min + spread)
        if self.source_min != SOURCE_CONFIGURED:
            return dataclasses.replace(self, dis_ave_min=max(self.dis_ave_max - spread, 0.0))
        return self  # both configured: config validation already required max > min

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, with the derived boundary and source for display."""
        data = dataclasses.asdict(self)
        data["dis_ave"] = self.dis_ave
        data["source"] = self.source
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        """Inverse of ``to_dict`` (derived keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _average(current: float, value: float, n: int, window: int) -> float:
    """Mean of the first ``window`` values (the first replaces the default), then a moving average."""
    return current + (value - current) / min(n, window)
