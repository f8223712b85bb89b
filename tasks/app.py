"""ESP's Celery app, configured from the Settings it is given (Flask's Celery pattern: nothing read at import).

``make_celery(settings)`` is called by ``create_app`` (the API publishes with it)
and by ``tasks.worker`` (the worker, beat and Flower processes run it). Its tasks
find their settings on the app (``self.app.settings`` in a bound task).
"""

from __future__ import annotations

from celery import Celery

from settings import Settings
from tasks import config, control, exporter, metrics, writes

#: The modules whose tasks every ESP Celery app runs.
TASK_MODULES = (control.__name__, writes.__name__)
#: The modules that connect to Celery's signals: task metrics, and each process's /metrics server.
SIGNAL_MODULES = (metrics.__name__, exporter.__name__)


class EspCelery(Celery):
    """A Celery app that carries the Settings it was configured from."""

    settings: Settings


def make_celery(settings: Settings, *, name: str = "esp", current: bool = True) -> EspCelery:
    """A Celery app for ``settings``: its broker, queues, router, beat schedule and ESP's tasks.

    ``current=False`` leaves Celery's current app alone (an API process, or a test
    building several apps in one process, publishes through the app it holds).
    """
    app = EspCelery(name, set_as_current=current, include=list(TASK_MODULES))
    app.settings = settings
    app.conf.update(config.from_settings(settings))
    app.finalize(auto=True)  # binds the shared tasks, whose class (esp_kind) the router reads
    return app
