"""Node backends (process, static, docker), the devnet that keeps anvils on one chain, and the node manager."""

from __future__ import annotations

from typing import TYPE_CHECKING

from errors import ConfigError

if TYPE_CHECKING:
    from nodes.base import NodeBackend
    from settings import Settings


def make_backend(settings: Settings) -> NodeBackend:
    """The backend ESP_NODE_BACKEND names."""
    if settings.node_backend == "process":
        from nodes.process import ProcessBackend

        return ProcessBackend(settings)
    if settings.node_backend == "static":
        from nodes.static import StaticBackend

        return StaticBackend(settings.node_urls, timeout=settings.probe_timeout)
    if settings.node_backend == "docker":
        from nodes.docker.backend import DockerBackend

        return DockerBackend(settings)
    raise ConfigError(f"unknown ESP_NODE_BACKEND {settings.node_backend!r}")
