"""gunicorn's configuration for ESP's API (the Procfile's ``api`` line; gunicorn also reads it by default from here).

Taken from Settings like every other process: the address, the threads, and the
logger that keeps secrets out of the access and error logs (``app.access_log``).

The 2 workers keep their prometheus_client metrics in files under run/prometheus, which
``GET /metrics`` sums (``app.metrics``): PROMETHEUS_MULTIPROC_DIR is set here, when the
master reads this file, so every worker has it before it imports any metric.
"""

import os
from typing import Any

from settings import Settings

_settings = Settings.from_env()

#: One file per worker and metric type; emptied when gunicorn starts, so counters begin at 0 with the server.
PROMETHEUS_DIR = _settings.run_dir / "prometheus"
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(PROMETHEUS_DIR)
# Already now: the master imports ``app`` (logger_class) before on_starting, and a metric declared at import opens its file.
PROMETHEUS_DIR.mkdir(parents=True, exist_ok=True)
# Only now: prometheus_client picks in-process or file-backed values once, when first imported.
from prometheus_client import multiprocess  # noqa: E402

bind = f"{_settings.api_host}:{_settings.api_port}"
worker_class = "gthread"
workers = 2
#: Per process. Password KDFs hold at most ESP_KDF_CONCURRENCY + ESP_KDF_QUEUE of them (wallet.kdf).
threads = _settings.api_workers
graceful_timeout = 5
#: Seconds an idle client connection stays open. gunicorn's 2 s closes connections that HTTP clients keeping them
#: longer (httpx: 5 s) are about to reuse: measured as ReadErrors under load. The benchmark's control uses 10 s too.
keepalive = 10
accesslog = "-"
logger_class = "app.access_log.RedactingLogger"


def on_starting(server: Any) -> None:
    """Drop the files of an earlier server: their counts are not this one's (not on a reload: the workers' are)."""
    for path in PROMETHEUS_DIR.glob("*.db"):
        path.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Forget a dead worker's live gauges (its counters stay: they were counted)."""
    multiprocess.mark_process_dead(worker.pid)
