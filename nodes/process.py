"""The ``process`` backend: anvil processes started, measured and restarted by ESP."""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from errors import NodeStartError, NodeUnreachable, RpcError
from nodepool.rpc import RpcClient
from nodepool.spec import NodeSpec
from nodes.anvil import anvil_args, find_anvil
from nodes.base import ResourceStats
from settings import Settings, child_environment

log = logging.getLogger(__name__)

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to kill the node if the process that started it dies, even by SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (we can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def claim_port(host: str, port: int | None, node_id: str) -> int:
    """``port`` if nothing listens there (NodeStartError saying so if something does), or a free one."""
    if port is None:
        return free_port(host)
    if not port_is_free(host, port):
        raise NodeStartError(
            f"port {port} on {host} is in use (a stale anvil or container?): stop what listens there or choose "
            "other ports with ESP_NODE_PORT_BASE",
            node_id=node_id,
        )
    return port


def wait_until_answers(client: RpcClient, *, timeout: float, is_alive: Callable[[], bool] | None = None) -> int:
    """Poll eth_chainId until the node answers; return the chain id."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if is_alive is not None and not is_alive():
            break
        try:
            return int(client.call("eth_chainId", timeout=1.0), 16)
        except (NodeUnreachable, RpcError) as exc:
            last = exc
            time.sleep(0.02)
    raise NodeUnreachable(f"{client.url} did not answer eth_chainId within {timeout:.0f} s ({last})", node_id=client.node_id)


class ProcessBackend:
    """Runs each node as a local anvil process, child of the process that started it."""

    name = "process"
    manages = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.binary = find_anvil(settings)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._samplers: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        self._cpu_count = psutil.cpu_count() or 1

    # -- lifecycle ----------------------------------------------------------

    def start(self, node_id: str, *, role: str, port: int | None = None) -> NodeSpec:
        host = self.settings.node_host
        port = claim_port(host, port, node_id)
        node_dir = self.settings.run_dir / "nodes" / node_id
        cache_dir = node_dir / "cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        log_path = node_dir / "anvil.log"
        cmd = [str(self.binary), *anvil_args(self.settings, port=port, role=role, cache_dir=cache_dir)]
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the stack, and we stop nodes in order
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks
                env={**child_environment(), "HOME": str(node_dir)},  # anvil's own ~/.foundry stays in the run folder
            )
        url = f"http://{host}:{port}"
        client = RpcClient(url, timeout=2.0, node_id=node_id)
        try:
            wait_until_answers(client, timeout=START_TIMEOUT, is_alive=lambda: proc.poll() is None)
            # A stale anvil on the same port keeps answering while ours exits with
            # "Address already in use": make sure the listener is the process we started.
            self._check_owns_port(proc, port, node_id, log_path)
        except (NodeUnreachable, NodeStartError) as exc:
            self._kill(proc)
            tail = _tail(log_path)
            raise NodeStartError(f"{node_id}: anvil did not start on {url}: {tail or exc}", node_id=node_id) from None
        finally:
            client.close()
        with self._lock:
            self._children[node_id] = proc
        log.info("started %s (%s) pid %d at %s", node_id, role, proc.pid, url)
        return NodeSpec(
            id=node_id, url=url, backend=self.name, role=role, port=port, pid=proc.pid, started_at=time.time()
        )

    def stop(self, spec: NodeSpec) -> None:
        with self._lock:
            proc = self._children.pop(spec.id, None)
        if proc is not None:
            self._kill(proc)
        elif spec.pid:
            _kill_pid(spec.pid)
        if spec.pid:
            self._samplers.pop(spec.pid, None)
        log.info("stopped %s", spec.id)

    def restart(self, spec: NodeSpec) -> NodeSpec:
        self.stop(spec)
        new = self.start(spec.id, role=spec.role, port=spec.port)
        return new.replace(generation=spec.generation + 1)

    def close(self) -> None:
        with self._lock:
            children = list(self._children.values())
            self._children.clear()
        for proc in children:
            self._kill(proc)

    # -- measurement --------------------------------------------------------

    def stats(self, spec: NodeSpec) -> ResourceStats:
        if not spec.pid:
            return ResourceStats(alive=False)
        cap = self.settings.node_memory_cap_mb * 1024 * 1024
        try:
            proc = self._samplers.get(spec.pid)
            if proc is None:
                proc = psutil.Process(spec.pid)
                proc.cpu_percent(None)  # first call primes the counter
                self._samplers[spec.pid] = proc
            if proc.status() == psutil.STATUS_ZOMBIE:
                raise psutil.NoSuchProcess(spec.pid)
            with proc.oneshot():
                cpu = proc.cpu_percent(None) / 100.0
                rss = proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self._samplers.pop(spec.pid, None)
            return ResourceStats(alive=False, memory_limit_bytes=cap)
        # A process may use every core; its share of the machine is the CPU axis.
        return ResourceStats(
            alive=True,
            cpu=cpu / self._cpu_count,
            memory=rss / cap,
            memory_bytes=rss,
            memory_limit_bytes=cap,
        )

    # -- helpers ------------------------------------------------------------

    def _check_owns_port(self, proc: subprocess.Popen[bytes], port: int, node_id: str, log_path: Path) -> None:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise NodeStartError(f"{node_id}: anvil exited ({_tail(log_path)})", node_id=node_id)
            try:
                listening = {c.laddr.port for c in psutil.Process(proc.pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                listening = set()
            if port in listening:
                return
            time.sleep(0.02)
        raise NodeStartError(
            f"{node_id}: another process answers on port {port}, not the anvil ESP started; stop it or change ESP_NODE_PORT_BASE",
            node_id=node_id,
        )

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        terminate(proc)


def terminate(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL and wait: the process is gone when this returns."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _kill_pid(pid: int) -> None:
    """Stop a node process this process did not start (another ESP process did)."""
    try:
        proc = psutil.Process(pid)
        if "anvil" not in proc.name():
            return  # the pid was reused: never kill what is not ours
        proc.terminate()
        proc.wait(STOP_TIMEOUT)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.Error:
        pass


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])
