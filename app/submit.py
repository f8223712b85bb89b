"""Rendering a submitted write: 202 with the task record, its status URL, and whether it was a replay."""

from __future__ import annotations

from flask import Response, jsonify

from services.submit import Submitted, SubmittedMany


def accepted(submitted: Submitted) -> tuple[Response, int]:
    """202 Accepted with the task; ``Idempotent-Replayed: true`` when an earlier request with the same key made it."""
    response = jsonify(submitted.record.public())
    response.headers["Location"] = f"/api/v1/tasks/{submitted.record.id}"
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response, 202


def accepted_many(submitted: SubmittedMany) -> tuple[Response, int]:
    """202 Accepted with every task, in request order; ``Idempotent-Replayed: true`` for a replay."""
    response = jsonify({"tasks": [r.public() for r in submitted.records], "count": len(submitted.records)})
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response, 202
