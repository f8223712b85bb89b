"""What the commands print: rich renderables built from the API's JSON (no I/O here)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

ZONE_STYLES = {"I": "green", "II": "yellow", "III": "red"}
STATUS_STYLES = {"up": "green", "draining": "yellow", "recycling": "magenta", "down": "red"}


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _clock(at: float | None) -> str:
    return "-" if not at else time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"


def pool_view(document: Mapping[str, Any]) -> Group:
    """``GET /api/v1/nodes`` as a table of nodes and a line of the pool's health."""
    nodes: Sequence[Mapping[str, Any]] = document.get("nodes", [])
    dimensions = sorted({name for node in nodes for name in (node.get("state") or {})})
    # The state dimensions (0..1, what the distance is computed from) as s:<name>, apart from the raw in-flight and lag.
    table = Table(title="ESP node pool", title_justify="left", caption="s:… the node's state dimensions (0..1)",
                  caption_justify="left")
    for column in ("node", "role", "backend", "status", "zone", "distance", *(f"s:{d}" for d in dimensions), "in-flight",
                   "head", "lag"):
        table.add_column(column, justify="left" if column in ("node", "role", "backend", "status", "zone") else "right")
    for node in nodes:
        state = node.get("state") or {}
        inflight = node.get("inflight_live", node.get("inflight"))
        zone, status = node.get("zone"), str(node.get("status"))
        table.add_row(
            str(node["id"]), str(node.get("role", "-")), str(node.get("backend", "-")),
            Text(status, style=STATUS_STYLES.get(status, "")), Text(zone or "-", style=ZONE_STYLES.get(zone or "", "")),
            _number(node.get("distance")), *(_number(state.get(name)) for name in dimensions),
            _number(inflight), _number(node.get("head")), _number(node.get("lag")),
        )
    return Group(table, pool_line(document.get("pool") or {}))


def pool_line(pool: Mapping[str, Any]) -> Text:
    """LBH, Dis_ave, policy, serving nodes, paused and stale, on one line."""
    line = Text()
    line.append(f"LBH {_number(pool.get('lbh'))}  Dis_ave {_number(pool.get('dis_ave'))}  policy {pool.get('policy')}  "
                f"serving {pool.get('nodes_serving', 0)}/{pool.get('nodes_registered', 0)}  ")
    line.append(f"paused {'yes' if pool.get('paused') else 'no'}", style="red" if pool.get("paused") else "")
    age = pool.get("snapshot_age_s")
    line.append(f"  snapshot {'none' if age is None else f'{age:.1f} s old'}")
    if pool.get("stale"):
        line.append("  STALE (is the beat running?)", style="bold red")
    return line


def task_view(task: Mapping[str, Any]) -> Group:
    """A task record: what it is, then its timeline (the times the record keeps), then its result or error."""
    about = Table.grid(padding=(0, 2))
    about.add_column(style="bold")
    about.add_column()
    for name in ("id", "operation", "kind", "state", "node", "attempts"):
        about.add_row(name, str(task.get(name)))
    if task.get("params"):
        about.add_row("params", json.dumps(task["params"], sort_keys=True))
    created = float(task.get("created_at") or 0.0)
    timeline = Table(title="timeline", title_justify="left")
    for column in ("state", "at", "after"):
        timeline.add_column(column)
    steps: list[tuple[str, float]] = [("queued", created)]
    if task.get("started_at"):
        steps.append(("running (first run by a worker)", float(task["started_at"])))
    if task.get("state") not in ("queued", None):
        steps.append((str(task["state"]) + (" (now)" if task.get("state") not in ("confirmed", "failed") else ""),
                      float(task.get("updated_at") or created)))
    for state, at in steps:
        timeline.add_row(state, _clock(at), f"+{at - created:.3f} s")
    parts: list[Any] = [about, timeline]
    for name in ("result", "error"):
        if task.get(name):
            parts.append(Text(f"{name}: {json.dumps(task[name], sort_keys=True)}", style="red" if name == "error" else ""))
    return Group(*parts)


def event_line(event: Mapping[str, Any]) -> Text:
    """One node event: time, kind, node, its data as key=value."""
    data = " ".join(f"{k}={v}" for k, v in (event.get("data") or {}).items())
    kind = str(event.get("kind"))
    style = "red" if kind.endswith(("failed", "refused", "abandoned")) else "green" if kind.endswith("done") else ""
    line = Text(f"{_clock(event.get('at'))}  ")
    line.append(f"{kind:<20}", style=style)
    line.append(f"  {event.get('node')}  {data}")
    return line


def keys_view(keys: Sequence[Mapping[str, Any]]) -> Table:
    """API keys (never the keys themselves)."""
    table = Table(title="API keys", title_justify="left")
    for column in ("id", "name", "role", "created", "active"):
        table.add_column(column)
    for key in keys:
        created = key.get("created_at")
        table.add_row(str(key["id"]), str(key["name"]), str(key["role"]),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if created else "-",
                      "yes" if key.get("active") else Text("revoked", style="red"))
    return table
