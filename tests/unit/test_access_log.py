"""gunicorn's logger redacts secret query values and credential headers (no server: gunicorn's own Logger class)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from app.access_log import REDACTED, RedactingLogger, redact


@pytest.mark.parametrize(("line", "expected"), [
    ('"GET /admin/unlock?address=0xab&password=hunter2 HTTP/1.1"', f'"GET /admin/unlock?address=0xab&password={REDACTED} HTTP/1.1"'),
    ("/x?PASSWORD=a;b&wait=1", f"/x?PASSWORD={REDACTED}&wait=1"),  # ';' does not end a value: it would leak 'b'
    ("/x?pass%77ord=hunter2", f"/x?pass%77ord={REDACTED}"),  # names compared decoded
    ('"http://h/p?token=t0k&a=1"', f'"http://h/p?token={REDACTED}&a=1"'),  # a referer keeps its closing quote
    ("address=1&api_key=k&secret=s", f"address=1&api_key={REDACTED}&secret={REDACTED}"),  # a bare query string
    ("/api/v1/events?account=0xab&type=bought&cursor=5", "/api/v1/events?account=0xab&type=bought&cursor=5"),
    ("/token/balance?address=0xab", "/token/balance?address=0xab"),  # a path named token is no parameter
])
def test_redact(line: str, expected: str) -> None:
    assert redact(line) == expected


@pytest.fixture
def make_logger(tmp_path: Path) -> Iterator[Callable[..., tuple[RedactingLogger, Path, Path]]]:
    """gunicorn's loggers are process-wide: close their files and take the filters off after each test."""
    made: list[RedactingLogger] = []

    def make(access_format: str | None = None) -> tuple[RedactingLogger, Path, Path]:
        cfg = Config()
        access, errors = tmp_path / "access.log", tmp_path / "error.log"
        cfg.set("accesslog", str(access))
        cfg.set("errorlog", str(errors))
        if access_format:
            cfg.set("access_log_format", access_format)
        made.append(RedactingLogger(cfg))
        return made[-1], access, errors

    yield make
    for logger in made:
        for log in (logger.error_log, logger.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
                handler.close()
            for f in list(log.filters):
                log.removeFilter(f)


def _log_request(logger: RedactingLogger, uri: str, headers: list[tuple[str, str]]) -> None:
    path, _, query = uri.partition("?")
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": uri, "PATH_INFO": path, "QUERY_STRING": query,
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
               **{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers}}
    response = SimpleNamespace(status="400 BAD REQUEST", headers=[], sent=10)
    logger.access(response, SimpleNamespace(headers=headers), environ, dt.timedelta(milliseconds=3))


def test_access_and_error_logs_never_hold_the_secret(make_logger) -> None:
    logger, access, errors = make_logger()
    _log_request(logger, "/admin/unlock?address=0xab&password=hunter2", [("Referer", "http://x/?password=hunter2")])
    logger.error("Error handling request %s", "/admin/unlock?password=hunter2")
    for handler in logger.error_log.handlers + logger.access_log.handlers:
        handler.flush()
    text = access.read_text() + errors.read_text()
    assert "hunter2" not in text
    assert f"password={REDACTED}" in access.read_text() and f"password={REDACTED}" in errors.read_text()


def test_credential_headers_are_blanked_when_a_format_asks_for_them(make_logger) -> None:
    logger, access, _ = make_logger("%(r)s %({authorization}i)s %({http_cookie}e)s")
    _log_request(logger, "/api/v1/accounts", [("Authorization", "Bearer esp_abc_s3cr3t"), ("Cookie", "session=c00kie")])
    for handler in logger.access_log.handlers:
        handler.flush()
    text = access.read_text()
    assert "s3cr3t" not in text and "c00kie" not in text
    assert text.count(REDACTED) == 2
