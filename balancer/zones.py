"""Zones of the state plane and the pool's health index LBH (thesis §3.2.1, §3.2.4).

    zone I    d <  Dis_ave    safe: takes writes first, reads when zone II is empty
    zone II   d >= Dis_ave    takes reads first, writes when zone I is empty
    zone III  takes nothing and is recycled: not running or not answering its probe,
              marked down, draining or recycling, over its memory cap, or d >= the
              configured recycle distance

    LBH = Σ (Dis_ave - d_i)   LBH < 0: dispatch pauses until it is >= 0 again

The thesis sums LBH over every node (``lbh_over="all"``). ESP's default sums over
the serving nodes (zones I and II): a node that is down or being recycled is out of
the pool already, and its (often meaningless) distance must not pause the others.
An empty sum is 0: not paused (choosing then fails with NoEligibleNode instead).
"""

from __future__ import annotations

from collections.abc import Iterable

from balancer.config import BalancerConfig
from balancer.state import STATUS_DOWN, STATUS_DRAINING, STATUS_RECYCLING, NodeSample

ZONE_I = "I"
ZONE_II = "II"
ZONE_III = "III"
ZONES = (ZONE_I, ZONE_II, ZONE_III)
SERVING_ZONES = frozenset({ZONE_I, ZONE_II})

# Why a node is in zone III, in the order the rules are checked.
REASON_DOWN = "down"
REASON_NOT_ANSWERING = "not answering"
REASON_DRAINING = "draining"
REASON_RECYCLING = "recycling"
REASON_OVER_MEMORY_CAP = "over memory cap"
REASON_RECYCLE_DISTANCE = "distance at or beyond recycle threshold"


def zone_of(distance: float, dis_ave: float) -> str:
    """Zone I or II of a serving node by its distance against the boundary Dis_ave."""
    return ZONE_I if distance < dis_ave else ZONE_II


def classify(sample: NodeSample, distance: float, dis_ave: float, config: BalancerConfig) -> tuple[str, str | None]:
    """The node's zone and, for zone III, the reason (None for zones I and II)."""
    if sample.status == STATUS_DOWN or not sample.alive:
        return ZONE_III, REASON_DOWN
    if sample.latency_ms is None:
        return ZONE_III, REASON_NOT_ANSWERING
    if sample.status == STATUS_DRAINING:
        return ZONE_III, REASON_DRAINING
    if sample.status == STATUS_RECYCLING:
        return ZONE_III, REASON_RECYCLING
    if sample.memory > 1.0:
        return ZONE_III, REASON_OVER_MEMORY_CAP
    if config.recycle_distance is not None and distance >= config.recycle_distance:
        return ZONE_III, REASON_RECYCLE_DISTANCE
    return zone_of(distance, dis_ave), None


def lbh(dis_ave: float, distances: Iterable[float]) -> float:
    """LBH = Σ (Dis_ave - d_i) over the given distances (thesis formula 3.8)."""
    return sum((dis_ave - d for d in distances), 0.0)


def is_paused(lbh_value: float) -> bool:
    """True when the health index says dispatch must pause (LBH < 0)."""
    return lbh_value < 0.0
