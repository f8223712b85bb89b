"""The whole stack as a newcomer runs it: `scripts/up.sh` (what `make up` runs after installing).

Starts every process on ports of its own, checks readiness, the node list and
Flower, then sends SIGINT as Ctrl-C does and checks that no process is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request

import psutil
import pytest

from nodes.process import free_port
from settings import ROOT
from tests.conftest import DB_E2E, child_env, fresh_redis, redis_url
from tests.waiting import wait_for


def _get(url: str, timeout: float = 2.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _stack_processes(run_dir: str) -> list[psutil.Process]:
    """Processes of this stack: anvils in its run folder, and its Celery, gunicorn and node manager."""
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


@pytest.fixture
def stack(tmp_path):
    fresh_redis(DB_E2E)
    api_port, flower_port, rpc_port = free_port(), free_port(), free_port()
    run_dir = str(tmp_path / "run")
    env = child_env(
        ESP_REDIS_URL=redis_url(DB_E2E), ESP_API_PORT=str(api_port), ESP_FLOWER_PORT=str(flower_port), ESP_RPC_PORT=str(rpc_port),
        ESP_RUN_DIR=run_dir, ESP_ADMIN_KEY="e2e-admin-key", ESP_KEYSTORE_DIR=str(tmp_path / "keystore"),
    )
    log = open(tmp_path / "stack.log", "wb")
    proc = subprocess.Popen([str(ROOT / "scripts" / "up.sh")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{api_port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "stack.log").read_text()[-3000:]
        try:
            status, body = _get(base + "/readyz")
        except OSError:
            return False  # not listening yet
        # /readyz is 200 once one node answers; the node manager registers the others as they start.
        return status == 200 and body["nodes_answering"] == 3

    try:
        wait_for(ready, 60, lambda: "/readyz to answer 200 with 3 nodes: " + (tmp_path / "stack.log").read_text()[-3000:],
                 interval=0.3)
        yield proc, base, flower_port, run_dir, tmp_path / "stack.log", f"http://127.0.0.1:{rpc_port}/rpc"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)  # reaped here, not left for a later test's garbage collection to warn about
        log.close()


def test_stack_serves_and_ctrl_c_leaves_nothing(stack):
    proc, base, flower_port, run_dir, _, rpc_url = stack
    status, ready = _get(base + "/readyz")
    assert status == 200
    assert [n["id"] for n in ready["checks"]["nodes"]] == ["node-0", "node-1", "node-2"]
    status, nodes = _get(base + "/api/v1/nodes")
    assert status == 200
    assert [n["id"] for n in nodes["nodes"]] == ["node-0", "node-1", "node-2"]
    assert all(n["url"].startswith("http://127.0.0.1:") for n in nodes["nodes"])

    def flower_answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{flower_port}/", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(flower_answers, 30, "Flower to answer", interval=0.3)
    # The JSON-RPC gateway (the Procfile's rpc line) answers a web3 client's first question.
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}).encode()
    request = urllib.request.Request(rpc_url, data=body, headers={"Content-Type": "application/json",  # noqa: S310
                                                                  "Authorization": "Bearer e2e-admin-key"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback only
        assert json.loads(answer.read()) == {"jsonrpc": "2.0", "id": 1, "result": "0x7a69"}
    assert len([p for p in _stack_processes(run_dir) if p.name() == "anvil"]) == 3

    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does to the foreground process group
    proc.wait(30)

    def left_behind() -> list[tuple[int, str]]:
        return [(p.pid, " ".join(p.cmdline())) for p in _stack_processes(run_dir) if p.is_running()]

    wait_for(lambda: not left_behind(), 10, lambda: f"every process of the stack to exit; left behind: {left_behind()}",
             interval=0.2)
