"""ESP's API plus one route that counts, for test_metrics' gunicorn test.

Its metrics are declared at import, as any module declares its own; ``GET /hit`` counts
in whichever worker serves it and answers with that worker's pid.
"""

from __future__ import annotations

import os

from flask import Flask
from prometheus_client import Counter, Gauge

from app import create_app as create_esp_app

HITS = Counter("esp_test_hits", "GET /hit requests, counted by the worker that served them")
#: 1 in each live worker that has served a hit; gunicorn's child_exit takes a dead worker's out.
SERVING = Gauge("esp_test_serving_workers", "workers that have served GET /hit", multiprocess_mode="livesum")


def create_app() -> Flask:
    app = create_esp_app()

    @app.get("/hit")
    def hit() -> dict[str, int]:
        HITS.inc()
        SERVING.set(1)
        return {"pid": os.getpid()}

    return app
