"""gunicorn's configuration for the JSON-RPC gateway (the Procfile's ``rpc`` line): ESP_RPC_PROCESSES asyncio workers.

Each worker runs ``rpc.server.make_app()`` on its own event loop (aiohttp's gunicorn worker). Their
prometheus_client metrics live in files under run/prometheus-rpc, which ``GET /metrics`` sums.
"""

import ctypes
import os
import signal
from typing import Any

from settings import Settings

_settings = Settings.from_env()

PROMETHEUS_DIR = _settings.run_dir / "prometheus-rpc"
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(PROMETHEUS_DIR)
PROMETHEUS_DIR.mkdir(parents=True, exist_ok=True)
from prometheus_client import multiprocess  # noqa: E402  (after the variable: the library reads it at import)

bind = f"{_settings.rpc_host}:{_settings.rpc_port}"
worker_class = "aiohttp.GunicornWebWorker"
workers = _settings.rpc_processes
graceful_timeout = 5
keepalive = 10
#: No access log: at thousands of requests a second it would cost more than the requests (metrics count them).
accesslog = None


def on_starting(server: Any) -> None:
    """Drop the files of an earlier server: their counts are not this one's."""
    for path in PROMETHEUS_DIR.glob("*.db"):
        path.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Forget a dead worker's live gauges (its counters stay: they were counted)."""
    multiprocess.mark_process_dead(worker.pid)


_PR_SET_PDEATHSIG = 1


def post_fork(server: Any, worker: Any) -> None:
    """A worker dies with its master, even a SIGKILLed one (supervisord restarts the master: scripts/supervise.py).

    Left to notice a new parent on its own, an aiohttp worker orphaned by a SIGKILLed master was seen to
    close its socket and then never finish its shutdown, nor answer SIGTERM: it ran on, holding Redis
    connections (tests/reliability/test_supervision.py: 2 of about 10 kills). The anvils die with the
    node manager the same way (nodes.process).
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        return
    if os.getppid() != server.pid:  # the master died before the request above: nobody will send the signal
        os._exit(0)
