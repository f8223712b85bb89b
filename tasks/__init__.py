"""ESP's Celery app: ``celery -A tasks worker|beat|flower``."""

from __future__ import annotations

from celery import Celery

app = Celery("esp", include=["tasks.system", "tasks.monitor", "tasks.recycler", "tasks.receipts", "tasks.writes", "tasks.business"])
app.config_from_object("celeryconfig")
