"""``GET /metrics``: what Redis holds (snapshot, queues, receipts watched) and the metrics modules declare, parsed back.

With the Flask test client the process's own default registry is shown; under the real
gunicorn (2 workers, ``gunicorn.conf.py``) a counter is the sum over both workers, the
files of an earlier server are dropped at start, and a dead worker's live gauge is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests
from flask.testing import FlaskClient
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from balancer import STATUS_DOWN, Snapshot, build_snapshot
from balancer.calibration import Calibrator
from balancer.state import NodeSample
from nodepool.snapshot import SNAPSHOT_KEY, balancer_config
from nodes.process import free_port
from services.watch import ReceiptWatch
from settings import ROOT, Settings
from tasks.routing import QUEUES
from tests.conftest import DB_METRICS, child_env, fresh_redis, make_settings, redis_url, stop_process
from tests.waiting import wait_for

#: Declared here as any module declares its metrics: at import, in prometheus_client's default registry.
SCRAPES_SEEN = Counter("esp_test_metrics_events", "events this test module counts")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(text: str) -> Samples:
    """Every sample of the exposition by (name, sorted labels); fails on text the parser does not take."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


@pytest.fixture
def metrics_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, ESP_REDIS_URL=redis_url(DB_METRICS))


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = fresh_redis(DB_METRICS)
    yield client
    client.close()


@pytest.fixture
def client(metrics_settings: Settings, r: redis.Redis) -> Iterator[FlaskClient]:
    app = create_app(metrics_settings)
    app.config["TESTING"] = True
    yield app.test_client()
    app.extensions["esp.pool"].close()


def publish_snapshot(settings: Settings, client: redis.Redis, samples: list[NodeSample]) -> Snapshot:
    """Store the snapshot of ``samples``, taken now, as the monitor does; return it."""
    config = balancer_config(settings)
    snapshot = build_snapshot(samples, config, Calibrator.start(config), settings.balancer_policy, time.time())
    client.set(SNAPSHOT_KEY, json.dumps(snapshot.to_dict()))
    return snapshot


def test_the_redis_families_show_the_snapshot_queues_and_receipts_written(
        metrics_settings: Settings, r: redis.Redis, client: FlaskClient) -> None:
    up = NodeSample(node_id="node-0", url="http://node-0.invalid", backend="static", cpu=0.2, memory=0.1,
                    latency_ms=2.0, head=42)
    down = NodeSample(node_id="node-1", url="http://node-1.invalid", backend="static", status=STATUS_DOWN, alive=False)
    snapshot = publish_snapshot(metrics_settings, r, [up, down])
    for i, queue in enumerate(QUEUES):
        r.rpush(queue, *[f"task-{n}" for n in range(i + 1)])  # 1, 2, 3, 4: a swapped label would show
    ReceiptWatch(r).add("task-a", ["0x01"], deadline=time.time() + 60)
    ReceiptWatch(r).add("task-b", ["0x02", "0x03"], deadline=time.time() + 60)

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    samples = scrape(response.get_data(as_text=True))
    node0, node1 = (next(n for n in snapshot.nodes if n.id == i) for i in ("node-0", "node-1"))
    assert samples["esp_node_up", (("node", "node-0"),)] == 1
    assert samples["esp_node_up", (("node", "node-1"),)] == 0
    assert samples["esp_node_head", (("node", "node-0"),)] == 42
    assert ("esp_node_head", (("node", "node-1"),)) not in samples  # no head known: no sample, as before
    assert samples["esp_node_distance", (("node", "node-0"),)] == pytest.approx(node0.distance, abs=1e-6)
    for node in (node0, node1):
        for zone in ("I", "II", "III"):
            assert samples["esp_node_zone", (("node", node.id), ("zone", zone))] == (node.zone == zone)
        for dimension, value in node.state.items():
            assert samples["esp_node_state", (("dimension", dimension), ("node", node.id))] == pytest.approx(value, abs=1e-6)
        assert samples["esp_node_inflight", (("node", node.id),)] == node.inflight
    assert samples["esp_pool_lbh", ()] == pytest.approx(snapshot.pool.lbh, abs=1e-6)
    assert samples["esp_pool_dis_ave", ()] == pytest.approx(snapshot.pool.dis_ave, abs=1e-6)
    assert 0 <= samples["esp_snapshot_age_seconds", ()] < metrics_settings.stale_after
    assert samples["esp_snapshot_stale", ()] == 0
    assert {q: samples["esp_queue_length", (("queue", q),)] for q in QUEUES} == {q: i + 1 for i, q in enumerate(QUEUES)}
    assert samples["esp_receipts_watched", ()] == 2


def test_without_a_snapshot_only_staleness_queues_and_receipts_are_shown(client: FlaskClient) -> None:
    text = client.get("/metrics").get_data(as_text=True)

    samples = scrape(text)
    assert samples["esp_snapshot_stale", ()] == 1
    assert samples["esp_receipts_watched", ()] == 0
    assert all(samples["esp_queue_length", (("queue", q),)] == 0 for q in QUEUES)
    assert not {name for name in families(text) if name.startswith(("esp_node_", "esp_pool_"))}


def test_a_counter_declared_in_a_module_is_shown_with_its_value(client: FlaskClient) -> None:
    before = scrape(client.get("/metrics").get_data(as_text=True))["esp_test_metrics_events_total", ()]
    SCRAPES_SEEN.inc(3)

    samples = scrape(client.get("/metrics").get_data(as_text=True))

    assert samples["esp_test_metrics_events_total", ()] == before + 3
    assert "process_cpu_seconds_total" in {name for name, _ in samples}  # the default registry, whole


def test_metrics_are_not_rate_limited(tmp_path: Path, r: redis.Redis) -> None:
    app = create_app(make_settings(tmp_path, ESP_REDIS_URL=redis_url(DB_METRICS), ESP_RATE_LIMIT_ANONYMOUS="2 per minute"))
    try:
        statuses = [app.test_client().get("/metrics").status_code for _ in range(5)]
    finally:
        app.extensions["esp.pool"].close()
    assert statuses == [200] * 5


# -- under gunicorn: two workers, one sum ---------------------------------------------------------


class Gunicorn:
    """gunicorn with ESP's gunicorn.conf.py, serving tests/integration/metrics_app.py on a free port."""

    def __init__(self, run_dir: Path) -> None:
        self.base = f"http://127.0.0.1:{free_port()}"
        self.log_path = run_dir / "api.log"
        env = child_env(ESP_REDIS_URL=redis_url(DB_METRICS), ESP_RUN_DIR=str(run_dir), ESP_API_HOST="127.0.0.1",
                        ESP_API_PORT=self.base.rsplit(":", 1)[1], ESP_API_WORKERS="4",
                        ESP_RATE_LIMIT_ANONYMOUS="1000000 per minute")
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn.conf.py sets it, nothing else
        cmd = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "tests.integration.metrics_app:create_app()"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                return requests.get(self.base + "/healthz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, 60, lambda: "gunicorn to answer:\n" + self.log_path.read_text()[-3000:], interval=0.1)

    def metrics(self) -> Samples:
        response = requests.get(self.base + "/metrics", timeout=10)
        assert response.status_code == 200, response.text
        return scrape(response.text)

    def close(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def gunicorn(tmp_path: Path, r: redis.Redis) -> Iterator[Gunicorn]:
    # An earlier server's count, left in the folder: starting must drop it.
    stale_dir = tmp_path / "prometheus"
    stale_dir.mkdir()
    subprocess.run([sys.executable, "-c", "from prometheus_client import Counter; Counter('esp_test_hits', 'old').inc(1000)"],
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(stale_dir)}, check=True, timeout=30)
    assert list(stale_dir.glob("counter_*.db"))
    server = Gunicorn(tmp_path)
    try:
        yield server
    finally:
        server.close()


def test_under_gunicorn_a_counter_is_the_sum_over_both_workers(gunicorn: Gunicorn) -> None:
    pids: list[int] = []

    def hits_until_both_workers_served() -> bool:
        with ThreadPoolExecutor(8) as threads:  # concurrent, each on a new connection: both workers take some
            pids.extend(threads.map(lambda _: requests.get(gunicorn.base + "/hit", timeout=10).json()["pid"], range(16)))
        return len(set(pids)) == 2

    wait_for(hits_until_both_workers_served, 30, lambda: f"both workers to serve GET /hit (pids seen: {set(pids)})")

    for _ in range(4):  # whichever worker answers, it shows both workers' counts, and not the old server's
        samples = gunicorn.metrics()
        assert samples["esp_test_hits_total", ()] == len(pids)
        assert samples["esp_test_serving_workers", ()] == 2
        assert samples["esp_snapshot_stale", ()] == 1  # the Redis collector is there too

    os.kill(pids[0], signal.SIGTERM)  # a worker ends; gunicorn starts another in its place

    wait_for(lambda: gunicorn.metrics()["esp_test_serving_workers", ()] == 1, 30,
             "child_exit to take the ended worker's live gauge out")
    assert gunicorn.metrics()["esp_test_hits_total", ()] == len(pids)  # what it counted stays counted
