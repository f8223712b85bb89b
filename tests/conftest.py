"""Fixtures shared by every test: settings, real Redis databases, real anvil nodes.

Each test area owns a Redis database number so that runs never see each
other's keys; integration tests fail (never skip) when Redis or anvil is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import redis
import requests.exceptions
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from bench.redis_server import HOST as REDIS_HOST
from bench.redis_server import NoRedisServer, PrivateRedis
from errors import ConfigError
from nodes.anvil import find_anvil
from nodes.docker.engine import unix_socket_problem
from nodes.process import ProcessBackend
from settings import ROOT, Settings

#: The port of the test session's own Redis server (set by ``pytest_configure``): tests never touch a Redis they did not start.
REDIS_PORT = 0
_redis_server: PrivateRedis | None = None

#: Redis databases by test area (the session's private server has 32: bench.redis_server.PrivateRedis).
DB_FOUNDATION = 9
DB_DEVNET = 7
DB_CELERY = 10
DB_E2E = 8
DB_BALANCER = 13
DB_WRITES = 14
DB_BUSINESS = 15
DB_LIMITS = 5
DB_FUZZ = 6
DB_ACCESS = 11
DB_CHAINSTATE = 3
DB_APP = 4
DB_BATCH = 2
DB_RPC = 16
DB_RPC_CLIENTS = 17
DB_RPC_FAULTS = 18
DB_METRICS = 19
DB_RELIABILITY = 20
DB_SUPERVISION = 21
DB_REDELIVERY = 22
DB_DASHBOARD = 23
DB_WORKER_METRICS = 25


def pytest_configure(config: pytest.Config) -> None:
    """Start the session's private Redis server on a free loopback port, with a private data folder."""
    global REDIS_PORT, _redis_server
    if _redis_server is not None:
        return
    try:
        _redis_server = PrivateRedis()
    except NoRedisServer as exc:
        pytest.exit(f"the test session's Redis: {exc} (`make test` installs one)", returncode=2)
    REDIS_PORT = _redis_server.port


def pytest_unconfigure(config: pytest.Config) -> None:
    global _redis_server
    if _redis_server is not None:
        _redis_server.close()
        _redis_server = None


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def fresh_redis(db: int) -> redis.Redis:
    """A client of database ``db``, emptied; fails the test when Redis does not answer."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"the test session's Redis at {REDIS_HOST}:{REDIS_PORT} does not answer: {exc}")
    client.flushdb()
    return client


def make_settings(tmp_path: Path, **env: str) -> Settings:
    """Settings for a test: a run folder of its own, never the real environment."""
    values = {"ESP_RUN_DIR": str(tmp_path), "ESP_KEYSTORE_DIR": str(tmp_path / "keystore")}
    values.update(env)
    return Settings.from_env(values)


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **env: make_settings(tmp_path, **env)


# -- settings -> app -> client, as Flask's flaskr tutorial builds them ----------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for one test: its own run folder, the session's Redis (database DB_APP, emptied), no nodes."""
    fresh_redis(DB_APP).close()
    return make_settings(tmp_path, ESP_REDIS_URL=redis_url(DB_APP), ESP_FILES_DIR=str(tmp_path / "files"))


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """The API built by ``create_app(settings)``, in testing mode; its Redis connections are closed after the test."""
    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    application.extensions["esp.pool"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of ``app``, sending no API key."""
    return app.test_client()


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess of the stack: ours without ESP_ variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESP_")}
    env.update(extra)
    return env


def start_worker(env: dict[str, str], *, queues: str, name: str, log_path: Path, pool: str = "solo",
                 concurrency: int = 1) -> subprocess.Popen[bytes]:
    """Start a real Celery worker (``celery -A tasks.worker worker``) in a subprocess."""
    cmd = [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "-Q", queues, "-n", f"{name}@%h",
           "-P", pool, "-c", str(concurrency), "--without-mingle", "--without-gossip", "--loglevel=INFO"]
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_worker(app, name: str, timeout: float = 30.0) -> None:
    """Poll the real broker until the worker answers a ping."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=0.5) or []
        if any(name in reply_name for reply in replies for reply_name in reply):
            return
    raise AssertionError(f"worker {name} did not answer a ping within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL, the process and its session."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout)


@pytest.fixture(scope="session")
def anvil_binary() -> Path:
    """The anvil binary; a missing one fails the tests that need it."""
    try:
        return find_anvil(Settings.from_env({}))
    except ConfigError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def process_backend(tmp_path: Path, anvil_binary: Path) -> Iterator:
    """A ProcessBackend whose nodes are all stopped after the test."""
    backend = ProcessBackend(make_settings(tmp_path, ESP_BLOCK_TIME="0"))
    yield backend
    backend.close()


# -- a container engine ---------------------------------------------------------------


def _engine_candidates() -> list[str]:
    found = [os.environ.get("DOCKER_HOST", ""), f"unix://{ROOT / 'run' / 'dockerd' / 'docker.sock'}", "unix:///var/run/docker.sock"]
    return [url for i, url in enumerate(found) if url and url not in found[:i]]


def find_engine() -> tuple[str | None, str]:
    """The URL of a container engine that answers, or None and what was tried."""
    tried = []
    for url in _engine_candidates():
        problem = unix_socket_problem(url)
        if problem:
            tried.append(f"{url} ({problem})")
            continue
        try:
            client = docker.DockerClient(base_url=url, timeout=5)
        except docker.errors.DockerException as exc:
            tried.append(f"{url} ({exc})")
            continue
        try:
            client.ping()
            return url, ""
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            tried.append(f"{url} ({type(exc).__name__})")
        finally:
            client.close()
    return None, "; ".join(tried)


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """A container engine's URL; skip (with the reason) only when none answers, fail under ESP_REQUIRE_DOCKER=1."""
    url, tried = find_engine()
    if url is None:
        reason = f"no container engine answers (run scripts/dockerd.sh start): tried {tried}"
        if os.environ.get("ESP_REQUIRE_DOCKER") == "1":
            pytest.fail(reason)  # CI started an engine: its absence is a failure there, not a skip
        pytest.skip(reason)
    return url
