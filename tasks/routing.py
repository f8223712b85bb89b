"""Celery routing: task class -> queue."""

from __future__ import annotations

from typing import Any


def route_task(name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any = None, **kw: Any) -> dict[str, Any] | None:
    """Send a task to the queue of its class (the task's own ``queue`` option wins)."""
    queue = getattr(task, "queue", None)
    if queue:
        return {"queue": queue}
    return None
