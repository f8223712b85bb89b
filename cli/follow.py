"""Progress bars that follow a long operation through the API until it is done, fails, or runs out of time.

A drain or a recycle is a request to the recycler (the control worker's beat carries it
out); its steps are the node's events (``GET /api/v1/nodes/events``), and the last step of
a recycle is the monitor seeing the node serve again. Getting ready is ``/readyz`` answering
200 and every registered node "up" in a fresh snapshot (followers are "down" while they
import the leader's chain).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from cli.client import ApiClient, CliError

POLL_INTERVAL = 0.5
EVENTS_LIMIT = 200
#: The last step of a recycle or an undrain: the monitor's snapshot shows the node up and in zone I or II.
SERVING = "serving"
STEPS: dict[str, tuple[tuple[str, str], ...]] = {
    "recycle": (("recycle-requested", "requested"), ("recycle-draining", "draining: no new work"),
                ("recycle-restarting", "restarting through the node manager"), ("recycle-done", "restarted and caught up"),
                (SERVING, "serving again")),
    "drain": (("drain-requested", "requested"), ("drain-started", "draining: no new work"), ("drain-done", "drained")),
    "undrain": (("undrain-requested", "requested"), ("drain-ended", "given back"), (SERVING, "serving again")),
}
FAILURES = {
    "recycle": ("recycle-failed", "recycle-refused", "recycle-abandoned"),
    "drain": ("drain-refused", "recycle-abandoned"),
    "undrain": ("undrain-refused",),
}


def progress_bar(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def node_of(document: Mapping[str, Any], node_id: str) -> Mapping[str, Any] | None:
    return next((n for n in document.get("nodes", []) if n.get("id") == node_id), None)


def is_serving(node: Mapping[str, Any] | None) -> bool:
    """Whether the API says the node takes work again (its ``serving``, the balancer's rule) and answers."""
    return node is not None and node.get("serving") is True and node.get("status") == "up"


def follow_operation(client: ApiClient, answer: Mapping[str, Any], *, timeout: float, console: Console) -> None:
    """Follow the drain, recycle or undrain the API accepted (``answer``) until its last step."""
    node_id, action = str(answer["node"]), str(answer["action"])
    steps, failures = STEPS[action], FAILURES[action]
    kinds = [kind for kind, _ in steps]
    current = answer.get("current") or {}
    # Asked again for what was under way already: follow it from when it began.
    since = float(current.get("drain_started", answer["requested_at"]) if not answer.get("accepted") else answer["requested_at"])
    reached = 1
    deadline = time.monotonic() + timeout
    with progress_bar(console) as progress:
        bar = progress.add_task(f"{action} {node_id}: {steps[0][1]}", total=len(steps), completed=reached)
        while True:
            events = client.get("/api/v1/nodes/events", limit=EVENTS_LIMIT)["events"]
            for event in reversed(events):  # oldest first
                if event.get("node") != node_id or float(event.get("at", 0)) < since - 0.001:
                    continue
                if event["kind"] in failures:
                    data = event.get("data") or {}
                    why = data.get("reason") or data.get("error") or ""
                    raise CliError(f"{node_id}: {event['kind']}{': ' + str(why) if why else ''}")
                if event["kind"] in kinds:
                    reached = max(reached, kinds.index(event["kind"]) + 1)
            node = node_of(client.get("/api/v1/nodes"), node_id)
            if kinds[-1] == SERVING and reached == len(steps) - 1 and is_serving(node):
                reached = len(steps)
            detail = steps[reached - 1][1]
            if node is not None:
                detail += f"  (status {node.get('status')}, zone {node.get('zone')}, in-flight {node.get('inflight_live', '-')})"
            progress.update(bar, completed=reached, description=f"{action} {node_id}: {detail}")
            if reached == len(steps):
                return
            if time.monotonic() > deadline:
                raise CliError(f"{node_id}: the {action} did not finish within {timeout:g} s (step {reached}/{len(steps)}:"
                               f" {steps[reached - 1][1]}); see `esp events`")
            time.sleep(POLL_INTERVAL)


def wait_ready(client: ApiClient, *, timeout: float, console: Console) -> dict[str, Any]:
    """Wait until /readyz answers 200 and every node is up in a fresh snapshot; returns the pool document."""
    deadline = time.monotonic() + timeout
    with progress_bar(console) as progress:
        bar = progress.add_task("waiting for the API", total=None)
        while True:
            why = ""
            try:
                ready = client.raw("GET", "/readyz")
                document = client.get("/api/v1/nodes")
            except CliError as exc:
                why = str(exc)
            else:
                nodes = document.get("nodes", [])
                up = sum(1 for n in nodes if n.get("status") == "up")
                heads = [n["head"] for n in nodes if n.get("head") is not None]
                stale = bool(document.get("pool", {}).get("stale"))
                why = (f"{up}/{len(nodes)} nodes up, head {max(heads) if heads else '-'}, "
                       f"{'ready' if ready.status_code == 200 else 'not ready'}{', snapshot stale' if stale else ''}")
                progress.update(bar, total=max(len(nodes), 1), completed=up, description=why)
                if ready.status_code == 200 and nodes and up == len(nodes) and not stale:
                    return dict(document)
            if why and time.monotonic() > deadline:
                raise CliError(f"not ready within {timeout:g} s: {why}")
            progress.update(bar, description=why)
            time.sleep(POLL_INTERVAL)
