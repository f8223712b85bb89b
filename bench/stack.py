"""Run the real stack (scripts/up.sh) for a benchmark, on ports and a Redis server of its own."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from bench.redis_server import PrivateRedis
from nodes.process import free_port
from settings import ROOT

RESULTS = ROOT / "bench" / "results"
#: What marks a line of the stack's log as a problem worth keeping with a run's figures.
PROBLEM_WORDS = ("WORKER TIMEOUT", "Traceback", "CRITICAL", "ERROR", "Error:", "Killed", "not expected", "gave up:")


class RunningStack:
    """``scripts/up.sh`` in a process group of its own; ``close()`` sends Ctrl-C and waits."""

    def __init__(self, run_dir: Path, **env: str) -> None:
        self.redis = PrivateRedis()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.rpc_port = free_port()
        #: The JSON-RPC gateway's endpoint (``rpc.server``, the Procfile's ``rpc`` line).
        self.rpc_url = f"http://127.0.0.1:{self.rpc_port}/rpc"
        self.admin_key = "bench-admin-key"
        run_dir.mkdir(parents=True, exist_ok=True)
        child = {k: v for k, v in os.environ.items() if not k.startswith("ESP_")}
        child.update({
            "ESP_API_PORT": str(self.port), "ESP_RPC_PORT": str(self.rpc_port), "ESP_FLOWER_PORT": str(free_port()), "ESP_RUN_DIR": str(run_dir),
            "ESP_REDIS_URL": self.redis.url(0), "ESP_ADMIN_KEY": self.admin_key,
            "ESP_KEYSTORE_DIR": str(run_dir / "keystore"),
            # A benchmark is one heavy client: the per-key limit must not be what it measures.
            "ESP_RATE_LIMIT": "1000000 per minute", "ESP_RPC_RATE_LIMIT": "10000000 per minute", **env,
        })
        #: The stack's environment, for a benchmark that starts one more of its processes (e.g. a second API).
        self.environment = dict(child)
        self.key = ""  # the benchmark's user key, created once the API answers
        self.log_path = run_dir / "stack.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(ROOT / "scripts" / "up.sh")], cwd=ROOT, env=child, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if threading.current_thread() is threading.main_thread():
            # `timeout` and Ctrl-C alike: unwind through close(), so no stack outlives its benchmark.
            signal.signal(signal.SIGTERM, _raise_system_exit)
        try:
            self._wait_ready(run_dir, deadline=time.monotonic() + 90)
        except BaseException:
            self.close()  # never leave a half-started stack (and its Redis) running behind a failed benchmark
            raise

    def _wait_ready(self, run_dir: Path, *, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the stack exited: see {run_dir / 'stack.log'}")
            try:
                if self.get("/readyz")[0] == 200:
                    self.key = self.create_key("bench", "user")
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("the stack did not become ready in 90 s")

    def create_key(self, name: str, role: str) -> str:
        """A new API key, created with the admin key."""
        status, body = self.post("/api/v1/keys", {"name": name, "role": role}, key=self.admin_key)
        if status != 201:
            raise RuntimeError(f"could not create an API key: {status} {body}")
        return str(body["key"])

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                timeout: float = 30, key: str | None = None) -> tuple[int, Any]:
        """One request with the benchmark's key (or ``key``); a 503 with Retry-After (KDF pool full) is retried."""
        data = json.dumps(body).encode() if body is not None else None
        key = key if key is not None else self.key
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        deadline = time.monotonic() + timeout
        while True:
            req = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **auth, **(headers or {})})
            try:
                with urllib.request.urlopen(req, timeout=timeout) as response:
                    return response.status, json.loads(response.read() or b"null")
            except urllib.error.HTTPError as exc:
                retry_after = exc.headers.get("Retry-After")
                if exc.code == 503 and retry_after and time.monotonic() + float(retry_after) < deadline:
                    exc.read()
                    time.sleep(float(retry_after))
                    continue
                return exc.code, json.loads(exc.read() or b"null")

    def log_size(self) -> int:
        """Where the stack's log ends now: pass it to ``problems_since`` after a run."""
        self.log.flush()
        return self.log_path.stat().st_size

    def problems_since(self, offset: int, limit: int = 20) -> dict[str, Any]:
        """The lines of the stack's log after ``offset`` that report a problem (a worker timeout, a traceback, an error)."""
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        lines = [line for line in text.splitlines() if any(word in line for word in PROBLEM_WORDS)]
        return {"count": len(lines), "first": lines[:limit]}

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return self.request("POST", path, body, **kw)

    def wait(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            _, body = self.get(f"/api/v1/tasks/{task_id}?wait=20", timeout=30)
            if body["state"] in ("confirmed", "failed") or time.monotonic() > deadline:
                return body

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                # supervisord's programs run in process groups of their own: they are killed one by one, not with its group.
                left = psutil.Process(self.proc.pid).children(recursive=True)
                os.killpg(self.proc.pid, signal.SIGKILL)
                for child in left:
                    try:
                        child.kill()
                    except psutil.Error:
                        pass
                self.proc.wait(10)
        self.log.close()
        self.redis.close()


def esp_setting(text: str) -> tuple[str, str]:
    """``ESP_X=VALUE`` -> (name, value), for a benchmark's ``--esp-env``; anything else is a usage error."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("ESP_"):
        raise argparse.ArgumentTypeError(f"expected ESP_NAME=VALUE, not {text!r}")
    return name, value


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def write_results(name: str, figures: dict[str, Any], table: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    return RESULTS / f"{name}.json"
