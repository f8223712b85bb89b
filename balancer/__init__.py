"""ESP's state-feedback balancer: the pure core (stdlib only, no I/O, clock and randomness passed in).

The thesis's model (§3.2): each node is a point x in a normalised state space, its
distance d from the origin says how loaded it is; calibration gives the boundary
Dis_ave = (Dis_ave_min + Dis_ave_max) / 2; zone I (d < Dis_ave) takes writes first,
zone II reads first, zone III nothing; LBH = Σ (Dis_ave - d_i) < 0 pauses dispatch.

Flow at the edges::

    calibration = Calibrator.start(config)                        # or .from_dict(stored).reconcile(config)
    calibration = calibration.observe(samples, config)            # the monitor, every beat
    snapshot = build_snapshot(samples, config, calibration, policy.name, now)
    node_id = policy.choose(snapshot, kind, inflight=live, rng=rng)   # the router / the API
    choice = route(policy, snapshot, kind, now=now, max_age=..., inflight=live, rng=rng)  # with stale fallback

Modules: kinds (TaskKind), config (BalancerConfig), state (NodeSample, normalise,
distance), calibration (Calibrator), zones (zones, LBH), snapshot (Snapshot),
policies (the policies, fallback, route), exceptions, simulate (the simulator).
"""

from balancer.calibration import SOURCE_CONFIGURED, SOURCE_DEFAULT, SOURCE_LEARNED, Calibrator, Observation, observe_pool
from balancer.config import DIMENSIONS, ESP_WEIGHTS, MAX_DISTANCE, THESIS_WEIGHTS, BalancerConfig, parse_weights
from balancer.exceptions import NoEligibleNode, PoolUnhealthy
from balancer.kinds import DEFAULT_MEMORY_NEEDS, TaskKind, order_by_priority
from balancer.policies import (
    POLICY_NAMES,
    Choice,
    EspPolicy,
    LatencyPolicy,
    LeastInflightPolicy,
    LowestDistancePolicy,
    Policy,
    RandomPolicy,
    RoundRobinPolicy,
    ThesisPolicy,
    admits,
    answering_ids,
    candidates,
    choose_fallback,
    make_policy,
    route,
    zone_preference,
)
from balancer.snapshot import NodeView, PoolView, Snapshot, age, build_snapshot, is_stale
from balancer.state import (
    STATUS_DOWN,
    STATUS_DRAINING,
    STATUS_RECYCLING,
    STATUS_UP,
    STATUSES,
    NodeSample,
    distance,
    normalise,
    pool_max_head,
)
from balancer.zones import ZONE_I, ZONE_II, ZONE_III, ZONES, classify, is_paused, lbh, zone_of

__all__ = [
    "DEFAULT_MEMORY_NEEDS", "DIMENSIONS", "ESP_WEIGHTS", "MAX_DISTANCE", "POLICY_NAMES", "SOURCE_CONFIGURED",
    "SOURCE_DEFAULT", "SOURCE_LEARNED", "STATUSES", "STATUS_DOWN", "STATUS_DRAINING", "STATUS_RECYCLING",
    "STATUS_UP", "THESIS_WEIGHTS", "ZONES", "ZONE_I", "ZONE_II", "ZONE_III",
    "BalancerConfig", "Calibrator", "Choice", "EspPolicy", "LatencyPolicy", "LeastInflightPolicy",
    "LowestDistancePolicy", "NoEligibleNode", "NodeSample", "NodeView", "Observation", "Policy", "PoolUnhealthy",
    "PoolView", "RandomPolicy", "RoundRobinPolicy", "Snapshot", "TaskKind", "ThesisPolicy",
    "admits", "age", "answering_ids", "build_snapshot", "candidates", "choose_fallback", "classify", "distance",
    "is_paused", "is_stale", "lbh", "make_policy", "normalise", "observe_pool", "order_by_priority",
    "parse_weights", "pool_max_head", "route", "zone_of", "zone_preference",
]
