"""The node pool as the balancer sees it.

    GET /api/v1/nodes            the newest snapshot: every registered node's state, distance,
                                 zone and status, and the pool's Dis_ave, LBH, calibration,
                                 policy and the snapshot's age (``pool.stale`` when it is too old
                                 to steer routing, or missing: nodes are then listed from the
                                 registry with status "unknown")
    GET /api/v1/nodes/events     recent recycle and state-change events, newest first
    GET /api/v1/nodes/history    the snapshot history for plots, oldest first (``?limit=``)
    GET /api/v1/nodes/plane      a live picture of the state plane (HTML, refreshed every second)
    GET /api/v1/nodes/plane.svg  the same picture as one SVG
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app.context import pool, settings
from nodepool.events import recent_events
from nodepool.snapshot import SNAPSHOT_HISTORY_KEY, load_snapshot_document
from nodepool.spec import NodeSpec
from nodepool.traffic import Traffic
from services.fields import integer

bp = Blueprint("nodes", __name__, url_prefix="/api/v1/nodes")

STATUS_UNKNOWN = "unknown"
MAX_HISTORY = 600
MAX_EVENTS = 1000
ZONE_COLOURS = {"I": "#2e7d32", "II": "#ef8f00", "III": "#c62828"}
UNKNOWN_COLOUR = "#9e9e9e"


def _limit(default: int, maximum: int) -> int:
    return integer(request.args.get("limit", str(default)), "limit", low=1, high=maximum, status=400)


@bp.get("")
def list_nodes() -> Response:
    """Every registered node with its sampled state, and the pool's health (``pool.stale`` says whether to trust it)."""
    the_pool = pool()
    specs = the_pool.nodes()
    document = load_snapshot_document(the_pool.redis)
    live = Traffic(the_pool.redis).inflight(s.id for s in specs)
    cfg = settings()
    body = nodes_document(specs, document, now=time.time(), stale_after=cfg.stale_after,
                          policy=cfg.balancer_policy, live_inflight=live)
    return jsonify(body)


@bp.get("/events")
def node_events() -> Response:
    """Recent recycle and state-change events, newest first (``?limit=``, default 100)."""
    return jsonify({"events": recent_events(pool().redis, _limit(100, MAX_EVENTS))})


@bp.get("/history")
def node_history() -> Response:
    """The last ``limit`` snapshots in compact form (t, lbh, dis_ave, paused, per node d/z/s/i/x), oldest first."""
    raw = pool().redis.lrange(SNAPSHOT_HISTORY_KEY, 0, _limit(120, MAX_HISTORY) - 1) or []
    entries = [json.loads(item) for item in reversed(raw)]
    return jsonify({"entries": entries, "count": len(entries)})


@bp.get("/plane.svg")
def plane_image() -> Response:
    """The state plane as an SVG image."""
    return Response(plane_svg(_current_document()), mimetype="image/svg+xml", headers={"Cache-Control": "no-store"})


@bp.get("/plane")
def plane_page() -> Response:
    """A page that redraws the state plane every second (no script libraries)."""
    page = PLANE_PAGE.replace("{svg}", plane_svg(_current_document()))
    return Response(page, mimetype="text/html", headers={"Cache-Control": "no-store"})


def _current_document() -> dict[str, Any]:
    the_pool = pool()
    cfg = settings()
    return nodes_document(the_pool.nodes(), load_snapshot_document(the_pool.redis), now=time.time(),
                          stale_after=cfg.stale_after, policy=cfg.balancer_policy)


# -- the document -------------------------------------------------------------------------


def nodes_document(specs: Sequence[NodeSpec], snapshot: Mapping[str, Any] | None, *, now: float, stale_after: float,
                   policy: str, live_inflight: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The ``GET /api/v1/nodes`` body: registered nodes merged with the stored snapshot."""
    sampled = {n["id"]: n for n in (snapshot or {}).get("nodes", [])}
    nodes = []
    for spec in specs:
        node = sampled.get(spec.id)
        entry: dict[str, Any] = {"id": spec.id, "url": spec.url, "backend": spec.backend, "role": spec.role}
        if node is None:
            entry.update({
                "status": STATUS_UNKNOWN, "zone": None, "distance": None, "state": {}, "inflight": None,
                "head": None, "lag": None, "latency_ms": None, "error_rate": None, "alive": None, "zone_reason": None,
            })
        else:
            entry.update({
                "status": node["status"], "zone": node["zone"], "distance": node["distance"], "state": node["state"],
                "inflight": node["inflight"], "head": node.get("head"), "lag": node.get("lag"),
                "latency_ms": node.get("latency_ms"), "error_rate": node.get("error_rate"), "alive": node.get("alive"),
                "zone_reason": node.get("zone_reason"), "memory_free_bytes": node.get("memory_free_bytes"),
                "sync": node.get("sync"), "generation": node.get("generation", spec.generation), "raw": node.get("raw"),
            })
            if node.get("probe_error"):
                entry["probe_error"] = node["probe_error"]
        entry["serving"] = bool(node and node.get("serving"))  # the balancer's rule, as the monitor stored it
        if live_inflight is not None:
            entry["inflight_live"] = live_inflight.get(spec.id, 0)
        nodes.append(entry)
    return {"nodes": nodes, "pool": _pool_section(snapshot, nodes, now=now, stale_after=stale_after, policy=policy),
            "count": len(nodes)}


def _pool_section(snapshot: Mapping[str, Any] | None, nodes: Sequence[Mapping[str, Any]], *, now: float,
                  stale_after: float, policy: str) -> dict[str, Any]:
    serving = sum(1 for n in nodes if n["serving"])
    if not snapshot:
        return {
            "dis_ave": None, "lbh": None, "policy": policy, "snapshot_age_s": None, "stale": True,
            "stale_after_s": stale_after, "paused": False, "calibration": None, "taken_at": None,
            "nodes_registered": len(nodes), "nodes_serving": 0,
        }
    p = snapshot["pool"]
    age = max(now - float(p["taken_at"]), 0.0)
    calibration = p.get("calibration") or {
        "dis_ave_min": p["dis_ave_min"], "dis_ave_max": p["dis_ave_max"], "dis_ave": p["dis_ave"],
        "source": p["calibration_source"],
    }
    return {
        "dis_ave": p["dis_ave"], "lbh": p["lbh"], "policy": p["policy"], "snapshot_age_s": round(age, 3),
        "stale": age > stale_after, "stale_after_s": stale_after, "paused": p["paused"],
        "calibration": calibration, "lbh_over": p.get("lbh_over"), "weights": p.get("weights"),
        "max_head": p.get("max_head"), "taken_at": p["taken_at"], "sample_ms": p.get("sample_ms"),
        "nodes_registered": len(nodes), "nodes_serving": serving,
    }


# -- the state plane ----------------------------------------------------------------------

SIZE = 440
MARGIN = 48
EXTENT = 1.5  # the plane shows 0..1.5 on both axes: every distance up to sqrt(2) fits


def plane_point(node: Mapping[str, Any]) -> tuple[float, float] | None:
    """Where the node sits in the (memory, cpu) plane, or None when it was never sampled.

    Drawn at its distance d from the origin, in the direction of its (memory, cpu)
    state: under the thesis model (d = sqrt(memory² + cpu²)) that is exactly the
    point (memory, cpu) of the thesis's figure; with more dimensions the other ones
    push the node outwards along the same ray, so the Dis_ave circle still
    separates zone I from zone II as the balancer does.
    """
    distance = node.get("distance")
    if distance is None:
        return None
    state, raw = node.get("state") or {}, node.get("raw") or {}
    memory = state.get("memory", min(max(float(raw.get("memory", 0.0)), 0.0), 1.0))
    cpu = state.get("cpu", min(max(float(raw.get("cpu", 0.0)), 0.0), 1.0))
    angle = math.atan2(cpu, memory) if memory > 0 or cpu > 0 else math.pi / 4
    return float(distance) * math.cos(angle), float(distance) * math.sin(angle)


def plane_svg(document: Mapping[str, Any]) -> str:
    """The state plane of a ``GET /api/v1/nodes`` body as a standalone SVG."""
    scale = (SIZE - 2 * MARGIN) / EXTENT

    def x(v: float) -> float:
        return round(MARGIN + v * scale, 1)

    def y(v: float) -> float:
        return round(SIZE - MARGIN - v * scale, 1)

    def arc(radius: float, colour: str, dash: str = "", width: float = 1.5) -> str:
        r = min(radius, EXTENT)
        d = f"M {x(r)} {y(0)} A {round(r * scale, 1)} {round(r * scale, 1)} 0 0 0 {x(0)} {y(r)}"
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        return f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="{width}"{dash_attr}/>'

    pool_doc = document.get("pool") or {}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE + 40}" viewBox="0 0 {SIZE} {SIZE + 40}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{SIZE}" height="{SIZE + 40}" fill="#ffffff"/>',
        # the unit square: each dimension's range
        f'<rect x="{x(0)}" y="{y(1)}" width="{round(scale, 1)}" height="{round(scale, 1)}" fill="#f6f8fa" stroke="#d0d7de"/>',
        f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(EXTENT)}" y2="{y(0)}" stroke="#555"/>',
        f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(0)}" y2="{y(EXTENT)}" stroke="#555"/>',
        f'<text x="{x(EXTENT) - 4}" y="{y(0) + 28}" text-anchor="end">memory</text>',
        f'<text x="{x(0) - 30}" y="{y(EXTENT) - 6}">cpu</text>',
    ]
    for tick in (0.5, 1.0):
        parts.append(f'<text x="{x(tick)}" y="{y(0) + 14}" text-anchor="middle">{tick:g}</text>')
        parts.append(f'<text x="{x(0) - 6}" y="{y(tick) + 4}" text-anchor="end">{tick:g}</text>')
    dis_ave = pool_doc.get("dis_ave")
    if dis_ave is not None:
        parts.append(f'<path d="M {x(0)} {y(0)} L {x(min(dis_ave, EXTENT))} {y(0)} '
                     f'A {round(min(dis_ave, EXTENT) * scale, 1)} {round(min(dis_ave, EXTENT) * scale, 1)} 0 0 0 '
                     f'{x(0)} {y(min(dis_ave, EXTENT))} Z" fill="#e8f5e9" opacity="0.7"/>')
        parts.append(arc(dis_ave, "#1565c0", width=2))
        parts.append(f'<text x="{x(dis_ave * 0.72) + 4}" y="{y(dis_ave * 0.72) - 4}" fill="#1565c0">Dis_ave {dis_ave:.3f}</text>')
    calibration = pool_doc.get("calibration") or {}
    for key in ("dis_ave_min", "dis_ave_max"):
        if calibration.get(key) is not None:
            parts.append(arc(float(calibration[key]), "#90a4ae", dash="3 3", width=1))
    labels: list[tuple[float, float]] = []
    for node in document.get("nodes", []):
        point = plane_point(node)
        label = html.escape(str(node.get("id", "?")))
        if point is None:
            continue
        colour = ZONE_COLOURS.get(node.get("zone") or "", UNKNOWN_COLOUR)
        px, py = x(min(point[0], EXTENT)), y(min(point[1], EXTENT))
        ring = ' stroke="#000" stroke-width="2"' if node.get("status") not in ("up", None) else ' stroke="#fff" stroke-width="1"'
        title = html.escape(f"{node.get('id')}: zone {node.get('zone')}, {node.get('status')}, d={node.get('distance'):.3f}, "
                            f"inflight {node.get('inflight')}")
        parts.append(f'<circle cx="{px}" cy="{py}" r="7" fill="{colour}"{ring}><title>{title}</title></circle>')
        status = html.escape(str(node.get("status")))
        ly = py + 4
        while any(abs(lx - px) < 70 and abs(prev - ly) < 12 for lx, prev in labels):
            ly += 12  # nodes in the same spot: stack their labels
        labels.append((px, ly))
        parts.append(f'<text x="{px + 10}" y="{ly}">{label} {node.get("zone") or ""}'
                     f'{"" if status == "up" else " (" + status + ")"}</text>')
    lbh = pool_doc.get("lbh")
    age = pool_doc.get("snapshot_age_s")
    headline = (f"policy {pool_doc.get('policy')}  LBH {lbh:.3f}" if lbh is not None else f"policy {pool_doc.get('policy')}  no snapshot")
    if age is not None:
        headline += f"  age {age:.1f} s"
    stale = ' fill="#c62828"' if pool_doc.get("stale") else ""
    parts.append(f'<text x="{MARGIN}" y="{SIZE + 12}"{stale}>{html.escape(headline)}{"  STALE" if pool_doc.get("stale") else ""}'
                 f'{"  PAUSED (LBH &lt; 0)" if pool_doc.get("paused") else ""}</text>')
    legend_x = MARGIN
    for zone, colour in ZONE_COLOURS.items():
        parts.append(f'<circle cx="{legend_x + 5}" cy="{SIZE + 28}" r="5" fill="{colour}"/>'
                     f'<text x="{legend_x + 14}" y="{SIZE + 32}">zone {zone}</text>')
        legend_x += 70
    parts.append(f'<text x="{legend_x}" y="{SIZE + 32}" fill="#1565c0">— Dis_ave</text>')
    parts.append("</svg>")
    return "".join(parts)


PLANE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ESP: node state plane</title>
<style>body{font-family:sans-serif;margin:1.5rem;color:#222}p{max-width:40rem;font-size:0.9rem}</style></head>
<body><h1 style="font-size:1.2rem">Node state plane</h1>
<div id="plane">{svg}</div>
<p>Each node is drawn at its distance from the origin, in the direction of its (memory, cpu) state:
zone I inside the Dis_ave circle (takes writes first), zone II outside it (reads first), zone III in red
(takes nothing, recycled). Grey dashes: the calibrated Dis_ave_min and Dis_ave_max. Redrawn every second
from <a href="../nodes">/api/v1/nodes</a>.</p>
<script>
setInterval(function () {
  fetch("plane.svg", {cache: "no-store"})
    .then(function (r) { return r.ok ? r.text() : null; })
    .then(function (t) { if (t) { document.getElementById("plane").innerHTML = t; } })
    .catch(function () {});
}, 1000);
</script></body></html>
"""
