"""Mining: ``GET /api/v1/mining`` (whether and how blocks are produced), ``POST`` starts or stops it (admin).

The work is ``services.mining``'s; this module parses and renders.
"""

from __future__ import annotations

import math

from flask import Blueprint, Response, jsonify, request

from app.auth import admin_required
from app.context import pool, reader, settings
from app.validation import json_body
from errors import ValidationError
from services.fields import required
from services.mining import ACTIONS, MAX_BLOCK_TIME, describe, set_mining

bp = Blueprint("mining", __name__, url_prefix="/api/v1/mining")


@bp.get("")
def get_mining() -> Response:
    """Whether blocks are produced, how (automine, interval, off) and the head block number."""
    return jsonify(describe(pool(), reader()))


@bp.post("")
@admin_required
def post_mining() -> Response:
    """Start (``block_time`` seconds, 0 = automine; default ESP_BLOCK_TIME) or stop block production (admin)."""
    data = json_body(request)
    action = required(data, "action")
    if action not in ACTIONS:
        raise ValidationError("action", "must be start or stop")
    raw = data.get("block_time")
    if raw is None:
        block_time = math.ceil(settings().block_time)
    elif isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= MAX_BLOCK_TIME:
        raise ValidationError("block_time", f"must be a number of seconds from 0 (automine) to {MAX_BLOCK_TIME}")
    elif raw and raw != int(raw):
        raise ValidationError("block_time", "must be whole seconds (the node's interval mining takes whole seconds)")
    else:
        block_time = int(raw)
    if action == "stop" and raw is not None:
        raise ValidationError("block_time", "applies only to start")
    return jsonify(set_mining(pool(), reader(), action, block_time))
