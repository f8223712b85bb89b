"""The docker backend: each node an anvil container on the local engine, started, stopped and restarted.

Host networking on loopback ports, a memory and CPU limit, a read-only root and tmpfs for anvil's
cache and HOME (see :mod:`nodes.docker`); the image is built on first use when it is missing or
holds another anvil binary (:mod:`nodes.docker.image`), and the containers' CPU and memory are
sampled by :class:`~nodes.docker.stats.ContainerSampler`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import docker
import docker.errors
import psutil
from docker.models.containers import Container

from errors import NodeStartError, NodeUnreachable
from nodepool.rpc import RpcClient
from nodepool.spec import NodeSpec
from nodes.anvil import anvil_args
from nodes.base import ResourceStats
from nodes.docker.engine import ENGINE_ERRORS, connect, engine_url, short_error
from nodes.docker.image import CACHE_DIR, HOME_DIR, TMP_DIR, ensure_image
from nodes.docker.stats import ContainerSampler
from nodes.process import claim_port, wait_until_answers
from settings import Settings

log = logging.getLogger(__name__)

LABEL_NODE = "esp.node"
LABEL_RUN = "esp.run"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5  # seconds anvil gets to exit on SIGTERM before the engine kills it


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
        self._lock = threading.Lock()
        self._sampler = ContainerSampler(
            self.client, read_cgroups=read_cgroups, default_limit=settings.node_memory_cap_mb * 1024 * 1024
        )

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
        except ENGINE_ERRORS as exc:
            self._remove_quietly(name)
            raise NodeStartError(f"{node_id}: the engine at {self.url} could not run {name}: {short_error(exc)}", node_id=node_id) from None
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
        self._sampler.forget(ref)
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
        except ENGINE_ERRORS as exc:
            raise NodeStartError(f"{spec.id}: the engine could not restart {ref}: {short_error(exc)}", node_id=spec.id) from None
        self._sampler.forget(str(container.id))
        new = self._await_ready(container, spec.id, spec.role, spec.port, generation=spec.generation + 1)
        log.info("restarted %s (generation %d) in %.2f s", spec.id, new.generation, time.monotonic() - started)
        return new

    def close(self) -> None:
        """Remove the containers this instance started (as the process backend stops its children), then close the client."""
        with self._lock:
            owned = list(self._owned.values())
            self._owned.clear()
        self._sampler.clear()
        for container_id in owned:
            self._remove_quietly(container_id, graceful=True)
        self.client.close()

    # -- measurement --------------------------------------------------------

    def stats(self, spec: NodeSpec) -> ResourceStats:
        """CPU (share of the container's CPU limit) and memory (use / limit) since the previous sample."""
        return self._sampler.stats(spec.container or self.container_name(spec.id))

    def stats_many(self, specs: Sequence[NodeSpec]) -> list[ResourceStats]:
        """stats() of several nodes; concurrent when they go through the engine (up to ~1 s per call on dockerd)."""
        if self.read_cgroups and all(self._sampler.reads_cgroup(s.container or "") for s in specs):
            return [self.stats(s) for s in specs]
        with ThreadPoolExecutor(max_workers=max(1, min(len(specs), 16)), thread_name_prefix="esp-stats") as pool:
            return list(pool.map(self.stats, specs))

    # -- helpers ------------------------------------------------------------

    def _await_ready(self, container: Container, node_id: str, role: str, port: int | None, *, generation: int) -> NodeSpec:
        """Wait until the container's anvil answers on its port; NodeStartError (and no container) otherwise."""
        assert port is not None
        url = f"http://{self.settings.node_host}:{port}"
        client = RpcClient(url, timeout=2.0, node_id=node_id)
        try:
            wait_until_answers(client, timeout=START_TIMEOUT, is_alive=_throttled(lambda: _is_running(container), 0.25))
            pid = self._check_owns_port(container, port, node_id)
            self._sampler.prime(container)
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

    def _check_owns_port(self, container: Container, port: int, node_id: str) -> int | None:
        """Make sure the listener is the container's anvil, not a stale process; return its host pid."""
        deadline = time.monotonic() + 2.0
        pid = 0
        unseen = 0
        while time.monotonic() < deadline:
            try:
                container.reload()
            except ENGINE_ERRORS as exc:
                raise NodeStartError(f"{node_id}: cannot inspect its container: {short_error(exc)}", node_id=node_id) from None
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
        except ENGINE_ERRORS as exc:
            raise NodeStartError(f"{node_id}: the engine at {self.url} does not answer: {short_error(exc)}", node_id=node_id) from None
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
                log.warning("cannot remove container %s: %s", ref, short_error(exc))
        except ENGINE_ERRORS as exc:
            log.warning("cannot remove container %s: %s", ref, short_error(exc))


def _is_running(container: Container) -> bool:
    try:
        container.reload()
    except docker.errors.NotFound:
        return False
    except ENGINE_ERRORS:
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


def _logs_tail(container: Container, lines: int = 3) -> str:
    try:
        text = container.logs(tail=lines).decode(errors="replace").strip()
    except ENGINE_ERRORS:
        return ""
    return " | ".join(x.strip() for x in text.splitlines() if x.strip())
