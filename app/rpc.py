"""``POST /rpc``: the pool behind one JSON-RPC 2.0 endpoint, for any web3 client (``gateway`` does the work).

A client switches to ESP by changing its provider's URL and sending its API key as
``Authorization: Bearer <key>``. Every answer is JSON-RPC: a body that is not JSON is -32700, a
request that is not JSON-RPC -32600, an unknown or forbidden method -32601, bad params -32602; a
missing key (HTTP 401), a body over ESP_MAX_BODY_KB (413) and a rate limit (429, per key, each
request of a batch counted) answer with a JSON-RPC error object too (``app.errors``).
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from app.context import caller, gateway
from gateway.gateway import PARSE_ERROR, RpcFault, error_reply, reply_bytes

bp = Blueprint("rpc", __name__)


@bp.post("/rpc")
def rpc() -> Response:
    """Answer a JSON-RPC request or batch from the pool."""
    who = caller()
    body = request.get_json(force=True, silent=True)  # parsed once, by the rate limit's cost, whatever the type says
    if body is None:
        try:
            current_app.json.loads(request.get_data())
        except ValueError as exc:
            return _json(error_reply(None, RpcFault(PARSE_ERROR, f"parse error: the body is not JSON ({exc})")))
    reply = gateway().handle(body, who)
    if reply is None:
        return Response(status=204)  # only notifications: nothing to answer
    return _json(reply)


def _json(reply: object) -> Response:
    return Response(reply_bytes(reply), mimetype="application/json")

