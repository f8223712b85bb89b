"""A local ESP stack for integration tests: real nodes, real Celery processes, the API's test client.

A NodeManager serves 3 anvil nodes from a thread of the test process (as
``python -m nodes`` does); a control worker, write workers and beat run as
real subprocesses on the test's own Redis database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from aiohttp import web

from access.keys import ApiKeyStore
from app import create_app
from bench.redis_server import PrivateRedis
from nodepool.rpc import RpcClient
from nodes.manager import NodeManager, connect_redis
from nodes.process import free_port
from rpc.server import make_app
from services.platform import PLATFORM_KEY
from settings import ROOT, Settings
from tasks.routing import CONTROL_QUEUE, WRITE_QUEUES
from tests.conftest import child_env, fresh_redis, make_settings, redis_url, start_worker, stop_process, wait_for_worker
from tests.waiting import wait_for


class LocalStack:
    """Everything a write goes through, started for one test module; ``close()`` stops it all."""

    def __init__(self, tmp: Path, db: int, *, name: str, writers: int = 1, redis_server: PrivateRedis | None = None,
                 **env: str) -> None:
        """``redis_server``: a Redis server of the test's own (one it may stop) instead of the session's."""
        self.tmp = tmp
        self.name = name
        url = redis_url(db) if redis_server is None else redis_server.url(db)
        self.redis = fresh_redis(db) if redis_server is None else connect_redis(make_settings(tmp, ESP_REDIS_URL=url))
        if redis_server is not None:
            self.redis.flushdb()
        self.env = {
            "ESP_REDIS_URL": url, "ESP_RUN_DIR": str(tmp), "ESP_KEYSTORE_DIR": str(tmp / "keystore"),
            "ESP_FILES_DIR": str(tmp / "files"), "ESP_KEYSTORE_SCRYPT_N": "4096", "ESP_BLOCK_TIME": "1",
            "ESP_RECEIPT_INTERVAL": "0.25", **env,
        }
        self.settings = make_settings(tmp, **self.env)
        #: A user's API key: ``client()`` sends it, so tests act as an ordinary caller unless they say otherwise.
        self.user_key = self.new_key("tests", "user")
        self.manager = NodeManager(self.settings, self.redis)
        self.specs = self.manager.start()
        self._serve = threading.Thread(target=self.manager.serve, daemon=True)
        self._serve.start()
        self.writers: list[subprocess.Popen[bytes]] = []
        self.others: list[subprocess.Popen[bytes]] = []
        self._rpc_servers: list[RpcServer] = []
        try:
            self.app = create_app(self.settings)
            self.celery = self.app.extensions["esp.celery"]
            self.others.append(start_worker(child_env(**self.env), queues=CONTROL_QUEUE, name=f"{name}-control",
                                            log_path=tmp / "control.log"))
            with open(tmp / "beat.log", "ab") as log:
                self.others.append(subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "tasks.worker", "beat", "--schedule", str(tmp / "beat-schedule"),
                     "--loglevel=INFO"], cwd=ROOT, env=child_env(**self.env), stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True))
            wait_for_worker(self.celery, f"{name}-control")
            self.start_writers(writers)
        except BaseException:
            self.close()
            raise

    def start_writers(self, count: int = 1) -> None:
        """Start ``count`` write workers of two prefork processes each."""
        for _ in range(count):
            worker = f"{self.name}-writer-{time.monotonic_ns()}"
            self.writers.append(start_worker(child_env(**self.env), queues=",".join(WRITE_QUEUES), name=worker,
                                             pool="prefork", concurrency=2, log_path=self.tmp / f"{worker}.log"))
            wait_for_worker(self.celery, worker)

    def stop_writers(self) -> None:
        for proc in self.writers:
            stop_process(proc)
        self.writers.clear()

    def close(self) -> None:
        try:
            for server in self._rpc_servers:
                server.close()
        finally:  # whatever a gateway server did on its way out, no process of the stack is left running
            self.stop_writers()
            for proc in self.others:
                stop_process(proc)
            self.manager.stop()
            self._serve.join(10)
            self.manager.close()

    def new_key(self, name: str, role: str) -> str:
        """A new API key of ``role`` (the whole key, as a client sends it)."""
        return ApiKeyStore(self.redis).create(name, role)[1]

    def client(self, key: str | None = "", *, admin: bool = False):  # type: ignore[no-untyped-def]
        """The API's test client sending ``key`` (default: the stack's user key; admin: ESP_ADMIN_KEY; None: no key)."""
        client = self.app.test_client()
        if admin:
            key = self.settings.admin_key
        elif key == "":
            key = self.user_key
        if key is not None:
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
        return client

    def anonymous(self):  # type: ignore[no-untyped-def]
        """The API's test client with no key."""
        return self.client(None)

    def serve_rpc(self, **env: str) -> str:
        """Start the JSON-RPC gateway (``rpc.server``) on a free port, on a loop in a thread; its /rpc URL.

        ``env``: settings of this gateway only (``ESP_RPC_CACHE="0"``, a rate limit). Stopped by ``close()``.
        """
        server = RpcServer(make_settings(self.tmp, **{**self.env, **env}))
        self._rpc_servers.append(server)
        return server.url

    def rpc(self, i: int = 0) -> RpcClient:
        return RpcClient(self.specs[i].url)

    def wait_platform(self, timeout: float = 90) -> dict:
        """The platform record once the control worker has deployed it (ESP_DEPLOY_PLATFORM, the default)."""

        def recorded() -> bytes | None:
            raw = self.redis.get(PLATFORM_KEY)
            return raw if isinstance(raw, bytes) else None

        raw = wait_for(recorded, timeout, lambda: "the platform to be deployed: " + (self.tmp / "control.log").read_text()[-3000:],
                       interval=0.2)
        record: dict = json.loads(raw)
        return record

    def counts(self) -> tuple[list[int], int]:
        """Write queue lengths and task records: what 'nothing was enqueued' compares."""
        return [int(self.redis.llen(q)) for q in WRITE_QUEUES], len(self.redis.keys("esp:task:*"))


#: Seconds a gateway's cleanup may take (requests in flight get 5 s, then Redis clients and sessions close).
CLEANUP_S = 30


class RpcServer:
    """``rpc.server.make_app(settings)`` served on a free loopback port from an event loop in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/rpc"
        self.loop = asyncio.new_event_loop()
        # As gunicorn's graceful_timeout (gunicorn_rpc.conf.py): requests still in flight get 5 s, not aiohttp's 60.
        self.runner = web.AppRunner(make_app(settings), shutdown_timeout=5.0)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def close(self) -> None:
        """Clean the app up (its Redis clients, sessions, refresh task); whatever happens, stop the loop and its thread.

        A cleanup that does not finish within CLEANUP_S fails the test with what the loop's thread was doing then,
        after everything of this server has been stopped: a thread left running would keep calling Redis (and
        ``random``, in redis-py's backoff) under the tests that follow.
        """
        stuck = None
        try:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=CLEANUP_S)
        except concurrent.futures.TimeoutError:
            frame = sys._current_frames().get(self._thread.ident or 0)
            stuck = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
            for task in asyncio.all_tasks(self.loop):
                stuck += f"\n{task_stack(task)}"  # what each coroutine awaits: the thread alone shows an idle loop
                self.loop.call_soon_threadsafe(task.cancel)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self.loop.close()
        assert stuck is None, f"the gateway's cleanup took over {CLEANUP_S} s; its loop's thread was at:\n{stuck}"


def task_stack(task: asyncio.Task) -> str:
    """Where ``task`` is suspended, as ``Task.print_stack`` shows it (read from another thread while its loop idles)."""
    out = io.StringIO()
    try:
        task.print_stack(file=out)
    except RuntimeError as exc:  # the loop moved on while it was read
        return f"{task!r}: {exc}"
    return out.getvalue()


def wait_task(client, task_id: str, timeout: float = 90) -> dict:  # type: ignore[no-untyped-def]
    """The task record once final (or as it is after ``timeout``), through the API's ?wait=."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/api/v1/tasks/{task_id}?wait=10").get_json()
        if body["state"] in ("confirmed", "failed") or time.monotonic() > deadline:
            return body  # type: ignore[no-any-return]
