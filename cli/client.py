"""The ESP API as the command line reaches it: where it is, which key to send, and errors as one line.

Configuration (read from the environment, and from the checkout's ``.env`` that ``make up`` writes):

    ESP_API_URL    the API's base URL; default http://127.0.0.1:$ESP_API_PORT (8000)
    ESP_API_KEY    the API key to send; when unset, ESP_ADMIN_KEY; set but empty, none
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from settings import Settings, stack_environment

#: Seconds any one request may take (long operations are followed by polling, not by one slow request).
TIMEOUT = 15.0
#: Exit codes: an API refusal of the input (400, 422) is a usage error, like the command line's own.
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class CliError(Exception):
    """Something the operator must read: printed as one line on stderr, then exit with ``code``."""

    def __init__(self, message: str, *, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class ApiError(CliError):
    """The API answered with an error (an RFC 9457 problem when it is ESP's)."""

    def __init__(self, status: int, detail: str, *, field: str | None = None) -> None:
        where = f", field {field}" if field else ""
        hint = "; set ESP_API_KEY (an admin key for operator commands)" if status in (401, 403) else ""
        super().__init__(f"{detail} (HTTP {status}{where}){hint}", code=EXIT_BAD_INPUT if status in (400, 422) else EXIT_FAILED)
        self.status = status
        self.field = field

    @classmethod
    def of(cls, response: requests.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "detail" in body:
            return cls(response.status_code, str(body["detail"]), field=body.get("field"))
        return cls(response.status_code, response.reason or "request failed")


@dataclass(frozen=True)
class Config:
    """Where the API is and the key to send (empty: none)."""

    url: str
    key: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """From ``environ`` (default: ours over the checkout's ``.env``)."""
        env = stack_environment() if environ is None else environ
        port = env.get("ESP_API_PORT") or str(Settings.api_port)
        url = env.get("ESP_API_URL") or f"http://127.0.0.1:{port}"
        key = env["ESP_API_KEY"] if "ESP_API_KEY" in env else env.get("ESP_ADMIN_KEY", "")
        return cls(url=url.rstrip("/"), key=key)


class ApiClient:
    """JSON over HTTP to one ESP API, with the configured key."""

    def __init__(self, config: Config, *, timeout: float = TIMEOUT) -> None:
        self.config = config
        self.timeout = timeout
        self.session = requests.Session()
        if config.key:
            self.session.headers["Authorization"] = f"Bearer {config.key}"

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=dict(body) if body is not None else None)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(self, method: str, path: str, *, accept: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """The JSON body of a 2xx answer (or of a status in ``accept``); ApiError or CliError otherwise."""
        response = self.raw(method, path, **kwargs)
        if response.status_code >= 400 and response.status_code not in accept:
            raise ApiError.of(response)
        try:
            return response.json()
        except ValueError:
            raise CliError(f"{self.config.url}{path} did not answer JSON (is ESP_API_URL an ESP API?)") from None

    def raw(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The response, whatever its status; CliError when the API cannot be reached."""
        try:
            return self.session.request(method, self.config.url + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise CliError(f"cannot reach the API at {self.config.url}: is it running? (set ESP_API_URL)") from None
        except requests.Timeout:
            raise CliError(f"the API at {self.config.url} did not answer within {self.timeout:g} s") from None

    def close(self) -> None:
        self.session.close()
