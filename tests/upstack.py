"""The whole stack as ``make up`` runs it: ``scripts/up.sh`` (supervisord over the Procfile), for e2e and fault tests.

Each test's stack has ports, a Redis database and a run folder of its own, so it never meets a
developer's ``make up`` or another test. ``close()`` stops it as Ctrl-C does and then makes sure
that no process of it is left, whatever state the test left it in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path

import psutil
from supervisor.xmlrpc import SupervisorTransport

from nodes.process import free_port
from settings import ROOT
from tests.conftest import child_env, fresh_redis, redis_url
from tests.waiting import wait_for

#: Seconds the stack may take to serve with all its nodes (a cold start imports web3 in seven processes at once).
START_TIMEOUT = 90
#: Seconds supervisord may take to stop every process on SIGINT (it stops them one program at a time).
STOP_TIMEOUT = 40
NODES = 3


def get_json(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """GET ``url``: the status and the JSON body (an error status too; OSError when nothing answers)."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def stack_processes(run_dir: str) -> list[psutil.Process]:
    """Processes of the stack of ``run_dir``: anvils in its run folder, its supervisord, Celery, gunicorn, node manager."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.info["environ"] or {}
        except psutil.Error:
            continue
        if env.get("ESP_RUN_DIR") == run_dir or run_dir in cmd:
            found.append(proc)
    return found


class UpStack:
    """``scripts/up.sh`` started on Redis database ``db``, ready once /readyz counts every node; ``close()`` stops it."""

    def __init__(self, tmp: Path, db: int, **env: str) -> None:
        fresh_redis(db).close()
        self.api_port, self.flower_port, self.rpc_port = free_port(), free_port(), free_port()
        self.run_dir = str(tmp / "run")
        self.admin_key = env.pop("ESP_ADMIN_KEY", "up-stack-admin-key")
        self.env = child_env(
            ESP_REDIS_URL=redis_url(db), ESP_API_PORT=str(self.api_port), ESP_FLOWER_PORT=str(self.flower_port),
            ESP_RPC_PORT=str(self.rpc_port), ESP_RUN_DIR=self.run_dir, ESP_ADMIN_KEY=self.admin_key,
            ESP_KEYSTORE_DIR=str(tmp / "keystore"), ESP_FILES_DIR=str(tmp / "files"), **env,
        )
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.rpc_url = f"http://127.0.0.1:{self.rpc_port}/rpc"
        self.log_path = tmp / "stack.log"
        # Appending: supervisord writes its programs' output through a /dev/stdout of its own, at the end of the file.
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(ROOT / "scripts" / "up.sh")], cwd=ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_ready(START_TIMEOUT)
        except BaseException:
            self.close()
            raise

    # -- looking at it ---------------------------------------------------------------------

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def get(self, path: str, timeout: float = 2.0, *, admin: bool = False) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {self.admin_key}"} if admin else None
        return get_json(self.base + path, timeout, headers)

    def is_ready(self) -> bool:
        """/readyz answers 200 with every node answering (it is 200 from the first node on)."""
        assert self.proc.poll() is None, "scripts/up.sh exited:\n" + self.log_tail()
        try:
            status, body = self.get("/readyz")
        except OSError:
            return False  # not listening yet
        return status == 200 and body.get("nodes_answering") == NODES

    def wait_ready(self, timeout: float) -> None:
        wait_for(self.is_ready, timeout, lambda: f"/readyz to answer 200 with {NODES} nodes:\n" + self.log_tail(), interval=0.3)

    def supervisor(self) -> xmlrpc.client.ServerProxy:
        """supervisord's XML-RPC interface, on the unix socket in the run folder (a context manager: it closes)."""
        socket = f"unix://{self.run_dir}/supervisor.sock"
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, socket))

    def programs(self) -> dict[str, dict]:
        """supervisord's view of every program: name -> its process info (``pid``, ``statename``, ...)."""
        with self.supervisor() as proxy:
            return {info["name"]: info for info in proxy.supervisor.getAllProcessInfo()}

    def pids(self) -> dict[str, int]:
        """The pid of every program that has one now."""
        return {name: info["pid"] for name, info in self.programs().items() if info["pid"]}

    def orphans(self) -> list[tuple[int, str]]:
        """Processes of the stack that supervisord no longer holds (a killed program's children still running)."""
        found = []
        for p in stack_processes(self.run_dir):
            try:
                if p.pid != self.proc.pid and self.proc.pid not in {a.pid for a in p.parents()} \
                        and p.status() != psutil.STATUS_ZOMBIE:
                    found.append((p.pid, " ".join(p.cmdline())))
            except psutil.Error:
                continue
        return found

    # -- stopping it -----------------------------------------------------------------------

    def interrupt(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ctrl-C: SIGINT to the foreground process group (supervisord), then wait for it to exit."""
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(timeout)

    def left_behind(self) -> list[tuple[int, str]]:
        found = []
        for p in stack_processes(self.run_dir):
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    found.append((p.pid, " ".join(p.cmdline())))
            except psutil.Error:
                continue
        return found

    def close(self) -> None:
        """Stop the stack as Ctrl-C does; SIGKILL whatever of it is still running after that."""
        try:
            if self.proc.poll() is None:
                try:
                    self.interrupt()
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(15)  # reaped here, not left for a later test's garbage collection to warn about
            # supervisord's programs run in process groups of their own: one it could not stop would outlive it.
            deadline = time.monotonic() + 10
            while self.left_behind() and time.monotonic() < deadline:
                time.sleep(0.2)
            for pid, _ in self.left_behind():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            self._log.close()
