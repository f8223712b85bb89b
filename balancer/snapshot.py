"""The pool's state at one instant: every node's vector, distance and zone, and the pool's Dis_ave and LBH.

The monitor builds one per beat and stores ``to_dict()`` (JSON-safe) in Redis; the
router and the API read it back with ``from_dict``. It ages: ``age``/``is_stale``
tell the reader when to stop trusting it (then see ``policies.answering_ids`` and
``policies.choose_fallback``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from balancer.calibration import Calibrator
from balancer.config import BalancerConfig
from balancer.state import STATUS_DOWN, NodeSample, distance, normalise, pool_max_head
from balancer.zones import SERVING_ZONES, ZONE_III, classify, is_paused, lbh


@dataclass(frozen=True)
class NodeView:
    """One node as the snapshot shows it."""

    id: str
    url: str
    backend: str
    status: str
    alive: bool
    state: Mapping[str, float]  # dimension -> 0..1
    distance: float
    zone: str  # "I", "II", "III"
    zone_reason: str | None  # why zone III; None otherwise
    inflight: int
    head: int | None
    lag: int | None  # blocks behind the pool's highest head; None when unknown
    latency_ms: float | None
    error_rate: float
    memory_free_bytes: int | None  # None when the node's memory limit is unknown

    @property
    def is_serving(self) -> bool:
        """True for zones I and II: the node may take work."""
        return self.zone in SERVING_ZONES

    @property
    def is_answering(self) -> bool:
        """True when the node runs, answered its probe and is not marked down (zones ignored)."""
        return self.alive and self.latency_ms is not None and self.status != STATUS_DOWN

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "id": self.id, "url": self.url, "backend": self.backend, "status": self.status,
            "alive": self.alive, "state": dict(self.state), "distance": self.distance, "zone": self.zone,
            "zone_reason": self.zone_reason, "inflight": self.inflight, "head": self.head, "lag": self.lag,
            "latency_ms": self.latency_ms, "error_rate": self.error_rate,
            "memory_free_bytes": self.memory_free_bytes,
            "serving": self.is_serving,  # derived, for readers of the stored snapshot (the API, esp)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeView:
        """Inverse of ``to_dict`` (the derived ``serving`` is computed again, not read)."""
        return cls(
            id=data["id"], url=data["url"], backend=data["backend"], status=data["status"],
            alive=bool(data["alive"]), state={k: float(v) for k, v in data["state"].items()},
            distance=float(data["distance"]), zone=data["zone"], zone_reason=data.get("zone_reason"),
            inflight=int(data["inflight"]), head=data.get("head"), lag=data.get("lag"),
            latency_ms=data.get("latency_ms"), error_rate=float(data.get("error_rate", 0.0)),
            memory_free_bytes=data.get("memory_free_bytes"),
        )


@dataclass(frozen=True)
class PoolView:
    """The pool as a whole: calibration, boundary, health index and the policy in force."""

    dis_ave: float
    dis_ave_min: float
    dis_ave_max: float
    calibration_source: str  # "configured", "learned" or "default" (the weaker of the two bounds)
    lbh: float
    paused: bool  # LBH < 0: the state-feedback policies do not dispatch
    lbh_over: str  # "serving" or "all": which nodes LBH sums over
    policy: str
    weights: Mapping[str, float]  # the dimensions in force and their weights
    max_head: int | None
    taken_at: float  # the monitor's clock (seconds since the epoch) when sampled

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "dis_ave": self.dis_ave, "dis_ave_min": self.dis_ave_min, "dis_ave_max": self.dis_ave_max,
            "calibration_source": self.calibration_source, "lbh": self.lbh, "paused": self.paused,
            "lbh_over": self.lbh_over, "policy": self.policy, "weights": dict(self.weights),
            "max_head": self.max_head, "taken_at": self.taken_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolView:
        """Inverse of ``to_dict`` (extra keys such as ``snapshot_age_s`` are ignored)."""
        return cls(
            dis_ave=float(data["dis_ave"]), dis_ave_min=float(data["dis_ave_min"]),
            dis_ave_max=float(data["dis_ave_max"]), calibration_source=data["calibration_source"],
            lbh=float(data["lbh"]), paused=bool(data["paused"]), lbh_over=data["lbh_over"],
            policy=data["policy"], weights={k: float(v) for k, v in data["weights"].items()},
            max_head=data.get("max_head"), taken_at=float(data["taken_at"]),
        )


@dataclass(frozen=True)
class Snapshot:
    """Every node's view (sorted by id) and the pool's; immutable."""

    nodes: tuple[NodeView, ...]
    pool: PoolView

    def node(self, node_id: str) -> NodeView | None:
        """The node with this id, or None."""
        for view in self.nodes:
            if view.id == node_id:
                return view
        return None

    def serving(self) -> list[NodeView]:
        """Nodes in zones I and II, in snapshot order."""
        return [n for n in self.nodes if n.is_serving]

    def is_eligible(self, node_id: str) -> bool:
        """True when the node is in zone I or II (a worker re-picks when its node is not)."""
        view = self.node(node_id)
        return view is not None and view.is_serving

    def to_dict(self, *, now: float | None = None) -> dict[str, Any]:
        """JSON-safe form; with ``now``, the pool also carries ``snapshot_age_s``."""
        pool = self.pool.to_dict()
        if now is not None:
            pool["snapshot_age_s"] = age(self, now)
        return {"nodes": [n.to_dict() for n in self.nodes], "pool": pool}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        """Inverse of ``to_dict``."""
        return cls(nodes=tuple(NodeView.from_dict(n) for n in data["nodes"]), pool=PoolView.from_dict(data["pool"]))


def build_snapshot(samples: Iterable[NodeSample], config: BalancerConfig, calibration: Calibrator,
                   policy_name: str, now: float) -> Snapshot:
    """Normalise, measure and zone every sampled node, and compute the pool's LBH at time ``now``."""
    ordered: Sequence[NodeSample] = sorted(samples, key=lambda s: s.node_id)
    ids = [s.node_id for s in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate node ids in samples: {ids}")
    dis_ave = calibration.dis_ave
    max_head = pool_max_head(ordered)
    views = []
    for sample in ordered:
        state = normalise(sample, config, max_head)
        d = distance(state, config.weights)
        zone, reason = classify(sample, d, dis_ave, config)
        lag = max_head - sample.head if max_head is not None and sample.head is not None else None
        views.append(NodeView(
            id=sample.node_id, url=sample.url, backend=sample.backend, status=sample.status,
            alive=sample.alive, state=state, distance=d, zone=zone, zone_reason=reason,
            inflight=sample.inflight, head=sample.head, lag=lag, latency_ms=sample.latency_ms,
            error_rate=sample.error_rate, memory_free_bytes=sample.memory_free_bytes,
        ))
    counted = views if config.lbh_over == "all" else [v for v in views if v.zone != ZONE_III]
    health = lbh(dis_ave, (v.distance for v in counted))
    pool = PoolView(
        dis_ave=dis_ave, dis_ave_min=calibration.dis_ave_min, dis_ave_max=calibration.dis_ave_max,
        calibration_source=calibration.source, lbh=health, paused=is_paused(health),
        lbh_over=config.lbh_over, policy=policy_name, weights=dict(config.weights),
        max_head=max_head, taken_at=now,
    )
    return Snapshot(nodes=tuple(views), pool=pool)


def age(snapshot: Snapshot, now: float) -> float:
    """Seconds since the snapshot was taken (0 when clocks disagree and ``now`` is earlier)."""
    return max(now - snapshot.pool.taken_at, 0.0)


def is_stale(snapshot: Snapshot | None, now: float, max_age: float) -> bool:
    """True when there is no snapshot or it is older than ``max_age`` seconds."""
    return snapshot is None or age(snapshot, now) > max_age
