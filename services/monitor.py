"""The pool monitor: one sample of every node per beat, turned into the balancer's snapshot.

Every node is sampled concurrently, bounded by ESP_PROBE_TIMEOUT (capped at 0.6 of
the monitor interval, so even a hung node leaves the sample inside its beat; 8
healthy nodes take about 10 ms here):

    resources    from the node's backend: psutil for processes, cgroups or the engine for
                 containers; nothing for static nodes (their liveness is the probe). The
                 backend objects live as long as the process, because psutil's CPU counter
                 and the docker backend's cgroup baseline measure *between* two samples.
    probe        eth_blockNumber, timed: latency_ms and head. A failed probe counts as an
                 error and has no latency; one that failed at once is tried once more (a
                 pooled keep-alive connection to a restarted node breaks once without saying
                 anything about the node).
    errors       failed / all calls over Traffic's sliding window: real traffic and probes
    inflight     Traffic's live counts
    status       "draining"/"recycling" while the recycler's override says so; "down" when its
                 process or container is not alive, when the node manager reports it diverged,
                 or down *and* our probe failed too (the manager's follower loop also says
                 "down" while only the leader is unreachable), or when it is a follower *syncing* more than
                 ESP_BALANCER_LAG_SCALE blocks behind the pool's head: such a node answers, but
                 from an old chain, so it must take no work until it has caught up (the manager
                 reports "up" then; the recycler leaves it alone while its head advances);
                 otherwise "up". A follower a few blocks behind stays "up" and its lag
                 dimension says how far behind it is.

Then the calibration (kept in Redis between beats) learns from the sample, the
pure core builds the snapshot, and the monitor stores it with a TTL, appends a
compact entry to a bounded history for plots, and records an event whenever a
node's zone or status changes. A failing node is data, not an error: nothing
here raises because a node misbehaves.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge, Histogram

from balancer import STATUS_DOWN, STATUS_UP, BalancerConfig, Calibrator, NodeSample, Snapshot, build_snapshot
from errors import EspError, NodeUnreachable, RpcError
from nodepool.activity import activity_on, parse_activity
from nodepool.codec import as_text
from nodepool.events import record_event
from nodepool.pool import Pool
from nodepool.rpc import RpcClient, to_int
from nodepool.snapshot import CALIBRATION_KEY, NODE_STATUS_KEY, SNAPSHOT_HISTORY_KEY, SNAPSHOT_KEY, balancer_config
from nodepool.spec import NodeSpec
from nodepool.sync import DIVERGED, SYNC_KEY, SYNC_STOPPED, SYNCING, is_far_behind, parse_sync_statuses
from nodepool.traffic import Traffic
from nodes import make_backend
from nodes.base import NodeBackend, ResourceStats
from settings import Settings

log = logging.getLogger(__name__)

#: Entries kept in the snapshot history (10 minutes at the default 1 s interval).
HISTORY_LENGTH = 600
#: The snapshot expires after this many monitor intervals without a new sample.
SNAPSHOT_TTL_INTERVALS = 10
#: A probe may take at most this share of the monitor interval (a hung node must not delay the sample).
PROBE_SHARE_OF_INTERVAL = 0.6
#: Extra time the sample waits for its probes beyond their own timeout.
DEADLINE_GRACE = 0.2
#: A probe that failed faster than this share of its timeout is tried once more.
QUICK_FAILURE_SHARE = 0.25
#: Seconds a backend that could not be built (engine down) is left alone before trying again.
BACKEND_RETRY = 30.0
MONITOR_LOCK_KEY = "esp:monitor:lock"

SAMPLE_SECONDS = Histogram("esp_monitor_sample_seconds", "time one sample of the whole pool took (probes, stats, snapshot)",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
#: When the last snapshot was taken (Unix time): ``time() - this`` is how stale the pool's view is.
LAST_SAMPLE = Gauge("esp_monitor_last_sample_timestamp_seconds", "Unix time of the newest pool sample this process took",
                    multiprocess_mode="mostrecent")


@dataclass(frozen=True)
class Probe:
    """One timed eth_blockNumber against a node."""

    ok: bool
    latency_ms: float | None = None
    head: int | None = None
    error: str = ""


def probe_timeout(settings: Settings) -> float:
    """ESP_PROBE_TIMEOUT, capped below the monitor interval so a hung node cannot stretch the beat."""
    return min(settings.probe_timeout, PROBE_SHARE_OF_INTERVAL * settings.monitor_interval)


def probe_node(client: RpcClient) -> Probe:
    """Time eth_blockNumber on the node; never raises for a node's failure."""
    for attempt in (1, 2):
        started = time.perf_counter()
        try:
            head = to_int(client.call("eth_blockNumber"))
            return Probe(ok=True, latency_ms=(time.perf_counter() - started) * 1000.0, head=head)
        except NodeUnreachable as exc:
            quick = time.perf_counter() - started < client.timeout * QUICK_FAILURE_SHARE
            if attempt == 1 and quick:
                continue
            return Probe(ok=False, error=str(exc))
        except (RpcError, ValueError, TypeError) as exc:
            # It answered, but not with a block number: it cannot serve reads.
            return Probe(ok=False, error=str(exc))
    return Probe(ok=False, error="unreachable")  # pragma: no cover - the loop always returns


class ResourceSampler:
    """Resource stats from each node's backend, one backend object per kind for the life of the process.

    Build one per process and keep it: psutil's cpu_percent and the docker
    backend's cgroup counters report the use *since the previous sample* of the
    same object. Slow backends (the docker engine) run in a thread with a
    deadline; a node whose stats did not arrive in time keeps its last known
    stats rather than looking idle.
    """

    def __init__(self, settings: Settings, *, max_workers: int = 32) -> None:
        self.settings = settings
        self._backends: dict[str, NodeBackend | None] = {}
        self._failed_at: dict[str, float] = {}
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="esp-monitor")
        self._last: dict[str, ResourceStats] = {}
        self._pending: dict[str, Future[list[ResourceStats]]] = {}
        self._lock = threading.Lock()

    def backend(self, name: str) -> NodeBackend | None:
        """The backend measuring nodes of kind ``name``; None for static nodes or an engine that is down."""
        with self._lock:
            if name in self._backends:
                return self._backends[name]
            if time.monotonic() - self._failed_at.get(name, -BACKEND_RETRY) < BACKEND_RETRY:
                return None
            backend = self._build(name)
            if backend is None and name != "static":
                self._failed_at[name] = time.monotonic()
            else:
                self._backends[name] = backend
            return backend

    def _build(self, name: str) -> NodeBackend | None:
        try:
            if name in ("process", "docker"):
                return make_backend(self.settings.replace(node_backend=name))
        except EspError as exc:
            log.warning("cannot measure %s nodes: %s", name, exc)
        return None  # static: no process or container of ours to measure

    def measure(self, pool: Pool, specs: Sequence[NodeSpec]) -> tuple[dict[str, Probe], dict[str, ResourceStats | None]]:
        """Probe every node and read its resources, concurrently; returns within about ESP_PROBE_TIMEOUT."""
        timeout = probe_timeout(self.settings)
        deadline = time.monotonic() + timeout + DEADLINE_GRACE
        probes = {s.id: self._executor.submit(probe_node, pool.rpc(s, timeout=timeout)) for s in specs}
        stats: dict[str, ResourceStats | None] = {}
        slow: dict[str, tuple[Future[list[ResourceStats]], list[NodeSpec]]] = {}
        by_backend: dict[str, list[NodeSpec]] = {}
        for spec in specs:
            by_backend.setdefault(spec.backend, []).append(spec)
        for name, group in by_backend.items():
            backend = self.backend(name)
            if backend is None:
                stats.update({s.id: None for s in group})
            elif hasattr(backend, "stats_many"):
                # The engine may take a second or more: in a thread, one call in flight at a time.
                running = self._pending.get(name)
                if running is None or running.done():
                    running = self._pending[name] = self._executor.submit(backend.stats_many, group)
                slow[name] = (running, group)
            else:
                # psutil reads /proc: sub-millisecond, done here while the probes fly.
                stats.update({s.id: self._safe_stats(backend, s) for s in group})
        pending: list[Future[Any]] = [*probes.values(), *(f for f, _ in slow.values())]
        wait_futures(pending, timeout=max(deadline - time.monotonic(), 0.0))
        for running, group in slow.values():
            fresh = running.result() if running.done() and running.exception() is None else None
            for i, spec in enumerate(group):
                if fresh is not None and i < len(fresh):
                    stats[spec.id] = fresh[i]
                else:
                    stats[spec.id] = self._last.get(spec.id)
        for node_id, value in stats.items():
            if value is not None:
                self._last[node_id] = value
        results = {
            node_id: f.result() if f.done() else Probe(ok=False, error=f"no answer within {timeout:g} s")
            for node_id, f in probes.items()
        }
        return results, stats

    @staticmethod
    def _safe_stats(backend: NodeBackend, spec: NodeSpec) -> ResourceStats | None:
        try:
            return backend.stats(spec)
        except (EspError, OSError) as exc:
            log.warning("stats of %s: %s", spec.id, exc)
            return None

    def close(self) -> None:
        """Stop the worker threads and release the backends' clients."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        for backend in self._backends.values():
            if backend is not None and backend.name == "docker":
                backend.close()  # the process backend's close() would stop children it does not have


def _finite(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0


def node_status(probe: Probe, stats: ResourceStats | None, *, override: str | None,
                sync: Mapping[str, Any] | None, max_head: int | None, lag_scale: int) -> tuple[str, bool]:
    """The node's status word and whether it is alive (see the module docstring)."""
    alive = stats.alive if stats is not None else probe.ok
    if override:
        return override, alive
    if not alive:
        return STATUS_DOWN, alive
    record = sync or {}
    if record.get("status") == DIVERGED:
        return STATUS_DOWN, alive
    if record.get("status") == SYNC_STOPPED and not probe.ok:
        # Only with our own failed probe: the manager's follower loop also reports a
        # follower "down" while the *leader* does not answer, and that follower still serves.
        return STATUS_DOWN, alive
    if record.get("status") == SYNCING:
        if probe.head is not None and max_head is not None:
            behind = max_head - probe.head > lag_scale
        else:
            behind = is_far_behind(record, lag_scale)
        if behind:
            return STATUS_DOWN, alive
    return STATUS_UP, alive


def load_calibration(raw: bytes | str | None, config: BalancerConfig) -> Calibrator:
    """The stored calibration under the current config; a fresh one when none (or an unreadable one) is stored."""
    if raw:
        try:
            stored = json.loads(raw)
            if not isinstance(stored, dict):
                raise TypeError(f"a JSON {type(stored).__name__}, not an object")
            return Calibrator.from_dict(stored).reconcile(config)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("stored calibration unreadable (%s): starting over", exc)
    return Calibrator.start(config)


def sample_pool(pool: Pool, backend_stats: ResourceSampler, *, now: float | None = None, queues: Sequence[str] = ()) -> Snapshot:
    """Sample every registered node, store the new snapshot, its history entry and any events; return it.

    The history entry also carries the platform's running totals and the lengths of ``queues``
    (``nodepool.activity``), read in the same round trip as the previous snapshot.
    """
    started = time.perf_counter()
    settings = pool.settings
    config = balancer_config(settings)
    traffic = Traffic(pool.redis)
    specs = pool.nodes()
    ids = [s.id for s in specs]

    pipe = pool.redis.pipeline(transaction=False)
    pipe.get(SNAPSHOT_KEY)
    pipe.get(CALIBRATION_KEY)
    pipe.hgetall(NODE_STATUS_KEY)
    pipe.hgetall(SYNC_KEY)
    activity_on(pipe, queues)
    raw_previous, raw_calibration, raw_overrides, raw_sync, *raw_activity = pipe.execute()
    activity = parse_activity(raw_activity, queues)
    overrides = {as_text(k): as_text(v) for k, v in (raw_overrides or {}).items()}
    sync = parse_sync_statuses(raw_sync)

    previous = _previous_nodes(raw_previous)
    for spec in specs:
        before = previous.get(spec.id)
        if before is not None and before.get("generation", spec.generation) != spec.generation:
            traffic.forget(spec.id)  # restarted since the last sample: the old process's errors are not its own
    probes, stats = backend_stats.measure(pool, specs)
    traffic.record_many({node_id: probe.ok for node_id, probe in probes.items()})
    live = traffic.inflight(ids)
    outcomes = traffic.outcomes(ids)

    heads = [p.head for p in probes.values() if p.ok and p.head is not None]
    max_head = max(heads) if heads else None
    samples = []
    for spec in specs:
        probe, st = probes[spec.id], stats.get(spec.id)
        status, alive = node_status(probe, st, override=overrides.get(spec.id), sync=sync.get(spec.id),
                                    max_head=max_head, lag_scale=settings.balancer_lag_scale)
        requests, errors = outcomes.get(spec.id, (0, 0))
        samples.append(NodeSample(
            node_id=spec.id, url=spec.url, backend=spec.backend, status=status, alive=alive,
            cpu=_finite(st.cpu) if st else 0.0, memory=_finite(st.memory) if st else 0.0,
            memory_bytes=max(st.memory_bytes, 0) if st else 0, memory_limit_bytes=max(st.memory_limit_bytes, 0) if st else 0,
            latency_ms=probe.latency_ms if probe.ok else None,
            error_rate=errors / requests if requests else 0.0,
            head=probe.head if probe.ok else None,
            inflight=live.get(spec.id, 0),
        ))

    calibration = load_calibration(raw_calibration, config).observe(samples, config)
    taken_at = time.time() if now is None else now
    snapshot = build_snapshot(samples, config, calibration, settings.balancer_policy, taken_at)

    document = snapshot.to_dict()
    by_id = {s.id: s for s in specs}
    sample_of = {s.node_id: s for s in samples}
    for node in document["nodes"]:
        spec, sample = by_id[node["id"]], sample_of[node["id"]]
        record = sync.get(node["id"]) or {}
        node["role"] = spec.role
        node["generation"] = spec.generation
        node["sync"] = record.get("status")
        node["raw"] = {"cpu": sample.cpu, "memory": sample.memory, "memory_bytes": sample.memory_bytes,
                       "memory_limit_bytes": sample.memory_limit_bytes}
        if not probes[node["id"]].ok:
            node["probe_error"] = probes[node["id"]].error
    document["pool"]["calibration"] = calibration.to_dict()
    document["pool"]["sample_ms"] = round((time.perf_counter() - started) * 1000.0, 3)

    ttl_ms = max(int(SNAPSHOT_TTL_INTERVALS * settings.monitor_interval * 1000), 1000)
    pipe = pool.redis.pipeline(transaction=False)
    pipe.set(SNAPSHOT_KEY, json.dumps(document), px=ttl_ms)
    pipe.set(CALIBRATION_KEY, json.dumps(calibration.to_dict()))
    pipe.lpush(SNAPSHOT_HISTORY_KEY, json.dumps(history_entry(snapshot, activity)))
    pipe.ltrim(SNAPSHOT_HISTORY_KEY, 0, HISTORY_LENGTH - 1)
    pipe.execute()

    for view in snapshot.nodes:
        before = previous.get(view.id)
        if before is None:
            continue
        if before.get("status") != view.status:
            record_event(pool.redis, "status-changed", view.id, old=before.get("status"), new=view.status,
                         zone=view.zone, reason=view.zone_reason, distance=round(view.distance, 4))
        elif before.get("zone") != view.zone:
            record_event(pool.redis, "zone-changed", view.id, old=before.get("zone"), new=view.zone,
                         reason=view.zone_reason, distance=round(view.distance, 4), dis_ave=round(snapshot.pool.dis_ave, 4))
    SAMPLE_SECONDS.observe(time.perf_counter() - started)
    LAST_SAMPLE.set(taken_at)
    log.debug("sampled %d nodes in %.1f ms", len(specs), document["pool"]["sample_ms"])
    return snapshot


def history_entry(snapshot: Snapshot, activity: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The compact form of a snapshot kept in the history: per node distance, zone, status and state, and the
    platform's ``activity`` when given (running totals and queue lengths: ``nodepool.activity.parse_activity``)."""
    pool = snapshot.pool
    entry: dict[str, Any] = {
        "t": round(pool.taken_at, 3), "lbh": round(pool.lbh, 4), "dis_ave": round(pool.dis_ave, 4), "paused": pool.paused,
        "nodes": {
            n.id: {"d": round(n.distance, 4), "z": n.zone, "s": n.status, "i": n.inflight,
                   "x": {k: round(v, 4) for k, v in n.state.items()}}
            for n in snapshot.nodes
        },
    }
    if activity is not None:
        entry["activity"] = dict(activity)
    return entry


def _previous_nodes(raw: bytes | str | None) -> dict[str, dict[str, Any]]:
    if not raw:
        return {}
    try:
        return {n["id"]: n for n in json.loads(raw).get("nodes", [])}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}
