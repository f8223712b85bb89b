"""The operators' dashboard: one page that polls the pool, the queues and the platform's activity every second.

    GET /dashboard                  the page (HTML, script and style; no data: it asks for an API key first)
    GET /dashboard/assets/<file>    its script and style (app/static/dashboard/)
    GET /dashboard/vendor/<file>    uPlot, the charting library, as npm installed it (package.json pins it)
    GET /api/v1/dashboard           what the page draws, for an admin key: the pool (each node with its point in
                                    the state plane), the activity series (LBH, totals of API requests, gateway
                                    calls and confirmed transactions, queue lengths) since ``?since=<t>``, recent
                                    node events and recent tasks, and where Flower is

The page is static: no data reaches the browser without ``Authorization: Bearer`` on the
JSON request, and the key stays in the tab's sessionStorage. The series is the monitor's
snapshot history (``nodepool.activity`` says what each process counts); the browser turns
running totals into rates, so a missed poll loses no request.

Every API request but health, metrics and the dashboard's own adds one to the requests
total (``count_requests``, an after-request hook: one INCR).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import time
import weakref
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_from_directory
from werkzeug.exceptions import NotFound, ServiceUnavailable

from app.auth import admin_required
from app.context import pool, settings, task_store
from app.nodes import nodes_document, plane_point
from errors import ValidationError
from nodepool.activity import RECENT_TASKS, Tally, recent_task_ids
from nodepool.events import recent_events
from nodepool.snapshot import SNAPSHOT_HISTORY_KEY, balancer_config, load_snapshot_document
from nodepool.traffic import Traffic
from settings import ROOT
from tasks.routing import QUEUES

log = logging.getLogger(__name__)

bp = Blueprint("dashboard", __name__)

ASSETS = Path(__file__).resolve().parent / "static" / "dashboard"
#: uPlot's browser build, served as npm installed it (no build step of ours).
VENDOR = ROOT / "node_modules" / "uplot" / "dist"
VENDOR_FILES = ("uPlot.iife.min.js", "uPlot.min.css")
#: Snapshot history entries a first load gets (5 minutes at the default 1 s monitor interval).
SERIES_LENGTH = 300
EVENTS_SHOWN = 12
TASKS_SHOWN = 12
#: Views whose requests are not counted: probes, scrapes and this dashboard's own polling.
UNCOUNTED = ("health.", "metrics.", "dashboard.", "static")
NO_STORE = {"Cache-Control": "no-store"}


def install(app: Flask) -> None:
    """Count the API's requests for the dashboard's requests-per-second chart (sent by a Tally, off the request path)."""
    tally = Tally(app.extensions["esp.pool"].redis)
    app.extensions["esp.activity"] = tally
    atexit.register(_close_tally, weakref.ref(tally))  # a worker's graceful exit sends its last half second
    app.after_request(count_requests)


def _close_tally(ref: weakref.ref[Tally]) -> None:
    """Close the tally if its app still lives (a weak reference: an app a test dropped is not kept for atexit)."""
    tally = ref()
    if tally is not None:
        tally.close()


def count_requests(response: Response) -> Response:
    """After each counted request: one more in the process's tally of requests (no Redis call here)."""
    endpoint = request.endpoint or ""
    if not endpoint.startswith(UNCOUNTED):
        current_app.extensions["esp.activity"].add("requests")
    return response


@bp.get("/dashboard")
def page() -> Response:
    """The dashboard page (it holds no data; it asks for an API key)."""
    return send_from_directory(ASSETS, "index.html", max_age=0)


@bp.get("/dashboard/assets/<path:name>")
def asset(name: str) -> Response:
    """The page's own script and style."""
    return send_from_directory(ASSETS, name, max_age=0)


@bp.get("/dashboard/vendor/<name>")
def vendor(name: str) -> Response:
    """uPlot's script and style from node_modules; 503 saying how to install it when npm has not."""
    if name not in VENDOR_FILES:
        raise NotFound(f"the dashboard serves only {', '.join(VENDOR_FILES)} from uPlot")
    if not (VENDOR / name).is_file():
        log.error("dashboard: %s is missing: run `npm ci` in %s (package.json pins uplot)", VENDOR / name, ROOT)
        raise ServiceUnavailable(f"the dashboard's charting library is not installed ({name}): run `npm ci` "
                                 "in ESP's folder (package.json pins uplot)")
    return send_from_directory(VENDOR, name, max_age=3600)


@bp.get("/api/v1/dashboard")
@admin_required
def data() -> Response:
    """Everything the dashboard draws, for an admin: pool and plane, activity series since ``?since=``, events, tasks."""
    since = _since(request.args.get("since", "0"))
    the_pool, cfg = pool(), settings()
    client = the_pool.redis
    now = time.time()
    wanted = SERIES_LENGTH if since <= 0 else min(SERIES_LENGTH, math.ceil((now - since) / cfg.monitor_interval) + 5)

    specs = the_pool.nodes()
    raw_history = client.lrange(SNAPSHOT_HISTORY_KEY, 0, max(wanted, 1) - 1)
    document = nodes_document(specs, load_snapshot_document(client), now=now, stale_after=cfg.stale_after,
                              policy=cfg.balancer_policy, live_inflight=Traffic(client).inflight(s.id for s in specs))
    for node in document["nodes"]:
        point = plane_point(node)
        node["plane"] = None if point is None else {"x": round(point[0], 4), "y": round(point[1], 4)}
    document["pool"]["recycle_distance"] = balancer_config(cfg).recycle_distance

    series = [_series_point(json.loads(raw)) for raw in reversed(raw_history or [])]
    tasks = [record.public() for record in task_store().find_many(recent_task_ids(client, min(TASKS_SHOWN, RECENT_TASKS)))
             if record is not None]
    response = jsonify({
        "now": now,
        "pool": document["pool"],
        "nodes": document["nodes"],
        "series": [p for p in series if p["t"] > since],
        "queues": list(QUEUES),
        "events": recent_events(client, EVENTS_SHOWN),
        "tasks": [{k: t[k] for k in ("id", "operation", "kind", "state", "node", "updated_at", "status_url")} for t in tasks],
        "flower_url": cfg.flower_link,
    })
    response.headers.update(NO_STORE)
    return response


def _series_point(entry: dict[str, Any]) -> dict[str, Any]:
    """One history entry as a point of the dashboard's charts (totals are None before the monitor kept them)."""
    activity = entry.get("activity") or {}
    return {"t": entry["t"], "lbh": entry["lbh"], "dis_ave": entry["dis_ave"], "paused": entry.get("paused", False),
            "requests": activity.get("requests"), "rpc": activity.get("rpc"), "confirmed": activity.get("confirmed"),
            "queues": activity.get("queues") or {}}


def _since(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError("since", "must be a Unix time in seconds (the last point's t), or 0", status=400) from None
    if not math.isfinite(value) or value < 0:
        raise ValidationError("since", "must be a Unix time in seconds (the last point's t), or 0", status=400)
    return value
