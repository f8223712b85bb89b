"""Containers' CPU and memory: sampled from their cgroup files, or through the engine when those are out of reach.

Resource state comes from the container's cgroup files when this process can see them (a local
engine): ``stats(stream=False)`` takes 1-2 s per call on dockerd, too slow to sample 8 nodes every
second. The SDK (``one_shot`` stats) is the fallback for engines whose cgroups are out of reach.
CPU is delta(CPU time) / delta(sample time) / the container's CPU allowance: the formula that
holds on dockerd and on Podman (whose stats answer lacks the fields of docker's own formula).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from nodes.base import ResourceStats
from nodes.docker.cgroups import UNLIMITED, Cgroup, cgroup_of, read_cgroup
from nodes.docker.engine import ENGINE_ERRORS, short_error

log = logging.getLogger(__name__)

#: (CPU time in ns, monotonic ns of the reading, memory in use, memory limit or 0)
Sample = tuple[int, int, int, int]


@dataclass
class Tracked:
    """What the sampler remembers about one running container between two samples."""

    container_id: str
    pid: int
    cpus: float  # the container's CPU allowance in cores
    memory_limit: int
    cgroup: Cgroup | None
    prev_ns: int = 0  # CPU time at the previous sample
    prev_at: int = 0  # monotonic ns of the previous sample
    last: ResourceStats | None = None  # answered again when the engine is too slow to sample


class EngineBusy(Exception):
    """The engine did not answer a stats call in time: the container's state is unknown, not dead."""


def parse_time(value: Any) -> int:
    """An engine timestamp (RFC 3339 with nanoseconds) as ns since the epoch; 0 when absent."""
    if not value or str(value).startswith("0001-"):
        return 0
    text = str(value)
    match = re.match(r"(.*?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if not match:
        return 0
    base, fraction, zone = match.groups()
    try:
        moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return 0
    nanos = int((fraction or "0").ljust(9, "0")[:9])
    return int(moment.timestamp()) * 1_000_000_000 + nanos


def cpu_allowance(host_config: Mapping[str, Any], cpu_count: int) -> float:
    """The cores a container may use, from its HostConfig (NanoCpus, or CpuQuota / CpuPeriod; else every core)."""
    if host_config.get("NanoCpus"):
        return float(host_config["NanoCpus"]) / 1e9
    if host_config.get("CpuQuota") and host_config.get("CpuPeriod"):
        return float(host_config["CpuQuota"]) / float(host_config["CpuPeriod"])
    return float(cpu_count)


def parse_engine_stats(raw: Mapping[str, Any]) -> tuple[int, int, int, int] | None:
    """(CPU ns, the engine's read stamp in ns since the epoch or 0, memory in use, limit or 0) of a stats answer.

    None for a stopped container, which answers with empty counters. Memory in use leaves out
    inactive page cache, as ``docker stats`` does.
    """
    cpu_ns = int(((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0)
    read = parse_time(raw.get("read"))
    if not cpu_ns and not read:
        return None
    mem = raw.get("memory_stats") or {}
    detail = mem.get("stats") or {}
    inactive = int(detail.get("total_inactive_file", detail.get("inactive_file", 0)) or 0)
    memory = max(int(mem.get("usage") or 0) - inactive, 0)
    limit = int(mem.get("limit") or 0)
    return cpu_ns, read, memory, 0 if limit >= UNLIMITED else limit


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists here."""
    return pid > 0 and os.path.exists(f"/proc/{pid}")


class ContainerSampler:
    """CPU (share of the container's CPU limit) and memory (use / limit) of containers, sample to sample."""

    def __init__(self, client: docker.DockerClient, *, read_cgroups: bool = True, default_limit: int) -> None:
        self.client = client
        self.read_cgroups = read_cgroups
        self.default_limit = default_limit
        self._tracked: dict[str, Tracked] = {}  # container ref -> sampling state
        self._lock = threading.Lock()
        self._cpu_count = os.cpu_count() or 1
        self._one_shot: bool | None = True

    def stats(self, ref: str) -> ResourceStats:
        """The container's CPU since the previous sample, and memory now (alive=False when it is not running)."""
        tracked = self._tracked.get(ref)
        if tracked is not None and not pid_alive(tracked.pid):
            tracked = None  # restarted or stopped since: its cgroup counters started over
        if tracked is None:
            tracked = self._track(ref)
            if tracked is None:
                return ResourceStats(alive=False, memory_limit_bytes=self.default_limit)
        try:
            sample = self._read(tracked, ref)
        except EngineBusy:
            # A slow engine says nothing about the node (its port still answers): keep the last known state.
            return tracked.last or ResourceStats(alive=True, memory_limit_bytes=tracked.memory_limit)
        if sample is None:
            self.forget(ref)
            return ResourceStats(alive=False, memory_limit_bytes=tracked.memory_limit)
        cpu_ns, at_ns, memory, limit = sample
        limit = limit or tracked.memory_limit
        elapsed = at_ns - tracked.prev_at
        used = cpu_ns - tracked.prev_ns
        # delta(CPU time) / delta(sample time) / allowance: the formula that holds on dockerd and Podman.
        cpu = used / elapsed / tracked.cpus if elapsed > 0 and used >= 0 else 0.0
        tracked.prev_ns, tracked.prev_at = cpu_ns, at_ns
        tracked.last = ResourceStats(alive=True, cpu=cpu, memory=memory / limit, memory_bytes=memory, memory_limit_bytes=limit)
        return tracked.last

    def reads_cgroup(self, ref: str) -> bool:
        """True when the container is sampled from its cgroup files (a fast read, no engine call)."""
        tracked = self._tracked.get(ref)
        return bool(tracked and tracked.cgroup)

    def prime(self, container: Container) -> None:
        """Take the first CPU sample now, so the next stats() measures from readiness, not anvil's start-up burst."""
        tracked = self._track_container(str(container.id), container)
        if tracked is None or tracked.cgroup is None:
            return  # the engine path keeps the since-start baseline: a stats call there takes up to a second
        sample = self._read(tracked, str(container.id))
        if sample is not None:
            tracked.prev_ns, tracked.prev_at = sample[0], sample[1]

    def forget(self, ref: str) -> None:
        """Drop what is known of a container (stopped or restarted: its counters start over)."""
        with self._lock:
            self._tracked.pop(ref, None)

    def clear(self) -> None:
        """Forget every container."""
        with self._lock:
            self._tracked.clear()

    def _track(self, ref: str) -> Tracked | None:
        """Inspect a running container once: its pid, limits and cgroup; the baseline is its start."""
        try:
            container = self.client.containers.get(ref)
        except docker.errors.NotFound:
            return None
        except ENGINE_ERRORS as exc:
            log.warning("cannot inspect %s: %s", ref, short_error(exc))
            return None
        return self._track_container(ref, container)

    def _track_container(self, ref: str, container: Container) -> Tracked | None:
        state = container.attrs.get("State") or {}
        pid = int(state.get("Pid") or 0)
        if not state.get("Running") or pid <= 0:
            return None
        hc = container.attrs.get("HostConfig") or {}
        cpus = cpu_allowance(hc, self._cpu_count)
        memory_limit = int(hc.get("Memory") or 0) or self.default_limit
        cgroup = cgroup_of(pid) if self.read_cgroups else None
        # The first sample measures from the container's start: its CPU counter began there at 0.
        now_wall, now_mono = time.time_ns(), time.monotonic_ns()
        started = parse_time(state.get("StartedAt"))
        prev_at = now_mono - (now_wall - started) if started else now_mono
        tracked = Tracked(str(container.id), pid, cpus, memory_limit, cgroup, prev_ns=0, prev_at=prev_at)
        with self._lock:
            self._tracked[ref] = tracked
        return tracked

    def _read(self, tracked: Tracked, ref: str) -> Sample | None:
        """(CPU ns, monotonic ns, memory in use, memory limit or 0), or None when the container is gone."""
        if tracked.cgroup is not None:
            try:
                cpu_ns, memory, limit = read_cgroup(tracked.cgroup)
                return cpu_ns, time.monotonic_ns(), memory, limit
            except (OSError, ValueError):
                return None  # runc removes a container's cgroup when it stops
        return self._read_engine(tracked)

    def _read_engine(self, tracked: Tracked) -> Sample | None:
        """The SDK fallback: one ``one_shot`` stats call (no wait for a second sample), timed by its ``read`` stamp.

        Measured on dockerd 20.10: still ~1 s per call (it waits for its collector's next tick), hence stats_many.
        """
        try:
            try:
                raw: dict[str, Any] = self.client.api.stats(tracked.container_id, stream=False, one_shot=self._one_shot)
            except docker.errors.InvalidVersion:
                self._one_shot = None  # an engine older than API 1.41: plain stats (two collector ticks)
                raw = self.client.api.stats(tracked.container_id, stream=False)
        except docker.errors.NotFound:
            return None
        except ENGINE_ERRORS as exc:
            log.warning("stats of %s failed: %s", tracked.container_id[:12], short_error(exc))
            raise EngineBusy from None
        parsed = parse_engine_stats(raw)
        if parsed is None:
            return None
        cpu_ns, read, memory, limit = parsed
        # Map the engine's wall-clock stamp onto our monotonic clock so deltas stay consistent.
        at_ns = time.monotonic_ns() - (time.time_ns() - read) if read else time.monotonic_ns()
        return cpu_ns, at_ns, memory, limit
