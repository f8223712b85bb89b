"""The processes the thesis experiment's control needs: one anvil as ESP starts it, and the monolith under gunicorn.

    with SingleNode(run_dir, block_time=1.0) as node, MonolithServer(node.url, run_dir) as mono:
        httpx.get(mono.url + "/healthz")
        psutil_sample(mono.pids() + [node.pid])

Both bind free 127.0.0.1 ports, keep their files in the given run folder, and stop what
they started (and only that) on ``close()``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import psutil
import requests

from nodepool.spec import ROLE_LEADER, NodeSpec
from nodes.process import ProcessBackend, free_port
from settings import ROOT, Settings, child_environment, generate_secret
from wallet.kdf import DEFAULT_SCRYPT_N

#: Seconds the monolith may take to answer /healthz after its start.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: gunicorn kills a worker silent this long; writes wait for mining (ESP_TX_DEADLINE, 60 s) on sync workers.
WORKER_TIMEOUT = 120
WORKER_CLASSES = ("gthread", "sync")
#: Seconds gunicorn keeps an idle connection: longer than httpx's 5 s keep-alive expiry, so the client
#: closes first. With gunicorn's default 2 s a pooled connection the server had just closed was reused
#: now and then (httpx.ReadError at 200 concurrent operations), a failure of the harness, not the app.
KEEP_ALIVE = 10


class SingleNode:
    """ONE anvil started exactly as ESP starts its leader: ``nodes.process.ProcessBackend``, same binary and flags."""

    def __init__(self, run_dir: Path, *, block_time: float = 1.0, env: Mapping[str, str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.settings = Settings.from_env({"ESP_RUN_DIR": str(self.run_dir), "ESP_KEYSTORE_DIR": str(self.run_dir / "keystore"),
                                           "ESP_NODE_COUNT": "1", "ESP_BLOCK_TIME": repr(float(block_time)), **(env or {})})
        self.backend = ProcessBackend(self.settings)
        self.spec: NodeSpec | None = None

    def start(self) -> SingleNode:
        """Start the node and wait until it answers (NodeStartError otherwise)."""
        self.spec = self.backend.start("node-0", role=ROLE_LEADER)
        return self

    @property
    def url(self) -> str:
        assert self.spec is not None, "start() first"
        return self.spec.url

    @property
    def pid(self) -> int:
        assert self.spec is not None and self.spec.pid is not None, "start() first"
        return self.spec.pid

    def close(self) -> None:
        """Stop the node."""
        if self.spec is not None:
            self.backend.stop(self.spec)
            self.spec = None
        self.backend.close()

    def __enter__(self) -> SingleNode:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class MonolithServer:
    """``bench.thesis.monolith`` under gunicorn (``python -m gunicorn``), bound to a free loopback port.

    ``node_url`` is the one node it calls; ``run_dir`` holds its keystore (``run_dir/monolith-keystore``),
    its shared unlock and nonce files, and its log (``run_dir/monolith.log``). ``scrypt_n`` is the
    keystores' KDF cost (ESP_KEYSTORE_SCRYPT_N; ESP's default, geth's standard 2**18). ``env`` adds or overrides
    ``ESP_`` variables of the app (e.g. ESP_FUNDING_WEI, ESP_KDF_CONCURRENCY, ESP_TX_DEADLINE).
    """

    def __init__(self, node_url: str, run_dir: Path, *, workers: int = 4, threads: int = 32, worker_class: str = "gthread",
                 scrypt_n: int = DEFAULT_SCRYPT_N, env: Mapping[str, str] | None = None,
                 start_timeout: float = START_TIMEOUT) -> None:
        if worker_class not in WORKER_CLASSES:
            raise ValueError(f"worker_class must be one of {', '.join(WORKER_CLASSES)}, not {worker_class!r}")
        if workers < 1 or threads < 1:
            raise ValueError("workers and threads must be at least 1")
        self.node_url = node_url
        self.run_dir = Path(run_dir)
        self.workers, self.threads, self.worker_class = workers, threads, worker_class
        self.start_timeout = start_timeout
        self.port = 0
        self.environment = {
            "ESP_NODE_BACKEND": "static",
            "ESP_NODE_URLS": node_url,
            "ESP_RUN_DIR": str(self.run_dir),
            "ESP_KEYSTORE_DIR": str(self.run_dir / "monolith-keystore"),
            "ESP_KEYSTORE_SCRYPT_N": str(scrypt_n),
            "ESP_SECRET_KEY": generate_secret(),
            **(env or {}),
        }
        # Validate here, in the caller's process, rather than as a worker that fails to boot.
        Settings.from_env(self.environment)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        """The configuration, e.g. ``gthread 4x32``."""
        return f"{self.worker_class} {self.workers}x{self.threads}" if self.worker_class == "gthread" else f"sync {self.workers}"

    def command(self) -> list[str]:
        """The gunicorn command line."""
        cmd = [sys.executable, "-m", "gunicorn", "--worker-class", self.worker_class, "--workers", str(self.workers),
               "--bind", f"127.0.0.1:{self.port}", "--timeout", str(WORKER_TIMEOUT), "--graceful-timeout", "5",
               "--keep-alive", str(KEEP_ALIVE),
               "--backlog", "4096", "--log-level", "warning"]
        if self.worker_class == "gthread":
            cmd += ["--threads", str(self.threads)]
        return [*cmd, "bench.thesis.monolith:create_app()"]

    def start(self) -> MonolithServer:
        """Start gunicorn and wait until /healthz answers (RuntimeError with the log's tail otherwise)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log_path = self.run_dir / "monolith.log"
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(self.command(), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log_file,
                                            stderr=subprocess.STDOUT, env={**child_environment(), **self.environment})
        deadline = time.monotonic() + self.start_timeout
        with requests.Session() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    if session.get(self.url + "/healthz", timeout=1.0).ok:
                        return self
                except requests.RequestException:
                    pass
                time.sleep(0.05)
        self.close()
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-5:])
        raise RuntimeError(f"the monolith ({self.label}) did not answer /healthz on {self.url}: {tail}")

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
        """Stop gunicorn (SIGTERM: the master stops its workers), SIGKILL after STOP_TIMEOUT."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        workers = []
        try:
            workers = psutil.Process(proc.pid).children()
        except psutil.Error:
            pass
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        for worker in workers:  # the master normally reaps them; never leave one behind
            if worker.is_running():
                worker.kill()

    def __enter__(self) -> MonolithServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
