"""The whole stack as a newcomer runs it: `scripts/up.sh` (what `make up` runs after installing).

Starts every process on ports of its own, checks readiness, the node list and
Flower, then sends SIGINT as Ctrl-C does and checks that no process is left.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.conftest import DB_E2E
from tests.upstack import UpStack, stack_processes
from tests.waiting import wait_for


@pytest.fixture
def stack(tmp_path):
    up = UpStack(tmp_path, DB_E2E, ESP_ADMIN_KEY="e2e-admin-key")
    try:
        yield up
    finally:
        up.close()


def test_stack_serves_and_ctrl_c_leaves_nothing(stack):
    status, ready = stack.get("/readyz")
    assert status == 200
    assert [n["id"] for n in ready["checks"]["nodes"]] == ["node-0", "node-1", "node-2"]
    status, nodes = stack.get("/api/v1/nodes")
    assert status == 200
    assert [n["id"] for n in nodes["nodes"]] == ["node-0", "node-1", "node-2"]
    assert all(n["url"].startswith("http://127.0.0.1:") for n in nodes["nodes"])

    def flower_answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{stack.flower_port}/", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(flower_answers, 30, "Flower to answer", interval=0.3)
    # The JSON-RPC gateway (the Procfile's rpc line) answers a web3 client's first question.
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}).encode()
    request = urllib.request.Request(stack.rpc_url, data=body, headers={"Content-Type": "application/json",  # noqa: S310
                                                                  "Authorization": "Bearer e2e-admin-key"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback only
        assert json.loads(answer.read()) == {"jsonrpc": "2.0", "id": 1, "result": "0x7a69"}
    assert len([p for p in stack_processes(stack.run_dir) if p.name() == "anvil"]) == 3

    stack.interrupt()  # what Ctrl-C does: SIGINT to the foreground process group
    wait_for(lambda: not stack.left_behind(), 10,
             lambda: f"every process of the stack to exit; left behind: {stack.left_behind()}", interval=0.2)
