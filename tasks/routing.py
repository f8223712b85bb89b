"""The Celery routing hook: write tasks go to their class's queue, with a node chosen for them.

Configured as ``task_routes = (Router(settings),)``. For a write task it asks
the balancer (through a Placement: the pool snapshot, cached no longer than one
monitor interval, plus live in-flight counts) for a node, and puts the choice
in the message headers (``esp_node``, ``esp_zone``, ``esp_fallback``), where the
worker, the task record and Flower see it. When no node may take the work now
(every node down or zone III, or LBH < 0) the task is still queued, without a
node; the worker then waits for a healthy one.
"""

from __future__ import annotations

from typing import Any

from celery.utils.saferepr import saferepr

from balancer import TaskKind
from errors import NoHealthyNode
from nodepool.placement import Placement
from nodepool.pool import Pool
from settings import Settings

#: The queues, declared here once. Workers take them in this order: control first, then writes by class.
CONTROL_QUEUE = "esp.control"
QUEUE_OF_KIND = {TaskKind.DEPLOY: "esp.deploy", TaskKind.ACCOUNT: "esp.accounts", TaskKind.CALL: "esp.calls"}
WRITE_QUEUES = tuple(QUEUE_OF_KIND.values())
QUEUES = (CONTROL_QUEUE, *WRITE_QUEUES)
#: A task's class, as metrics label it: its queue's name without the prefix (control, deploy, accounts, calls).
TASK_CLASSES = tuple(queue.removeprefix("esp.") for queue in QUEUES)


def task_class(task: Any) -> str:
    """The class of a task object: its write kind's queue, or "control" for the control tasks ("other" else)."""
    kind_name = getattr(task, "esp_kind", None)
    if kind_name is not None:
        return QUEUE_OF_KIND[TaskKind.parse(kind_name)].removeprefix("esp.")
    if getattr(task, "queue", None) == CONTROL_QUEUE:
        return CONTROL_QUEUE.removeprefix("esp.")
    return "other"


class Router:
    """Routes write tasks by class and places them on a node (one instance per process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._placement: Placement | None = None  # built on first use, after any fork

    def placement(self) -> Placement:
        if self._placement is None:
            self._placement = Placement(Pool(self.settings))
        return self._placement

    def __call__(self, name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any = None, **kw: Any) -> dict[str, Any] | None:
        kind_name = getattr(task, "esp_kind", None)
        if kind_name is None:
            return None  # control tasks carry their own queue
        kind = TaskKind.parse(kind_name)
        route: dict[str, Any] = {"queue": QUEUE_OF_KIND[kind]}
        try:
            choice = self.placement().choose(kind)
            route["headers"] = {"esp_node": choice.node_id, "esp_zone": choice.zone, "esp_fallback": choice.fallback}
        except NoHealthyNode as exc:
            route["headers"] = {"esp_node": None, "esp_wait_reason": str(exc)}
        # Flower and the worker's log show kwargsrepr as the task's arguments: show the placement
        # there too (arguments are addresses, amounts and ids, never secrets).
        shown = {**(kwargs or {}), "routed_to": route["headers"]["esp_node"], "zone": route["headers"].get("esp_zone")}
        route["kwargsrepr"] = saferepr(shown)
        return route
