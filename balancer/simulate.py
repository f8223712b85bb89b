"""A small deterministic simulator of a node pool behind a policy, with stale snapshots and bursty arrivals.

Model (pure; every random draw comes from one seeded ``random.Random``):

- N nodes, each serving up to ``capacity`` tasks at once and queueing the rest
  FIFO (a c-server queue); a task's service time is exponential with mean
  ``service_time`` divided by the node's speed (1.0 = nominal; lower = degraded).
- Arrivals come in bursts of ``burst_size`` at one instant; bursts are spaced so
  the offered load is ``load`` (0..1) of the pool's nominal capacity.
- The policy sees a snapshot refreshed only every ``refresh_every`` arrivals (so it
  is stale in between, like the monitor's), and live in-flight counts at every
  decision, as the router has them.
- Each sample reports what a monitor would: cpu = busy servers / capacity,
  latency rising with the queue, memory rising with in-flight work, the in-flight
  count. The calibrator learns from those samples as in production.
- A PoolUnhealthy answer counts as ``paused``, any other NoEligibleNode as
  ``refused``; neither task is placed.

``window_imbalance`` is what herding looks like: within one refresh window a
picker that trusts the stale snapshot sends every arrival to the same node.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from balancer.calibration import Calibrator
from balancer.config import BalancerConfig
from balancer.exceptions import NoEligibleNode, PoolUnhealthy
from balancer.kinds import TaskKind
from balancer.policies import Policy
from balancer.snapshot import build_snapshot
from balancer.state import NodeSample

WRITE_KINDS = (TaskKind.DEPLOY, TaskKind.ACCOUNT, TaskKind.CALL, TaskKind.CALL)  # calls are the common write


@dataclass(frozen=True)
class SimConfig:
    """The simulated pool and its traffic."""

    nodes: int = 3
    arrivals: int = 3000
    refresh_every: int = 50  # arrivals between two snapshots
    burst_size: int = 20  # arrivals per burst, all at the same instant
    load: float = 0.6  # offered load as a share of the pool's nominal capacity
    service_time: float = 1.0  # mean service time at speed 1.0 (seconds)
    capacity: int = 4  # tasks a node serves at once
    write_share: float = 0.5
    base_latency_ms: float = 5.0  # probe latency of an idle node
    memory_limit_bytes: int = 2048 * 1024 * 1024
    base_memory_bytes: int = 40 * 1024 * 1024
    memory_per_task_bytes: int = 4 * 1024 * 1024
    speeds: Sequence[float] = field(default=())  # per node; empty = all 1.0
    seed: int = 0

    def speed(self, index: int) -> float:
        """Speed factor of node ``index``."""
        return self.speeds[index] if index < len(self.speeds) else 1.0


@dataclass(frozen=True)
class SimResult:
    """What happened: placements per node, shares, imbalance, pauses and response times."""

    policy: str
    assigned: dict[str, int]
    shares: dict[str, float]
    imbalance: float  # max share / mean share over the whole run (1.0 = perfectly even)
    window_imbalance: float  # mean over refresh windows of (max / mean placements in the window)
    paused: int
    refused: int
    mean_response: float  # seconds from arrival to completion, over placed tasks
    p99_response: float
    peak_inflight: dict[str, int]


class _Node:
    """A c-server FIFO queue: when each server frees up, and when each task in it completes."""

    def __init__(self, node_id: str, capacity: int, speed: float) -> None:
        self.node_id = node_id
        self.speed = speed
        self.servers = [0.0] * capacity  # min-heap of times each server becomes free
        self.completions: list[float] = []  # min-heap of completion times of tasks in the node

    def advance(self, now: float) -> None:
        while self.completions and self.completions[0] <= now:
            heapq.heappop(self.completions)

    @property
    def inflight(self) -> int:
        return len(self.completions)

    def busy(self, now: float) -> int:
        return sum(1 for t in self.servers if t > now)

    def place(self, now: float, work: float) -> float:
        start = max(now, heapq.heappop(self.servers))
        done = start + work / self.speed
        heapq.heappush(self.servers, done)
        heapq.heappush(self.completions, done)
        return done - now


def node_ids(count: int) -> list[str]:
    """Ids of the simulated nodes ("n0", "n1", ...)."""
    return [f"n{i}" for i in range(count)]


def simulate(policy: Policy, sim: SimConfig, config: BalancerConfig) -> SimResult:
    """Run ``sim`` through ``policy`` and report how the load spread."""
    rng = random.Random(sim.seed)
    ids = node_ids(sim.nodes)
    nodes = [_Node(node_id, sim.capacity, sim.speed(i)) for i, node_id in enumerate(ids)]
    # Bursts spaced so that arrival rate * service time = load * pool capacity.
    burst_gap = sim.burst_size * sim.service_time / (sim.load * sim.nodes * sim.capacity)
    calibration = Calibrator.start(config)
    snapshot = None
    assigned = dict.fromkeys(ids, 0)
    peak = dict.fromkeys(ids, 0)
    window = dict.fromkeys(ids, 0)
    window_ratios: list[float] = []
    responses: list[float] = []
    paused = refused = 0

    for i in range(sim.arrivals):
        now = (i // sim.burst_size) * burst_gap
        for node in nodes:
            node.advance(now)
        if i % sim.refresh_every == 0:
            if i:
                window_ratios.append(_ratio(window))
                window = dict.fromkeys(ids, 0)
            samples = [_sample(node, sim, now) for node in nodes]
            calibration = calibration.observe(samples, config)
            snapshot = build_snapshot(samples, config, calibration, policy.name, now)
        assert snapshot is not None
        kind = rng.choice(WRITE_KINDS) if rng.random() < sim.write_share else TaskKind.READ
        inflight = {node.node_id: node.inflight for node in nodes}
        try:
            chosen = policy.choose(snapshot, kind, inflight=inflight, rng=rng)
        except PoolUnhealthy:
            paused += 1
            continue
        except NoEligibleNode:
            refused += 1
            continue
        node = nodes[ids.index(chosen)]
        responses.append(node.place(now, rng.expovariate(1.0 / sim.service_time)))
        assigned[chosen] += 1
        window[chosen] += 1
        peak[chosen] = max(peak[chosen], node.inflight)
    if sum(window.values()):
        window_ratios.append(_ratio(window))

    total = sum(assigned.values())
    shares = {k: (v / total if total else 0.0) for k, v in assigned.items()}
    responses.sort()
    return SimResult(
        policy=policy.name, assigned=assigned, shares=shares, imbalance=_ratio(assigned),
        window_imbalance=sum(window_ratios) / len(window_ratios) if window_ratios else 0.0,
        paused=paused, refused=refused,
        mean_response=sum(responses) / len(responses) if responses else 0.0,
        p99_response=responses[min(len(responses) - 1, math.ceil(0.99 * len(responses)) - 1)] if responses else 0.0,
        peak_inflight=peak,
    )


def _ratio(counts: dict[str, int]) -> float:
    """max / mean of the counts (1.0 = even; N = everything on one of N nodes)."""
    total = sum(counts.values())
    if not total:
        return 0.0
    return max(counts.values()) / (total / len(counts))


def _sample(node: _Node, sim: SimConfig, now: float) -> NodeSample:
    inflight = node.inflight
    memory_bytes = sim.base_memory_bytes + inflight * sim.memory_per_task_bytes
    return NodeSample(
        node_id=node.node_id, url=f"sim://{node.node_id}", backend="sim",
        cpu=node.busy(now) / sim.capacity,
        memory=memory_bytes / sim.memory_limit_bytes, memory_bytes=memory_bytes,
        memory_limit_bytes=sim.memory_limit_bytes,
        # A probe waits behind the queue: latency grows with the work per server, slower on a slow node.
        latency_ms=sim.base_latency_ms * (1 + inflight / sim.capacity) / node.speed,
        error_rate=0.0, head=0, inflight=inflight,
    )
