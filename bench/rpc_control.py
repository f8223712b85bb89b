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

from pathlib import Path

from eth_typing import ChecksumAddress, HexStr
from flask import Flask, Response, jsonify
from web3 import Web3

from bench.gunicorn_server import GunicornServer

#: balanceOf(address): the 4-byte selector of the ERC-20 view the control and the benchmark call.
BALANCE_OF = "0x70a08231"
#: Seconds a node call of the control may take.
NODE_TIMEOUT = 10.0


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


class ControlServer(GunicornServer):
    """``create_app`` under gunicorn (``python -m gunicorn``) on a free loopback port; ``close()`` stops it.

    ``worker_class`` is ``gthread`` (``workers`` x ``threads``) or ``sync`` (``workers``).
    """

    name = "the control"

    def __init__(self, node_url: str, token: str, holder: str, log_path: Path, *, worker_class: str = "gthread",
                 workers: int = 2, threads: int = 16) -> None:
        super().__init__(f"bench.rpc_control:create_app({node_url!r}, {token!r}, {holder!r})", log_path,
                         worker_class=worker_class, workers=workers, threads=threads)
