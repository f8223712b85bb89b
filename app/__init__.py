"""ESP's HTTP API: ``flask --app app run`` (gunicorn ``'app:create_app()'`` in the stack)."""

from __future__ import annotations

from flask import Flask

from nodes.pool import Pool
from settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["SECRET_KEY"] = settings.secret_key
    app.config["ESP_SETTINGS"] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["esp.pool"] = Pool(settings)

    from app import errors, health, nodes

    errors.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(nodes.bp)
    return app
