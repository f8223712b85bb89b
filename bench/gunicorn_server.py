"""A Flask app of a benchmark's own under gunicorn (``python -m gunicorn``) on a free loopback port.

The controls ESP is compared with (the thesis's monolith, ``bench.thesis.servers``; the JSON-RPC
read control, ``bench.rpc_control``) run this way: ``worker_class`` gthread (``workers`` x
``threads``) or sync (``workers``), started and waited for until ``/healthz`` answers, stopped with
SIGTERM (SIGKILL after STOP_TIMEOUT, and any worker left behind killed).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil
import requests

from nodes.process import free_port, terminate
from settings import ROOT, child_environment

WORKER_CLASSES = ("gthread", "sync")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: Seconds gunicorn keeps an idle connection: longer than httpx's 5 s keep-alive expiry, so the client
#: closes first. With gunicorn's default 2 s a pooled connection the server had just closed was reused
#: now and then (httpx.ReadError at 200 concurrent operations), a failure of the harness, not the app.
KEEP_ALIVE = 10
#: gunicorn kills a worker silent this long; the monolith's writes wait for mining (ESP_TX_DEADLINE, 60 s).
WORKER_TIMEOUT = 120


class GunicornServer:
    """``app`` (a gunicorn app spec, e.g. ``"pkg.mod:create_app()"``) served by gunicorn; ``close()`` stops it."""

    #: What the server is called in errors ("the monolith", "the control").
    name = "the server"

    def __init__(self, app: str, log_path: Path, *, worker_class: str = "gthread", workers: int = 2, threads: int = 16,
                 env: Mapping[str, str] | None = None, start_timeout: float = START_TIMEOUT) -> None:
        if worker_class not in WORKER_CLASSES:
            raise ValueError(f"worker_class must be one of {', '.join(WORKER_CLASSES)}, not {worker_class!r}")
        if workers < 1 or threads < 1:
            raise ValueError("workers and threads must be at least 1")
        self.app = app
        self.log_path = Path(log_path)
        self.worker_class, self.workers, self.threads = worker_class, workers, threads
        self.environment = dict(env or {})
        self.start_timeout = start_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        """The configuration, e.g. ``gthread 2x16``."""
        return f"gthread {self.workers}x{self.threads}" if self.worker_class == "gthread" else f"sync {self.workers}"

    def command(self) -> list[str]:
        """The gunicorn command line."""
        cmd = [sys.executable, "-m", "gunicorn", "--worker-class", self.worker_class, "--workers", str(self.workers),
               "--bind", f"127.0.0.1:{self.port}", "--timeout", str(WORKER_TIMEOUT), "--graceful-timeout", "5",
               "--keep-alive", str(KEEP_ALIVE), "--backlog", "4096", "--log-level", "warning"]
        if self.worker_class == "gthread":
            cmd += ["--threads", str(self.threads)]
        return [*cmd, self.app]

    def start(self) -> Self:
        """Start gunicorn and wait until /healthz answers (RuntimeError with the log's tail otherwise)."""
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env={**child_environment(), **self.environment},
                                            start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        with requests.Session() as session:
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if session.get(self.url + "/healthz", timeout=1.0).ok:
                        return self
                except requests.RequestException:
                    pass
                time.sleep(0.05)
        self.close()
        tail = " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-5:])
        raise RuntimeError(f"{self.name} ({self.label}) did not answer /healthz on {self.url}: {tail}")

    def pids(self) -> list[int]:
        """The gunicorn master's pid and its workers' (for psutil sampling); empty once stopped."""
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.Error:
            children = []
        return [self.process.pid, *(child.pid for child in children)]

    def close(self) -> None:
        """SIGTERM to the gunicorn master (it stops its workers); SIGKILL after STOP_TIMEOUT; no worker left behind."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        workers = []
        try:
            workers = psutil.Process(proc.pid).children()
        except psutil.Error:
            pass
        terminate(proc, STOP_TIMEOUT)
        for worker in workers:  # the master normally reaps them; never leave one behind
            if worker.is_running():
                worker.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
