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
does not hold others hostage, and a visibility timeout (ESP_TASK_VISIBILITY_TIMEOUT, 300 s) above the
longest a message is held (a task's time limit, 120 s, after its longest retry countdown, 30 s): a task
taken by a worker that then died is delivered again that long after it was taken (kombu's sweep of
unacknowledged messages runs every RESTORE_INTERVAL seconds). Kombu's default, one hour, left a deploy or
an account's funding whose worker died waiting that long; a twin delivery of a task still running is
harmless (the write protocol's prepared record, ``wallet.broadcast``), only wasted.

Redis going away (a restart, a crash): every process reconnects by itself and for as long as it
takes. The broker connection is retried forever (``broker_connection_max_retries=None``; Celery's
default gives up after 100 tries and the worker exits); kombu's sockets have timeouts, keepalive and a
health check, so a connection that died silently is noticed; the result backend retries its writes
until Redis answers again (``result_backend_always_retry``) rather than failing a write task whose
transaction was already sent; and the transport is ``tasks.broker``'s, which fixes the crash of a
worker that loses Redis while it holds unacknowledged messages. Library settings rather than loops of
our own: Celery's consumer already reconnects with a backoff, redis-py already retries a command.
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
#: Seconds between two sweeps of unacknowledged messages by each worker (kombu's own default: ~100 s).
RESTORE_INTERVAL = 5
#: Seconds between two sweeps of the outboxes (``tasks.control.sweep_outboxes``).
SWEEP_INTERVAL = 1.0
#: Redis sockets of the broker and the result backend: seconds to connect, and to wait for an answer
#: (above kombu's 1 s BRPOP, far below a task's time limit), and between two checks of an idle connection.
REDIS_CONNECT_TIMEOUT = 3.0
REDIS_SOCKET_TIMEOUT = 10.0
REDIS_HEALTH_CHECK_INTERVAL = 10
#: The longest the result backend waits between two tries of a write while Redis is away, and how many tries.
RESULT_RETRY_MAX_SLEEP_MS = 1000
RESULT_RETRY_MAX = 600


def from_settings(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for ``settings``."""
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport": "tasks.broker:Transport",
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "broker_transport_options": {
            "queue_order_strategy": "priority",
            "visibility_timeout": settings.task_visibility_timeout,
            "unacked_restore_interval": RESTORE_INTERVAL,
            "unacked_restore_throttle": 1,
            "max_connections": 100,
            "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
            "socket_timeout": REDIS_SOCKET_TIMEOUT,
            "socket_keepalive": True,
            "health_check_interval": REDIS_HEALTH_CHECK_INTERVAL,
        },
        "result_backend_transport_options": {"visibility_timeout": settings.task_visibility_timeout},
        "redis_socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
        "redis_socket_timeout": REDIS_SOCKET_TIMEOUT,
        "redis_socket_keepalive": True,
        "redis_backend_health_check_interval": REDIS_HEALTH_CHECK_INTERVAL,
        "result_backend_always_retry": True,
        "result_backend_max_sleep_between_retries_ms": RESULT_RETRY_MAX_SLEEP_MS,
        "result_backend_max_retries": RESULT_RETRY_MAX,
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

