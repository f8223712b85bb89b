"""A task's round trip through the real broker to a real worker and a real node."""

from __future__ import annotations

import pytest

from errors import NodeError
from nodepool.registry import NodeRegistry
from tasks.app import make_celery
from tasks.control import node_head
from tasks.routing import CONTROL_QUEUE
from tests.conftest import (
    DB_CELERY,
    child_env,
    fresh_redis,
    make_settings,
    redis_url,
    start_worker,
    stop_process,
    wait_for_worker,
)


@pytest.fixture(scope="module")
def celery_app(tmp_path_factory):
    """An app made from the test's settings (as create_app makes the API's), and a real worker on the same broker."""
    tmp = tmp_path_factory.mktemp("celery")
    fresh_redis(DB_CELERY)
    settings = make_settings(tmp, ESP_REDIS_URL=redis_url(DB_CELERY))
    app = make_celery(settings, current=False)
    proc = start_worker(child_env(ESP_REDIS_URL=redis_url(DB_CELERY), ESP_RUN_DIR=str(tmp)),
                        queues=CONTROL_QUEUE, name="roundtrip", log_path=tmp / "worker.log")
    try:
        wait_for_worker(app, "roundtrip")
        yield app
    finally:
        stop_process(proc)


def test_task_round_trip_reads_a_real_node(celery_app, process_backend):
    spec = process_backend.start("node-0", role="leader")
    NodeRegistry(fresh_redis(DB_CELERY)).register(spec)
    result = celery_app.tasks[node_head.name].delay("node-0")
    assert result.get(timeout=30) == {"node": "node-0", "chain_id": 31337, "head": 0}


def test_task_error_travels_back(celery_app):
    result = celery_app.tasks[node_head.name].delay("node-404")
    with pytest.raises(NodeError, match="no node 'node-404'"):
        result.get(timeout=30)
