"""The Celery tasks' metrics: how long each class of task waits and runs, how it ends, how many run now.

Counted from Celery's own signals (``task_prerun``/``task_postrun``), in whichever process runs
the task (a prefork child of the write worker, or the solo control worker); ``tasks.exporter``
serves them. Labels are bounded: the task's class (``tasks.routing.TASK_CLASSES``, "other") and
its outcome (a Celery state: succeeded, failed, retried, ...), never a task's id or arguments.

The wait in the queue is measured from a header every publishing process stamps (``before_task_publish``:
the API, the gateway, the workers themselves) to the task's start, or from its ETA when it was sent with a
countdown; clocks of different machines may differ, so a negative wait counts as 0.

A write task that ends with its transaction refused still *succeeded* as a Celery task (its
record says ``failed``); these are the queue's outcomes, not the writes'.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from celery import states
from celery.signals import before_task_publish, task_postrun, task_prerun
from prometheus_client import Counter, Gauge, Histogram

from tasks.routing import TASK_CLASSES, task_class

TASK_SECONDS = Histogram("esp_task_duration_seconds", "time a task ran in a worker, by task class", ["class"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0))
TASKS = Counter("esp_tasks", "tasks that ran to an end, by task class and outcome (succeeded, failed, retried...)",
                ["class", "outcome"])
QUEUE_SECONDS = Histogram("esp_task_queue_seconds", "time a task waited in its queue, from its sending (or its ETA) to"
                          " a worker starting it, by task class", ["class"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0))
RUNNING = Gauge("esp_tasks_running", "tasks running now, by task class", ["class"], multiprocess_mode="livesum")

#: Celery's end states, as the outcome label says them.
OUTCOMES = {states.SUCCESS: "succeeded", states.FAILURE: "failed", states.RETRY: "retried",
            states.REJECTED: "rejected", states.IGNORED: "ignored", states.REVOKED: "revoked"}

# Every class and usual outcome shown from the start, at 0: a rate over a series that appears only with its first
# count misses that count, and a dashboard shows "no data" rather than 0.
for _cls in TASK_CLASSES:
    TASK_SECONDS.labels(_cls)
    QUEUE_SECONDS.labels(_cls)
    RUNNING.labels(_cls)
    for _outcome in ("succeeded", "failed", "retried"):
        TASKS.labels(_cls, _outcome)

#: The message header holding the wall-clock time a task was sent at (seconds since the epoch).
SENT_AT_HEADER = "esp_sent_at"

#: task id -> (class, perf_counter at start), for the tasks this process runs now (one, or a few).
_started: dict[str, tuple[str, float]] = {}


def queue_wait(sent_at: Any, eta: Any, now: float) -> float | None:
    """Seconds from a task's sending, or its ETA when later, to ``now``; None when it carries no sending time.

    ``eta`` is Celery's ISO 8601 string (a countdown's), or None.
    """
    try:
        since = float(sent_at)
    except (TypeError, ValueError):
        return None
    if isinstance(eta, str):
        try:
            since = max(since, datetime.fromisoformat(eta).timestamp())
        except ValueError:
            pass
    return max(0.0, now - since)


@before_task_publish.connect
def _stamp_sent(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers[SENT_AT_HEADER] = time.time()  # a retry is published again: its wait starts again


@task_prerun.connect
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    cls = task_class(task)
    _started[task_id or ""] = (cls, time.perf_counter())
    RUNNING.labels(cls).inc()
    request = getattr(task, "request", None)
    waited = queue_wait(getattr(request, SENT_AT_HEADER, None), getattr(request, "eta", None), time.time())
    if waited is not None:
        QUEUE_SECONDS.labels(cls).observe(waited)


@task_postrun.connect
def _task_ended(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id or "", None)
    cls = started[0] if started else task_class(task)
    if started is not None:
        TASK_SECONDS.labels(cls).observe(time.perf_counter() - started[1])
        RUNNING.labels(cls).dec()
    TASKS.labels(cls, OUTCOMES.get(state or "", "other")).inc()
