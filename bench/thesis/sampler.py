"""CPU and memory of every component of a system under test, over time, with psutil.

The sampler is given root pids (ESP: the process of ``scripts/up.sh``, whose
descendants are the node manager, its anvils, gunicorn, the Celery workers, beat
and Flower; the control: gunicorn's and the anvil's pids) and walks their
descendants at every tick, so that a node restarted mid-run is followed. Each
process is named by its command line (``component``); a component's CPU (percent
of one core) and RSS (MB) are the sums over its processes. The load generator's
own process is sampled too, as ``loadgen``: on 2 cores the client competes for
the same CPU.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

INTERVAL_S = 0.5


def component(cmdline: list[str]) -> str:
    """A component's name from a process's command line (anvil nodes by port)."""
    text = " ".join(cmdline)
    if any(part.endswith("anvil") for part in cmdline[:1]) or "/anvil " in f"{text} ":
        port = cmdline[cmdline.index("--port") + 1] if "--port" in cmdline[:-1] else "?"
        return f"anvil:{port}"
    if "gunicorn" in text:
        return "api"
    if "celery" in text:
        for name in ("beat", "flower", "esp.control"):
            if name in text:
                return {"esp.control": "control"}.get(name, name)
        return "worker"
    if "-m nodes" in text:
        return "nodes"
    if "supervisord" in text:
        return "supervisord"
    if "redis-server" in text:
        return "redis"
    return os.path.basename(cmdline[0]) if cmdline else "?"


@dataclass
class Series:
    """Samples over time: t (s after start) and, per component, CPU % of one core and RSS in MB."""

    t: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    rss_mb: dict[str, list[float]] = field(default_factory=dict)

    def add(self, t: float, cpu: dict[str, float], rss_mb: dict[str, float]) -> None:
        """One tick; a component missing from a tick (not started yet, or gone) reads 0 there."""
        for name in set(cpu) - set(self.cpu):
            self.cpu[name] = [0.0] * len(self.t)
            self.rss_mb[name] = [0.0] * len(self.t)
        self.t.append(round(t, 3))
        for name in self.cpu:
            self.cpu[name].append(round(cpu.get(name, 0.0), 1))
            self.rss_mb[name].append(round(rss_mb.get(name, 0.0), 1))

    def as_dict(self) -> dict[str, object]:
        return {"t": self.t, "cpu_percent": self.cpu, "rss_mb": self.rss_mb}


class Sampler:
    """Samples the descendants of ``roots()`` every ``interval`` seconds in a thread, between start and stop."""

    def __init__(self, roots: Callable[[], Iterable[int]], *, interval: float = INTERVAL_S) -> None:
        self.roots = roots
        self.interval = interval
        self.series = Series()
        self._procs: dict[int, tuple[psutil.Process, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")
        self._t0 = 0.0

    def _processes(self) -> list[tuple[psutil.Process, str]]:
        found: dict[int, psutil.Process] = {}
        for pid in [*self.roots(), os.getpid()]:
            try:
                root = psutil.Process(pid)
                found[pid] = root
                if pid != os.getpid():
                    found.update({p.pid: p for p in root.children(recursive=True)})
            except psutil.Error:
                continue
        alive: dict[int, tuple[psutil.Process, str]] = {}
        for pid, proc in found.items():
            if pid in self._procs:
                alive[pid] = self._procs[pid]  # keep the object: cpu_percent measures since its last call
                continue
            try:
                name = "loadgen" if pid == os.getpid() else component(proc.cmdline())
                proc.cpu_percent(None)
            except psutil.Error:
                continue
            alive[pid] = (proc, name)
        self._procs = alive
        return list(alive.values())

    def tick(self) -> None:
        """One sample of every component."""
        cpu: dict[str, float] = {}
        rss: dict[str, float] = {}
        for proc, name in self._processes():
            try:
                with proc.oneshot():
                    c, m = proc.cpu_percent(None), proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
            cpu[name] = cpu.get(name, 0.0) + c
            rss[name] = rss.get(name, 0.0) + m
        self.series.add(time.monotonic() - self._t0, cpu, rss)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.tick()
            next_at += self.interval
            self._stop.wait(max(next_at - time.monotonic(), 0.0))

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._processes()  # prime cpu_percent so that the first tick measures an interval
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
