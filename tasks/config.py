"""Celery settings, all taken from the Settings an app is made with (``tasks.app.make_celery``).

Queues and priorities: one Redis list per task class, and workers poll them in a
fixed order (kombu's ``queue_order_strategy="priority"``): a deploy waiting in
``esp.deploy`` is taken before any queued contract call, whatever arrived first.
Separate queues rather than Redis message priorities, because kombu emulates
priorities on Redis with extra lists per queue anyway, and separate queues can
be watched (Flower, ``LLEN``) and given their own workers. Reads never go
through Celery at all: the API answers them directly.

Reliability: late acks (a task is acknowledged only when it finished), re-delivery
when a worker dies (``task_reject_on_worker_lost``), prefetch 1 so a long task
does not hold others hostage, and a visibility timeout far above the longest task
(a task that is not acknowledged within it is delivered again).
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

from balancer import TaskKind
from settings import Settings
from tasks.control import ENSURE_PLATFORM, RECYCLE_STEP, RESEND_KEPT, SAMPLE_POOL, SWEEP_OUTBOXES, TRACK_RECEIPTS
from tasks.routing import CONTROL_QUEUE, QUEUE_OF_KIND, QUEUES, Router

#: The longest a write task may run (signing and broadcasting; receipts are tracked elsewhere).
TASK_TIME_LIMIT = 120
VISIBILITY_TIMEOUT = 3600
#: Seconds between two sweeps of the outboxes (``tasks.control.sweep_outboxes``).
SWEEP_INTERVAL = 1.0


def from_settings(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for ``settings``."""
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "queue_order_strategy": "priority",
            "visibility_timeout": VISIBILITY_TIMEOUT,
            "max_connections": 100,
        },
        "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT},
        "result_expires": settings.result_expires,
        "result_extended": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": QUEUE_OF_KIND[TaskKind.CALL],
        "task_routes": (Router(settings),),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_track_started": True,
        "task_time_limit": TASK_TIME_LIMIT,
        "task_soft_time_limit": TASK_TIME_LIMIT - 10,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "beat_schedule": {
            "monitor-pool": {
                "task": SAMPLE_POOL,
                "schedule": settings.monitor_interval,
                "options": {"queue": CONTROL_QUEUE, "expires": settings.monitor_interval * 2},
            },
            "recycle-nodes": {
                "task": RECYCLE_STEP,
                "schedule": settings.monitor_interval,
                "options": {"queue": CONTROL_QUEUE, "expires": settings.monitor_interval * 2},
            },
            "ensure-platform": {
                # Redeploys the platform if the devnet restarted while workers kept running.
                "task": ENSURE_PLATFORM,
                "schedule": 60.0,
                "options": {"queue": CONTROL_QUEUE, "expires": 60.0},
            },
            "sweep-outboxes": {
                # Batched writes whose drain message was lost (its worker killed) or whose drain died.
                "task": SWEEP_OUTBOXES,
                "schedule": SWEEP_INTERVAL,
                "options": {"queue": CONTROL_QUEUE, "expires": SWEEP_INTERVAL * 2},
            },
            "resend-kept": {
                # Raw transactions /rpc accepted: re-sent while no block holds them (a node that took them died).
                "task": RESEND_KEPT,
                "schedule": 1.0,
                "options": {"queue": CONTROL_QUEUE, "expires": 4.0},
            },
            "track-receipts": {
                "task": TRACK_RECEIPTS,
                "schedule": settings.receipt_interval,
                "options": {"queue": CONTROL_QUEUE, "expires": settings.receipt_interval * 4},
            },
        },
        "timezone": "UTC",
    }

