"""The Celery tasks' metrics: how long each class of task runs, how it ends, how many run now.

Counted from Celery's own signals (``task_prerun``/``task_postrun``), in whichever process runs
the task (a prefork child of the write worker, or the solo control worker); ``tasks.exporter``
serves them. Labels are bounded: the task's class (``tasks.routing.TASK_CLASSES``, "other") and
its outcome (a Celery state: succeeded, failed, retried, ...), never a task's id or arguments.

A write task that ends with its transaction refused still *succeeded* as a Celery task (its
record says ``failed``); these are the queue's outcomes, not the writes'.
"""

from __future__ import annotations

import time
from typing import Any

from celery import states
from celery.signals import task_postrun, task_prerun
from prometheus_client import Counter, Gauge, Histogram

from tasks.routing import TASK_CLASSES, task_class

TASK_SECONDS = Histogram("esp_task_duration_seconds", "time a task ran in a worker, by task class", ["class"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0))
TASKS = Counter("esp_tasks", "tasks that ran to an end, by task class and outcome (succeeded, failed, retried...)",
                ["class", "outcome"])
RUNNING = Gauge("esp_tasks_running", "tasks running now, by task class", ["class"], multiprocess_mode="livesum")

#: Celery's end states, as the outcome label says them.
OUTCOMES = {states.SUCCESS: "succeeded", states.FAILURE: "failed", states.RETRY: "retried",
            states.REJECTED: "rejected", states.IGNORED: "ignored", states.REVOKED: "revoked"}

# Every class and usual outcome shown from the start, at 0: a rate over a series that appears only with its first
# count misses that count, and a dashboard shows "no data" rather than 0.
for _cls in TASK_CLASSES:
    TASK_SECONDS.labels(_cls)
    RUNNING.labels(_cls)
    for _outcome in ("succeeded", "failed", "retried"):
        TASKS.labels(_cls, _outcome)

#: task id -> (class, perf_counter at start), for the tasks this process runs now (one, or a few).
_started: dict[str, tuple[str, float]] = {}


@task_prerun.connect
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    cls = task_class(task)
    _started[task_id or ""] = (cls, time.perf_counter())
    RUNNING.labels(cls).inc()


@task_postrun.connect
def _task_ended(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id or "", None)
    cls = started[0] if started else task_class(task)
    if started is not None:
        TASK_SECONDS.labels(cls).observe(time.perf_counter() - started[1])
        RUNNING.labels(cls).dec()
    TASKS.labels(cls, OUTCOMES.get(state or "", "other")).inc()
