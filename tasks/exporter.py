"""Each Celery process's ``/metrics`` for Prometheus, and its entry in the exporter registry.

A write worker's main process, the control worker and beat each start prometheus_client's HTTP
server in a thread, on ESP_WORKER_METRICS_HOST:ESP_WORKER_METRICS_PORT (by default loopback and
a free port, so any number of workers share a host), once they are ready (Celery's
``worker_ready`` and ``beat_init`` signals). It shows what every process of that worker counted:
the task metrics (``tasks.metrics``) and those the services declare (nonce conflicts, fee bumps,
recycles, the monitor's samples), summed over the prefork children's files
(``tasks.metrics_dir``). A child that ends takes its live gauges with it (``mark_process_dead``:
as it exits, or at the next scrape after it was killed).

The server's address is registered in Redis with a TTL and a heartbeat
(``services.exporters``); the API lists the live ones for Prometheus' HTTP service discovery.
Only a process started through ``tasks.worker`` (which prepared the metrics folder) serves: a
worker a test runs in its own process does not.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import threading
from collections.abc import Iterable
from typing import Any

import redis
from celery.signals import beat_init, worker_process_shutdown, worker_ready, worker_shutdown
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Metric

from nodepool.pool import edge_redis
from services.exporters import HEARTBEAT, ROLE_BEAT, ROLE_CONTROL, ROLE_WORKER, Exporter, ExporterRegistry
from settings import Settings
from tasks.metrics_dir import is_multiprocess
from tasks.routing import CONTROL_QUEUE

log = logging.getLogger(__name__)

#: The files of a process's live gauges (``gauge_livesum_<pid>.db``...): a dead process's are dropped.
_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")
#: Addresses that mean "every interface": the registry gets the host's name instead.
_WILDCARDS = ("", "0.0.0.0", "::")


class WorkerCollector(MultiProcessCollector):
    """The metrics of every process of this worker (its folder's files), without the live gauges of dead ones."""

    def collect(self) -> Iterable[Metric]:
        for name in os.listdir(self._path):
            match = _LIVE_FILE.match(name)
            if match and not _is_alive(int(match.group(1))):
                mark_process_dead(int(match.group(1)), self._path)
        return super().collect()


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Heartbeat(threading.Thread):
    """Registers the exporter now and every HEARTBEAT seconds until stopped; then deregisters it."""

    def __init__(self, registry: ExporterRegistry, exporter: Exporter) -> None:
        super().__init__(name="esp-metrics-heartbeat", daemon=True)
        self.registry = registry
        self.exporter = exporter
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.registry.register(self.exporter)
            except redis.RedisError as exc:  # Redis away: the next beat tries again, the entry may lapse meanwhile
                log.warning("metrics exporter %s not registered: %s", self.exporter.address, exc)
            if self.stopped.wait(HEARTBEAT):
                return

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.registry.deregister(self.exporter)
        except redis.RedisError as exc:
            log.warning("metrics exporter %s not deregistered (it lapses by itself): %s", self.exporter.address, exc)


_running: list[Heartbeat] = []


def serve(settings: Settings, role: str) -> Exporter | None:
    """Start this process's ``/metrics`` server and its registration; None when metrics do not live in files."""
    if not is_multiprocess() or _running:
        return None
    registry = CollectorRegistry()
    WorkerCollector(registry)
    try:
        httpd, _ = start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host, registry=registry)
    except OSError as exc:  # a fixed ESP_WORKER_METRICS_PORT another process holds: work on, unseen by Prometheus
        log.error("metrics of this %s not served on %s:%d: %s (ESP_WORKER_METRICS_PORT=0 takes a free port)",
                  role, settings.worker_metrics_host, settings.worker_metrics_port, exc)
        return None
    host = settings.worker_metrics_host
    if host in _WILDCARDS:
        host = socket.getfqdn()
    address = f"[{host}]:{httpd.server_port}" if ":" in host else f"{host}:{httpd.server_port}"
    exporter = Exporter(role=role, address=address)
    heartbeat = Heartbeat(ExporterRegistry(edge_redis(settings)), exporter)
    heartbeat.start()
    _running.append(heartbeat)
    atexit.register(stop)  # beat has no shutdown signal; it exits through SystemExit, which runs this
    log.info("metrics of this %s at http://%s/metrics", role, address)
    return exporter


def stop() -> None:
    """Deregister this process's exporter (its server thread ends with the process)."""
    while _running:
        _running.pop().stop()


@worker_ready.connect
def _serve_worker(sender: Any = None, **_: Any) -> None:
    try:
        queues = set((sender.app.amqp.queues.consume_from or {}).keys())
        settings = sender.app.settings
    except AttributeError:
        return  # not an ESP app
    serve(settings, ROLE_CONTROL if CONTROL_QUEUE in queues else ROLE_WORKER)


@beat_init.connect
def _serve_beat(sender: Any = None, **_: Any) -> None:
    settings = getattr(getattr(sender, "app", None), "settings", None)
    if settings is not None:
        serve(settings, ROLE_BEAT)


@worker_shutdown.connect
def _stop_worker(**_: Any) -> None:
    stop()


@worker_process_shutdown.connect
def _child_exits(**_: Any) -> None:
    """A prefork child ends: its live gauges go (counters stay counted)."""
    if is_multiprocess():
        mark_process_dead(os.getpid())
