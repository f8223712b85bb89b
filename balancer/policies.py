"""Selection policies: given a snapshot and a task kind, name the node that takes the task.

Every policy has ``choose(snapshot, kind, *, inflight, rng, exclude=frozenset()) -> node id``:

    inflight  live in-flight counts per node id at decision time (from the edge's
              counters); a node missing from it counts with its snapshot value
    rng       the caller's random.Random (seeded in tests and the simulator)
    exclude   node ids the caller will not use (e.g. the node a task just failed on)

Rules all policies share: only zone I and II nodes are candidates — a zone III node
(down, not answering, draining, recycling, over its memory cap, beyond the recycle
distance) is never chosen, not even by round robin or random. With no candidate
they raise NoEligibleNode.

    round_robin     cycles over the candidates; its counter lives in the policy object
                    (one per process, thread-safe), so processes interleave independently
    random          uniform over the candidates
    least_inflight  fewest live in-flight requests; ties at random
    latency         lowest probe latency * (live in-flight + 1), the "peak EWMA" idea:
                    a fast node stops attracting everything once work queues on it
    lowest_distance the node nearest the origin in the snapshot: the naive state-feedback
                    picker, kept as the herding baseline (everything goes to one node
                    until the next sample)
    thesis          the thesis exactly (§3.2.4, §4.4): paused while the snapshot's LBH < 0;
                    admission by free memory; writes to zone I first, then II; reads to
                    zone II first, then I; within the zone the first node in snapshot
                    order (``gethPool.get(0)``: deterministic, and herd-prone by design).
                    Where the thesis contradicts itself we follow §3.2.4 and the issue:
                    §3.2.3 once sends reads on to zone III, and the §4.4 listing fills
                    gethPool with d > Dis_ave nodes for every task type.
    esp             ESP's state-feedback: the thesis's zones, admission and LBH pause,
                    evaluated on a *live* state: each node's inflight dimension is
                    recomputed from the live count, so distances, zones and LBH react
                    between samples, and free memory is reduced by what tasks placed
                    since the sample reserve (need x (live - sampled in-flight)).
                    Within the zone, two random choices: of two distinct candidates
                    the one with the lower (live in-flight + 1) * (1 + live distance)
                    wins. That spreads load
                    over nodes that look alike in a stale snapshot and still favours
                    the less loaded. Spill guard: when the preferred zone's pick costs
                    more than ``spill_ratio`` times the other zone's pick, the other wins
                    (reads preferring zone II would otherwise pile onto a lone zone-II
                    node and keep it there). ``spill_ratio=None`` keeps zones strict.

Admission (the thesis's t_memory <= con_memory) is applied by "thesis" and "esp"
only; the other policies are the comparison baselines and ignore it. A node whose
memory limit is unknown cannot be judged and is admitted.

When the snapshot is stale or missing, do not use a policy: ``choose_fallback`` picks
among nodes known to answer, ignoring zones (``route`` does that choice for you).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from balancer.config import BalancerConfig
from balancer.exceptions import NoEligibleNode, PoolUnhealthy
from balancer.kinds import TaskKind
from balancer.snapshot import NodeView, Snapshot, is_stale
from balancer.state import STATUS_UP, distance, inflight_value
from balancer.zones import SERVING_ZONES, ZONE_I, ZONE_II, ZONE_III, is_paused, zone_of

POLICY_NAMES = ("esp", "thesis", "round_robin", "random", "least_inflight", "latency", "lowest_distance")

NO_EXCLUDE: frozenset[str] = frozenset()

T = TypeVar("T")


class Policy(Protocol):
    """Names the node for one task."""

    name: str

    def choose(self, snapshot: Snapshot, kind: TaskKind | str, *, inflight: Mapping[str, int],
               rng: random.Random, exclude: frozenset[str] = NO_EXCLUDE) -> str:
        """The id of the node that takes a task of ``kind``."""
        ...


def zone_preference(kind: TaskKind) -> tuple[str, str]:
    """Zones in the order a task of ``kind`` tries them: writes I then II, reads II then I."""
    return (ZONE_I, ZONE_II) if kind.is_write else (ZONE_II, ZONE_I)


def candidates(snapshot: Snapshot, exclude: frozenset[str] = NO_EXCLUDE, *, kind: TaskKind | None = None) -> list[NodeView]:
    """Zone I and II nodes not excluded, in snapshot order; NoEligibleNode when there are none."""
    found = [n for n in snapshot.nodes if n.zone in SERVING_ZONES and n.id not in exclude]
    if not found:
        raise NoEligibleNode(_none_serving(snapshot, exclude), kind=kind.value if kind else None)
    return found


def _none_serving(snapshot: Snapshot, exclude: frozenset[str]) -> str:
    if not snapshot.nodes:
        return "the pool has no nodes"
    excluded = sum(1 for n in snapshot.nodes if n.id in exclude and n.zone != ZONE_III)
    zone3 = sum(1 for n in snapshot.nodes if n.zone == ZONE_III)
    return f"no node may take work: {zone3} of {len(snapshot.nodes)} in zone III, {excluded} excluded"


def _live(view: NodeView, inflight: Mapping[str, int]) -> int:
    return max(int(inflight.get(view.id, view.inflight)), 0)


def admits(free_bytes: int | None, need: int) -> bool:
    """The thesis's admission constraint t_memory <= con_memory; an unknown free memory admits."""
    return free_bytes is None or need <= free_bytes


class RoundRobinPolicy:
    """Each candidate in turn; the counter is held here, one per process."""

    name = "round_robin"

    def __init__(self) -> None:
        # next() on itertools.count is atomic under the GIL: safe from router threads.
        self._counter = itertools.count()

    def choose(self, snapshot: Snapshot, kind: TaskKind | str, *, inflight: Mapping[str, int],
               rng: random.Random, exclude: frozenset[str] = NO_EXCLUDE) -> str:
        """The next candidate in turn."""
        pool = candidates(snapshot, exclude, kind=TaskKind.parse(kind))
        return pool[next(self._counter) % len(pool)].id


class RandomPolicy:
    """A uniformly random candidate."""

    name = "random"

    def choose(self, snapshot: Snapshot, kind: TaskKind | str, *, inflight: Mapping[str, int],
               rng: random.Random, exclude: frozenset[str] = NO_EXCLUDE) -> str:
        """A random candidate."""
        return rng.choice(candidates(snapshot, exclude, kind=TaskKind.parse(kind))).id


class LeastInflightPolicy:
    """The candidate with the fewest live in-flight requests; ties at random."""

    name = "least_inflight"

    def choose(self, snapshot: Snapshot, kind: TaskKind | str, *, inflight: Mapping[str, int],
               rng: random.Random, exclude: frozenset[str] = NO_EXCLUDE) -> str:
        """The least busy candidate right now."""
        pool = candidates(snapshot, exclude, kind=TaskKind.parse(kind))
        return _argmin_random(pool, lambda v: float(_live(v, inflight)), rng).id


class LatencyPolicy:
    """Lowest probe latency weighed by live in-flight: latency_ms * (inflight + 1); ties at random."""

    name = "latency"

    def choose(self, snapshot: Snapshot, kind: TaskKind | str, *, inflight: Mapping[str, int],
               rng: random.Random, exclude: frozenset[str] = NO_EXCLUDE) -> str:
        """The candidate expected to answer soonest."""
        pool = candidates(snapshot, exclude, kind=TaskKind.parse(kind))
        return _argmin_random(pool, lambda v: (v.latency_ms or 0.0) * (_live(v, inflight) + 1), rng).id


class LowestDistancePolicy:
    """The candidate nearest the origin in the snapshot (first by id on ties): the herding baseline."""

    name = "lowest_distance"

    def choose(self, snapshot: Snapshot, kind: TaskKind | str, *, inflight: Mapping[str, int],
               rng: random.Random, exclude: frozenset[str] = NO_EXCLUDE) -> str:
        """The least loaded candidate as the (possibly stale) snapshot saw it."""
        pool = candidates(snapshot, exclude, kind=TaskKind.parse(kind))
        return min(pool, key=lambda v: v.distance).id


class ThesisPolicy:
    """The thesis's state-feedback dispatch, as written (see the module docstring)."""

    name = "thesis"

    def __init__(self, config: BalancerConfig) -> None:
        self.config = config

    def choose(self, snapshot: Snapshot, kind: TaskKind | str, *, inflight: Mapping[str, int],
               rng: random.Random, exclude: frozenset[str] = NO_EXCLUDE) -> str:
        """The first admitted node of the preferred zone; PoolUnhealthy while the snapshot's LBH < 0."""
        kind = TaskKind.parse(kind)
        if snapshot.pool.paused:
            raise PoolUnhealthy(f"dispatch paused: LBH {snapshot.pool.lbh:.3f} < 0", lbh=snapshot.pool.lbh,
                                kind=kind.value)
        need = self.config.memory_need(kind)
        pool = [v for v in candidates(snapshot, exclude, kind=kind) if admits(v.memory_free_bytes, need)]
        for zone in zone_preference(kind):
            in_zone = [v for v in pool if v.zone == zone]
            if in_zone:
                return in_zone[0].id
        raise NoEligibleNode(f"no serving node has {need} bytes free for a {kind.value} task", kind=kind.value)


@dataclass(frozen=True)
class LiveNode:
    """A serving node re-evaluated at decision time with its live in-flight count."""

    view: NodeView
    inflight: int
    distance: float
    zone: str
    memory_free_bytes: int | None


class EspPolicy:
    """ESP's state-feedback dispatch: live zones, admission, LBH pause, two random choices (see module docstring)."""

    name = "esp"

    def __init__(self, config: BalancerConfig) -> None:
        self.config = config

    def live_view(self, snapshot: Snapshot, inflight: Mapping[str, int], kind: TaskKind) -> tuple[list[LiveNode], float]:
        """Serving nodes re-evaluated with live in-flight counts, and the live LBH."""
        weights = snapshot.pool.weights
        dis_ave = snapshot.pool.dis_ave
        need = self.config.memory_need(kind)
        live_nodes: list[LiveNode] = []
        health = 0.0
        for view in snapshot.nodes:
            live = _live(view, inflight)
            d = view.distance
            if "inflight" in weights:
                d = distance({**view.state, "inflight": inflight_value(live, self.config)}, weights)
            free = view.memory_free_bytes
            if free is not None:
                # Tasks placed since the sample will take their share before the next one shows it.
                free = max(free - max(live - view.inflight, 0) * need, 0)
            if view.is_serving:
                live_nodes.append(LiveNode(view, live, d, zone_of(d, dis_ave), free))
                health += dis_ave - d
            elif snapshot.pool.lbh_over == "all":
                health += dis_ave - d
        return live_nodes, health

    def choose(self, snapshot: Snapshot, kind: TaskKind | str, *, inflight: Mapping[str, int],
               rng: random.Random, exclude: frozenset[str] = NO_EXCLUDE) -> str:
        """The better of two random admitted nodes of the preferred live zone; PoolUnhealthy while live LBH < 0."""
        kind = TaskKind.parse(kind)
        candidates(snapshot, exclude, kind=kind)  # raises NoEligibleNode when nothing serves
        live_nodes, health = self.live_view(snapshot, inflight, kind)
        if is_paused(health):
            raise PoolUnhealthy(f"dispatch paused: live LBH {health:.3f} < 0", lbh=health, kind=kind.value)
        need = self.config.memory_need(kind)
        pool = [n for n in live_nodes if n.view.id not in exclude and admits(n.memory_free_bytes, need)]
        preferred, other = ([n for n in pool if n.zone == zone] for zone in zone_preference(kind))
        if not preferred and not other:
            raise NoEligibleNode(f"no serving node has {need} bytes free for a {kind.value} task", kind=kind.value)
        if not preferred:
            return _two_choices(other, rng, _esp_cost).view.id
        best = _two_choices(preferred, rng, _esp_cost)
        spill = self.config.spill_ratio
        if other and spill is not None:
            # Reads that prefer zone II make its nodes busier and keep them there: without
            # this guard a lone zone-II node would draw every read (positive feedback).
            alternative = _two_choices(other, rng, _esp_cost)
            if _esp_cost(best) > spill * _esp_cost(alternative):
                return alternative.view.id
        return best.view.id


def _esp_cost(node: LiveNode) -> float:
    """ESP's load estimate of a node: live in-flight work, weighed up by its live distance."""
    return (node.inflight + 1) * (1.0 + node.distance)


def make_policy(name: str, config: BalancerConfig | None = None) -> Policy:
    """The policy called ``name`` (one of POLICY_NAMES), set up with ``config`` (default BalancerConfig())."""
    config = config if config is not None else BalancerConfig()
    if name == "esp":
        return EspPolicy(config)
    if name == "thesis":
        return ThesisPolicy(config)
    if name == "round_robin":
        return RoundRobinPolicy()
    if name == "random":
        return RandomPolicy()
    if name == "least_inflight":
        return LeastInflightPolicy()
    if name == "latency":
        return LatencyPolicy()
    if name == "lowest_distance":
        return LowestDistancePolicy()
    raise ValueError(f"unknown balancer policy {name!r}; expected one of {', '.join(POLICY_NAMES)}")


def answering_ids(snapshot: Snapshot | None) -> list[str]:
    """Ids of nodes that answered their probe and are "up" (not draining or recycling), zones ignored.

    These are the stale-snapshot fallback's candidates.
    """
    if snapshot is None:
        return []
    return [n.id for n in snapshot.nodes if n.is_answering and n.status == STATUS_UP]


def choose_fallback(node_ids: Sequence[str], *, inflight: Mapping[str, int], rng: random.Random,
                    exclude: frozenset[str] = NO_EXCLUDE) -> str:
    """Stale-snapshot fallback: of two random nodes among ``node_ids`` (known to answer), the one with fewer in flight.

    Zones, distances and LBH are ignored: they are too old to trust, while the
    caller's list of answering nodes and the live counts are current.
    """
    pool = sorted({i for i in node_ids if i not in exclude})
    if not pool:
        raise NoEligibleNode("no answering node to fall back on")
    return _two_choices(pool, rng, lambda i: float(max(inflight.get(i, 0), 0)))


@dataclass(frozen=True)
class Choice:
    """Where a task goes, and whether the stale-snapshot fallback chose it."""

    node_id: str
    fallback: bool
    zone: str | None  # the node's zone in the snapshot; None under the fallback


def route(policy: Policy, snapshot: Snapshot | None, kind: TaskKind | str, *, now: float, max_age: float,
          inflight: Mapping[str, int], rng: random.Random, exclude: frozenset[str] = NO_EXCLUDE,
          answering: Sequence[str] | None = None) -> Choice:
    """Choose with ``policy`` while the snapshot is fresh, else fall back to answering nodes.

    ``answering`` lists nodes the caller knows answer now (e.g. a fresh probe); by
    default the fallback uses the nodes that answered in the stale snapshot.
    """
    if snapshot is not None and not is_stale(snapshot, now, max_age):
        node_id = policy.choose(snapshot, kind, inflight=inflight, rng=rng, exclude=exclude)
        view = snapshot.node(node_id)
        return Choice(node_id=node_id, fallback=False, zone=view.zone if view else None)
    ids = list(answering) if answering is not None else answering_ids(snapshot)
    return Choice(node_id=choose_fallback(ids, inflight=inflight, rng=rng, exclude=exclude), fallback=True, zone=None)


def _argmin_random(items: Sequence[T], cost: Callable[[T], float], rng: random.Random) -> T:
    best = min(cost(i) for i in items)
    return rng.choice([i for i in items if cost(i) == best])


def _two_choices(items: Sequence[T], rng: random.Random, cost: Callable[[T], float]) -> T:
    if len(items) == 1:
        return items[0]
    first, second = rng.sample(list(items), 2)
    return second if cost(second) < cost(first) else first
