"""The recycler against real nodes: one at a time, never below the serving minimum, memory caps, static nodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from nodepool.events import recent_events
from nodepool.pool import Pool
from nodepool.rpc import RpcClient
from nodepool.snapshot import status_overrides
from nodes.manager import NodeManager
from nodes.process import ProcessBackend
from services.recycler import CURRENT_KEY, current_recycle, request_operation
from settings import ROOT
from tasks.routing import CONTROL_QUEUE
from tests.conftest import DB_BALANCER, child_env, fresh_redis, make_settings, redis_url, stop_process
from tests.integration.test_balancer_edge import INTERVAL, MonitoredPool, managed_pool, view_of
from tests.waiting import wait_for


def recycle_kinds(running: MonitoredPool) -> list[tuple[str, str]]:
    """(kind, node) of every recycle event, oldest first."""
    return [(e["kind"], e["node"]) for e in reversed(recent_events(running.redis, 500)) if e["kind"].startswith("recycle-")]


def recycles(event: str) -> float:
    """The esp_recycles_total count of ``event`` in this process (the recycler runs in it here)."""
    return REGISTRY.get_sample_value("esp_recycles_total", {"event": event}) or 0.0


def test_two_dead_nodes_are_recycled_one_at_a_time(tmp_path: Path) -> None:
    started, finished = recycles("started"), recycles("finished")
    with managed_pool(tmp_path) as running:
        for _ in range(3):
            running.sample()
        running.kill("node-1")
        running.kill("node-2")
        seen_in_progress = set()
        done: list[str] = []
        for _ in range(80):  # 40 s at most
            _, step = running.tick()
            overrides = status_overrides(running.redis)
            current = current_recycle(running.redis)
            # Never two at once: at most one node out of service by the recycler, and it is the current one.
            assert len(overrides) <= 1, overrides
            if overrides:
                assert current is not None and set(overrides) == {current["node"]}
                seen_in_progress.add(current["node"])
            if step["action"] == "recycled":
                done.append(step["node"])
                if len(done) == 2:
                    break
        assert sorted(done) == ["node-1", "node-2"], done
        assert seen_in_progress == {"node-1", "node-2"}
        assert (recycles("started") - started, recycles("finished") - finished) == (2, 2)
        kinds = recycle_kinds(running)
        first, second = done
        # The second node's drain began only after the first was back.
        assert kinds.index(("recycle-done", first)) < kinds.index(("recycle-draining", second)), kinds
        for _ in range(4):
            snapshot = running.sample()
        assert [(n.id, n.status) for n in snapshot.nodes] == [("node-0", "up"), ("node-1", "up"), ("node-2", "up")]


def test_recycler_never_takes_the_pool_below_the_serving_minimum(tmp_path: Path) -> None:
    held_before = recycles("held")
    with managed_pool(tmp_path, ESP_MIN_SERVING_NODES="2") as running:
        for _ in range(3):
            running.sample()
        running.kill("node-1")
        running.kill("node-2")
        actions = []
        for _ in range(10):  # 5 s: far beyond ESP_RECYCLE_AFTER=2 samples
            snapshot, step = running.tick()
            actions.append(step["action"])
            assert status_overrides(running.redis) == {} and running.redis.get(CURRENT_KEY) is None
        assert {view_of(snapshot, "node-1").zone, view_of(snapshot, "node-2").zone} == {"III"}
        assert "held" in actions and not {"draining", "restarting", "recycled"} & set(actions), actions
        held = [e for e in recent_events(running.redis, 100) if e["kind"] == "recycle-held"]
        assert len(held) == 1 and held[0]["data"]["serving"] == 1 and held[0]["data"]["min_serving"] == 2
        assert recycles("held") == held_before + 1  # once for the episode, as its event

        # With a minimum the single serving node satisfies, the same pool heals, one node at a time.
        lenient = Pool(running.settings.replace(min_serving_nodes=1))
        try:
            done = []
            for _ in range(80):
                _, step = running.tick(lenient)
                assert len(status_overrides(running.redis)) <= 1
                if step["action"] == "recycled":
                    done.append(step["node"])
                    if len(done) == 2:
                        break
            assert sorted(done) == ["node-1", "node-2"]
        finally:
            lenient.close()


def test_a_node_that_dies_while_an_operator_holds_another_drained_waits_and_says_so(tmp_path: Path) -> None:
    held_before = recycles("held")
    with managed_pool(tmp_path) as running:
        for _ in range(3):
            running.sample()
        request_operation(running.pool, "node-2", "drain")
        for _ in range(20):
            running.tick()
            current = current_recycle(running.redis)
            if current is not None and current["phase"] == "drained":
                break
        assert current is not None and (current["node"], current["phase"]) == ("node-2", "drained"), current
        running.kill("node-1")
        for _ in range(10):  # 5 s: far beyond ESP_RECYCLE_AFTER=2 samples
            snapshot, step = running.tick()
            assert step["node"] == "node-2" and step["action"] != "draining", step  # one node at a time, even now
        assert view_of(snapshot, "node-1").zone == "III" and set(status_overrides(running.redis)) == {"node-2"}
        held = [e for e in recent_events(running.redis, 100) if e["kind"] == "recycle-held"]
        assert [(e["node"], e["data"]["behind"]) for e in held] == [("node-1", "node-2")]  # once, naming the drain
        assert recycles("held") == held_before + 1

        request_operation(running.pool, "node-2", "undrain")
        done = []
        for _ in range(60):  # the undrain, then node-1's recycle: 30 s at most
            _, step = running.tick()
            if step["action"] == "recycled":
                done.append(step["node"])
                break
        assert done == ["node-1"], recycle_kinds(running)


def test_node_over_its_memory_cap_is_recycled(tmp_path: Path) -> None:
    # A cap just above an idle anvil's ~20 MB; evm_snapshot keeps whole states in memory
    # (~5 MB per 1,000 here) without changing the node's chain: real growth on one node only.
    with managed_pool(tmp_path, ESP_NODE_MEMORY_CAP_MB="48", ESP_RECYCLE_AFTER="2") as running:
        for _ in range(3):
            snapshot = running.sample()
        assert all(n.zone != "III" for n in snapshot.nodes), snapshot
        spec = running.pool.registry.get("node-2")
        assert spec is not None
        client = RpcClient(spec.url, timeout=10)
        seen = []
        try:
            for _ in range(40):
                client.batch([("evm_snapshot", [])] * 500)
                view = view_of(running.sample(), "node-2")
                seen.append((view.zone, view.zone_reason, round(view.state["memory"], 3)))
                if view.zone_reason == "over memory cap":
                    break
        finally:
            client.close()
        view = view_of(running.sample(), "node-2")
        assert view.zone == "III" and view.zone_reason == "over memory cap" and view.status == "up", (view, seen)
        stored = json.loads(running.redis.get("esp:snapshot") or "{}")
        node2 = next(n for n in stored["nodes"] if n["id"] == "node-2")
        assert node2["raw"]["memory"] > 1.0 and node2["state"]["memory"] == 1.0

        for _ in range(40):
            _, step = running.tick()
            if step["action"] in ("recycled", "failed"):
                break
        assert step["action"] == "recycled", step
        for _ in range(3):
            snapshot = running.sample()
        view = view_of(snapshot, "node-2")
        assert view.zone in ("I", "II") and view.status == "up", view
        events = recent_events(running.redis, 100)
        drained = [(e["node"], e["data"].get("zone_reason")) for e in events if e["kind"] == "recycle-draining"]
        assert drained == [("node-2", "over memory cap")], (drained, [(n.id, n.zone, n.zone_reason) for n in snapshot.nodes])


@pytest.fixture
def static_pool(tmp_path: Path, anvil_binary: Path) -> Iterator[MonitoredPool]:
    """Two standalone anvils ESP does not own, registered as a static pool by an in-process manager."""
    backend = ProcessBackend(make_settings(tmp_path / "own", ESP_BLOCK_TIME="0"))
    specs = [backend.start(f"ext-{i}", role="standalone") for i in range(2)]
    client = fresh_redis(DB_BALANCER)
    settings = make_settings(
        tmp_path, ESP_REDIS_URL=redis_url(DB_BALANCER), ESP_NODE_BACKEND="static",
        ESP_NODE_URLS=",".join(s.url for s in specs), ESP_MONITOR_INTERVAL=str(INTERVAL), ESP_RECYCLE_AFTER="2",
    )
    manager = NodeManager(settings, client)
    manager.start()
    thread = threading.Thread(target=manager.serve, daemon=True)
    thread.start()
    running = MonitoredPool(settings, manager, client)
    running.external = specs  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        running.close()
        manager.stop()
        thread.join(10)
        manager.close()
        backend.close()


def test_static_nodes_are_never_restarted_and_the_skip_is_recorded_once(static_pool: MonitoredPool) -> None:
    running = static_pool
    for _ in range(3):
        snapshot = running.sample()
    assert [(n.id, n.backend, n.status) for n in snapshot.nodes] == [("node-0", "static", "up"), ("node-1", "static", "up")]
    external = running.external  # type: ignore[attr-defined]
    os.kill(external[1].pid, signal.SIGKILL)
    actions = []
    for _ in range(8):
        snapshot, step = running.tick()
        actions.append(step["action"])
    view = view_of(snapshot, "node-1")
    # No process of ours to watch: the failed probe is the evidence.
    assert (view.zone, view.status, view.zone_reason, view.alive) == ("III", "down", "down", False)
    assert set(actions) <= {"idle"} and status_overrides(running.redis) == {}
    skipped = [e for e in recent_events(running.redis, 100) if e["kind"] == "recycle-skipped"]
    assert [(e["node"], e["data"]["reason"]) for e in skipped] == [("node-1", "static nodes cannot be restarted by ESP")]


@pytest.mark.slow
def test_beat_runs_monitor_and_recycler_in_one_solo_control_worker(tmp_path: Path) -> None:
    """The real wiring: `celery -A tasks.worker worker -B -P solo -Q esp.control` samples, detects and recycles."""
    with managed_pool(tmp_path) as running:
        env = child_env(ESP_REDIS_URL=redis_url(DB_BALANCER), ESP_RUN_DIR=str(tmp_path), ESP_BLOCK_TIME="1",
                        ESP_MONITOR_INTERVAL=str(INTERVAL), ESP_RECYCLE_AFTER="2",
                        ESP_KEYSTORE_DIR=str(tmp_path / "keystore"))
        cmd = [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "-B", "-s", str(tmp_path / "beat-schedule"),
               "-Q", CONTROL_QUEUE, "-n", "control@%h", "-P", "solo", "--without-mingle", "--without-gossip",
               "--loglevel=INFO"]
        with open(tmp_path / "worker.log", "ab") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:

            def worker_log() -> str:
                return (tmp_path / "worker.log").read_text()[-3000:]

            def sampled_three_times() -> bool:
                assert proc.poll() is None, worker_log()
                return int(running.redis.llen("esp:snapshot:history")) >= 3

            def node_2_recycled() -> bool:
                assert proc.poll() is None, worker_log()
                return any(e["kind"] == "recycle-done" and e["node"] == "node-2" for e in recent_events(running.redis, 200))

            wait_for(sampled_three_times, 60, lambda: "3 samples of the pool by beat: " + worker_log(), interval=0.2)
            running.kill("node-2")
            wait_for(node_2_recycled, 90, lambda: "node-2 to be recycled: " + worker_log(), interval=0.2)
            spec = running.pool.registry.get("node-2")
            assert spec is not None and spec.generation == 1
            kinds = [k for k, n in recycle_kinds(running) if n == "node-2"]
            assert kinds == ["recycle-draining", "recycle-restarting", "recycle-done"], kinds
        finally:
            stop_process(proc)
