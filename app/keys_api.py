"""API keys, for admins: ``POST /api/v1/keys`` (the key is shown once), ``GET``, ``DELETE /api/v1/keys/<id>``.

The same operations are ``flask --app app keys create|list|revoke`` on the command line.
"""

from __future__ import annotations

import click
from flask import Blueprint, Flask, Response, jsonify, request

from access.keys import USER, ApiKey, check_name, check_role
from app.auth import admin_required
from app.context import key_store
from app.validation import json_body
from services.fields import required

bp = Blueprint("keys", __name__, url_prefix="/api/v1/keys")


def created(record: ApiKey, secret: str) -> dict[str, object]:
    return {**record.public(), "key": secret,
            "note": "the key is shown this once: ESP keeps only its SHA-256. Send it as Authorization: Bearer <key>."}


@bp.post("")
@admin_required
def create_key() -> tuple[Response, int]:
    """Create an API key (``name``, ``role``: admin or user); 201 with the key, shown this once."""
    data = json_body(request)
    name = check_name(required(data, "name"))
    role = check_role(data.get("role", USER))
    record, secret = key_store().create(name, role)
    response = jsonify(created(record, secret))
    response.headers["Location"] = f"/api/v1/keys/{record.id}"
    response.headers["Cache-Control"] = "no-store"
    return response, 201


@bp.get("")
@admin_required
def list_keys() -> Response:
    """Every API key (never the keys themselves), oldest first."""
    keys = [k.public() for k in key_store().list()]
    return jsonify({"keys": keys, "count": len(keys)})


@bp.delete("/<key_id>")
@admin_required
def revoke_key(key_id: str) -> Response:
    """Revoke a key: it stops working at once, everywhere."""
    return jsonify(key_store().revoke(key_id).public())


def register_cli(app: Flask) -> None:
    """``flask --app app keys …``: the same operations for an operator at the machine."""
    group = click.Group("keys", help="Manage ESP's API keys (stored in the Redis of ESP_REDIS_URL).")

    @group.command("create")
    @click.option("--name", required=True, help="who or what the key is for")
    @click.option("--role", type=click.Choice(["admin", "user"]), default="user", show_default=True)
    def create_command(name: str, role: str) -> None:
        """Create a key and print it (shown this once)."""
        record, secret = key_store().create(name, role)
        click.echo(f"created key {record.id} ({record.role}, {record.name}); it is shown this once:")
        click.echo(secret)

    @group.command("list")
    def list_command() -> None:
        """List the keys (never the keys themselves)."""
        for k in key_store().list():
            click.echo(f"{k.id}  {k.role:<5}  {'active ' if k.active else 'revoked'}  {k.name}")

    @group.command("revoke")
    @click.argument("key_id")
    def revoke_command(key_id: str) -> None:
        """Revoke the key KEY_ID."""
        record = key_store().revoke(key_id)
        click.echo(f"revoked key {record.id} ({record.name})")

    app.cli.add_command(group)
