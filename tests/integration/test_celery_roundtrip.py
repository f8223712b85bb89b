"""A task's round trip through the real broker to a real worker and a real node."""

from __future__ import annotations

import pytest

import celeryconfig
from nodepool.registry import NodeRegistry
from tasks import app
from tests.conftest import DB_CELERY, child_env, fresh_redis, redis_url, start_worker, stop_process, wait_for_worker


@pytest.fixture(scope="module")
def celery_worker_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("celery")
    fresh_redis(DB_CELERY)
    from tests.conftest import make_settings

    settings = make_settings(tmp, ESP_REDIS_URL=redis_url(DB_CELERY))
    app.conf.update(celeryconfig.from_settings(settings))
    proc = start_worker(child_env(ESP_REDIS_URL=redis_url(DB_CELERY), ESP_RUN_DIR=str(tmp)),
                        queues="esp.control", name="roundtrip", log_path=tmp / "worker.log")
    try:
        wait_for_worker(app, "roundtrip")
        yield settings
    finally:
        stop_process(proc)


def test_task_round_trip_reads_a_real_node(celery_worker_process, process_backend):
    spec = process_backend.start("node-0", role="leader")
    NodeRegistry(fresh_redis(DB_CELERY)).register(spec)
    from tasks.system import node_head

    result = node_head.delay("node-0")
    assert result.get(timeout=30) == {"node": "node-0", "chain_id": 31337, "head": 0}


def test_task_error_travels_back(celery_worker_process):
    from errors import NodeError
    from tasks.system import node_head

    result = node_head.delay("node-404")
    with pytest.raises(NodeError, match="no node 'node-404'"):
        result.get(timeout=30)
