"""Node backends (process, static, docker), the devnet that keeps anvils on one chain, and the node manager."""

from __future__ import annotations

from errors import ConfigError
from nodes.base import NodeBackend
from nodes.process import ProcessBackend
from nodes.static import StaticBackend
from settings import Settings


def make_backend(settings: Settings) -> NodeBackend:
    """The backend ESP_NODE_BACKEND names."""
    if settings.node_backend == "process":
        return ProcessBackend(settings)
    if settings.node_backend == "static":
        return StaticBackend(settings.node_urls, timeout=settings.probe_timeout)
    if settings.node_backend == "docker":
        from nodes.docker.backend import DockerBackend  # noqa: PLC0415 - the docker SDK adds ~30 ms to every process importing nodes; only this backend needs it

        return DockerBackend(settings, name_prefix=settings.docker_name_prefix)
    raise ConfigError(f"unknown ESP_NODE_BACKEND {settings.node_backend!r}")
