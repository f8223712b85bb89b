"""The dashboard's running totals and recent tasks in a real Redis (nodepool.activity), and who adds to them."""

from __future__ import annotations

import pytest
import redis

from app import create_app, dashboard
from nodepool.activity import (
    CONFIRMED_KEY,
    RECENT_TASKS,
    REQUESTS_KEY,
    Tally,
    activity_on,
    count_on,
    note_tasks_on,
    parse_activity,
    recent_task_ids,
)
from services.records import TaskStore
from tests.conftest import DB_DASHBOARD, fresh_redis, make_settings, redis_url
from tests.waiting import wait_for


def incrby_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_incrby", {}).get("calls", 0))


@pytest.fixture
def client(tmp_path):
    redis = fresh_redis(DB_DASHBOARD)
    yield redis
    redis.close()


def test_totals_and_queue_lengths_are_read_in_the_callers_pipeline(client) -> None:
    count_on(client, "requests", 3)
    count_on(client, "confirmed")
    count_on(client, "rpc", 0)  # nothing to add: no command
    client.rpush("esp.calls", "a", "b")
    pipe = client.pipeline(transaction=False)
    pipe.get("unrelated")
    added = activity_on(pipe, ["esp.deploy", "esp.calls"])
    replies = pipe.execute()
    assert added == len(replies) - 1
    assert parse_activity(replies[1:], ["esp.deploy", "esp.calls"]) == {
        "requests": 3, "rpc": 0, "confirmed": 1, "queues": {"esp.deploy": 0, "esp.calls": 2}}
    assert client.exists("esp:activity:rpc") == 0


def test_recent_tasks_are_the_newest_written_and_capped(client, tmp_path) -> None:
    store = TaskStore(client, ttl=60)
    note_tasks_on(client, {f"old-{i}": 1000.0 + i for i in range(RECENT_TASKS)})
    assert recent_task_ids(client, 2) == [f"old-{RECENT_TASKS - 1}", f"old-{RECENT_TASKS - 2}"]
    store.create("task-new", "send_eth", "call", {})
    assert recent_task_ids(client, 2) == ["task-new", f"old-{RECENT_TASKS - 1}"]
    assert client.zcard("esp:activity:tasks") == RECENT_TASKS
    assert "old-0" not in recent_task_ids(client, RECENT_TASKS + 10)  # the oldest made room
    client.zadd("esp:activity:tasks", {"task-new": 1.0})
    store.update("task-new", state="running")  # written again: the newest again
    assert recent_task_ids(client, 1) == ["task-new"]


def test_the_api_counts_requests_but_not_probes_scrapes_or_the_dashboard(client, tmp_path) -> None:
    app = create_app(make_settings(tmp_path, ESP_REDIS_URL=redis_url(DB_DASHBOARD)))
    web = app.test_client()
    for path in ("/healthz", "/metrics", "/dashboard", "/dashboard/assets/dashboard.js", "/api/v1/dashboard"):
        web.get(path).close()  # a file answer holds its file open until closed
    assert client.get(REQUESTS_KEY) is None
    assert web.get("/api/v1/nodes").status_code == 200
    assert web.get("/api/v1/no-such-route").status_code == 404  # answered too: counted
    assert web.get("/api/v1/nodes", headers={"Authorization": "Bearer wrong"}).status_code == 401
    # Sent off the request path, by the app's tally within about half a second; then closing it sends nothing more.
    wait_for(lambda: client.get(REQUESTS_KEY) == b"3", 10, lambda: f"3 requests counted, not {client.get(REQUESTS_KEY)}")
    app.extensions["esp.activity"].close()
    assert client.get(REQUESTS_KEY) == b"3"


def test_a_tally_sends_one_incrby_per_total_and_keeps_what_redis_refused(client) -> None:
    tally = Tally(client, interval=3600)  # no background flush within the test: each flush is the test's
    try:
        before = incrby_calls(client)
        for _ in range(500):
            tally.add("requests")
        tally.add("confirmed", 7)
        assert client.get(REQUESTS_KEY) is None  # counted in the process only, until a flush
        assert tally.flush() == 2
        assert (client.get(REQUESTS_KEY), client.get(CONFIRMED_KEY)) == (b"500", b"7")
        assert incrby_calls(client) - before == 2
        assert tally.flush() == 0  # nothing pending: no command at all
        assert incrby_calls(client) - before == 2
        with pytest.raises(ValueError, match="unknown total"):
            tally.add("reqeusts")
    finally:
        tally.close()

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)  # nothing listens on port 1
    refused = Tally(dead, interval=3600)
    refused.add("requests", 4)
    assert refused.flush() == 0  # kept, not lost: sent to a Redis that answers
    refused.redis = client
    assert refused.flush() == 1 and client.get(REQUESTS_KEY) == b"504"
    refused.close()


def test_a_tallys_thread_sends_in_the_background_and_ends_when_quiet(client) -> None:
    tally = Tally(client, interval=0.05)
    tally.add("requests", 2)
    thread = tally._thread
    assert thread is not None and thread.is_alive()
    wait_for(lambda: client.get(REQUESTS_KEY) == b"2", 10, "the tally's thread to send its count")
    thread.join(10)
    assert not thread.is_alive() and tally._thread is None  # quiet for one interval: no thread kept
    tally.add("requests")  # the next count starts another
    wait_for(lambda: client.get(REQUESTS_KEY) == b"3", 10, "a new thread to send the next count")
    tally.close()


def test_a_missing_uplot_is_a_503_saying_how_to_install_it(client, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(dashboard, "VENDOR", tmp_path / "node_modules" / "uplot" / "dist")  # as before `npm ci`
    app = create_app(make_settings(tmp_path, ESP_REDIS_URL=redis_url(DB_DASHBOARD)))
    answer = app.test_client().get("/dashboard/vendor/uPlot.iife.min.js")
    assert answer.status_code == 503
    assert "npm ci" in answer.get_json()["detail"]
