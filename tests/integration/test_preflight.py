"""Bad configuration stops the stack at start with one clear line, not a traceback wall."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading

import pytest

from settings import ROOT
from tests.conftest import DB_FOUNDATION, child_env, redis_url


def run_module(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=child_env(**env), capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def html_server():
    """A loopback HTTP server that answers HTML: a URL that is not JSON-RPC."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b"<html>not an ethereum node</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {result.stderr}"
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unreachable_redis(tmp_path):
    result = run_module("scripts.preflight", ESP_REDIS_URL="redis://127.0.0.1:1/0", ESP_RUN_DIR=str(tmp_path))
    assert_one_clear_line(result, "Redis at redis://127.0.0.1:1/0 does not answer", "ESP_REDIS_URL")


def test_node_url_that_is_not_json_rpc(tmp_path, html_server):
    result = run_module("scripts.preflight", ESP_REDIS_URL=redis_url(DB_FOUNDATION), ESP_RUN_DIR=str(tmp_path),
                        ESP_NODE_BACKEND="static", ESP_NODE_URLS=html_server)
    assert_one_clear_line(result, "ESP_NODE_URLS", html_server, "not a working Ethereum JSON-RPC endpoint")


@pytest.mark.parametrize("variable", ["ESP_API_PORT", "ESP_RPC_PORT"])
def test_a_port_in_use(tmp_path, variable):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_module("scripts.preflight", ESP_REDIS_URL=redis_url(DB_FOUNDATION), ESP_RUN_DIR=str(tmp_path),
                            **{variable: str(port)})
    assert_one_clear_line(result, f"port {port}", variable)


def test_anvil_missing(tmp_path):
    result = run_module("scripts.preflight", ESP_REDIS_URL=redis_url(DB_FOUNDATION), ESP_RUN_DIR=str(tmp_path),
                        ESP_ANVIL_BIN=str(tmp_path / "nowhere" / "anvil"))
    assert_one_clear_line(result, "ESP_ANVIL_BIN", "does not exist")


def test_invalid_value(tmp_path):
    result = run_module("nodes", ESP_NODE_COUNT="many", ESP_RUN_DIR=str(tmp_path))
    assert_one_clear_line(result, "ESP_NODE_COUNT='many' is not a valid int")


def test_node_manager_names_a_bad_node_url(tmp_path, html_server):
    result = run_module("nodes", ESP_REDIS_URL=redis_url(DB_FOUNDATION), ESP_RUN_DIR=str(tmp_path),
                        ESP_NODE_BACKEND="static", ESP_NODE_URLS=html_server)
    assert_one_clear_line(result, html_server)
