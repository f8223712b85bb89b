"""``esp``, the operators' command line, against a real stack through a real listening API.

The stack is tests/stack.py's LocalStack: a private Redis, 3 anvil nodes under an in-process
node manager, a control worker and beat (the monitor and the recycler) and a write worker as
real processes. The API is served on a loopback port by werkzeug (the CLI speaks HTTP only),
and every command runs as the installed launcher ``.venv/bin/esp`` does, in a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import make_server

from app import create_app
from nodepool.events import recent_events
from nodes.process import ProcessBackend
from services.recycler import REQUEST_KEY, current_recycle
from settings import ROOT
from tests.conftest import child_env, make_settings
from tests.stack import LocalStack, wait_task
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(900)

DB_CLI = 24
ADMIN_KEY = "cli-suite-admin-key-0123456789"
LAUNCHER = ROOT / ".venv" / "bin" / "esp"


class Served:
    """An API app on a free loopback port, served from a thread (werkzeug's development server, threaded)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="api")
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        self.server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, anvil_binary) -> Iterator[LocalStack]:
    s = LocalStack(tmp_path_factory.mktemp("cli"), DB_CLI, name="cli", ESP_ADMIN_KEY=ADMIN_KEY)
    yield s
    s.close()


@pytest.fixture(scope="module")
def api(stack) -> Iterator[str]:
    served = Served(stack.app)
    yield served.url
    served.close()


def esp(api: str, *args: str, key: str | None = ADMIN_KEY, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``.venv/bin/esp args`` against ``api`` with ``key`` (None: an empty ESP_API_KEY, so no key is sent)."""
    assert LAUNCHER.is_file(), f"{LAUNCHER} is missing: `make deps` installs it"
    env = child_env(ESP_API_URL=api, ESP_API_KEY=key or "", COLUMNS="200")
    return subprocess.run([str(LAUNCHER), *args], env=env, cwd="/", capture_output=True, text=True, timeout=timeout, check=False)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command's stderr, which must be exactly one line starting with 'esp: '."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esp: "), result.stderr
    return lines[0]


def node_status(stack: LocalStack, node_id: str) -> tuple[str, str | None]:
    node = next(n for n in stack.client(admin=True).get("/api/v1/nodes").get_json()["nodes"] if n["id"] == node_id)
    return node["status"], node["zone"]


def all_serving(stack: LocalStack) -> bool:
    body = stack.client().get("/api/v1/nodes").get_json()
    return not body["pool"]["stale"] and all(n["status"] == "up" and n["zone"] in ("I", "II") for n in body["nodes"])


# -- reading ----------------------------------------------------------------------------------------


def test_wait_ready_then_the_pool_table_shows_every_node(stack, api):
    ready = esp(api, "wait-ready", "--timeout", "120")
    assert ready.returncode == 0, ready.stderr
    assert f"ready: {len(stack.specs)} nodes up" in ready.stdout
    result = esp(api, "pool")
    assert result.returncode == 0, result.stderr
    for spec in stack.specs:
        assert spec.id in result.stdout
    for heading in ("zone", "distance", "in-flight", "head", "lag", "LBH", "Dis_ave", "paused"):
        assert heading in result.stdout, result.stdout


@contextmanager
def following(api: str, *args: str) -> Iterator[subprocess.Popen]:
    """`esp <args>` against ``api``, running until the test interrupts it (`interrupt`); killed and reaped whatever happens."""
    env = child_env(ESP_API_URL=api, ESP_API_KEY=ADMIN_KEY, COLUMNS="200")
    proc = subprocess.Popen([str(LAUNCHER), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C, as an operator stops a following command: it must end cleanly (exit 0)."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0


def test_pool_watch_redraws_until_interrupted(api):
    with following(api, "pool", "--watch", "--interval", "0.2") as proc:
        titles = []

        def redrawn() -> bool:
            line = proc.stdout.readline()  # blocks until the next line of a table
            assert line or proc.poll() is None, proc.stderr.read()
            if line.startswith("ESP node pool"):
                titles.append(line)
            return len(titles) >= 3

        wait_for(redrawn, 60, lambda: f"three tables from esp pool --watch (saw {len(titles)})")
        interrupt(proc)


def test_task_shows_its_timeline(stack, api):
    response = stack.client().post("/api/v1/accounts", json={"password": "cli-suite-password"})
    assert response.status_code == 202, response.get_json()
    task_id = response.get_json()["id"]
    done = wait_task(stack.client(), task_id)
    result = esp(api, "task", task_id)
    assert result.returncode == 0, result.stderr
    assert task_id in result.stdout and "timeline" in result.stdout
    for state in ("queued", "running", done["state"]):
        assert state in result.stdout, result.stdout
    missing = esp(api, "task", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "HTTP 404" in one_line(missing)


def test_events_follow_prints_new_events_until_interrupted(stack, api):
    with following(api, "events", "--follow", "--limit", "1") as proc:
        answered = stack.client(admin=True).post("/api/v1/nodes/node-2/drain")
        assert answered.status_code == 202, answered.get_json()
        lines: list[str] = []

        def printed() -> bool:
            line = proc.stdout.readline()  # blocks until the CLI prints a line: the request's event comes
            lines.append(line)
            return "drain-requested" in line

        wait_for(printed, 60, lambda: f"esp events --follow to print drain-requested (printed: {lines})")
        interrupt(proc)
    # Give node-2 back (the drain held it) before the next test.
    wait_for(lambda: (current_recycle(stack.redis) or {}).get("phase") == "drained", 60, "node-2 drained")
    undrain = esp(api, "node", "undrain", "node-2", "--timeout", "60")
    assert undrain.returncode == 0, undrain.stderr


# -- keys and errors --------------------------------------------------------------------------------


def test_keys_are_created_once_listed_and_revoked(stack, api):
    created = esp(api, "keys", "create", "ops-bot", "--role", "user")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert "\n" not in key and len(key) > 20, created.stdout  # stdout is the key alone
    assert "shown this once" in created.stderr and key not in created.stderr
    listed = esp(api, "keys", "list")
    assert listed.returncode == 0 and "ops-bot" in listed.stdout and key not in listed.stdout
    key_id = next(k["id"] for k in stack.client(admin=True).get("/api/v1/keys").get_json()["keys"] if k["name"] == "ops-bot")
    # The new user key works, and may not manage keys: 403, as one line.
    forbidden = esp(api, "keys", "list", key=key)
    assert forbidden.returncode == 1 and "HTTP 403" in one_line(forbidden)
    revoked = esp(api, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and key_id in revoked.stdout
    refused = esp(api, "keys", "list", key=key)
    assert refused.returncode == 1 and "HTTP 401" in one_line(refused)


def test_bad_input_is_one_line_and_exit_2(api):
    role = esp(api, "keys", "create", "x", "--role", "root")
    assert role.returncode == 2 and "field role" in one_line(role)
    url = esp(api, "node", "add", "not a url")
    assert url.returncode == 2 and "field url" in one_line(url)
    elsewhere = esp(api, "node", "add", "http://10.1.2.3:8545")  # refused before the API sends anything there
    assert elsewhere.returncode == 2 and "ESP_STATIC_NODE_HOSTS" in one_line(elsewhere)
    missing = esp(api, "node", "add")
    assert missing.returncode == 2 and "Missing argument 'url'" in one_line(missing)
    unknown = esp(api, "pool", "--bogus")
    assert unknown.returncode == 2 and "--bogus" in one_line(unknown)


def test_bench_runs_the_thesis_experiment_from_the_checkout(api):
    planned = esp(api, "bench", "quick", "--dry-run", timeout=120)
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.startswith("quick: ") and " runs of " in planned.stdout, planned.stdout
    wrong = esp(api, "bench", "forever")
    assert wrong.returncode == 2 and "quick or full" in one_line(wrong)


def test_no_key_is_a_clear_401_line(api):
    result = esp(api, "keys", "list", key=None)
    assert result.returncode == 1
    line = one_line(result)
    assert "HTTP 401" in line and "ESP_API_KEY" in line


def test_an_api_that_does_not_answer_is_one_line(tmp_path):
    result = esp("http://127.0.0.1:9", "pool")
    assert result.returncode == 1 and "cannot reach the API at http://127.0.0.1:9" in one_line(result)


# -- the new routes' authorization ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/v1/nodes", {"url": "http://127.0.0.1:1"}),
    ("DELETE", "/api/v1/nodes/node-0", None),
    ("POST", "/api/v1/nodes/node-0/drain", None),
    ("POST", "/api/v1/nodes/node-0/recycle", None),
    ("POST", "/api/v1/nodes/node-0/undrain", None),
])
def test_node_admin_routes_need_an_admin(stack, method, path, body):
    for client, status in ((stack.anonymous(), 401), (stack.client(), 403)):
        response = client.open(path, method=method, json=body)
        assert response.status_code == status, (path, response.get_json())
        assert response.mimetype == "application/problem+json" and response.get_json()["field"] == "Authorization"
    assert stack.redis.get(REQUEST_KEY) is None and len(stack.client().get("/api/v1/nodes").get_json()["nodes"]) == 3


# -- static nodes -----------------------------------------------------------------------------------


@pytest.fixture
def outside_anvils(tmp_path: Path, stack) -> Iterator[dict[str, str]]:
    """Three standalone anvils ESP does not own: one on the pool's chain (the devnet's genesis), one with the pool's
    chain id but a genesis of its own, one on another chain id."""
    variants = {"same": {}, "other-genesis": {"ESP_GENESIS_TIMESTAMP": "1600000000"}, "other-id": {"ESP_CHAIN_ID": "31338"}}
    started = []
    try:
        urls = {}
        for name, env in variants.items():
            backend = ProcessBackend(make_settings(tmp_path / name, ESP_BLOCK_TIME="0", **env))
            spec = backend.start(f"outside-{name}", role="standalone")
            started.append((backend, spec))
            urls[name] = spec.url
        yield urls
    finally:
        for backend, spec in started:
            backend.stop(spec)


def test_a_static_node_is_added_on_the_pools_chain_only_and_removed(stack, api, outside_anvils):
    wrong_id = esp(api, "node", "add", outside_anvils["other-id"])
    assert wrong_id.returncode == 2 and "serves chain id 31338" in one_line(wrong_id)
    wrong_chain = esp(api, "node", "add", outside_anvils["other-genesis"])
    assert wrong_chain.returncode == 2 and "genesis block" in one_line(wrong_chain)

    added = esp(api, "node", "add", outside_anvils["same"], "--id", "ext-1")
    assert added.returncode == 0, added.stderr
    assert "added ext-1" in added.stdout
    spec = stack.manager.registry.get("ext-1")
    assert spec is not None and spec.backend == "static" and spec.url == outside_anvils["same"]
    assert [s.id for s in stack.manager.registry.added()] == ["ext-1"]  # registered again if the node manager restarts
    assert "ext-1" in esp(api, "pool").stdout
    again = esp(api, "node", "add", outside_anvils["same"])
    assert again.returncode == 1 and "registered already, as ext-1" in one_line(again)
    taken = esp(api, "node", "add", outside_anvils["other-genesis"], "--id", "node-0")
    assert taken.returncode == 1 and "field id" in one_line(taken)

    static_recycle = esp(api, "node", "recycle", "ext-1")
    assert static_recycle.returncode == 1 and "static node" in one_line(static_recycle)
    managed = esp(api, "node", "remove", "node-0")
    assert managed.returncode == 1 and "only static nodes are removed" in one_line(managed)

    removed = esp(api, "node", "remove", "ext-1")
    assert removed.returncode == 0 and "removed ext-1" in removed.stdout
    assert stack.manager.registry.get("ext-1") is None and stack.manager.registry.added() == []
    kinds = [(e["kind"], e["node"]) for e in recent_events(stack.redis, 50)]
    assert ("node-added", "ext-1") in kinds and ("node-removed", "ext-1") in kinds
    gone = esp(api, "node", "remove", "ext-1")
    assert gone.returncode == 1 and "HTTP 404" in one_line(gone)


# -- drain and recycle ------------------------------------------------------------------------------


def test_drain_holds_a_node_until_undrained(stack, api):
    wait_for(lambda: all_serving(stack), 60, "every node serving")
    drained = esp(api, "node", "drain", "node-2", "--timeout", "120")
    assert drained.returncode == 0, drained.stderr
    assert "node-2: drained" in drained.stdout
    assert node_status(stack, "node-2")[0] == "draining"
    # One node at a time: another is refused while node-2 is out.
    other = esp(api, "node", "recycle", "node-1")
    assert other.returncode == 1 and "node-2 is drained now: one node at a time" in one_line(other)
    undrained = esp(api, "node", "undrain", "node-2", "--timeout", "60")
    assert undrained.returncode == 0, undrained.stderr
    assert node_status(stack, "node-2")[0] == "up" and current_recycle(stack.redis) is None


def test_a_drained_node_can_be_recycled_from_its_drain(stack, api):
    wait_for(lambda: all_serving(stack), 60, "every node serving")
    before = stack.manager.registry.get("node-0")
    assert before is not None
    drained = esp(api, "node", "drain", "node-0", "--timeout", "120")
    assert drained.returncode == 0, drained.stderr
    again = esp(api, "node", "drain", "node-0", "--timeout", "30")  # asked again: already drained, followed, done
    assert again.returncode == 0 and "already drained" in again.stderr
    recycled = esp(api, "node", "recycle", "node-0", "--timeout", "300")
    assert recycled.returncode == 0, recycled.stdout + recycled.stderr
    after = stack.manager.registry.get("node-0")
    assert after is not None and after.generation > before.generation
    assert current_recycle(stack.redis) is None and node_status(stack, "node-0")[0] == "up"


def test_recycle_restarts_the_node_through_the_manager_and_it_comes_back(stack, api):
    wait_for(lambda: all_serving(stack), 60, "every node serving")
    before = stack.manager.registry.get("node-1")
    assert before is not None and before.pid
    result = esp(api, "node", "recycle", "node-1", "--timeout", "300")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node-1: recycled and serving" in result.stdout
    after = stack.manager.registry.get("node-1")
    assert after is not None and after.generation > before.generation and after.pid != before.pid
    with pytest.raises(ProcessLookupError):
        os.kill(before.pid, 0)  # the old anvil is gone: a new process serves node-1
    kinds = [e["kind"] for e in reversed(recent_events(stack.redis, 100)) if e["node"] == "node-1"]
    steps = ["recycle-requested", "recycle-draining", "recycle-restarting", "recycle-done"]
    assert [k for k in kinds if k in steps][-4:] == steps, kinds
    status, zone = node_status(stack, "node-1")
    assert status == "up" and zone in ("I", "II")


def test_the_serving_minimum_refuses_a_recycle(stack, api, tmp_path):
    """With ESP_MIN_SERVING_NODES=3 a 3-node pool can spare none: the request is refused at once, nothing changes."""
    wait_for(lambda: all_serving(stack), 60, "every node serving")
    app = create_app(make_settings(tmp_path, **{**stack.env, "ESP_MIN_SERVING_NODES": "3"}))
    strict = Served(app)
    try:
        result = esp(strict.url, "node", "recycle", "node-0")
        assert result.returncode == 1 and "fewer than ESP_MIN_SERVING_NODES=3" in one_line(result)
        assert stack.redis.get(REQUEST_KEY) is None and current_recycle(stack.redis) is None
    finally:
        strict.close()
        app.extensions["esp.pool"].close()
