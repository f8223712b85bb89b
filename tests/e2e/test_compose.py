"""The whole stack in containers, from compose/esp.yml, as README's "The whole stack in containers" runs it.

Builds the images on the local engine with no registry (scripts/build-images.sh: quick when nothing
changed), brings the stack up as its own compose project on free loopback ports with a fresh admin key,
waits for /readyz with 3 nodes, confirms a transfer from the treasury through the API, kills one node
container with the engine and waits until the pool has it back (the recycler restarted it through the node
manager, and the devnet replayed the chain into it), and always takes the project down, checking that no
container or volume of it is left. Fails, not skips, without an engine or docker-compose under
ESP_REQUIRE_DOCKER=1 (as CI runs it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from nodes.process import free_port
from settings import ROOT
from tests.waiting import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

COMPOSE_FILE = ROOT / "compose" / "esp.yml"
BUILD_TIMEOUT = 1800  # from nothing: debootstrap, PyPI, the anvil image (measured here: see the report in README)
UP_TIMEOUT = 300
READY_TIMEOUT = 240
CONFIRM_TIMEOUT = 120
RECYCLE_TIMEOUT = 240
DOWN_TIMEOUT = 180
NODE_COUNT = 3


def missing(reason: str) -> None:
    """Fail under ESP_REQUIRE_DOCKER=1 (CI installed and started everything), skip with the reason elsewhere."""
    if os.environ.get("ESP_REQUIRE_DOCKER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def compose_command() -> list[str]:
    """docker-compose (Debian's 1.29), else the `docker compose` v2 plugin."""
    found = shutil.which("docker-compose")
    if found:
        return [found]
    docker_cli = shutil.which("docker")
    if docker_cli and subprocess.run([docker_cli, "compose", "version"], capture_output=True, timeout=30, check=False).returncode == 0:
        return [docker_cli, "compose"]
    missing("neither docker-compose nor the docker compose plugin is installed (apt-get install docker-compose)")
    raise AssertionError("unreachable")


class ComposeStack:
    """One compose project of compose/esp.yml on its own ports, and the calls the test makes to it."""

    def __init__(self, engine: str) -> None:
        self.compose = compose_command()
        self.project = f"esptest{uuid.uuid4().hex[:8]}"
        self.admin_key = secrets.token_urlsafe(32)
        self.api_port, self.rpc_port, self.flower_port, self.redis_port = (free_port() for _ in range(4))
        self.engine = engine
        self.env = {
            **os.environ,
            "DOCKER_HOST": engine,
            "ESP_DOCKER_SOCKET": engine.removeprefix("unix://"),
            "ESP_ADMIN_KEY": self.admin_key,
            "ESP_API_PORT": str(self.api_port),
            "ESP_RPC_PORT": str(self.rpc_port),
            "ESP_FLOWER_PORT": str(self.flower_port),
            "ESP_REDIS_PORT": str(self.redis_port),
            "ESP_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "ESP_NODE_COUNT": str(NODE_COUNT),
            # Node containers of its own: another ESP stack (make up's, a developer's) may run on this engine.
            "ESP_DOCKER_NAME_PREFIX": f"{self.project}-",
        }
        self.client = docker.DockerClient(base_url=engine, timeout=30)

    def run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.compose, "-p", self.project, "-f", str(COMPOSE_FILE), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def logs(self, tail: int = 40) -> str:
        try:
            out = self.run("logs", "--no-color", "--tail", str(tail), timeout=60)
        except subprocess.TimeoutExpired:
            return "(docker-compose logs did not answer in 60 s)"
        return (out.stdout + out.stderr)[-12000:]

    def explain(self, what: str) -> str:
        return f"{what}\n--- docker-compose logs --tail 40 ---\n{self.logs()}"

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, timeout: float = 15) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.admin_key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:  # noqa: S310 - loopback only
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except (OSError, ValueError) as exc:
            return 0, {"error": str(exc)}

    def node_containers(self) -> list[Any]:
        """The anvil containers the stack's node manager runs (named <project>-<node id>, labelled esp.node)."""
        prefix = self.env["ESP_DOCKER_NAME_PREFIX"]
        return [c for c in self.client.containers.list(all=True, filters={"label": "esp.node"}) if c.name.startswith(prefix)]

    def service_container(self, service: str) -> Any:
        labels = [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]
        found = self.client.containers.list(filters={"label": labels})
        assert len(found) == 1, f"one running {service} container expected, found {[c.name for c in found]}"
        return found[0]

    @staticmethod
    def main_pid(container: Any, command: str) -> int:
        """The host pid of the container's process whose command line holds ``command`` (the engine's `top`)."""
        top = container.top()
        pid, cmd = top["Titles"].index("PID"), top["Titles"].index("CMD")
        pids = [int(row[pid]) for row in top["Processes"] if command in row[cmd] and "tini" not in row[cmd]]
        assert len(pids) == 1, f"one process running {command!r} expected in {container.name}: {top['Processes']}"
        return pids[0]

    def project_leftovers(self) -> list[str]:
        label = f"com.docker.compose.project={self.project}"
        containers = [c.name for c in self.client.containers.list(all=True, filters={"label": label})]
        volumes = [v.name for v in self.client.volumes.list(filters={"label": label})]
        return containers + volumes + [c.name for c in self.node_containers()]


def build_images(engine: str) -> None:
    started = time.monotonic()
    try:
        out = subprocess.run([str(ROOT / "scripts" / "build-images.sh")], env={**os.environ, "DOCKER_HOST": engine},
                             capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/build-images.sh took over {BUILD_TIMEOUT} s")
    assert out.returncode == 0, f"scripts/build-images.sh failed:\n{(out.stdout + out.stderr)[-4000:]}"
    print(f"images built or found up to date in {time.monotonic() - started:.1f} s:\n{out.stdout}")


@pytest.fixture
def stack(docker_engine: str) -> Iterator[ComposeStack]:
    if not docker_engine.startswith("unix://"):
        missing(f"compose/esp.yml mounts the engine's socket into the node manager: {docker_engine} is not a unix socket")
    up = ComposeStack(docker_engine)
    build_images(docker_engine)
    try:
        started = up.run("up", "-d", timeout=UP_TIMEOUT)
        assert started.returncode == 0, up.explain(f"docker-compose up -d failed:\n{started.stderr[-3000:]}")
        yield up
    finally:
        down = up.run("down", "-v", "--remove-orphans", "--timeout", "60", timeout=DOWN_TIMEOUT)
        left = up.project_leftovers()
        for container in up.node_containers():  # never leave a node behind, even when the check below fails
            container.remove(force=True, v=True)
        up.client.close()
        assert down.returncode == 0, f"docker-compose down -v failed:\n{down.stderr[-3000:]}"
        assert not left, f"left behind after docker-compose down -v: {left}"


def test_stack_in_containers_confirms_a_transfer_and_brings_back_killed_parts(stack: ComposeStack) -> None:
    def ready() -> dict[str, Any] | None:
        status, body = stack.request("GET", "/readyz", timeout=5)
        if status == 200 and body["nodes_registered"] == NODE_COUNT and body["nodes_answering"] == NODE_COUNT:
            return body
        return None

    wait_for(ready, READY_TIMEOUT, lambda: stack.explain(f"/readyz with {NODE_COUNT} nodes answering: {stack.request('GET', '/readyz')}"),
             interval=1.0)
    assert len([c for c in stack.node_containers() if c.status == "running"]) == NODE_COUNT

    # A transfer from the treasury, confirmed on the chain.
    status, accounts = stack.request("GET", "/api/v1/accounts")
    assert status == 200, accounts
    to = "0x" + secrets.token_hex(20)
    status, task = stack.request("POST", "/api/v1/transactions", {"from": accounts["treasury"], "to": to, "value_wei": "12345"})
    assert status == 202, task

    def confirmed() -> dict[str, Any] | None:
        status, record = stack.request("GET", f"/api/v1/tasks/{task['id']}?wait=5", timeout=15)
        assert record.get("state") != "failed", record
        return record if status == 200 and record.get("state") == "confirmed" else None

    wait_for(confirmed, CONFIRM_TIMEOUT, lambda: stack.explain(f"task {task['id']} to be confirmed"), interval=0.5)
    status, balance = stack.request("GET", f"/api/v1/accounts/{to}/balance")
    assert (status, balance.get("wei")) == (200, "12345"), balance

    # Kill a follower's container: the recycler has the node manager restart it, and the devnet replays into it.
    status, pool = stack.request("GET", "/api/v1/nodes")
    assert status == 200, pool
    victim = next(n for n in pool["nodes"] if n["role"] == "follower")
    generation = victim.get("generation") or 0
    killed_at = time.time()
    stack.client.containers.get(stack.env["ESP_DOCKER_NAME_PREFIX"] + victim["id"]).kill()

    def back() -> dict[str, Any] | None:
        _, events = stack.request("GET", "/api/v1/nodes/events")
        recycled = [e for e in events.get("events", [])
                    if (e.get("node"), e.get("kind")) == (victim["id"], "recycle-done") and e.get("at", 0) >= killed_at]
        _, now = stack.request("GET", "/api/v1/nodes")
        node = next((n for n in now.get("nodes", []) if n["id"] == victim["id"]), None)
        # Serving again: up in zone I or II (zone III while it recycles), a new generation, caught up with the leader.
        caught_up = node is not None and node.get("alive") and node["status"] == "up" and node["zone"] in ("I", "II") \
            and (node.get("generation") or 0) > generation and node.get("lag") is not None and node["lag"] <= 2
        return node if recycled and caught_up else None

    wait_for(back, RECYCLE_TIMEOUT, lambda: stack.explain(
        f"{victim['id']} to be recycled and caught up; events: {stack.request('GET', '/api/v1/nodes/events')[1]}; "
        f"nodes: {stack.request('GET', '/api/v1/nodes')[1]}"), interval=1.0)
    assert stack.client.containers.get(stack.env["ESP_DOCKER_NAME_PREFIX"] + victim["id"]).status == "running"

    # The node manager crashes: the engine restarts it (restart: unless-stopped), and the new one replaces
    # the anvil containers the crashed one left running with a fresh devnet of its own.
    before = {c.name: c.id for c in stack.node_containers()}
    manager = stack.service_container("nodes")
    os.kill(stack.main_pid(manager, "-m nodes"), signal.SIGKILL)

    def replaced() -> bool:
        manager.reload()
        now = {c.name: c.id for c in stack.node_containers() if c.status == "running"}
        return (manager.attrs["RestartCount"] >= 1 and sorted(now) == sorted(before)
                and not set(now.values()) & set(before.values()) and ready() is not None)

    wait_for(replaced, RECYCLE_TIMEOUT, lambda: stack.explain(
        f"the restarted node manager to replace {sorted(before)} and the stack to be ready again"), interval=1.0)
