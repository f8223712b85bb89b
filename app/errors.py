"""The one place that turns errors into RFC 9457 ``application/problem+json`` responses."""

from __future__ import annotations

import logging
import re
from typing import Any

import redis
from flask import Flask, Response, jsonify, request
from flask_limiter import RateLimitExceeded
from limits.errors import StorageError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES

from app.guards import breach_field, retry_after, too_large_body
from errors import Conflict, EspError, Forbidden, NodeError, NoHealthyNode, NotFound, Unauthorized, ValidationError
from wallet.errors import KdfBusy

log = logging.getLogger(__name__)

PROBLEM_TYPE = "https://esp.invalid/problems/{}"
#: Seconds a client is told to wait when Redis does not answer (a restart takes a few).
REDIS_RETRY_AFTER = 2


def problem(status: int, title: str, detail: str, *, kind: str | None = None, **extra: Any) -> Response:
    """An RFC 9457 problem response."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE.format(kind) if kind else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def register(app: Flask) -> None:
    """Install the error handlers on ``app``."""

    @app.errorhandler(ValidationError)
    def validation(exc: ValidationError) -> Response:
        return problem(
            exc.status, "Invalid request", exc.detail, kind="validation", field=exc.field,
            errors=[{"field": exc.field, "detail": exc.detail}],
        )

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound) -> Response:
        return problem(404, "Not found", str(exc), kind="not-found", field=exc.field)

    @app.errorhandler(Conflict)
    def conflict(exc: Conflict) -> Response:
        return problem(409, "Conflict", str(exc), kind="conflict", field=exc.field)

    @app.errorhandler(Unauthorized)
    def unauthorized(exc: Unauthorized) -> Response:
        response = problem(401, "Unauthorized", str(exc), kind="unauthorized", field="Authorization")
        response.headers["WWW-Authenticate"] = 'Bearer realm="esp"'
        return response

    @app.errorhandler(Forbidden)
    def forbidden(exc: Forbidden) -> Response:
        return problem(403, "Forbidden", str(exc), kind="forbidden", field=exc.field)

    @app.errorhandler(NoHealthyNode)
    def no_node(exc: NoHealthyNode) -> Response:
        response = problem(503, "No healthy node", str(exc), kind="no-healthy-node")
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(KdfBusy)
    def kdf_busy(exc: KdfBusy) -> Response:
        response = problem(503, "Service Unavailable", str(exc), kind="kdf-busy")
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(RateLimitExceeded)
    def rate_limited(exc: RateLimitExceeded) -> Response:
        response = problem(429, "Too Many Requests", f"rate limit exceeded: {exc.description}", kind="rate-limited",
                           field=breach_field(exc), limit=str(exc.limit.limit))
        response.headers["Retry-After"] = str(retry_after(exc))
        return response

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    @app.errorhandler(StorageError)
    def store_unavailable(exc: Exception) -> Response:
        # Redis away (restarting, crashed, unreachable): nothing can be authenticated, read or enqueued. A 503 the
        # client may retry, not a 500: ESP is not broken, it waits for Redis. A write cut off midway may have got
        # through: its Idempotency-Key, sent again, answers the same task rather than doing it twice.
        log.warning("Redis does not answer on %s %s: %s", request.method, request.path, exc)
        response = problem(503, "Service Unavailable", "ESP's store (Redis) does not answer: retry in a few seconds"
                           " (with the same Idempotency-Key for a write)", kind="store-unavailable")
        response.headers["Retry-After"] = str(REDIS_RETRY_AFTER)
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Response:
        # A multipart body found too large while parsed on a route without an upload allowance.
        return validation(too_large_body(request.max_content_length or 0))

    @app.errorhandler(NodeError)
    def node_error(exc: NodeError) -> Response:
        return problem(502, "Node error", str(exc), kind="node-error", node=exc.node_id)

    @app.errorhandler(EspError)
    def esp_error(exc: EspError) -> Response:
        # Other domain errors (the wallet's, say) carry their own HTTP status and field.
        status = int(getattr(exc, "status", 400))
        title = HTTP_STATUS_CODES.get(status, "Request failed")
        kind = re.sub(r"(?<!^)(?=[A-Z])", "-", type(exc).__name__).lower()
        return problem(status, title, str(exc), kind=kind, field=getattr(exc, "field", None))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        response = problem(code, exc.name, exc.description or exc.name)
        if code == 405 and exc.response is None:
            valid = getattr(exc, "valid_methods", None)
            if valid:
                response.headers["Allow"] = ", ".join(valid)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", "The server failed to handle this request; it has been logged.")
