"""A bounded pool for password-KDF work in one process: N running, M waiting, the rest refused at once.

Every keystore creation and every unlock's password check is one scrypt run
(256 MiB and ~0.47 s at ESP's default cost, geth's standard; the GIL released while it runs). Left
unbounded in the API, ten concurrent wrong guesses held ten request threads and
both cores, and ``/healthz`` waited 10 s behind them. A ``KdfGate`` runs KDFs on
a pool of ``running`` threads of its own and admits at most ``running + waiting``
at a time: the request threads of the admitted ones wait for their result (each at
most ``waiting / running + 1`` KDF times), one more is refused at once with
``KdfBusy`` (HTTP 503 with Retry-After). So at most ``running + waiting`` request
threads ever wait on KDFs, and the rest stay free for reads and health checks.

The pool's threads run at a lower CPU priority (nice +10, Linux: the nice value is
per thread): when the cores are contended, request handling - a health check, a
read - is scheduled before more KDF rounds, instead of taking turns with them.
A KDF on an idle machine runs as fast as before.

The gate holds no secret: passwords only pass through it as arguments of the
function it runs. The API builds one gate per process (``create_app``); other
processes (workers, scripts) use a ``Keystore`` without one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from errors import ConfigError
from wallet.errors import KdfBusy

log = logging.getLogger(__name__)

#: scrypt cost of new keystores unless ESP_KEYSTORE_SCRYPT_N says otherwise: geth's "standard" (keystore.StandardScryptN),
#: what the thesis's geth paid in personal_newAccount and unlockAccount. wallet.keystore documents the trade-off.
DEFAULT_SCRYPT_N = 2**18

#: How much lower than request threads the KDF threads run (Linux nice increment; 19 is the lowest priority).
KDF_NICE = 10

P = ParamSpec("P")
T = TypeVar("T")


class KdfGate:
    """Runs KDFs on ``running`` low-priority threads, with ``waiting`` more admitted; refuses the next with KdfBusy."""

    def __init__(self, running: int, waiting: int, *, retry_after: int = 1) -> None:
        if running < 1:
            raise ConfigError(f"ESP_KDF_CONCURRENCY must be at least 1, not {running}")
        if waiting < 0:
            raise ConfigError(f"ESP_KDF_QUEUE must be 0 or more, not {waiting}")
        self.running = running
        self.waiting = waiting
        self.retry_after = retry_after
        self._pool = ThreadPoolExecutor(max_workers=running, thread_name_prefix="esp-kdf", initializer=_lower_priority)
        self._lock = threading.Lock()
        self._admitted = 0

    def __repr__(self) -> str:
        return f"KdfGate(running={self.running}, waiting={self.waiting})"

    def run(self, kdf: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``kdf(*args, **kwargs)`` on the pool, waiting for its result if admitted; KdfBusy at once otherwise."""
        with self._lock:
            if self._admitted >= self.running + self.waiting:
                raise KdfBusy(retry_after=self.retry_after)
            self._admitted += 1
        try:
            return self._pool.submit(kdf, *args, **kwargs).result()
        finally:
            with self._lock:
                self._admitted -= 1

    @property
    def is_full(self) -> bool:
        """True when a KDF asked for now would be refused (a hint: ``run`` alone decides)."""
        return self._admitted >= self.running + self.waiting

    @property
    def in_flight(self) -> int:
        """KDFs admitted now: running or waiting for a pool thread."""
        return self._admitted

    def close(self) -> None:
        """Stop the pool's threads once they finish what they run."""
        self._pool.shutdown(wait=False)


def _lower_priority() -> None:
    """Lower the calling pool thread's CPU priority (Linux only: elsewhere setpriority would renice the whole process)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), KDF_NICE)
    except OSError as exc:  # a container may forbid it; the bound on admissions holds anyway
        log.warning("could not lower the KDF thread's priority: %s", exc)
