"""A whole worker killed while it holds a task that is not batched (an account's funding): delivered again, sent once.

Batched transfers are taken over by the outbox sweep (``test_faults``); every other write task is one
Celery message, which only the broker can give to another worker: kombu puts a message taken and never
acknowledged back on its queue ESP_TASK_VISIBILITY_TIMEOUT after it was taken. To hold the task in the
worker deterministically, the block producer is stopped (SIGSTOP) before the account is created: the
funding task starts and waits on it. The worker is then SIGKILLed with its pool processes, the node
resumed, and a new worker started (as the supervisor does). The task must be confirmed, and the new
account funded exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from nodepool.registry import NodeRegistry
from nodepool.rpc import RpcClient, to_int
from tests.conftest import DB_REDELIVERY
from tests.reliability.load import PASSWORD, task_when_final
from tests.reliability.report import FaultRecord, Report
from tests.stack import LocalStack
from tests.waiting import wait_for

VISIBILITY_S = 15


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # The recycler is kept away (a stopped leader is otherwise replaced, which is another fault's test).
    s = LocalStack(tmp_path_factory.mktemp("redelivery"), DB_REDELIVERY, name="redelivery", writers=1,
                   ESP_DEPLOY_PLATFORM="0", ESP_TASK_VISIBILITY_TIMEOUT=str(VISIBILITY_S), ESP_RECYCLE_AFTER="1000")
    try:
        yield s
    finally:
        s.close()


@pytest.mark.slow
def test_a_worker_killed_holding_a_funding_task_is_redelivered_and_funds_once(stack: LocalStack, report: Report) -> None:
    leader = NodeRegistry(stack.redis).leader()
    assert leader is not None and leader.pid
    client = stack.client()
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        created = client.post("/api/v1/accounts", json={"password": PASSWORD})
        assert created.status_code == 202, created.get_json()
        task_id, address = created.get_json()["id"], created.get_json()["params"]["address"]
        wait_for(lambda: client.get(f"/api/v1/tasks/{task_id}").get_json()["state"] == "running", 30,
                 "the funding task to start (and wait on the stopped leader)", interval=0.05)
        worker = stack.writers.pop()
        killed_at = time.monotonic()
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    stack.start_writers(1)
    done = task_when_final(stack, task_id, timeout=VISIBILITY_S + 60)
    recover_s = time.monotonic() - killed_at
    node = RpcClient(leader.url)
    balance = to_int(node.call("eth_getBalance", [address, "latest"]))
    head = to_int(node.call("eth_blockNumber"))
    fundings = [tx["hash"] for n in range(head + 1) for tx in node.call("eth_getBlockByNumber", [hex(n), True])["transactions"]
                if (tx.get("to") or "").lower() == address.lower()]
    node.close()
    entry = report.add(FaultRecord(
        fault="a write worker SIGKILLed with its pool processes while it held an account's funding (one Celery message)",
        load="one account creation, its funding waiting on a stopped leader", requests=1,
        client_errors=0 if done["state"] == "confirmed" else 1, accepted=1, mined_once=int(len(fundings) == 1),
        lost=int(not fundings), duplicated=max(len(fundings) - 1, 0), recover_s=recover_s,
        notes=[f"delivered again by the broker after the visibility timeout (ESP_TASK_VISIBILITY_TIMEOUT={VISIBILITY_S} s"
               " here, 300 s by default) to the new worker; recovered = the task confirmed"],
    ))
    assert done["state"] == "confirmed", done
    assert fundings == [done["result"]["tx_hash"]], fundings
    assert balance == stack.settings.funding_wei
    assert recover_s >= VISIBILITY_S - 5, "confirmed before the broker could deliver it again: the kill missed the task"
    entry.passed = True
