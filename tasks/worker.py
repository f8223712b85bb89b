"""The entry point of ESP's Celery processes: ``celery -A tasks.worker worker|beat|flower``.

This module is where a worker, beat or Flower process reads its configuration
from the environment (``ESP_`` variables and ``.env``), once, as it starts; every
other module takes the Settings it is given.
"""

from __future__ import annotations

from settings import Settings
from tasks.app import make_celery

app = make_celery(Settings.from_env())
