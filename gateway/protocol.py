"""JSON-RPC 2.0 as the gateway speaks it: error codes, error objects and replies, and one request checked.

``check`` turns one element of a body into a ``Call`` (method known, allowed for the caller, params
checked: ``gateway.methods``) or the error reply that answers it, before anything is asked of a node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from access.keys import Caller
from gateway.methods import InvalidParams, Kind, Method, check_params, lookup, refusal

# JSON-RPC 2.0 error codes, and the implementation-defined ones ESP answers with.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: No node could answer within the deadline, or the transaction reached none (server error range).
NO_NODE = -32000
#: EIP-1474's "resource unavailable": ESP's store (Redis) does not answer, so the key cannot be checked.
UNAVAILABLE = -32002
#: EIP-1474's "limit exceeded": a rate limit, a batch too long.
LIMIT_EXCEEDED = -32005


class RpcFault(Exception):
    """A JSON-RPC error object to answer with."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def error_reply(request_id: Any, fault: RpcFault) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": fault.to_dict()}


def reply_bytes(reply: Any) -> bytes:
    """The reply as the HTTP body."""
    return json.dumps(reply, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Call:
    """One checked request of a body."""

    id: Any
    method: Method
    params: list[Any]
    notification: bool



def check(item: Any, caller: Caller) -> Call | dict[str, Any]:
    """The request as a Call, or the error reply that answers it."""
    request_id = item.get("id") if isinstance(item, dict) else None
    if not isinstance(request_id, (str, int, type(None))) or isinstance(request_id, bool):
        request_id = None
    if not isinstance(item, dict) or item.get("jsonrpc") != "2.0" or not isinstance(item.get("method"), str):
        return error_reply(request_id, RpcFault(INVALID_REQUEST, "invalid request: a JSON-RPC 2.0 request is an "
                                                "object with \"jsonrpc\": \"2.0\", a string \"method\" and an id"))
    if "id" in item and item["id"] is not request_id:
        return error_reply(None, RpcFault(INVALID_REQUEST, "invalid request: id must be a string, a number or null"))
    name = item["method"]
    method = lookup(name)
    if method is None:
        return error_reply(request_id, RpcFault(METHOD_NOT_FOUND, f"the method {name} does not exist or is not "
                                                "available"))
    if (method.kind in (Kind.NODE_KEY, Kind.ADMIN) and not caller.is_admin) or method.kind is Kind.UNSUPPORTED:
        return error_reply(request_id, RpcFault(METHOD_NOT_FOUND, refusal(method)))
    try:
        params = check_params(method, item.get("params"))
    except InvalidParams as exc:
        return error_reply(request_id, RpcFault(INVALID_PARAMS, f"invalid params: {exc}"))
    return Call(request_id, method, params, notification="id" not in item)
