"""Node events (state changes, recycling steps) kept in a capped Redis stream."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from nodepool.codec import as_text

EVENTS_KEY = "esp:events:nodes"
MAX_EVENTS = 1000


def record_event(client: redis.Redis, kind: str, node_id: str, **data: Any) -> None:
    """Append one event; the stream keeps the newest MAX_EVENTS."""
    fields = {"kind": kind, "node": node_id, "at": repr(time.time()), "data": json.dumps(data, default=str)}
    client.xadd(EVENTS_KEY, fields, maxlen=MAX_EVENTS, approximate=True)  # type: ignore[arg-type]


def recent_events(client: redis.Redis, count: int = 100) -> list[dict[str, Any]]:
    """The newest ``count`` events, newest first."""
    events = []
    for event_id, fields in client.xrevrange(EVENTS_KEY, count=count) or []:
        f = {as_text(k): as_text(v) for k, v in (fields or {}).items()}
        events.append({
            "id": as_text(event_id),
            "kind": f.get("kind"),
            "node": f.get("node"),
            "at": float(f.get("at", 0)),
            "data": json.loads(f.get("data") or "{}"),
        })
    return events
