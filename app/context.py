"""Accessors for what create_app() put on the app."""

from __future__ import annotations

from flask import current_app

from nodes.pool import Pool
from settings import Settings


def pool() -> Pool:
    """The app's Pool (Redis, registry, RPC clients)."""
    return current_app.extensions["esp.pool"]


def settings() -> Settings:
    """The app's Settings."""
    return current_app.config["ESP_SETTINGS"]
