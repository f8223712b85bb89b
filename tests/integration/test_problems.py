"""app/errors.py: every error a view raises becomes the right RFC 9457 problem.

The app is the real one (``create_app(settings)``: its error handlers, guards and
limits, counting in the session's Redis); a throwaway blueprint registered on it
by each test raises the error under test from a view.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from werkzeug.exceptions import Gone

from app.errors import PROBLEM_TYPE
from errors import (
    Conflict,
    EspError,
    Forbidden,
    NodeError,
    NodeUnreachable,
    NoHealthyNode,
    NotFound,
    RpcError,
    Unauthorized,
    ValidationError,
)
from wallet.errors import AccountLocked, KdfBusy, WrongPassword

ADDRESS = "0x000000000000000000000000000000000000dEaD"
PATH = "/throwaway/raise"


class QuotaExhausted(EspError):
    """A domain error of some other layer, carrying its own HTTP status and field (as the wallet's do)."""

    status = 429
    field = "quota"


class PlainEspError(EspError):
    """A domain error with no status of its own."""


def mount(app: Flask, exc: BaseException) -> None:
    """Register a blueprint whose one view (GET only) raises ``exc``."""
    bp = Blueprint("throwaway", __name__, url_prefix="/throwaway")

    @bp.get("/raise")
    def raise_it() -> Any:
        raise exc

    app.register_blueprint(bp)


def problem_of(response: Any, status: int) -> dict[str, Any]:
    """The problem body, checked for what every problem has."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status and body["title"] and isinstance(body["detail"], str)
    return body


def kind(name: str) -> str:
    return PROBLEM_TYPE.format(name)


@pytest.mark.parametrize(
    ("exc", "status", "expected"),
    [
        pytest.param(ValidationError("amount", "must be positive"), 422,
                     {"type": kind("validation"), "title": "Invalid request", "detail": "must be positive", "field": "amount",
                      "errors": [{"field": "amount", "detail": "must be positive"}]}, id="validation"),
        pytest.param(ValidationError("cursor", "is not one of ours", status=400), 400,
                     {"type": kind("validation"), "field": "cursor"}, id="validation-400"),
        pytest.param(NotFound("no task 'x'", field="task_id"), 404,
                     {"type": kind("not-found"), "title": "Not found", "detail": "no task 'x'", "field": "task_id"}, id="not-found"),
        pytest.param(NotFound("no such block"), 404, {"type": kind("not-found"), "detail": "no such block"}, id="not-found-no-field"),
        pytest.param(Conflict("this Idempotency-Key was used for a different request", field="Idempotency-Key"), 409,
                     {"type": kind("conflict"), "title": "Conflict", "field": "Idempotency-Key"}, id="conflict"),
        pytest.param(Forbidden("not your account", field="from"), 403,
                     {"type": kind("forbidden"), "title": "Forbidden", "detail": "not your account", "field": "from"},
                     id="forbidden"),
        pytest.param(NodeError("node-2 refused the restart", node_id="node-2"), 502,
                     {"type": kind("node-error"), "title": "Node error", "node": "node-2"}, id="node-error"),
        pytest.param(NodeUnreachable("no answer within 5 s", node_id="node-1"), 502,
                     {"type": kind("node-error"), "node": "node-1"}, id="node-unreachable"),
        pytest.param(RpcError(-32000, "execution reverted", node_id="node-0"), 502,
                     {"type": kind("node-error"), "detail": "execution reverted (code -32000)", "node": "node-0"}, id="rpc-error"),
        pytest.param(AccountLocked(ADDRESS), 423,
                     {"type": kind("account-locked"), "title": "Locked", "detail": f"account {ADDRESS} is locked: unlock it first"},
                     id="esp-error-with-status"),
        pytest.param(WrongPassword(ADDRESS), 403, {"type": kind("wrong-password"), "title": "Forbidden", "field": "password"},
                     id="esp-error-with-status-and-field"),
        pytest.param(QuotaExhausted("no quota left"), 429,
                     {"type": kind("quota-exhausted"), "title": "Too Many Requests", "detail": "no quota left", "field": "quota"},
                     id="another-layers-error"),
        pytest.param(PlainEspError("something the caller asked cannot be done"), 400,
                     {"type": kind("plain-esp-error"), "title": "Bad Request"}, id="esp-error-without-status"),
    ],
)
def test_a_domain_error_is_its_problem(app: Flask, client: FlaskClient, exc: Exception, status: int,
                                       expected: dict[str, Any]) -> None:
    mount(app, exc)
    body = problem_of(client.get(PATH), status)
    assert body["instance"] == PATH
    assert {name: body.get(name) for name in expected} == expected
    if "field" not in expected:
        assert "field" not in body  # no empty field is named


def test_unauthorized_names_the_header_and_says_how_to_authenticate(app: Flask, client: FlaskClient) -> None:
    mount(app, Unauthorized("this needs an API key"))
    response = client.get(PATH)
    body = problem_of(response, 401)
    assert (body["type"], body["field"], body["detail"]) == (kind("unauthorized"), "Authorization", "this needs an API key")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="esp"'
    # The same from the real authentication hook, for a header it cannot read.
    refused = client.get("/healthz", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert problem_of(refused, 401)["field"] == "Authorization" and refused.headers["WWW-Authenticate"] == 'Bearer realm="esp"'


@pytest.mark.parametrize(
    ("exc", "retry_after", "type_"),
    [
        pytest.param(NoHealthyNode("no node may take call work now"), "1", kind("no-healthy-node"), id="no-healthy-node"),
        pytest.param(KdfBusy(retry_after=3), "3", kind("kdf-busy"), id="kdf-busy"),
    ],
)
def test_unavailable_says_when_to_retry(app: Flask, client: FlaskClient, exc: Exception, retry_after: str, type_: str) -> None:
    mount(app, exc)
    response = client.get(PATH)
    body = problem_of(response, 503)
    assert body["type"] == type_ and body["detail"] == str(exc)
    assert response.headers["Retry-After"] == retry_after


def test_a_method_the_route_does_not_take_is_a_405_naming_the_allowed_ones(app: Flask, client: FlaskClient) -> None:
    mount(app, RuntimeError("never reached"))
    response = client.post(PATH)
    body = problem_of(response, 405)
    assert (body["type"], body["title"]) == ("about:blank", "Method Not Allowed")
    assert {m.strip() for m in response.headers["Allow"].split(",")} == {"GET", "HEAD", "OPTIONS"}


def test_http_errors_keep_their_code(app: Flask, client: FlaskClient) -> None:
    mount(app, Gone("this project was withdrawn"))
    body = problem_of(client.get(PATH), 410)
    assert (body["type"], body["title"], body["detail"]) == ("about:blank", "Gone", "this project was withdrawn")
    unknown = problem_of(client.get("/throwaway/no-such-route"), 404)
    assert (unknown["type"], unknown["title"], unknown["instance"]) == ("about:blank", "Not Found", "/throwaway/no-such-route")


def test_an_unexpected_error_is_a_500_that_shows_nothing_of_it_and_is_logged(
        app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    leak = "db password hunter2 at /srv/esp/settings.py line 42"
    mount(app, RuntimeError(leak))
    with caplog.at_level(logging.ERROR, logger="app.errors"):
        response = client.get(PATH)
    body = problem_of(response, 500)
    assert (body["type"], body["title"]) == ("about:blank", "Internal Server Error")
    text = response.get_data(as_text=True)
    assert leak not in text and "RuntimeError" not in text and "Traceback" not in text
    logged = [r for r in caplog.records if r.name == "app.errors"]
    assert logged and logged[0].exc_info is not None and logged[0].exc_info[1] is not None
    assert str(logged[0].exc_info[1]) == leak  # the details go to the log, with the traceback
