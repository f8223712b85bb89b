"""The folder a Celery process keeps its prometheus_client metrics in: one per process tree, set before any metric exists.

prometheus_client picks, at its import, whether metric values live in memory or in files under
PROMETHEUS_MULTIPROC_DIR; a prefork write worker needs files (its tasks run in child processes,
and its main process serves what they counted: ``tasks.exporter``). The ``celery`` command has
imported prometheus_client already when it loads ``tasks.worker`` (Flower's command plugin
declares its metrics), so ``use_metrics_dir`` sets the variable and makes the library choose
again (``values.ValueClass``, the class every metric value is made of, read at each metric's
creation); ``tasks.worker`` calls it before it imports anything that declares a metric of ours.

Each worker, control worker or beat gets a fresh, empty folder of its own under
``$ESP_RUN_DIR/prometheus-celery`` (scaled workers may share the run folder, even from several
containers): it holds an advisory lock on it for its life (its children inherit the lock), and
a process starting later removes every folder no process holds, i.e. those of processes killed
before they could remove their own. The folder is made under a hidden name, locked, and only then
renamed to its own: a sweep never sees it unlocked (it once removed a control worker's folder
between its making and its locking, and the worker died at import). A hidden folder older than
MAKING_GRACE seconds is what a process killed while making it left, and is removed too.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO

from prometheus_client import values

from settings import Settings

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOCK_NAME = ".owner.lock"
SHARED_MODE = 0o1777
#: The prefix of a folder being made (not yet locked: sweeps leave it alone), and how long it may stay so.
MAKING_PREFIX = ".making-"
MAKING_GRACE = 60.0

_held: list[IO[bytes]] = []  # the open lock of this process's folder (kept open as long as the process lives)


def use_metrics_dir(settings: Settings) -> Path:
    """Make this process's metrics folder, drop those of dead processes, and point prometheus_client at it."""
    base = shared_base(settings)
    for old in base.iterdir():
        if old.is_dir() and _is_left_over(old):
            shutil.rmtree(old, ignore_errors=True)
    making = Path(tempfile.mkdtemp(prefix=MAKING_PREFIX, dir=base))
    lock = open(making / LOCK_NAME, "wb")  # held open for the process's life
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else opens a folder being made
    _held.append(lock)
    path = base / f"{os.getpid()}-{making.name.removeprefix(MAKING_PREFIX)}"
    making.rename(path)  # visible to sweeps only now, locked (the lock is on the file, which moves with it)
    os.environ[METRICS_DIR_ENV] = str(path)
    values.ValueClass = values.get_value_class()  # file-backed from now on, whoever imported the library first
    owner = os.getpid()
    atexit.register(_remove, path, owner)
    return path


def is_multiprocess() -> bool:
    """True when this process's prometheus_client metrics live in files: ``use_metrics_dir`` ran (a Celery process),
    or PROMETHEUS_MULTIPROC_DIR was set before prometheus_client's import (gunicorn.conf.py, for the API's workers)."""
    return values.ValueClass is not values.MutexValue


def shared_base(settings: Settings) -> Path:
    """``$ESP_RUN_DIR/prometheus-celery``, made if missing; open to every user as /tmp is (sticky: each removes only
    its own), since whichever process comes first makes it -- in compose, maybe the control worker, as root."""
    base = settings.run_dir / "prometheus-celery"
    base.mkdir(parents=True, exist_ok=True)
    if base.stat().st_uid == os.geteuid() and base.stat().st_mode & 0o7777 != SHARED_MODE:
        base.chmod(SHARED_MODE)  # mkdir's mode is cut by the umask
    return base


def _is_left_over(folder: Path) -> bool:
    """A folder no live process holds, or one a killed process left half made."""
    if folder.name.startswith(MAKING_PREFIX):
        try:
            return time.time() - folder.stat().st_mtime > MAKING_GRACE
        except FileNotFoundError:
            return False  # renamed by its maker meanwhile
    return not _is_held(folder)


def _is_held(folder: Path) -> bool:
    """True when a live process holds ``folder``'s lock (a folder without one is being made right now: held).

    A folder this process may not open is another user's (in compose, the control worker runs as root beside
    unprivileged workers on one run folder): it is left to its owner, counted as held."""
    try:
        with open(folder / LOCK_NAME, "rb") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False
    except (FileNotFoundError, PermissionError):
        return True


def _remove(path: Path, owner: int) -> None:
    if os.getpid() == owner:  # not in a forked child that happens to run atexit handlers
        shutil.rmtree(path, ignore_errors=True)
