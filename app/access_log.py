"""gunicorn's logger for ESP's API: no secret reaches the access log or the error log.

The API refuses a ``password`` in a query string (``app.guards``), but by then
gunicorn has the request line, and it logs it after the answer: the access log
line (``"GET /admin/unlock?address=…&password=… HTTP/1.1"``, the referer) and,
when a request fails inside gunicorn, the error log's "Error handling request
<uri>". ``RedactingLogger`` (``logger_class`` in ``gunicorn.conf.py``) replaces
the value of every secret-looking query parameter in every line either log
writes - password, token, secret, key, auth, … compared by the decoded name, in
any letter case - with ``[REDACTED]``, and blanks credential headers
(Authorization, Cookie, …) should a log format ask for them.

A hand-written filter rather than a library: gunicorn has no redaction hook, and
the logging libraries that redact (structlog processors, for one) would mean
replacing gunicorn's logger altogether for one regular expression.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote_plus

from gunicorn import glogging
from gunicorn.config import Config

REDACTED = "[REDACTED]"
#: Parts of a parameter name that mark its value as secret (lower case, decoded).
SECRET_NAME_PARTS = ("pass", "pwd", "secret", "token", "key", "auth", "credential", "signature", "session", "cookie")
#: Request headers that carry credentials; gunicorn offers them as ``{name}i`` atoms (and ``{http_name}e``).
SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "x-api-key")

# name=value after a URL's "?" or "&" (or a space or quote, for a bare query string); the value runs to
# the next "&" or whitespace, leaving a closing quote of the log format in place.
_PARAM = re.compile(r"""(?P<lead>^|[?&\s"'])(?P<name>[^=&?\s"']+)=(?P<value>[^&\s]*?)(?=["']?(?:[&\s]|$))""")
_SECRET_ATOMS = frozenset({f"{{{h}}}i" for h in SECRET_HEADERS} | {f"{{http_{h.replace('-', '_')}}}e" for h in SECRET_HEADERS})


def is_secret_name(name: str) -> bool:
    """True when a query parameter called ``name`` (raw, perhaps percent-encoded) may carry a secret."""
    decoded = unquote_plus(name).lower()
    return any(part in decoded for part in SECRET_NAME_PARTS)


def redact(text: str) -> str:
    """``text`` with the value of every secret-looking ``name=value`` query parameter replaced by [REDACTED]."""

    def replace(match: re.Match[str]) -> str:
        if not is_secret_name(match["name"]):
            return match[0]
        return f"{match['lead']}{match['name']}={REDACTED}"

    return _PARAM.sub(replace, text)


class RedactQuery(logging.Filter):
    """Rewrites each record's message (and traceback text) with ``redact`` before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class RedactingLogger(glogging.Logger):
    """gunicorn's logger with secret query values and credential headers redacted in both logs."""

    def setup(self, cfg: Config) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            if not any(isinstance(f, RedactQuery) for f in log.filters):  # setup runs again on reload
                log.addFilter(RedactQuery())

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for name in _SECRET_ATOMS & atoms.keys():
            atoms[name] = REDACTED
        return atoms
