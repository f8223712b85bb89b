"""The container engine: where it is, whether anything answers there, and a client with bounded calls."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import docker
import docker.errors
import docker.utils
import requests.exceptions

from errors import ConfigError
from settings import Settings

#: What a failed engine call raises: the SDK's own errors and its HTTP transport's.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


def dockerd_socket(settings: Settings) -> Path:
    """The socket scripts/dockerd.sh gives its engine (run folder / dockerd / docker.sock)."""
    return settings.run_dir / "dockerd" / "docker.sock"


def engine_url(settings: Settings, docker_host: str | None = None) -> str:
    """Where the engine is: the argument, ESP_DOCKER_HOST, DOCKER_HOST, scripts/dockerd.sh's socket or the system one."""
    if docker_host:
        return docker_host
    configured = str(getattr(settings, "docker_host", "") or "")
    if configured:
        return configured
    # The SDK reads DOCKER_HOST (and its TLS variables) itself; settings.py stays the only reader of ESP_ ones.
    from_env = docker.utils.kwargs_from_env().get("base_url")
    if from_env:
        return str(from_env)
    ours = dockerd_socket(settings)
    if ours.exists() or not Path("/var/run/docker.sock").exists():
        return f"unix://{ours}"
    return "unix:///var/run/docker.sock"


def unix_socket_problem(url: str, timeout: float = 2.0) -> str | None:
    """Why nothing accepts connections on a ``unix://`` engine URL, or None when something does (or it is not unix)."""
    if not url.startswith("unix://"):
        return None
    path = url[len("unix://"):]
    if not os.path.exists(path):
        return f"{path} does not exist"
    # Our own probe, closed whatever happens: the SDK's unix adapter leaks its socket when connect() fails.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except OSError as exc:
            return exc.strerror or type(exc).__name__
    return None


def connect(settings: Settings, docker_host: str | None = None) -> docker.DockerClient:
    """A client of the engine whose every call is bounded by ESP_DOCKER_TIMEOUT; ConfigError if none answers."""
    url = engine_url(settings, docker_host)
    hint = f"no container engine answers at {url}: run scripts/dockerd.sh start (or set DOCKER_HOST)"
    problem = unix_socket_problem(url, timeout=min(settings.docker_timeout, 2.0))
    if problem:
        raise ConfigError(f"{hint} ({problem})")
    try:
        if docker_host is None and url == docker.utils.kwargs_from_env().get("base_url"):
            client = docker.DockerClient(**docker.utils.kwargs_from_env(), timeout=settings.docker_timeout)
        else:
            client = docker.DockerClient(base_url=url, timeout=settings.docker_timeout)
    except ENGINE_ERRORS as exc:
        raise ConfigError(f"{hint} ({short_error(exc)})") from None
    try:
        client.ping()
    except ENGINE_ERRORS as exc:
        client.close()
        raise ConfigError(f"{hint} ({short_error(exc)})") from None
    return client


def short_error(exc: BaseException) -> str:
    """The first line of an engine error, at most 300 characters (the SDK's can span a page)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
