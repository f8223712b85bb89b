"""Platform events: ``GET /api/v1/events?account=&project=&type=&cursor=&limit=``, paged (``services.events``)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from app.context import pool, views
from services.events import MAX_LIMIT, MAX_PROJECT_ID, list_events, parse_types
from services.fields import address, integer

bp = Blueprint("events", __name__, url_prefix="/api/v1/events")


@bp.get("")
def get_events() -> Response:
    """The platform's events, oldest first, filtered by account, project and type; paged by cursor."""
    types = parse_types(request.args.get("type"))
    account = address(request.args["account"], "account") if request.args.get("account") else None
    project = integer(request.args["project"], "project", low=1, high=MAX_PROJECT_ID) if request.args.get("project") else None
    limit = integer(request.args.get("limit", "50"), "limit", low=1, high=MAX_LIMIT)
    return jsonify(list_events(views(), pool(), types=types, account=account, project=project, limit=limit,
                               cursor=request.args.get("cursor") or None))
