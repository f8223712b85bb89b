"""The ``docker`` backend: each node an anvil container, run and measured through the ``docker`` SDK.

Containers use host networking on loopback ports (bridge addresses are private-range, and ESP
only talks to 127.0.0.0/8), a memory and CPU limit, a read-only root file system and tmpfs mounts
for anvil's cache and HOME (anvil wrote 200-450 MB into a container's layer after ~6,000 blocks
here). The image is built locally, ``FROM scratch``, by :func:`build_image`.

Resource state comes from the container's cgroup files when this process can see them (a local
engine): ``stats(stream=False)`` takes 1-2 s per call on dockerd, too slow to sample 8 nodes every
second. The SDK (``one_shot`` stats) is the fallback for engines whose cgroups are out of reach.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils
import psutil
import requests.exceptions
from docker.models.containers import Container

from errors import ConfigError, NodeStartError, NodeUnreachable
from nodepool.rpc import RpcClient
from nodepool.spec import ROLE_FOLLOWER, ROLE_LEADER, NodeSpec
from nodes.anvil import anvil_args, find_anvil
from nodes.base import ResourceStats
from nodes.process import claim_port, wait_until_answers
from settings import ROOT, Settings

log = logging.getLogger(__name__)

DOCKERFILE = ROOT / "compose" / "anvil.Dockerfile"
IMAGE_BINARY = "/usr/local/bin/anvil"
CACHE_DIR = Path("/cache")  # tmpfs in the container: anvil's --cache-path
HOME_DIR = "/home"  # tmpfs in the container: anvil's ~/.foundry
TMP_DIR = "/tmp"  # noqa: S108 - a private tmpfs inside the container, not the host's /tmp
LABEL_NODE = "esp.node"
LABEL_RUN = "esp.run"
LABEL_BINARY = "esp.anvil.sha256"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5  # seconds anvil gets to exit on SIGTERM before the engine kills it
BUILD_TIMEOUT = 300.0
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a number near 2**63
_ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


# -- the engine -------------------------------------------------------------


def dockerd_socket(settings: Settings) -> Path:
    """The socket scripts/dockerd.sh gives its engine (run folder / dockerd / docker.sock)."""
    return settings.run_dir / "dockerd" / "docker.sock"


def engine_url(settings: Settings, docker_host: str | None = None) -> str:
    """Where the engine is: the argument, ESP_DOCKER_HOST, DOCKER_HOST, scripts/dockerd.sh's socket or the system one."""
    if docker_host:
        return docker_host
    configured = str(getattr(settings, "docker_host", "") or "")
    if configured:
        return configured
    # The SDK reads DOCKER_HOST (and its TLS variables) itself; settings.py stays the only reader of ESP_ ones.
    from_env = docker.utils.kwargs_from_env().get("base_url")
    if from_env:
        return str(from_env)
    ours = dockerd_socket(settings)
    if ours.exists() or not Path("/var/run/docker.sock").exists():
        return f"unix://{ours}"
    return "unix:///var/run/docker.sock"


def unix_socket_problem(url: str, timeout: float = 2.0) -> str | None:
    """Why nothing accepts connections on a ``unix://`` engine URL, or None when something does (or it is not unix)."""
    if not url.startswith("unix://"):
        return None
    path = url[len("unix://"):]
    if not os.path.exists(path):
        return f"{path} does not exist"
    # Our own probe, closed whatever happens: the SDK's unix adapter leaks its socket when connect() fails.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except OSError as exc:
            return exc.strerror or type(exc).__name__
    return None


def connect(settings: Settings, docker_host: str | None = None) -> docker.DockerClient:
    """A client of the engine whose every call is bounded by ESP_DOCKER_TIMEOUT; ConfigError if none answers."""
    url = engine_url(settings, docker_host)
    hint = f"no container engine answers at {url}: run scripts/dockerd.sh start (or set DOCKER_HOST)"
    problem = unix_socket_problem(url, timeout=min(settings.docker_timeout, 2.0))
    if problem:
        raise ConfigError(f"{hint} ({problem})")
    try:
        if docker_host is None and url == docker.utils.kwargs_from_env().get("base_url"):
            client = docker.DockerClient(**docker.utils.kwargs_from_env(), timeout=settings.docker_timeout)
        else:
            client = docker.DockerClient(base_url=url, timeout=settings.docker_timeout)
    except _ENGINE_ERRORS as exc:
        raise ConfigError(f"{hint} ({_short(exc)})") from None
    try:
        client.ping()
    except _ENGINE_ERRORS as exc:
        client.close()
        raise ConfigError(f"{hint} ({_short(exc)})") from None
    return client


# -- the image --------------------------------------------------------------


def shared_libraries(binary: Path) -> list[Path]:
    """The shared libraries ``ldd`` lists for ``binary``, dynamic loader included (empty if static)."""
    try:
        out = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeStartError(f"cannot list the libraries of {binary} with ldd: {exc}") from None
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []
        raise NodeStartError(f"ldd {binary} failed: {out.stderr.strip() or out.stdout.strip()}")
    libs: list[Path] = []
    for line in out.stdout.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libs.append(Path(match.group(1)))
        elif "not found" in line:
            raise NodeStartError(f"{binary} needs a library this machine lacks: {line.strip()}")
    return libs


def file_digest(path: Path) -> str:
    """sha256 of a file, to tell whether an image holds this very binary."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_context(settings: Settings, dest: Path) -> Path:
    """Fill ``dest`` with the Dockerfile and a rootfs/ holding anvil and its libraries; return dest."""
    binary = find_anvil(settings)
    rootfs = dest / "rootfs"
    target = rootfs / IMAGE_BINARY.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, target)
    target.chmod(0o755)
    for lib in shared_libraries(binary):
        # The path ldd printed is the one the loader looks up; copy the file behind any symlink to it.
        copy = rootfs / str(lib).lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib.resolve(), copy)
        copy.chmod(0o755)
    (rootfs / HOME_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (rootfs / CACHE_DIR.relative_to("/")).mkdir(parents=True, exist_ok=True)
    (rootfs / TMP_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DOCKERFILE, dest / "Dockerfile")
    return dest


def build_image(settings: Settings, client: docker.DockerClient, *, tag: str | None = None) -> str:
    """Build ESP's anvil image (settings.docker_image) from the local anvil binary; return its id."""
    tag = tag or settings.docker_image
    binary = find_anvil(settings)
    digest = file_digest(binary)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="esp-image-") as tmp:
        context = build_context(settings, Path(tmp))
        try:
            image, _ = client.images.build(
                path=str(context),
                dockerfile="Dockerfile",
                tag=tag,
                rm=True,
                forcerm=True,
                labels={LABEL_BINARY: digest, "org.opencontainers.image.title": "esp-anvil"},
                # Sending the ~45 MB context can take longer than an ordinary engine call.
                timeout=int(max(settings.docker_timeout, BUILD_TIMEOUT)),
            )
        except docker.errors.BuildError as exc:
            lines = [str(c.get("stream") or c.get("error") or "").strip() for c in exc.build_log]
            raise NodeStartError(f"building {tag} failed: {exc.msg} ({' | '.join(x for x in lines if x)[-300:]})") from None
        except _ENGINE_ERRORS as exc:
            raise NodeStartError(f"building {tag} failed: {_short(exc)}") from None
    log.info("built %s (%s, %.1f MB) in %.2f s", tag, image.short_id, (image.attrs.get("Size") or 0) / 1e6, time.monotonic() - started)
    return str(image.id)


def ensure_image(settings: Settings, client: docker.DockerClient) -> str:
    """The image's id, building it first when it is missing or holds another anvil binary."""
    tag = settings.docker_image
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return build_image(settings, client)
    except _ENGINE_ERRORS as exc:
        raise NodeStartError(f"cannot inspect image {tag}: {_short(exc)}") from None
    built_from = (image.labels or {}).get(LABEL_BINARY)
    if built_from is None:
        return str(image.id)  # an image ESP did not build (ESP_DOCKER_IMAGE names another one): use it as is
    try:
        current = file_digest(find_anvil(settings))
    except ConfigError:
        return str(image.id)  # no local binary to compare with: the image is all we have
    if current != built_from:
        log.info("%s holds another anvil binary: rebuilding it", tag)
        return build_image(settings, client)
    return str(image.id)


# -- cgroup files -------------------------------------------------------------


@dataclass(frozen=True)
class _Cgroup:
    """Where one container's CPU and memory counters are, as this process sees them."""

    version: int
    cpu_file: Path  # v1 cpuacct.usage (ns); v2 cpu.stat (usage_usec)
    memory_dir: Path


def _cgroup_mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, root, mountpoint, controllers) of every cgroup mount this process sees."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            mounts.append((tail[0], fields[3], fields[4], set(tail[2].split(","))))
    return mounts


def _locate(path: str, mounts: list[tuple[str, str, str, set[str]]], fstype: str, controller: str | None) -> Path | None:
    for kind, root, mountpoint, options in mounts:
        if kind != fstype or (controller is not None and controller not in options):
            continue
        if path == root or path.startswith(root.rstrip("/") + "/"):
            found = Path(mountpoint) / path[len(root):].lstrip("/")
            if found.is_dir():
                return found
    return None


def cgroup_of(pid: int) -> _Cgroup | None:
    """The cgroup files of the process ``pid`` (v1 cpuacct+memory, or v2), None when out of reach."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        mounts = _cgroup_mounts()
    except OSError:
        return None
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2 = path
        for name in controllers.split(","):
            v1[name] = path
    if "cpuacct" in v1 and "memory" in v1:
        cpu_dir = _locate(v1["cpuacct"], mounts, "cgroup", "cpuacct")
        memory_dir = _locate(v1["memory"], mounts, "cgroup", "memory")
        if cpu_dir is not None and memory_dir is not None and (cpu_dir / "cpuacct.usage").is_file():
            return _Cgroup(1, cpu_dir / "cpuacct.usage", memory_dir)
    if v2 is not None:
        unified = _locate(v2, mounts, "cgroup2", None)
        if unified is not None and (unified / "cpu.stat").is_file() and (unified / "memory.current").is_file():
            return _Cgroup(2, unified / "cpu.stat", unified)
    return None


def _stat_value(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def read_cgroup(cg: _Cgroup) -> tuple[int, int, int]:
    """(CPU time in ns, memory in use, memory limit or 0) from a container's cgroup files."""
    memory_stat = (cg.memory_dir / "memory.stat").read_text()
    if cg.version == 1:
        cpu_ns = int(cg.cpu_file.read_text())
        usage = int((cg.memory_dir / "memory.usage_in_bytes").read_text())
        limit = int((cg.memory_dir / "memory.limit_in_bytes").read_text())
        inactive = _stat_value(memory_stat, "total_inactive_file")
    else:
        cpu_ns = _stat_value(cg.cpu_file.read_text(), "usage_usec") * 1000
        usage = int((cg.memory_dir / "memory.current").read_text())
        raw = (cg.memory_dir / "memory.max").read_text().strip()
        limit = 0 if raw == "max" else int(raw)
        inactive = _stat_value(memory_stat, "inactive_file")
    # Like `docker stats`: page cache the kernel can drop is not the node's memory. tmpfs (anvil's
    # cache) is shmem, not inactive file, so it stays counted against the limit, as it should.
    in_use = max(usage - inactive, 0)
    return cpu_ns, in_use, 0 if limit >= _UNLIMITED else limit


# -- the backend ----------------------------------------------------------------


@dataclass
class _Tracked:
    """What the backend remembers about one running container between two samples."""

    container_id: str
    pid: int
    cpus: float  # the container's CPU allowance in cores
    memory_limit: int
    cgroup: _Cgroup | None
    prev_ns: int = 0  # CPU time at the previous sample
    prev_at: int = 0  # monotonic ns of the previous sample
    last: ResourceStats | None = None  # answered again when the engine is too slow to sample


class _EngineBusy(Exception):
    """The engine did not answer a stats call in time: the container's state is unknown, not dead."""


class DockerBackend:
    """Runs each node as an anvil container on the local engine (dockerd; Podman's Docker API is untested here)."""

    name = "docker"
    manages = True

    def __init__(
        self,
        settings: Settings,
        *,
        docker_host: str | None = None,
        name_prefix: str = "esp-",
        read_cgroups: bool = True,
    ) -> None:
        self.settings = settings
        self.name_prefix = name_prefix
        self.read_cgroups = read_cgroups
        self.client = connect(settings, docker_host)
        self.url = engine_url(settings, docker_host)
        self._run_label = str(settings.run_dir.resolve())
        self._image_ready = False
        self._owned: dict[str, str] = {}  # node id -> container id started by this instance
        self._tracked: dict[str, _Tracked] = {}  # container id -> sampling state
        self._lock = threading.Lock()
        self._cpu_count = os.cpu_count() or 1
        self._one_shot: bool | None = True

    # -- lifecycle ----------------------------------------------------------

    def container_name(self, node_id: str) -> str:
        """The container's name for a node id."""
        return f"{self.name_prefix}{node_id}"

    def start(self, node_id: str, *, role: str, port: int | None = None) -> NodeSpec:
        """Run the node's container and return its record once it answers eth_chainId."""
        host = self.settings.node_host
        port = claim_port(host, port, node_id)
        if not self._image_ready:
            ensure_image(self.settings, self.client)
            self._image_ready = True
        name = self.container_name(node_id)
        self._remove_stale(name, node_id)
        cap_mb = self.settings.node_memory_cap_mb
        command = [str(a) for a in anvil_args(self.settings, port=port, role=role, cache_dir=CACHE_DIR)]
        started = time.monotonic()
        try:
            container = self.client.containers.run(
                self.settings.docker_image,
                command=command,
                name=name,
                labels={LABEL_NODE: node_id, LABEL_RUN: self._run_label, "esp.role": role},
                detach=True,
                network_mode="host",  # loopback ports only; bridge addresses are not loopback
                mem_limit=f"{cap_mb}m",
                memswap_limit=f"{cap_mb}m",  # no swap: over the limit is over the limit
                nano_cpus=int(self.settings.node_cpu_limit * 1e9),
                read_only=True,
                # tmpfs pages count against the memory limit, so the cache is bounded by it too.
                tmpfs={str(CACHE_DIR): f"size={cap_mb}m,mode=1777", HOME_DIR: f"size={cap_mb}m,mode=1777", TMP_DIR: "size=64m,mode=1777"},
                environment={"HOME": HOME_DIR},
                restart_policy={"Name": "no"},  # ESP restarts nodes itself (and counts generations)
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                stop_signal="SIGTERM",
            )
        except docker.errors.ImageNotFound:
            raise NodeStartError(f"{node_id}: image {self.settings.docker_image} is missing: run scripts/build-image.sh", node_id=node_id) from None
        except _ENGINE_ERRORS as exc:
            self._remove_quietly(name)
            raise NodeStartError(f"{node_id}: the engine at {self.url} could not run {name}: {_short(exc)}", node_id=node_id) from None
        spec = self._await_ready(container, node_id, role, port, generation=0)
        with self._lock:
            self._owned[node_id] = str(container.id)
        log.info("started %s (%s) container %s at %s in %.2f s", node_id, role, container.short_id, spec.url, time.monotonic() - started)
        return spec

    def stop(self, spec: NodeSpec) -> None:
        """Stop and remove the node's container; one already gone is not an error."""
        ref = spec.container or self.container_name(spec.id)
        with self._lock:
            self._owned.pop(spec.id, None)
            self._tracked.pop(ref, None)
        self._remove_quietly(ref, graceful=True)
        log.info("stopped %s", spec.id)

    def restart(self, spec: NodeSpec) -> NodeSpec:
        """Restart the container through the engine; anvil keeps state in memory, so the chain starts anew."""
        ref = spec.container or self.container_name(spec.id)
        started = time.monotonic()
        try:
            container = self.client.containers.get(ref)
            container.restart(timeout=STOP_TIMEOUT)
        except docker.errors.NotFound:
            # Removed behind our back: run a new one on the same port, as the process backend does.
            new = self.start(spec.id, role=spec.role, port=spec.port)
            return new.replace(generation=spec.generation + 1)
        except _ENGINE_ERRORS as exc:
            raise NodeStartError(f"{spec.id}: the engine could not restart {ref}: {_short(exc)}", node_id=spec.id) from None
        with self._lock:
            self._tracked.pop(str(container.id), None)
        new = self._await_ready(container, spec.id, spec.role, spec.port, generation=spec.generation + 1)
        log.info("restarted %s (generation %d) in %.2f s", spec.id, new.generation, time.monotonic() - started)
        return new

    def close(self) -> None:
        """Remove the containers this instance started (as the process backend stops its children), then close the client."""
        with self._lock:
            owned = list(self._owned.values())
            self._owned.clear()
            self._tracked.clear()
        for container_id in owned:
            self._remove_quietly(container_id, graceful=True)
        self.client.close()

    # -- measurement --------------------------------------------------------

    def stats(self, spec: NodeSpec) -> ResourceStats:
        """CPU (share of the container's CPU limit) and memory (use / limit) since the previous sample."""
        ref = spec.container or self.container_name(spec.id)
        tracked = self._tracked.get(ref)
        if tracked is not None and not _pid_alive(tracked.pid):
            tracked = None  # restarted or stopped since: its cgroup counters started over
        if tracked is None:
            tracked = self._track(ref)
            if tracked is None:
                return ResourceStats(alive=False, memory_limit_bytes=self._default_limit())
        try:
            sample = self._read(tracked, ref)
        except _EngineBusy:
            # A slow engine says nothing about the node (its port still answers): keep the last known state.
            return tracked.last or ResourceStats(alive=True, memory_limit_bytes=tracked.memory_limit)
        if sample is None:
            with self._lock:
                self._tracked.pop(ref, None)
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

    def stats_many(self, specs: Sequence[NodeSpec]) -> list[ResourceStats]:
        """stats() of several nodes; concurrent when they go through the engine (up to ~1 s per call on dockerd)."""
        if self.read_cgroups and all(self._tracked.get(s.container or "") and self._tracked[s.container or ""].cgroup for s in specs):
            return [self.stats(s) for s in specs]
        with ThreadPoolExecutor(max_workers=max(1, min(len(specs), 16)), thread_name_prefix="esp-stats") as pool:
            return list(pool.map(self.stats, specs))

    def _track(self, ref: str) -> _Tracked | None:
        """Inspect a running container once: its pid, limits and cgroup; the baseline is its start."""
        try:
            container = self.client.containers.get(ref)
        except docker.errors.NotFound:
            return None
        except _ENGINE_ERRORS as exc:
            log.warning("cannot inspect %s: %s", ref, _short(exc))
            return None
        return self._track_container(ref, container)

    def _track_container(self, ref: str, container: Container) -> _Tracked | None:
        state = container.attrs.get("State") or {}
        pid = int(state.get("Pid") or 0)
        if not state.get("Running") or pid <= 0:
            return None
        hc = container.attrs.get("HostConfig") or {}
        if hc.get("NanoCpus"):
            cpus = hc["NanoCpus"] / 1e9
        elif hc.get("CpuQuota") and hc.get("CpuPeriod"):
            cpus = hc["CpuQuota"] / hc["CpuPeriod"]
        else:
            cpus = float(self._cpu_count)
        memory_limit = int(hc.get("Memory") or 0) or self._default_limit()
        cgroup = cgroup_of(pid) if self.read_cgroups else None
        # The first sample measures from the container's start: its CPU counter began there at 0.
        now_wall, now_mono = time.time_ns(), time.monotonic_ns()
        started = _parse_time(state.get("StartedAt"))
        prev_at = now_mono - (now_wall - started) if started else now_mono
        tracked = _Tracked(str(container.id), pid, cpus, memory_limit, cgroup, prev_ns=0, prev_at=prev_at)
        with self._lock:
            self._tracked[ref] = tracked
        return tracked

    def _read(self, tracked: _Tracked, ref: str) -> tuple[int, int, int, int] | None:
        """(CPU ns, monotonic ns, memory in use, memory limit or 0), or None when the container is gone."""
        if tracked.cgroup is not None:
            try:
                cpu_ns, memory, limit = read_cgroup(tracked.cgroup)
                return cpu_ns, time.monotonic_ns(), memory, limit
            except (OSError, ValueError):
                return None  # runc removes a container's cgroup when it stops
        return self._read_engine(tracked)

    def _read_engine(self, tracked: _Tracked) -> tuple[int, int, int, int] | None:
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
        except _ENGINE_ERRORS as exc:
            log.warning("stats of %s failed: %s", tracked.container_id[:12], _short(exc))
            raise _EngineBusy from None
        cpu_ns = int(((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0)
        read = _parse_time(raw.get("read"))
        if not cpu_ns and not read:
            return None  # a stopped container answers with empty counters
        # Map the engine's wall-clock stamp onto our monotonic clock so deltas stay consistent.
        at_ns = time.monotonic_ns() - (time.time_ns() - read) if read else time.monotonic_ns()
        mem = raw.get("memory_stats") or {}
        detail = mem.get("stats") or {}
        inactive = int(detail.get("total_inactive_file", detail.get("inactive_file", 0)) or 0)
        memory = max(int(mem.get("usage") or 0) - inactive, 0)
        limit = int(mem.get("limit") or 0)
        return cpu_ns, at_ns, memory, 0 if limit >= _UNLIMITED else limit

    # -- helpers ------------------------------------------------------------

    def _default_limit(self) -> int:
        return self.settings.node_memory_cap_mb * 1024 * 1024

    def _await_ready(self, container: Container, node_id: str, role: str, port: int | None, *, generation: int) -> NodeSpec:
        """Wait until the container's anvil answers on its port; NodeStartError (and no container) otherwise."""
        assert port is not None
        url = f"http://{self.settings.node_host}:{port}"
        client = RpcClient(url, timeout=2.0, node_id=node_id)
        try:
            wait_until_answers(client, timeout=START_TIMEOUT, is_alive=_throttled(lambda: _is_running(container), 0.25))
            pid = self._check_owns_port(container, port, node_id)
            self._prime(container)
        except (NodeUnreachable, NodeStartError) as exc:
            tail = _logs_tail(container)
            self._remove_quietly(str(container.id))
            with self._lock:
                self._owned.pop(node_id, None)
            raise NodeStartError(f"{node_id}: anvil container did not start on {url}: {tail or exc}", node_id=node_id) from None
        finally:
            client.close()
        return NodeSpec(
            id=node_id,
            url=url,
            backend=self.name,
            role=role,
            port=port,
            pid=pid,
            container=str(container.id),
            generation=generation,
            started_at=time.time(),
        )

    def _prime(self, container: Container) -> None:
        """Take the first CPU sample now, so the next stats() measures from readiness, not anvil's start-up burst."""
        tracked = self._track_container(str(container.id), container)
        if tracked is None or tracked.cgroup is None:
            return  # the engine path keeps the since-start baseline: a stats call there takes up to a second
        sample = self._read(tracked, str(container.id))
        if sample is not None:
            tracked.prev_ns, tracked.prev_at = sample[0], sample[1]

    def _check_owns_port(self, container: Container, port: int, node_id: str) -> int | None:
        """Make sure the listener is the container's anvil, not a stale process; return its host pid."""
        deadline = time.monotonic() + 2.0
        pid = 0
        unseen = 0
        while time.monotonic() < deadline:
            try:
                container.reload()
            except _ENGINE_ERRORS as exc:
                raise NodeStartError(f"{node_id}: cannot inspect its container: {_short(exc)}", node_id=node_id) from None
            state = container.attrs.get("State") or {}
            if not state.get("Running"):
                raise NodeStartError(f"{node_id}: container exited ({_logs_tail(container)})", node_id=node_id)
            pid = int(state.get("Pid") or 0)
            try:
                listening = {c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN}
            except psutil.NoSuchProcess:
                # Either the container just exited (the next reload says so) or the engine's pids are not ours
                # to see (a remote or rootless engine): then trust that the port was free before start.
                unseen += 1
                if unseen >= 2:
                    return None
                time.sleep(0.02)
                continue
            except psutil.Error:
                listening = set()
            if port in listening:
                return pid
            time.sleep(0.02)
        raise NodeStartError(
            f"{node_id}: another process answers on port {port}, not the container ESP started; stop it or change ESP_NODE_PORT_BASE",
            node_id=node_id,
        )

    def _remove_stale(self, name: str, node_id: str) -> None:
        """Remove a leftover container of this run with the same name; refuse to touch anyone else's."""
        try:
            old = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        except _ENGINE_ERRORS as exc:
            raise NodeStartError(f"{node_id}: the engine at {self.url} does not answer: {_short(exc)}", node_id=node_id) from None
        if (old.labels or {}).get(LABEL_RUN) != self._run_label:
            raise NodeStartError(
                f"{node_id}: a container named {name} exists and is not this run's: remove it (docker rm -f {name}) or set another ESP_RUN_DIR",
                node_id=node_id,
            )
        log.warning("removing leftover container %s of a previous run", name)
        self._remove_quietly(str(old.id))

    def _remove_quietly(self, ref: str, *, graceful: bool = False) -> None:
        try:
            container = self.client.containers.get(ref)
            if graceful:
                container.stop(timeout=STOP_TIMEOUT)
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: its removal is already in progress
                log.warning("cannot remove container %s: %s", ref, _short(exc))
        except _ENGINE_ERRORS as exc:
            log.warning("cannot remove container %s: %s", ref, _short(exc))


def _is_running(container: Container) -> bool:
    try:
        container.reload()
    except docker.errors.NotFound:
        return False
    except _ENGINE_ERRORS:
        return True  # the engine is slow, not the node dead: let the RPC deadline decide
    return bool((container.attrs.get("State") or {}).get("Running"))


def _throttled(check: Callable[[], bool], every: float) -> Callable[[], bool]:
    """Call ``check`` at most once per ``every`` seconds, repeating its last answer in between."""
    last = {"at": 0.0, "value": True}

    def wrapper() -> bool:
        now = time.monotonic()
        if now - last["at"] >= every:
            last["at"], last["value"] = now, check()
        return bool(last["value"])

    return wrapper


def _pid_alive(pid: int) -> bool:
    return pid > 0 and os.path.exists(f"/proc/{pid}")


def _parse_time(value: Any) -> int:
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


def _logs_tail(container: Container, lines: int = 3) -> str:
    try:
        text = container.logs(tail=lines).decode(errors="replace").strip()
    except _ENGINE_ERRORS:
        return ""
    return " | ".join(x.strip() for x in text.splitlines() if x.strip())


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# -- compose/devnet.yml ---------------------------------------------------------

DEVNET_COMPOSE = ROOT / "compose" / "devnet.yml"
DEVNET_BASE_PORT = 8545

_DEVNET_HEADER = """\
# GENERATED by `python -m nodes.docker compose-devnet > compose/devnet.yml` from nodes/anvil.anvil_args
# and the default settings: do not edit by hand (tests/integration/test_docker_backend.py checks it).
#
# ESP's devnet in containers, the same {count} anvil nodes the docker backend runs: one leader that mines
# every {block_time} s, {followers} followers started with --no-mining, all from one genesis (timestamp, chain
# id, gas limit, FIFO order) so that a replayed block hashes the same everywhere. Host networking on
# loopback ports, memory and CPU limits, a read-only root and tmpfs for anvil's cache and HOME.
#
#   scripts/dockerd.sh start && export DOCKER_HOST=unix://$PWD/run/dockerd/docker.sock
#   scripts/build-image.sh                    # {image} from compose/anvil.Dockerfile (no registry)
#   docker-compose -f compose/devnet.yml up -d
#
# These nodes are separate anvil chains until ESP's follower sync runs against them: the followers do
# not mine, and only ESP replays the leader's blocks into them (anvil has no peer-to-peer sync). Point ESP
# at them as static nodes of one devnet, the leader first (ESP cannot restart them; ESP_NODE_BACKEND=docker
# runs the same containers itself, restarts included):
#
#   ESP_NODE_BACKEND=static ESP_DEVNET_SYNC=1 ESP_NODE_URLS={urls} make up
#
# Stop with `docker-compose -f compose/devnet.yml down` (anvil keeps its chain in memory: it is gone).
version: "2.4"

x-anvil: &anvil
  image: {image}
  network_mode: host
  mem_limit: {memory}m
  memswap_limit: {memory}m
  cpus: {cpus}
  read_only: true
  tmpfs:
    - {cache}:size={memory}m,mode=1777
    - {home}:size={memory}m,mode=1777
    - {tmp}:size=64m,mode=1777
  environment:
    HOME: {home}
  cap_drop: [ALL]
  security_opt: [no-new-privileges]
  restart: "no"

services:
"""

_DEVNET_SERVICE = """\
  {name}:
    <<: *anvil
    container_name: esp-devnet-{name}
    labels:
      esp.node: {name}
      esp.role: {role}
    command: {command}
"""


def devnet_compose(settings: Settings, *, count: int = 3, base_port: int = DEVNET_BASE_PORT) -> str:
    """The text of compose/devnet.yml: ``count`` anvil services with the flags anvil_args gives each role."""
    ports = [base_port + i for i in range(count)]
    text = _DEVNET_HEADER.format(
        count=count,
        followers=count - 1,
        block_time=_number(settings.block_time),
        image=settings.docker_image,
        urls=",".join(f"http://{settings.node_host}:{p}" for p in ports),
        memory=settings.node_memory_cap_mb,
        cpus=_number(settings.node_cpu_limit),
        cache=CACHE_DIR,
        home=HOME_DIR,
        tmp=TMP_DIR,
    )
    for i, port in enumerate(ports):
        role = ROLE_LEADER if i == 0 else ROLE_FOLLOWER
        name = "leader" if i == 0 else f"follower-{i}"
        command = json.dumps(anvil_args(settings, port=port, role=role, cache_dir=CACHE_DIR))
        text += _DEVNET_SERVICE.format(name=name, role=role, command=command)
    return text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def main(argv: list[str] | None = None) -> int:
    """``python -m nodes.docker build-image|compose-devnet``: build the image, or print compose/devnet.yml."""
    parser = argparse.ArgumentParser(prog="python -m nodes.docker", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=["build-image", "compose-devnet"])
    parser.add_argument("--docker-host", default=None, help="engine URL (default: DOCKER_HOST or scripts/dockerd.sh's socket)")
    parser.add_argument("--tag", default=None, help="image tag (default: ESP_DOCKER_IMAGE)")
    args = parser.parse_args(argv)
    if args.command == "compose-devnet":
        # From the defaults, not the environment: the checked-in file must not depend on who generated it.
        print(devnet_compose(Settings.from_env({})), end="")
        return 0
    try:
        settings = Settings.from_env()
        client = connect(settings, args.docker_host)
        try:
            started = time.monotonic()
            image_id = build_image(settings, client, tag=args.tag)
            size = client.images.get(image_id).attrs.get("Size") or 0
        finally:
            client.close()
    except (ConfigError, NodeStartError) as exc:
        print(f"build-image: {exc}", file=sys.stderr)
        return 1
    print(f"{args.tag or settings.docker_image} {image_id[:19]} {size / 1e6:.1f} MB in {time.monotonic() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
