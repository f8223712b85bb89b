"""The API as deployed: gunicorn started from the Procfile's ``api`` line, on a free port, against a real stack.

- With the DEFAULT scrypt cost (N=2^18, geth's standard: 256 MiB, ~0.47 s) and 20 clients each
  keeping a wrong-password unlock in flight (``tests/security/flood.py``: re-sent as
  soon as it is answered, after the Retry-After of a 503), ``GET /healthz`` answers
  every time and never waits behind a KDF (each probe takes less than one wrong
  unlock took, measured in the same run; the figures, ~10 ms p50 and tens of ms
  at worst here, are printed): each process runs ESP_KDF_CONCURRENCY KDFs on
  low-priority threads, queues ESP_KDF_QUEUE and refuses the rest at once (503), so
  request threads and CPU stay free. The rate limits are raised here: they would
  otherwise refuse the guesses (429) before a single KDF, which is not what this
  test is about. (Clients that ignore Retry-After make a request flood, which the
  per-caller limits answer; that is measured, not asserted.)
- A password in a query string is refused, and no log file of the stack (gunicorn's
  access and error log, the workers', beat's) holds it or any secret-looking query value.
- A chunked body over the limit is a 413 naming ``body``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from nodes.process import free_port
from settings import ROOT
from tests.conftest import DB_LIMITS, child_env, stop_process
from tests.stack import LocalStack
from tests.waiting import wait_for
from wallet.kdf import DEFAULT_SCRYPT_N

ADMIN_KEY = "security-server-admin-key-0123"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
UNLIMITED = "1000000 per minute"
IN_FLIGHT = 20
PROBE_SECONDS = 10


def procfile_command(process: str) -> str:
    """The command of ``process`` in the Procfile, as honcho runs it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            return command.strip()
    raise AssertionError(f"no {process!r} line in the Procfile")


class Server:
    """gunicorn as the Procfile starts it, with the stack's settings."""

    def __init__(self, stack: LocalStack) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = stack.tmp / "api.log"
        env = child_env(**stack.env, ESP_API_HOST="127.0.0.1", ESP_API_PORT=str(self.port))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["bash", "-c", "exec " + procfile_command("api")], cwd=ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                return requests.get(self.base + "/readyz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False  # not listening yet

        wait_for(ready, 60, lambda: "gunicorn to become ready:\n" + self.log_path.read_text()[-3000:], interval=0.1)

    def close(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack(tmp_path_factory.mktemp("server"), DB_LIMITS, name="server", ESP_ADMIN_KEY=ADMIN_KEY,
                   ESP_KEYSTORE_SCRYPT_N=str(DEFAULT_SCRYPT_N), ESP_RATE_LIMIT=UNLIMITED, ESP_RATE_LIMIT_ANONYMOUS=UNLIMITED,
                   ESP_UNLOCK_RATE_LIMIT=UNLIMITED, ESP_UNLOCK_FAILURE_LIMIT=UNLIMITED)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def server(stack: LocalStack) -> Iterator[Server]:
    s = Server(stack)
    try:
        yield s
    finally:
        s.close()


def new_account(server: Server) -> str:
    response = requests.post(server.base + "/api/v1/accounts", json={"password": "the right passphrase"}, headers=AUTH, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["params"]["address"])


def probe_health(server: Server, seconds: float) -> list[float]:
    """Seconds each GET /healthz took, probing every 20 ms for ``seconds``."""
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        response = requests.get(server.base + "/healthz", timeout=5)  # a new connection each time, as a prober's
        latencies.append(time.perf_counter() - t0)
        assert response.status_code == 200
        time.sleep(0.02)  # the probing interval, not a wait for a condition
    return latencies


def wrong_unlock_seconds(server: Server, account: str) -> float:
    """How long one wrong unlock takes on an idle server: one KDF, the yardstick of waiting behind one."""
    t0 = time.perf_counter()
    response = requests.post(f"{server.base}/api/v1/accounts/{account}/unlock", json={"password": "a wrong guess"},
                             headers=AUTH, timeout=30)
    assert response.status_code == 403, response.text
    return time.perf_counter() - t0


def test_health_never_waits_behind_a_kdf_while_20_wrong_unlocks_are_in_flight(stack: LocalStack, server: Server) -> None:
    settings = stack.settings
    assert settings.keystore_scrypt_n == DEFAULT_SCRYPT_N
    account = new_account(server)
    kdf_s = wrong_unlock_seconds(server, account)
    idle = probe_health(server, PROBE_SECONDS / 2)
    with subprocess.Popen(
            [sys.executable, "-m", "tests.security.flood", f"{server.base}/api/v1/accounts/{account}/unlock", ADMIN_KEY,
             str(IN_FLIGHT)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True) as flood:
        assert flood.stdout is not None and flood.stdin is not None
        try:
            assert flood.stdout.readline().strip() == "checked"  # a wrong password was checked: KDFs are under way
            latencies = probe_health(server, PROBE_SECONDS)
            flood.stdin.close()
            statuses = {int(k): v for k, v in json.loads(flood.stdout.read().splitlines()[-1]).items()}
        finally:
            stop_process(flood)  # type: ignore[arg-type]
    print(f"\n/healthz during {IN_FLIGHT} wrong unlocks in flight (scrypt N={settings.keystore_scrypt_n},"
          f" ESP_KDF_CONCURRENCY={settings.kdf_concurrency}, ESP_KDF_QUEUE={settings.kdf_queue},"
          f" {settings.api_workers} threads x 2 processes): {len(latencies)} probes in {PROBE_SECONDS} s,"
          f" p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {statistics.quantiles(latencies, n=100)[98] * 1000:.1f} ms,"
          f" max {max(latencies) * 1000:.1f} ms; unlock answers {statuses}; before the load: p50"
          f" {statistics.median(idle) * 1000:.1f} ms, max {max(idle) * 1000:.1f} ms; one wrong unlock alone: {kdf_s * 1000:.0f} ms")
    assert statuses.get(403, 0) >= 10, f"too few password checks ran to load the server: {statuses}"
    assert statuses.get(503, 0) > 0, f"the KDF gate never refused: {statuses}"
    assert set(statuses) <= {403, 503}, statuses
    # A probe queued behind a KDF would take at least as long as one (CI's load slows both alike).
    assert max(latencies) < kdf_s, f"/healthz took {max(latencies) * 1000:.0f} ms, one KDF {kdf_s * 1000:.0f} ms"


def test_a_refused_unlock_says_when_to_retry(server: Server) -> None:
    account = new_account(server)
    url = f"{server.base}/api/v1/accounts/{account}/unlock"
    refused: list[requests.Response] = []

    def one() -> None:
        response = requests.post(url, json={"password": "a wrong guess"}, headers=AUTH, timeout=30)
        if response.status_code == 503:
            refused.append(response)

    burst = [threading.Thread(target=one) for _ in range(IN_FLIGHT)]
    for t in burst:
        t.start()
    for t in burst:
        t.join(60)
    assert refused, "20 unlocks at once were all admitted"
    body = refused[0].json()
    assert refused[0].headers["Content-Type"] == "application/problem+json"
    assert body["type"].endswith("/kdf-busy") and body["status"] == 503
    assert int(refused[0].headers["Retry-After"]) >= 1


def test_no_secret_reaches_any_log(stack: LocalStack, server: Server) -> None:
    secret = f"secret-value-{uuid.uuid4().hex}"
    account = new_account(server)
    in_url = requests.get(f"{server.base}/api/v1/chain/gas-price?password={secret}", timeout=10)
    assert in_url.status_code == 400 and in_url.json()["field"] == "password"
    thesis = requests.post(f"{server.base}/admin/unlock?address={account}&password={secret}", headers=AUTH, timeout=10)
    assert thesis.status_code == 400 and thesis.json()["data"]["field"] == "password"
    # Other secret-looking query values are not refused, but not logged either; nor a referer's.
    other = requests.get(f"{server.base}/api/v1/chain/gas-price?token={secret}", headers={"Referer": f"http://x/?password={secret}"},
                         timeout=10)
    assert other.status_code == 200
    for response in (in_url, thesis, other):
        assert secret not in response.text

    # gunicorn logs a request after answering it.
    wait_for(lambda: server.log_path.read_text().count("[REDACTED]") >= 4, 10, "gunicorn to log the 4 redacted values")
    access = server.log_path.read_text()
    assert "password=[REDACTED] HTTP/1.1" in access and "token=[REDACTED] HTTP/1.1" in access, access[-2000:]
    leaked = [str(p) for p in Path(stack.tmp).rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaked, f"the secret is in {leaked}"


def test_an_oversized_chunked_body_is_a_413_naming_body(stack: LocalStack, server: Server) -> None:
    limit = stack.settings.max_body_kb * 1024

    def chunks() -> Iterator[bytes]:
        yield b'{"password": "'
        for _ in range(limit // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    response = requests.post(server.base + "/api/v1/accounts", data=chunks(), timeout=30,
                             headers={"Content-Type": "application/json", **AUTH})
    assert response.status_code == 413, response.text
    assert response.json()["field"] == "body"
    # A chunked body under the limit is read whole, as before.
    account = new_account(server)
    small = requests.post(f"{server.base}/api/v1/accounts/{account}/unlock", timeout=30, headers={"Content-Type": "application/json", **AUTH},
                          data=iter([b'{"password": "the right ', b'passphrase", "seconds": 5}']))
    assert small.status_code == 200, small.text
