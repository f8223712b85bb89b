"""ESP's HTTP API: ``flask --app app run`` (gunicorn ``'app:create_app()'`` in the stack)."""

from __future__ import annotations

from flask import Flask

from app import (
    accounts,
    auth,
    chain,
    contracts_api,
    dashboard,
    errors,
    events,
    guards,
    health,
    keys_api,
    metrics,
    mining,
    node_admin,
    nodes,
    openapi,
    projects,
    tasks_api,
    thesis,
    token,
    validation,
)
from nodepool.failover import ReadClient
from nodepool.placement import Placement
from nodepool.pool import Pool, edge_redis
from settings import Settings
from tasks.app import make_celery
from wallet.kdf import KdfGate


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["SECRET_KEY"] = settings.secret_key
    app.config["ESP_SETTINGS"] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]
    pool = Pool(settings, edge_redis(settings))  # every Redis use of the API shares its pool: records, keys, limits
    app.extensions["esp.pool"] = pool
    app.extensions["esp.placement"] = placement = Placement(pool)
    app.extensions["esp.reader"] = ReadClient(pool, placement)
    app.extensions["esp.celery"] = make_celery(settings, name="esp-api", current=False)
    # One per process: every keystore this app builds shares the bound on password KDFs.
    app.extensions["esp.kdf_gate"] = KdfGate(settings.kdf_concurrency, settings.kdf_queue)

    errors.register(app)
    guards.install_guards(app, settings)  # first: a password in a URL is refused before anything reads it
    validation.install(app)
    auth.install(app)
    dashboard.install(app)
    keys_api.register_cli(app)
    for module in (health, nodes, tasks_api, accounts, keys_api, metrics):
        app.register_blueprint(module.bp)
    app.register_blueprint(node_admin.bp)
    for module in (token, contracts_api, projects, chain, mining, events, openapi, thesis):
        app.register_blueprint(module.bp)
    app.register_blueprint(dashboard.bp)
    guards.install_limits(app, settings, pool.redis)  # last: its hook keys on g.caller, which auth's hook sets
    return app

