"""The docker backend against a real container engine: anvil containers started, measured, restarted, removed.

The engine is DOCKER_HOST, else the one ``scripts/dockerd.sh start`` runs, else the system socket.
These tests skip only when no engine answers at any of them, and fail instead with ESP_REQUIRE_DOCKER=1
(CI installs and starts an engine, then sets it); everything else is real: the image is built from the local anvil binary when missing, and load is real JSON-RPC.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from errors import ConfigError, NodeStartError
from nodepool.rpc import RpcClient
from nodepool.spec import ROLE_LEADER, ROLE_STANDALONE, NodeSpec
from nodes.anvil import find_anvil
from nodes.docker.backend import LABEL_NODE, LABEL_RUN, DockerBackend
from nodes.docker.image import LABEL_BINARY, build_image, file_digest, shared_libraries
from settings import Settings

pytestmark = pytest.mark.docker

MEMORY_CAP_MB = 512
DEV_ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # anvil's first dev account
OTHER_ACCOUNT = "0x70997970C51812dc3A010C7d441d0cEc6f4C79C8"
LOAD_SECONDS = 2.0
LOAD_MAX_BATCHES = 20_000  # a bound on the burst whatever the machine's speed


@pytest.fixture(scope="module")
def engine(docker_engine: str) -> str:
    """The URL of the container engine these tests run against."""
    return docker_engine


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "ESP_RUN_DIR": str(tmp_path),
            "ESP_BLOCK_TIME": "0",  # automine: a transaction makes a block at once
            "ESP_NODE_MEMORY_CAP_MB": str(MEMORY_CAP_MB),
            "ESP_NODE_CPU_LIMIT": "1",
            "ESP_DOCKER_TIMEOUT": "20",
        }
    )


@pytest.fixture
def backend(settings: Settings, engine: str) -> Iterator[DockerBackend]:
    """A backend whose containers carry a unique name prefix, all removed at the end whatever happened."""
    backend = DockerBackend(settings, docker_host=engine, name_prefix=f"esptest-{uuid.uuid4().hex[:8]}-")
    yield backend
    run_label = str(settings.run_dir.resolve())
    backend.close()
    sweeper = docker.DockerClient(base_url=engine, timeout=30)
    try:
        for container in sweeper.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_label}"}):
            container.remove(force=True)
    finally:
        sweeper.close()


@pytest.fixture
def engine_client(engine: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=engine, timeout=30)
    yield client
    client.close()


def _rpc(spec: NodeSpec) -> RpcClient:
    return RpcClient(spec.url, timeout=5.0, node_id=spec.id)


def _load(spec: NodeSpec, seconds: float) -> int:
    """Keep the node busy for ``seconds`` with batched gas estimates and reads; returns the batches sent."""
    transfer = {"from": DEV_ACCOUNT, "to": OTHER_ACCOUNT, "value": "0x1"}
    calls: list[tuple[str, list[Any]]] = [("eth_estimateGas", [transfer]), ("eth_getBalance", [DEV_ACCOUNT, "latest"])] * 10
    deadline = time.monotonic() + seconds

    def worker(share: int) -> int:
        client = _rpc(spec)
        sent = 0
        try:
            while time.monotonic() < deadline and sent < share:
                client.batch(calls)
                sent += 1
        finally:
            client.close()
        return sent

    threads = 4
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(worker, [LOAD_MAX_BATCHES // threads] * threads))


# -- tests ------------------------------------------------------------------


def test_unreachable_engine_is_one_clear_line(settings: Settings) -> None:
    with pytest.raises(ConfigError, match=r"no container engine answers at unix:///nonexistent/esp\.sock: run scripts/dockerd\.sh start"):
        DockerBackend(settings, docker_host="unix:///nonexistent/esp.sock")


def test_image_is_built_from_scratch_with_the_local_anvil(settings: Settings, engine_client: docker.DockerClient) -> None:
    binary = find_anvil(settings)
    libs = shared_libraries(binary)
    assert any(p.name.startswith("ld-linux") for p in libs), libs  # the dynamic loader comes along
    tag = f"esp-anvil-test:{uuid.uuid4().hex[:8]}"
    image_id = build_image(settings, engine_client, tag=tag)
    try:
        image = engine_client.images.get(image_id)
        assert image.labels[LABEL_BINARY] == file_digest(binary)
        assert image.attrs["Config"]["Entrypoint"] == ["/usr/local/bin/anvil"]
        assert image.attrs["Config"]["User"] == "65534:65534"
        # anvil (~44 MB) and a handful of libraries: nothing else is in it.
        assert image.attrs["Size"] < binary.stat().st_size + 20_000_000
        out = engine_client.containers.run(image_id, command=["--version"], remove=True, network_mode="none")
        assert b"anvil" in out.lower()
    finally:
        engine_client.images.remove(tag, force=True)


def test_start_answers_with_limits_and_stop_removes(backend: DockerBackend, engine_client: docker.DockerClient) -> None:
    spec = backend.start("n0", role=ROLE_STANDALONE)
    assert spec.backend == "docker" and spec.container and spec.port and spec.generation == 0
    client = _rpc(spec)
    try:
        assert int(client.call("eth_chainId"), 16) == 31337
    finally:
        client.close()
    attrs = engine_client.containers.get(spec.container).attrs
    assert attrs["Name"] == "/" + backend.container_name("n0")
    assert attrs["Config"]["Labels"][LABEL_NODE] == "n0"
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "host"
    assert host["Memory"] == MEMORY_CAP_MB * 1024 * 1024
    assert host["NanoCpus"] == 1_000_000_000
    assert host["ReadonlyRootfs"] is True
    assert set(host["Tmpfs"]) >= {"/cache", "/home"}
    assert host["RestartPolicy"]["Name"] in ("no", "")

    backend.stop(spec)
    with pytest.raises(docker.errors.NotFound):
        engine_client.containers.get(spec.container)
    assert backend.stats(spec).alive is False
    backend.stop(spec)  # a node already gone is not an error


def test_port_in_use_is_a_clear_error(backend: DockerBackend) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(NodeStartError, match=f"port {port} on 127.0.0.1 is in use"):
            backend.start("n0", role=ROLE_STANDALONE, port=port)


def test_a_foreign_container_with_the_name_is_left_alone(backend: DockerBackend, engine_client: docker.DockerClient, settings: Settings) -> None:
    name = backend.container_name("n0")
    foreign = engine_client.containers.create(settings.docker_image, name=name, network_mode="none")
    try:
        with pytest.raises(NodeStartError, match="is not this run's"):
            backend.start("n0", role=ROLE_STANDALONE)
        foreign.reload()  # still there
    finally:
        foreign.remove(force=True)


def test_busy_container_shows_more_cpu_than_idle_one(backend: DockerBackend, settings: Settings, engine: str) -> None:
    busy = backend.start("busy", role=ROLE_STANDALONE)
    idle = backend.start("idle", role=ROLE_STANDALONE)
    # The same containers through the SDK fallback (one_shot stats), to check its formula too.
    via_engine = DockerBackend(settings, docker_host=engine, name_prefix=backend.name_prefix, read_cgroups=False)
    try:
        for spec in (busy, idle):  # baselines of both paths
            backend.stats(spec)
        via_engine.stats_many([busy, idle])
        batches = _load(busy, LOAD_SECONDS)
        after = [backend.stats(busy), backend.stats(idle)]
        after_engine = via_engine.stats_many([busy, idle])
    finally:
        via_engine.close()
    assert batches > 0
    busy_cg, idle_cg = after
    busy_en, idle_en = after_engine
    assert busy_cg.alive and idle_cg.alive
    # Limited to one core: a loaded anvil uses a good part of it, an idle one almost nothing.
    assert busy_cg.cpu > 0.15, (busy_cg, batches)
    assert idle_cg.cpu < 0.1, idle_cg
    assert busy_cg.cpu > idle_cg.cpu + 0.1
    assert busy_cg.cpu < 1.3  # the CPU limit holds (a little slack for sampling edges)
    assert busy_en.cpu > idle_en.cpu + 0.1, (busy_en, idle_en)
    assert busy_en.memory_limit_bytes == busy_cg.memory_limit_bytes


def test_memory_is_a_fraction_of_the_container_limit(backend: DockerBackend, settings: Settings, engine: str) -> None:
    spec = backend.start("n0", role=ROLE_STANDALONE)
    stats = backend.stats(spec)
    limit = MEMORY_CAP_MB * 1024 * 1024
    assert stats.alive
    assert stats.memory_limit_bytes == limit
    assert stats.memory_bytes > 1_000_000  # a running anvil holds some megabytes of its own
    assert stats.memory == pytest.approx(stats.memory_bytes / limit)
    assert 0 < stats.memory < 1
    via_engine = DockerBackend(settings, docker_host=engine, name_prefix=backend.name_prefix, read_cgroups=False)
    try:
        sdk = via_engine.stats(spec)
    finally:
        via_engine.close()
    assert sdk.memory_limit_bytes == limit
    assert sdk.memory_bytes == pytest.approx(stats.memory_bytes, rel=0.5)


def test_restart_through_the_engine_gives_a_fresh_chain_and_a_new_generation(backend: DockerBackend) -> None:
    spec = backend.start("leader", role=ROLE_LEADER)
    client = _rpc(spec)
    try:
        client.call("eth_sendTransaction", [{"from": DEV_ACCOUNT, "to": OTHER_ACCOUNT, "value": "0x1"}])
        deadline = time.monotonic() + 5
        while int(client.call("eth_blockNumber"), 16) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # automine returns before the block is visible
        assert int(client.call("eth_blockNumber"), 16) >= 1

        new = backend.restart(spec)
        assert new.generation == spec.generation + 1
        assert (new.container, new.port, new.url) == (spec.container, spec.port, spec.url)
        assert new.pid != spec.pid
        # anvil keeps its chain in memory: a restarted node starts again from genesis (the devnet's followers catch up).
        assert int(client.call("eth_chainId"), 16) == 31337
        assert int(client.call("eth_blockNumber"), 16) == 0
    finally:
        client.close()
    stats = backend.stats(new)
    assert stats.alive and stats.cpu < 1.3


def test_restart_of_a_removed_container_runs_a_new_one(backend: DockerBackend, engine_client: docker.DockerClient) -> None:
    spec = backend.start("n0", role=ROLE_STANDALONE)
    engine_client.containers.get(spec.container).remove(force=True)
    assert backend.stats(spec).alive is False
    new = backend.restart(spec)
    assert new.generation == 1 and new.container != spec.container and new.port == spec.port
    client = _rpc(new)
    try:
        assert int(client.call("eth_chainId"), 16) == 31337
    finally:
        client.close()


def test_close_removes_the_containers_it_started(settings: Settings, engine: str, engine_client: docker.DockerClient) -> None:
    backend = DockerBackend(settings, docker_host=engine, name_prefix=f"esptest-{uuid.uuid4().hex[:8]}-")
    try:
        specs = [backend.start(f"n{i}", role=ROLE_STANDALONE) for i in range(2)]
    finally:
        backend.close()
    for spec in specs:
        with pytest.raises(docker.errors.NotFound):
            engine_client.containers.get(spec.container)
