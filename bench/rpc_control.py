"""The read path's control for ``bench.rpc``: a thesis-style Flask + web3.py app calling ONE node per request.

No gateway, no balancer, no cache, no Redis: each request makes one web3.py call to the
node on the request thread and answers its result as JSON. ``ControlServer`` runs it under
gunicorn on a free loopback port (the factory takes the node and the token as arguments,
so nothing is read from the environment)::

    .venv/bin/python -m gunicorn -k gthread -w 2 --threads 16 \\
        'bench.rpc_control:create_app("http://127.0.0.1:8545", "0x...token", "0x...holder")'

    GET /blockNumber        eth_blockNumber
    GET /balance/<address>  eth_getBalance(address, "latest")
    GET /call               eth_call of the token's balanceOf(holder) at "latest"
    GET /block/<n>          eth_getBlockByNumber(n, false)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import requests
from eth_typing import ChecksumAddress, HexStr
from flask import Flask, Response, jsonify
from web3 import Web3

from nodes.process import free_port
from settings import ROOT, child_environment

#: balanceOf(address): the 4-byte selector of the ERC-20 view the control and the benchmark call.
BALANCE_OF = "0x70a08231"
#: Seconds the control may take to answer /healthz after its start; a node call's timeout.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
NODE_TIMEOUT = 10.0
#: Longer than the client's keep-alive use within a cell; as the API's gunicorn.conf.py.
KEEP_ALIVE = 10


def balance_of_data(holder: str) -> str:
    """The calldata of ``balanceOf(holder)``."""
    return BALANCE_OF + holder.lower().removeprefix("0x").rjust(64, "0")


def create_app(node_url: str, token: str, holder: str) -> Flask:
    """The control's Flask app: web3.py over ``node_url``; ``/call`` reads ``token.balanceOf(holder)``."""
    w3 = Web3(Web3.HTTPProvider(node_url, request_kwargs={"timeout": NODE_TIMEOUT}, exception_retry_configuration=None))
    call = {"to": ChecksumAddress(Web3.to_checksum_address(token)), "data": HexStr(balance_of_data(holder))}
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> Response:
        """Liveness: the process answers."""
        return jsonify(ok=True)

    @app.get("/blockNumber")
    def block_number() -> Response:
        """The node's head."""
        return jsonify(block_number=int(w3.eth.block_number))

    @app.get("/balance/<address>")
    def balance(address: str) -> Response:
        """An account's balance in wei at the head."""
        return jsonify(wei=str(w3.eth.get_balance(Web3.to_checksum_address(address))))

    @app.get("/call")
    def view_call() -> Response:
        """The token's balanceOf(holder) at the head."""
        return jsonify(result=w3.eth.call(call).to_0x_hex())  # type: ignore[arg-type]

    @app.get("/block/<int:number>")
    def block(number: int) -> Response:
        """A block by number, transaction hashes only."""
        return Response(Web3.to_json(w3.eth.get_block(number)), mimetype="application/json")  # type: ignore[arg-type]

    return app


class ControlServer:
    """``create_app`` under gunicorn (``python -m gunicorn``) on a free loopback port; ``close()`` stops it.

    ``worker_class`` is ``gthread`` (``workers`` x ``threads``) or ``sync`` (``workers``).
    """

    def __init__(self, node_url: str, token: str, holder: str, log_path: Path, *, worker_class: str = "gthread",
                 workers: int = 2, threads: int = 16) -> None:
        if worker_class not in ("gthread", "sync"):
            raise ValueError(f"worker_class must be gthread or sync, not {worker_class!r}")
        self.factory = f"bench.rpc_control:create_app({node_url!r}, {token!r}, {holder!r})"
        self.worker_class, self.workers, self.threads = worker_class, workers, threads
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        """The configuration, e.g. ``gthread 2x16``."""
        return f"gthread {self.workers}x{self.threads}" if self.worker_class == "gthread" else f"sync {self.workers}"

    def command(self) -> list[str]:
        """The gunicorn command line."""
        cmd = [sys.executable, "-m", "gunicorn", "--worker-class", self.worker_class, "--workers", str(self.workers),
               "--bind", f"127.0.0.1:{self.port}", "--keep-alive", str(KEEP_ALIVE), "--graceful-timeout", "5",
               "--backlog", "4096", "--log-level", "warning"]
        if self.worker_class == "gthread":
            cmd += ["--threads", str(self.threads)]
        return [*cmd, self.factory]

    def start(self) -> ControlServer:
        """Start gunicorn and wait until /healthz answers (RuntimeError with the log's tail otherwise)."""
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=child_environment(), start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        with requests.Session() as session:
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if session.get(self.url + "/healthz", timeout=1.0).ok:
                        return self
                except requests.RequestException:
                    pass
                time.sleep(0.05)
        self.close()
        tail = " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-5:])
        raise RuntimeError(f"the control ({self.label}) did not answer /healthz on {self.url}: {tail}")

    def close(self) -> None:
        """SIGTERM to the gunicorn master (it stops its workers); SIGKILL after STOP_TIMEOUT."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
