"""Pure parts of the operators' tooling: the CLI's configuration and problem lines, static-node input checks."""

from __future__ import annotations

import pytest

from cli.client import EXIT_BAD_INPUT, EXIT_FAILED, ApiError, Config
from errors import ValidationError
from services.static_nodes import check_node_id, check_node_url

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@pytest.mark.parametrize(("env", "url", "key"), [
    ({}, "http://127.0.0.1:8000", ""),
    ({"ESP_API_PORT": "9000", "ESP_ADMIN_KEY": "adm"}, "http://127.0.0.1:9000", "adm"),
    ({"ESP_API_URL": "http://10.0.0.5:8000/", "ESP_API_KEY": "k", "ESP_ADMIN_KEY": "adm"}, "http://10.0.0.5:8000", "k"),
    ({"ESP_API_KEY": "", "ESP_ADMIN_KEY": "adm"}, "http://127.0.0.1:8000", ""),  # set but empty: no key
])
def test_config_from_env(env, url, key):
    assert Config.from_env(env) == Config(url=url, key=key)


@pytest.mark.parametrize(("status", "field", "code", "text"), [
    (422, "url", EXIT_BAD_INPUT, "bad (HTTP 422, field url)"),
    (400, None, EXIT_BAD_INPUT, "bad (HTTP 400)"),
    (401, "Authorization", EXIT_FAILED, "bad (HTTP 401, field Authorization); set ESP_API_KEY"),
    (409, "node_id", EXIT_FAILED, "bad (HTTP 409, field node_id)"),
])
def test_problem_lines(status, field, code, text):
    error = ApiError(status, "bad", field=field)
    assert error.code == code and str(error).startswith(text)


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
    ("https://localhost:8545/rpc/", "https://localhost:8545/rpc"),
    ("http://[::1]:8545", "http://[::1]:8545"),
    ("HTTP://LOCALHOST:1", "HTTP://LOCALHOST:1"),
])
def test_node_urls_accepted(url, expected):
    assert check_node_url(url, LOOPBACK) == expected


@pytest.mark.parametrize(("url", "says"), [
    ("not a url", "http(s) URL"),
    ("ftp://127.0.0.1:21", "http:// or https://"),
    ("http://10.1.2.3:8545", "ESP_STATIC_NODE_HOSTS"),
    ("http://user:pw@127.0.0.1:8545", "credentials"),
    ("http://127.0.0.1:99999", "not a valid URL"),
    ("http://127.0.0.1:0", "port 0"),
    ("http://127.0.0.1.evil.example:8545", "ESP_STATIC_NODE_HOSTS"),
    (8545, "http(s) URL"),
    ("http://127.0.0.1:8545/" + "x" * 600, "at most"),
])
def test_node_urls_refused_naming_the_field(url, says):
    with pytest.raises(ValidationError) as refused:
        check_node_url(url, LOOPBACK)
    assert refused.value.field == "url" and says in refused.value.detail


@pytest.mark.parametrize("node_id", ["", "-x", "a" * 33, "node 1", "ü", None, 7])
def test_node_ids_refused(node_id):
    with pytest.raises(ValidationError):
        check_node_id(node_id)


def test_node_id_accepted():
    assert check_node_id("ext-1.a_b") == "ext-1.a_b"
