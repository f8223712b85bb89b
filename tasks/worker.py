"""The entry point of ESP's Celery processes: ``celery -A tasks.worker worker|beat|flower``.

This module is where a worker, beat or Flower process reads its configuration
from the environment (``ESP_`` variables and ``.env``), once, as it starts; every
other module takes the Settings it is given. It also gives the process its own
prometheus_client folder (``tasks.metrics_dir``) before anything declares a metric.
"""

from __future__ import annotations

from settings import Settings
from tasks.metrics_dir import use_metrics_dir

settings = Settings.from_env()
use_metrics_dir(settings)
# Only now: the metrics the tasks and services declare at import are made file-backed.
from tasks.app import make_celery  # noqa: E402

app = make_celery(settings)
