"""What every request passes before its view: no password in a URL, a bounded body, KDF room, rate limits.

- **No password in a URL.** A ``password`` query parameter (any route, any letter
  case) is refused with a 400 naming ``password`` before anything else runs: query
  strings end up in access logs, proxies and browser history. Passwords go in a
  JSON or form body. (gunicorn's access log also redacts secret-looking query
  values: ``app.access_log``.)
- **A bounded body.** Flask's ``MAX_CONTENT_LENGTH`` is ESP_MAX_BODY_KB. A body
  declared larger, or a chunked one that turns out larger, is a 413 naming
  ``body`` before the view runs. Multipart bodies are bounded when parsed instead
  (the same 413, ``app/errors.py``), so that the project uploads can raise their
  own allowance to ESP_MAX_FILE_MB (``app.projects.upload_form``).
- **No KDF queue past its bound.** A route that runs a password KDF (unlock,
  account creation) is answered 503 with Retry-After at once while this process's
  ``KdfGate`` is full, before any Redis or disk work (the gate itself stays the
  authority, in the keystore): under a flood of retries, cheap refusals are what
  keeps threads and CPU for everything else.
- **Rate limits** (flask-limiter over the ``limits`` library, counters in Redis):
  every caller, keyed by its API key's id (``g.caller.key_id``, set by
  ``app.auth``) or, without a key, by its address, gets ESP_RATE_LIMIT /
  ESP_RATE_LIMIT_ANONYMOUS across all routes except health and metrics (which must
  answer without Redis). Unlocking is limited per account, whoever asks and by
  either route (``POST /api/v1/accounts/<a>/unlock``, the thesis's
  ``/admin/unlock``): ESP_UNLOCK_RATE_LIMIT password checks, and
  ESP_UNLOCK_FAILURE_LIMIT wrong passwords, past which the account cannot be
  unlocked (429 with Retry-After) until the window slides on. Both count only
  requests that reached the password check, so a caller refused for not owning
  the account spends nothing of the owner's budget. Windows are sliding-window
  counters (two counters per key and window: no list of hits is kept).

Redis, owned here::

    esp:limits:LIMITER/<who>/<scope>/<amount>/<multiple>/<unit>   sliding-window counters (written by ``limits``)
"""

from __future__ import annotations

import io
import math
import re
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, Protocol

import redis
from flask import Flask, current_app, g, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded
from limits.errors import StorageError

from app.context import kdf_gate
from errors import ValidationError
from settings import Settings
from wallet.errors import KdfBusy, WrongPassword
from wallet.kdf import KdfGate

KEY_PREFIX = "esp:limits"
STRATEGY = "sliding-window-counter"
#: Liveness, readiness and metrics answer whatever the callers do, and without touching Redis.
EXEMPT_ENDPOINTS = ("health.healthz", "health.readyz", "metrics.metrics")
#: Views that accept many writes in one request: each counts against the rate limit.
BATCH_ENDPOINTS = ("accounts.send_transactions",)
#: The views that check an account's password; the thesis's route calls the same service.
UNLOCK_ENDPOINTS = ("accounts.unlock_account", "thesis.admin_unlock")
#: The views that run a password KDF (scrypt): unlocking, and creating an account's keystore.
KDF_ENDPOINTS = (*UNLOCK_ENDPOINTS, "accounts.create_account", "thesis.admin_new")
UNLOCK_ATTEMPTS_SCOPE = "unlock-attempts"
UNLOCK_FAILURES_SCOPE = "unlock-failures"
#: Query parameters never accepted (compared in lower case).
FORBIDDEN_QUERY_PARAMS = ("password",)

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}", re.ASCII)
_CHECKED = "esp_password_checked"
_WRONG = "esp_wrong_password"


# -- the guards that run first -------------------------------------------------------------------------


def install_guards(app: Flask, settings: Settings) -> None:
    """Refuse passwords in URLs, oversized bodies and KDF work with no room, before any other hook; call first in create_app."""
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_kb * 1024
    app.before_request(refuse_password_in_query)
    app.before_request(refuse_large_body)
    app.before_request(refuse_kdf_when_full)


def refuse_password_in_query() -> None:
    """400 naming ``password`` for any request whose query string carries one (its value is never echoed)."""
    for name in request.args:
        if name.lower() in FORBIDDEN_QUERY_PARAMS:
            raise ValidationError(
                "password", "must not be sent in the query string (URLs are logged): send it in a JSON or form body",
                status=400)


def refuse_large_body() -> None:
    """413 naming ``body`` for a body over MAX_CONTENT_LENGTH, declared or chunked (multipart is bounded when parsed)."""
    if request.mimetype == "multipart/form-data":
        return
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    length = request.content_length
    if length is not None:
        if length > limit:
            raise too_large_body(limit)
    elif request.environ.get("wsgi.input_terminated"):
        # A chunked body: werkzeug would read it up to the limit and silently drop the rest, so a
        # form's fields could arrive cut short. Read it here, one byte past the limit, instead.
        body = request.environ["wsgi.input"].read(limit + 1)
        if len(body) > limit:
            raise too_large_body(limit)
        request.environ["wsgi.input"] = io.BytesIO(body)
        request.environ["CONTENT_LENGTH"] = str(len(body))


def refuse_kdf_when_full() -> None:
    """503 at once for a route that runs a password KDF while this process's gate is full.

    The gate itself refuses in the keystore, but only after the key lookup, the rate
    limits, the ownership check and the keystore file were read: under a flood of
    retries, that work per refusal is what would crowd out the other requests.
    """
    if request.endpoint in KDF_ENDPOINTS:
        gate: KdfGate = kdf_gate()
        if gate.is_full:
            raise KdfBusy(retry_after=gate.retry_after)


def too_large_body(limit: int) -> ValidationError:
    """The 413 for a body over ``limit`` bytes."""
    return ValidationError("body", f"is larger than {limit // 1024} KiB (ESP_MAX_BODY_KB)", status=413)


# -- rate limits ---------------------------------------------------------------------------------------


def install_limits(app: Flask, settings: Settings, client: redis.Redis) -> Limiter:
    """Rate-limit ``app`` with counters in ``client``'s Redis.

    Call last in create_app: the per-caller limit runs as a before-request hook and
    reads ``g.caller``, which the authentication hook registered before it sets.
    """
    # The API's own connection pool: no second set of connections, the same timeouts (limits' RedisStorage takes
    # it, though flask-limiter's annotation of storage_options says only str and int values).
    storage: dict[str, Any] = {"connection_pool": client.connection_pool, "key_prefix": KEY_PREFIX}
    limiter = Limiter(
        key_func=caller_key,
        application_limits=[ApplicationLimit(limit_provider=lambda: settings.rate_limit if _caller() else settings.rate_limit_anonymous,
                                             cost=lambda: request_cost(settings.max_submit_batch))],
        strategy=STRATEGY,
        storage_uri=settings.redis_url,
        storage_options=storage,
        key_prefix="",
        headers_enabled=False,  # Retry-After goes on the 429 only (app/errors.py), not on every answer
        # No in-memory fallback: flask-limiter takes any error inside a check for a storage outage and would
        # switch to per-process counters; without Redis the API cannot authenticate or enqueue anyway.
        in_memory_fallback_enabled=False,
    )
    missing = [endpoint for endpoint in (*EXEMPT_ENDPOINTS, *KDF_ENDPOINTS, *BATCH_ENDPOINTS) if endpoint not in app.view_functions]
    if missing:
        raise LookupError(f"guards name views the app does not have: {', '.join(missing)}")
    limiter.init_app(app)
    app.extensions["esp.limiter"] = limiter
    for endpoint in EXEMPT_ENDPOINTS:
        limiter.exempt(app.view_functions[endpoint])
    attempts = limiter.shared_limit(
        lambda: settings.unlock_rate_limit, UNLOCK_ATTEMPTS_SCOPE, key_func=unlock_account_key,
        deduct_when=lambda _: bool(g.get(_CHECKED)), override_defaults=False,
        error_message=lambda: f"too many unlock attempts for this account (at most {settings.unlock_rate_limit})")
    failures = limiter.shared_limit(
        lambda: settings.unlock_failure_limit, UNLOCK_FAILURES_SCOPE, key_func=unlock_account_key,
        deduct_when=lambda _: bool(g.get(_WRONG)), override_defaults=False,
        error_message=lambda: (f"too many wrong passwords for this account (at most {settings.unlock_failure_limit}):"
                               " it cannot be unlocked until the window slides on"))
    for endpoint in UNLOCK_ENDPOINTS:
        app.view_functions[endpoint] = attempts(failures(_noting_password_checks(app.view_functions[endpoint])))
    return limiter


def request_cost(limit: int) -> int:
    """What a request costs against the rate limit: a batch of transfers one per transfer (at most ``limit``), any
    other request 1. A malformed batch costs 1: its view refuses it before anything is enqueued."""
    if request.endpoint not in BATCH_ENDPOINTS or not request.is_json:
        return 1
    body = request.get_json(silent=True)
    items = body.get("transactions") if isinstance(body, dict) else None
    return min(len(items), limit) if isinstance(items, list) and items else 1


def caller_key() -> str:
    """Who a limit counts against: the API key's id when the request carries one, else the client's address."""
    caller = _caller()
    if caller is not None:
        return f"key:{caller.key_id}"
    return f"address:{request.remote_addr or 'unknown'}"


def unlock_account_key() -> str:
    """The account an unlock is for: the path's address, or the thesis's ``address`` (query, form, then JSON wins)."""
    raw = (request.view_args or {}).get("addr")
    if raw is None:
        body = request.get_json(silent=True) if request.is_json else None  # malformed or too deep: None
        raw = body.get("address") if isinstance(body, dict) and "address" in body else None
        if raw is None:
            # A malformed form raises here, naming its field, as the view would have (the body is read once).
            raw = request.form.get("address") or request.args.get("address")
    # A malformed address is refused by the view (422); one shared bucket keeps junk out of Redis.
    return "account:" + (raw.lower() if isinstance(raw, str) and _ADDRESS.fullmatch(raw) else "malformed")


def _noting_password_checks(view: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an unlock view: record whether the password was checked and whether it was wrong, for the deductions."""

    @wraps(view)
    def noting(*args: Any, **kwargs: Any) -> Any:
        try:
            response = view(*args, **kwargs)
        except WrongPassword:
            g.setdefault(_CHECKED, True)
            g.setdefault(_WRONG, True)
            raise
        g.setdefault(_CHECKED, True)  # an unlock view returns only once the password opened the keystore
        return response

    return noting


class _Caller(Protocol):
    key_id: str


def _caller() -> _Caller | None:
    """The authenticated caller (``g.caller``, set by app.auth), or None."""
    return getattr(g, "caller", None)


def breach_field(exc: RateLimitExceeded) -> str | None:
    """The field a 429 names: ``address`` for an account's unlock limits, none for a caller's."""
    return "address" if exc.limit.scope in (UNLOCK_ATTEMPTS_SCOPE, UNLOCK_FAILURES_SCOPE) else None


def retry_after(exc: RateLimitExceeded) -> int:
    """Whole seconds until the breached limit admits a request again (its window when Redis cannot say)."""
    limiter: Limiter = current_app.extensions["esp.limiter"]
    breached = limiter.current_limit
    try:
        if breached is not None and breached.breached:
            return max(1, math.ceil(breached.window.reset_time - time.time()))
    except (redis.RedisError, StorageError):
        pass
    return max(1, int(exc.limit.limit.get_expiry()))

