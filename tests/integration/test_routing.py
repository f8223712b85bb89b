"""The Celery router: a write task goes to its class's queue with a node chosen for it (real Redis, no worker, no node).

The pool the router sees is what every process sees: the registry (real NodeSpecs)
and the snapshot the monitor writes to ``esp:snapshot``, built here by the
balancer's own ``build_snapshot`` from samples the test chooses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Task

from balancer import STATUS_DOWN, TaskKind, build_snapshot
from balancer.calibration import Calibrator
from balancer.state import NodeSample
from nodepool.registry import NodeRegistry
from nodepool.snapshot import SNAPSHOT_KEY, balancer_config
from nodepool.spec import NodeSpec
from services.plans import OPERATIONS
from settings import Settings
from tasks.app import EspCelery, make_celery
from tasks.control import SAMPLE_POOL, TRACK_RECEIPTS
from tasks.routing import CONTROL_QUEUE, QUEUE_OF_KIND, Router
from tasks.writes import TASK_NAMES

#: One write operation of each class, by the class it is routed by.
WRITE_OF_KIND = {kind: next(name for name, op in OPERATIONS.items() if op.kind is kind) for kind in QUEUE_OF_KIND}


def sample(node_id: str, *, up: bool = True, cpu: float = 0.05) -> NodeSample:
    if not up:
        return NodeSample(node_id=node_id, url=f"http://{node_id}.invalid", backend="static", status=STATUS_DOWN, alive=False)
    return NodeSample(node_id=node_id, url=f"http://{node_id}.invalid", backend="static", cpu=cpu, memory=0.1,
                      latency_ms=2.0, head=10)


def publish_snapshot(settings: Settings, client: redis.Redis, samples: list[NodeSample]) -> None:
    """Register the sampled nodes and store their snapshot, taken now, as the monitor does."""
    registry = NodeRegistry(client)
    for s in samples:
        registry.register(NodeSpec(id=s.node_id, url=s.url, backend=s.backend))
    config = balancer_config(settings)
    snapshot = build_snapshot(samples, config, Calibrator.start(config), settings.balancer_policy, time.time())
    client.set(SNAPSHOT_KEY, json.dumps(snapshot.to_dict()))


@pytest.fixture
def r(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


@pytest.fixture
def celery(settings: Settings) -> EspCelery:
    return make_celery(settings, current=False)


def write_task(celery: EspCelery, kind: TaskKind) -> Task:
    return celery.tasks[TASK_NAMES[WRITE_OF_KIND[kind]]]


@pytest.mark.parametrize("kind", list(QUEUE_OF_KIND), ids=lambda k: k.value)
def test_a_write_task_goes_to_its_class_queue_with_the_node_the_snapshot_allows(
        settings: Settings, r: redis.Redis, celery: EspCelery, kind: TaskKind) -> None:
    # node-1 is registered but down in the snapshot: a router that ignored the snapshot could pick it.
    publish_snapshot(settings, r, [sample("node-0"), sample("node-1", up=False)])
    router = Router(settings)
    task = write_task(celery, kind)
    routes = [router(task.name, (), {"to": "0xabc"}, {}, task=task) for _ in range(20)]
    for route in routes:
        assert route is not None and route["queue"] == QUEUE_OF_KIND[kind]
        assert route["headers"] == {"esp_node": "node-0", "esp_zone": "I", "esp_fallback": False}
        assert "'routed_to': 'node-0'" in route["kwargsrepr"] and "'to': '0xabc'" in route["kwargsrepr"]


def test_with_no_snapshot_the_router_falls_back_to_the_registered_nodes(
        settings: Settings, r: redis.Redis, celery: EspCelery) -> None:
    NodeRegistry(r).register(NodeSpec(id="node-7", url="http://node-7.invalid", backend="static"))
    task = write_task(celery, TaskKind.CALL)
    route = Router(settings)(task.name, (), {}, {}, task=task)
    assert route is not None and route["queue"] == QUEUE_OF_KIND[TaskKind.CALL]
    assert route["headers"] == {"esp_node": "node-7", "esp_zone": None, "esp_fallback": True}


@pytest.mark.parametrize(
    ("samples", "reason"),
    [
        pytest.param([], "no node may take deploy work now", id="empty-pool"),
        pytest.param([sample("node-0", up=False), sample("node-1", up=False)], "no node may take deploy work now",
                     id="every-node-down"),
    ],
)
def test_with_no_healthy_node_a_write_task_is_still_queued_without_a_node(
        settings: Settings, r: redis.Redis, celery: EspCelery, samples: list[NodeSample], reason: str) -> None:
    if samples:
        publish_snapshot(settings, r, samples)
    task = write_task(celery, TaskKind.DEPLOY)
    route = Router(settings)(task.name, (), {}, {}, task=task)
    assert route is not None and route["queue"] == QUEUE_OF_KIND[TaskKind.DEPLOY]
    assert route["headers"] == {"esp_node": None, "esp_wait_reason": reason}
    assert "'routed_to': None" in route["kwargsrepr"]


def test_while_the_pool_is_unhealthy_dispatch_pauses_and_the_task_waits_in_its_queue(
        settings: Settings, r: redis.Redis, celery: EspCelery) -> None:
    settings = settings.replace(balancer_dis_ave_min="0.01", balancer_dis_ave_max="0.02")  # fixed: Dis_ave = 0.015
    publish_snapshot(settings, r, [sample("node-0", cpu=0.9), sample("node-1", cpu=0.9)])  # both far past Dis_ave: LBH < 0
    task = write_task(celery, TaskKind.CALL)
    route = Router(settings)(task.name, (), {}, {}, task=task)
    assert route is not None and route["queue"] == QUEUE_OF_KIND[TaskKind.CALL]
    assert route["headers"]["esp_node"] is None
    assert route["headers"]["esp_wait_reason"].startswith("dispatch paused: the pool's health index LBH is -")


@pytest.mark.parametrize("name", [SAMPLE_POOL, TRACK_RECEIPTS])
def test_a_control_task_is_not_routed_and_keeps_its_own_queue(settings: Settings, celery: EspCelery, name: str) -> None:
    task = celery.tasks[name]
    assert Router(settings)(name, (), {}, {}, task=task) is None
    assert celery.amqp.router.route({"queue": task.queue}, name, (), {}, task).get("queue").name == CONTROL_QUEUE


def test_publishing_through_the_app_puts_the_choice_in_the_message_on_the_broker(
        settings: Settings, r: redis.Redis, celery: EspCelery) -> None:
    """The configured router is the one that runs when a task is published: the message in Redis carries the node."""
    publish_snapshot(settings, r, [sample("node-0", up=False), sample("node-1")])
    task = write_task(celery, TaskKind.ACCOUNT)
    with celery.connection_for_write() as connection:
        task.apply_async(kwargs={"address": "0xabc"}, task_id="routed-1", connection=connection)
    raw = r.lpop(QUEUE_OF_KIND[TaskKind.ACCOUNT])
    assert isinstance(raw, bytes), f"nothing in {QUEUE_OF_KIND[TaskKind.ACCOUNT]}: {r.keys('*')}"
    message = json.loads(raw)
    assert message["headers"]["id"] == "routed-1" and message["headers"]["task"] == task.name
    assert (message["headers"]["esp_node"], message["headers"]["esp_zone"], message["headers"]["esp_fallback"]) == ("node-1", "I", False)
    assert all(r.llen(q) == 0 for q in (*QUEUE_OF_KIND.values(), CONTROL_QUEUE))  # nowhere else
