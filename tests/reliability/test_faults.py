"""Nodes, a worker and beat failing under read and write load: what the clients saw, and what the chain holds.

One stack for the module (three anvils kept on one chain, a control worker, a write worker of two
processes, beat, the JSON-RPC gateway), and for each fault a fresh ESP-held sender and the load of
``tests.reliability.load``: REST and JSON-RPC readers, REST transfers and raw transactions. Each test
records its figures in the suite's report, then asserts what ESP promises: no client error, every
accepted transaction mined exactly once, the failed part back without anyone's hand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from nodepool.registry import NodeRegistry
from nodepool.rpc import RpcClient, to_int
from nodepool.spec import ROLE_FOLLOWER, NodeSpec
from settings import ROOT
from tests.conftest import DB_RELIABILITY, child_env, stop_process
from tests.reliability.load import Load, Outcome, new_esp_account, raw_sender
from tests.reliability.report import FaultRecord, Report
from tests.stack import LocalStack
from tests.waiting import wait_for

#: How long beat stays stopped (the issue: "a minute").
BEAT_DOWN_S = 60
#: Seconds of load before a fault, and after the part is back, so both sides of it are measured.
WARM_S = 5.0


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, str]]:
    stack = LocalStack(tmp_path_factory.mktemp("faults"), DB_RELIABILITY, name="faults", writers=1,
                       ESP_DEPLOY_PLATFORM="0", ESP_RECYCLE_AFTER="2", ESP_RATE_LIMIT="100000 per minute")
    # (the per-key limit is raised: the load is one key's, and a 429 is a refusal on purpose, not a fault's cost)
    try:
        yield stack, stack.serve_rpc()
    finally:
        stack.close()


def nodes_view(stack: LocalStack) -> dict[str, Any]:
    response = stack.client().get("/api/v1/nodes")
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def caught_up(stack: LocalStack, node_id: str, generation: int) -> bool:
    """The node is back (a later generation), sampled up, and at the pool's head (one block of slack)."""
    spec = NodeRegistry(stack.redis).get(node_id)
    if spec is None or spec.generation <= generation:
        return False
    view = nodes_view(stack)
    node = next((n for n in view["nodes"] if n["id"] == node_id), None)
    if node is None or node["status"] != "up" or view["pool"]["stale"]:
        return False
    client = RpcClient(spec.url, timeout=2)
    try:
        head = to_int(client.call("eth_blockNumber"))
    except Exception:  # not answering yet
        return False
    finally:
        client.close()
    return head >= (view["pool"].get("max_head") or 0) - 1


def some_load(load: Load, since: float) -> None:
    """Let the load run WARM_S seconds from ``since`` (with reads answered), so each side of a fault is measured."""
    wait_for(lambda: time.monotonic() - since >= WARM_S and len(load.reads_between(since, float("inf"))) >= 20, 60,
             f"{WARM_S} s of load")


def record(report: Report, fault: str, load: Load, out: Outcome, recover_s: float | None, notes: list[str]) -> FaultRecord:
    return report.add(FaultRecord(
        fault=fault, load=out.load_text(load), requests=out.requests, client_errors=out.client_errors,
        accepted=out.accepted, mined_once=out.mined_once, lost=len(out.lost), duplicated=len(out.duplicated),
        recover_s=recover_s,
        notes=[*notes, f"slowest read {out.max_read_s:.2f} s"] + [f"error: {e}" for e in (out.read_errors + out.write_errors)[:3]]
        + [f"lost: {x}" for x in out.lost[:3]] + [f"duplicated: {x}" for x in out.duplicated[:3]],
    ))


def conclude(report: Report, fault: str, load: Load, out: Outcome, recover_s: float | None, notes: list[str]) -> None:
    """Record the fault's figures, then assert what ESP promises of it."""
    entry = record(report, fault, load, out, recover_s, notes)
    promised(out)
    entry.passed = True


def promised(out: Outcome) -> None:
    assert out.read_errors == [], f"{len(out.read_errors)} of {out.reads} reads failed: {out.read_errors[:5]}"
    assert out.write_errors == [], f"{len(out.write_errors)} of {out.writes} writes failed: {out.write_errors[:5]}"
    assert out.lost == [] and out.duplicated == [], (out.lost[:5], out.duplicated[:5])
    assert out.mined_once == out.accepted > 10, (out.mined_once, out.accepted)


def a_follower(stack: LocalStack) -> NodeSpec:
    spec = next(s for s in NodeRegistry(stack.redis).all() if s.role == ROLE_FOLLOWER)
    assert spec.pid
    return spec


@pytest.mark.slow
def test_a_follower_killed_under_load(faults: tuple[LocalStack, str], report: Report) -> None:
    stack, rpc_url = faults
    victim = a_follower(stack)
    with Load(stack, rpc_url, esp_sender=new_esp_account(stack), raw=raw_sender(3)) as load:
        some_load(load, time.monotonic())
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
        wait_for(lambda: caught_up(stack, victim.id, victim.generation), 120, f"{victim.id} to be recycled and catch up",
                 interval=0.25)
        recover_s = time.monotonic() - killed_at
        some_load(load, time.monotonic())
    out = load.settle()
    conclude(report, f"a follower node SIGKILLed ({victim.id})", load, out, recover_s,
                   ["recovered = recycled (a new process), sampled up and at the pool's head"])


@pytest.mark.slow
def test_a_hung_node_is_left_recycled_and_rejoins(faults: tuple[LocalStack, str], report: Report) -> None:
    stack, rpc_url = faults
    victim = a_follower(stack)
    with Load(stack, rpc_url, esp_sender=new_esp_account(stack), raw=raw_sender(4)) as load:
        some_load(load, time.monotonic())
        stopped_at = time.monotonic()
        os.kill(victim.pid, signal.SIGSTOP)  # type: ignore[arg-type]  # alive, holding its port, answering nothing
        try:
            def left_alone() -> bool:  # zone III: no work is routed to it, and the recycler counts it
                node = next(n for n in nodes_view(stack)["nodes"] if n["id"] == victim.id)
                return bool(node["zone"] == "III" and node["zone_reason"] == "not answering")

            wait_for(left_alone, 60, f"{victim.id} to be sampled in zone III, not answering", interval=0.1)
            down_s = time.monotonic() - stopped_at
            wait_for(lambda: caught_up(stack, victim.id, victim.generation), 120, f"{victim.id} to be recycled and rejoin",
                     interval=0.25)
            recover_s = time.monotonic() - stopped_at
        finally:
            if NodeRegistry(stack.redis).get(victim.id) in (None, victim):  # not recycled: let the test's end stop it
                os.kill(victim.pid, signal.SIGCONT)  # type: ignore[arg-type]
        after = time.monotonic()
        some_load(load, after)
        slow_after = max(s for _, s, _ in load.reads_between(after, float("inf")))
    out = load.settle()
    settings = stack.settings
    entry = record(report, f"a follower node hung (SIGSTOP: accepts, never answers; {victim.id})", load, out, recover_s, [
        f"sampled in zone III (not answering: no work routed to it) {down_s:.1f} s after it hung (probe timeout {settings.probe_timeout} s, monitor interval"
        f" {settings.monitor_interval} s); a read that reached it before waited at most the node call timeout"
        f" ({settings.rpc_timeout} s) and was answered by another node; slowest read once it was back {slow_after:.2f} s",
    ])
    promised(out)
    assert down_s < 3 * settings.monitor_interval + settings.probe_timeout + 5, down_s
    entry.passed = True


@pytest.mark.slow
def test_the_leader_killed_with_transactions_in_its_pool(faults: tuple[LocalStack, str], report: Report) -> None:
    stack, rpc_url = faults
    registry = NodeRegistry(stack.redis)
    leader = registry.leader()
    assert leader is not None and leader.pid
    with Load(stack, rpc_url, esp_sender=new_esp_account(stack), raw=raw_sender(5), pace=0.1) as load:
        some_load(load, time.monotonic())
        head = to_int(RpcClient(leader.url).call("eth_blockNumber"))
        killed_at = time.monotonic()
        os.kill(leader.pid, signal.SIGKILL)  # its pool holds the last writes' transactions

        def new_leader_mines() -> bool:
            spec = registry.leader()
            if spec is None or spec.id == leader.id:
                return False
            try:
                return to_int(RpcClient(spec.url, timeout=2).call("eth_blockNumber")) > head + 1
            except Exception:
                return False

        wait_for(new_leader_mines, 60, "a new leader mining", interval=0.1)
        handover_s = time.monotonic() - killed_at
        wait_for(lambda: caught_up(stack, leader.id, leader.generation), 120, f"{leader.id} to be recycled and rejoin",
                 interval=0.25)
        recover_s = time.monotonic() - killed_at
        some_load(load, time.monotonic())
    out = load.settle()
    conclude(report, f"the leader (block producer) SIGKILLed with transactions in its pool ({leader.id})", load, out,
                   recover_s, [f"a new leader mined {handover_s:.1f} s after the kill; recovered = the old leader back as a"
                               " follower, at the head"])


@pytest.mark.slow
def test_a_whole_worker_killed_mid_task(faults: tuple[LocalStack, str], report: Report) -> None:
    stack, rpc_url = faults
    sender = new_esp_account(stack)
    with Load(stack, rpc_url, esp_sender=sender, raw=raw_sender(6), pace=0.1) as load:
        some_load(load, time.monotonic())
        wait_for(lambda: len(load.tasks) >= 20, 30, "transfers accepted before the kill")
        worker = stack.writers.pop()
        killed_at = time.monotonic()
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and its pool processes, mid-task
        worker.wait(10)
        cut = len(load.tasks)
        stack.start_writers(1)  # what the supervisor does: a new worker, not the same one
        started_s = time.monotonic() - killed_at
        before = list(load.tasks[:cut])
        wait_for(lambda: all(stack.client().get(f"/api/v1/tasks/{t}").get_json()["state"] == "confirmed" for t in before),
                 180, "every transfer accepted before the kill to be confirmed", interval=0.5)
        recover_s = time.monotonic() - killed_at
        some_load(load, time.monotonic())
    out = load.settle()
    conclude(report, "a write worker SIGKILLed with its pool processes, mid-task (a new one started)", load, out,
                   recover_s, [f"the new worker answered {started_s:.1f} s after the kill; recovered = every transfer"
                               " accepted before the kill confirmed"])


def start_beat(stack: LocalStack) -> subprocess.Popen[bytes]:
    with open(stack.tmp / "beat.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks.worker", "beat", "--schedule", str(stack.tmp / "beat-schedule"),
             "--loglevel=INFO"], cwd=ROOT, env=child_env(**stack.env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)


@pytest.mark.slow
def test_beat_stopped_for_a_minute(faults: tuple[LocalStack, str], report: Report) -> None:
    stack, rpc_url = faults
    beat = next(p for p in stack.others if "beat" in p.args)  # type: ignore[operator]
    with Load(stack, rpc_url, esp_sender=new_esp_account(stack), raw=raw_sender(7)) as load:
        some_load(load, time.monotonic())
        stop_process(beat)
        stack.others.remove(beat)
        stopped_at = time.monotonic()
        wait_for(lambda: nodes_view(stack)["pool"]["stale"], 30, "the snapshot to be reported stale", interval=0.2)
        stale_s = time.monotonic() - stopped_at
        while time.monotonic() - stopped_at < BEAT_DOWN_S:  # the load goes on, against a stale snapshot
            assert all(p.poll() is None for p in stack.others + stack.writers)
            time.sleep(1)
        pending = [t for t in load.tasks if stack.client().get(f"/api/v1/tasks/{t}").get_json()["state"] != "confirmed"]
        restarted_at = time.monotonic()
        stack.others.append(start_beat(stack))
        wait_for(lambda: not nodes_view(stack)["pool"]["stale"], 60, "a fresh snapshot", interval=0.2)
        fresh_s = time.monotonic() - restarted_at
        wait_for(lambda: all(stack.client().get(f"/api/v1/tasks/{t}").get_json()["state"] == "confirmed" for t in pending),
                 120, "the transfers sent while beat was down to be confirmed", interval=0.5)
        recover_s = time.monotonic() - restarted_at
        some_load(load, time.monotonic())
    out = load.settle()
    conclude(report, f"beat stopped for {BEAT_DOWN_S} s", load, out, recover_s, [
        f"the snapshot was reported stale {stale_s:.1f} s after beat stopped (stale after {stack.settings.stale_after} s);"
        f" reads were routed to answering nodes meanwhile; {len(pending)} transfers were still unconfirmed when beat came"
        f" back, and a fresh snapshot came {fresh_s:.1f} s after it; recovered = those transfers confirmed",
    ])
