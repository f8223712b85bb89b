"""The OpenAPI 3.1 description of /api/v1, served at ``GET /api/v1/openapi.json``.

Written by hand (the routes are few and their contracts matter more than their
plumbing); a test checks that every /api/v1 route Flask registers appears here,
with the same methods, and Schemathesis fuzzes the live API from it
(tests/security/). So it states what the API really accepts: amounts are ASCII
decimal strings of at most 78 digits (or bounded JSON integers), integers carry
their bounds, path parameters their patterns; every error is a problem, and the
operations that need an API key say so.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify

from app.context import settings
from app.nodes import MAX_EVENTS, MAX_HISTORY
from app.projects import MAX_ID, MAX_PAGE
from app.tasks_api import MAX_LOOKUP, MAX_WAIT
from contracts import artifact_names
from services.chain import BLOCK_PATTERN
from services.events import MAX_CURSOR_CHARS, MAX_LIMIT, MAX_PROJECT_ID, TYPES
from services.fields import MAX_DIGITS, MAX_UINT256
from services.idempotency import MAX_KEY_LENGTH
from services.mining import ACTIONS, MAX_BLOCK_TIME
from services.records import STATES
from services.recycler import ACTIONS as RECYCLER_ACTIONS
from services.static_nodes import MAX_URL_LENGTH, NODE_ID_PATTERN
from wallet.keystore import MAX_PASSWORD_CHARS

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

SECURITY_SCHEME = "apiKey"
ADDRESS = {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$",
           "description": "20-byte address; mixed case must be a valid EIP-55 checksum"}
HASH = {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"}
DECIMAL = {"type": "string", "pattern": f"^[0-9]{{1,{MAX_DIGITS}}}$",
           "description": "a whole amount as ASCII decimal digits, at most 2**256 - 1"}
AMOUNT = {"oneOf": [{"type": "integer", "minimum": 0, "maximum": MAX_UINT256}, DECIMAL],
          "description": "a whole, non-negative amount up to 2**256 - 1: a JSON integer or ASCII decimal digits"}
UUID = {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}
PROJECT_ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
OBJECT = {"type": "object", "additionalProperties": True}
NULLABLE_STRING = {"type": ["string", "null"]}
KEY_ID = {"type": "string", "pattern": "^[0-9a-f]{16}$"}
KEY_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}$"}
ROLE = {"enum": ["admin", "user"]}
NODE_ID = {"type": "string", "pattern": NODE_ID_PATTERN}
NODE_ACTIONS = {
    "drain": "Drain a node at the recycler's next step: no new work; held drained until undrained or recycled",
    "recycle": "Recycle a node at the recycler's next step: drain it, restart it through the node manager, let it catch up",
    "undrain": "Give a node an operator drained back to the pool",
}

#: Why each problem status can happen (RFC 9457 bodies naming the field at fault).
PROBLEM_REASONS = {
    "400": "malformed input: not JSON, not valid Unicode text, a bad query parameter",
    "401": "an API key is needed, or the one sent is not valid (unknown or revoked)",
    "403": "the API key may not do this (an admin operation, or another key's account)",
    "404": "the named resource does not exist",
    "409": "the request conflicts with the current state (an Idempotency-Key used for another request, a bought project)",
    "413": "the body is larger than ESP_MAX_BODY_KB (an upload: ESP_MAX_FILE_MB)",
    "415": "the body is not of the media type this operation takes",
    "422": "a field is invalid: the problem's `field` names it",
    "429": "too many requests: wait as Retry-After says",
    "4XX": "any other client error (an unsupported method, say)",
    "5XX": "the pool cannot serve now (no healthy node, a node error, the platform not deployed yet)",
}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def problem(code: str) -> dict[str, Any]:
    return {"description": PROBLEM_REASONS[code], "content": {"application/problem+json": {"schema": ref("Problem")}}}


def body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": properties, "required": required}}}}


def ok(description: str, schema: dict[str, Any] | None = None, *, media: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema or OBJECT}}}


def obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """A response object: these properties (more may come)."""
    return {"type": "object", "properties": properties, "required": required or list(properties)}


TASK_ACCEPTED = {"description": "Accepted: the task record (poll status_url, or GET it with ?wait=)",
                 "content": {"application/json": {"schema": ref("Task")}}, "headers": {"Location": {"schema": {"type": "string"}}}}


def op(summary: str, responses: dict[str, Any], *, tags: list[str], params: list[dict[str, Any]] | None = None,
       request: dict[str, Any] | None = None, secured: bool = False, optional_key: bool = False, admin: bool = False,
       write: bool = False, not_found: bool = False, problems: tuple[str, ...] = ()) -> dict[str, Any]:
    """One operation, with every problem it can answer."""
    codes = {"401", "429", "4XX", "5XX", *problems}
    if params or request:
        codes |= {"400", "422"}
    if request:
        codes |= {"413", "415"}  # a body over ESP_MAX_BODY_KB (ESP_MAX_FILE_MB for uploads); not the media type taken
    if secured or admin or optional_key:
        codes.add("403")
    if write:
        codes.add("409")
    if not_found:
        codes.add("404")
    item: dict[str, Any] = {"summary": summary + (" (admin)" if admin else ""), "tags": tags,
                            "responses": {**responses, **{code: problem(code) for code in sorted(codes)}}}
    if params:
        item["parameters"] = params
    if request:
        item["requestBody"] = request
    if secured or admin or write:
        item["security"] = [{SECURITY_SCHEME: []}]
    elif optional_key:
        item["security"] = [{}, {SECURITY_SCHEME: []}]
    if write:
        item.setdefault("parameters", []).append(
            {"name": "Idempotency-Key", "in": "header", "required": False,
             "schema": {"type": "string", "pattern": f"^[\\x20-\\x7e]{{1,{MAX_KEY_LENGTH}}}$"},
             "description": "printable ASCII; the same key returns the same task instead of a second transaction"})
    return item


def path_param(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def query(name: str, schema: dict[str, Any], description: str = "", *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def limit(maximum: int, description: str = "") -> dict[str, Any]:
    return query("limit", {"type": "integer", "minimum": 1, "maximum": maximum}, description)


def paths() -> dict[str, Any]:
    """Every /api/v1 path and operation."""
    value_body = body({"address": ADDRESS, "value": AMOUNT}, ["address", "value"])
    block = path_param("block", {"type": "string", "pattern": BLOCK_PATTERN},
                       "a block number (ASCII decimal or 0x hex, at most 2**63 - 1), a tag (latest...) or a 32-byte hash")
    tx = path_param("digest", HASH, "transaction hash")
    pid = path_param("pid", PROJECT_ID, "project id")
    addr = path_param("addr", ADDRESS)
    event_type = "(" + "|".join(TYPES) + ")"
    key_record = obj({"id": KEY_ID, "name": {"type": "string"}, "role": ROLE, "created_at": {"type": "number"},
                      "revoked_at": {"type": ["number", "null"]}, "active": {"type": "boolean"}})
    unlocked = obj({"address": ADDRESS, "unlocked": {"type": "boolean"}, "seconds": {"type": "integer"}})
    node = path_param("node_id", NODE_ID)
    node_record = obj({"id": NODE_ID, "url": {"type": "string"}, "backend": {"type": "string"}, "role": {"type": "string"}})
    hosts = "|".join(re.escape(f"[{h}]" if ":" in h else h) for h in settings().static_node_hosts)
    node_url = {"type": "string", "pattern": f"^https?://({hosts})(:[0-9]{{1,5}})?(/[!-~]*)?$", "maxLength": MAX_URL_LENGTH,
                "description": "the node's JSON-RPC URL; its host one of ESP_STATIC_NODE_HOSTS"}
    operation = obj({"node": NODE_ID, "action": {"enum": list(RECYCLER_ACTIONS)}, "requested_at": {"type": "number"},
                     "accepted": {"type": "boolean"}, "current": {"type": ["object", "null"]}})
    return {
        "/api/v1/openapi.json": {"get": op("This document", {"200": ok("OpenAPI 3.1")}, tags=["meta"])},
        "/api/v1/nodes": {
            "get": op("The node pool", {"200": ok("nodes", obj({
                "nodes": {"type": "array", "items": OBJECT}, "pool": OBJECT, "count": {"type": "integer"}}))}, tags=["pool"]),
            "post": op("Add a static node: it must answer on the pool's chain (chain id, genesis block, history)",
                       {"201": ok("the node's record", node_record)}, tags=["pool"], admin=True, problems=("409",),
                       request=body({"url": node_url, "id": NODE_ID}, ["url"])),
        },
        "/api/v1/nodes/{node_id}": {"delete": op(
            "Remove a static node (never a managed one, nor the last serving one)", {"200": ok("the removed node", node_record)},
            tags=["pool"], admin=True, not_found=True, problems=("409",), params=[node])},
        **{f"/api/v1/nodes/{{node_id}}/{action}": {"post": op(
            summary, {"202": ok("the request, and the operation in progress", operation)}, tags=["pool"], admin=True,
            not_found=True, problems=("409",), params=[node])} for action, summary in NODE_ACTIONS.items()},
        "/api/v1/nodes/events": {"get": op("Recent node events, newest first", {"200": ok("events", obj({
            "events": {"type": "array"}}))}, tags=["pool"], params=[limit(MAX_EVENTS)])},
        "/api/v1/nodes/history": {"get": op("The last snapshots of the pool, compact, oldest first", {"200": ok("history", obj({
            "entries": {"type": "array"}, "count": {"type": "integer"}}))}, tags=["pool"], params=[limit(MAX_HISTORY)])},
        "/api/v1/nodes/plane.svg": {"get": op("The balancer's state plane as an SVG image",
                                              {"200": ok("image", {"type": "string"}, media="image/svg+xml")}, tags=["pool"])},
        "/api/v1/nodes/plane": {"get": op("A page redrawing the state plane every second",
                                          {"200": ok("page", {"type": "string"}, media="text/html")}, tags=["pool"])},
        "/api/v1/dashboard": {"get": op(
            "What the operators' dashboard (/dashboard) draws: the pool with each node's point in the state plane, the "
            "activity series since `since` (LBH, totals of requests, gateway calls and confirmed transactions, queue "
            "lengths), recent node events and tasks, Flower's address",
            {"200": ok("the dashboard's data", obj({
                "now": {"type": "number"}, "pool": OBJECT, "nodes": {"type": "array", "items": OBJECT},
                "series": {"type": "array", "items": OBJECT}, "queues": {"type": "array", "items": {"type": "string"}},
                "events": {"type": "array"}, "tasks": {"type": "array"}, "flower_url": {"type": "string"}}))},
            tags=["pool"], admin=True,
            params=[query("since", {"type": "number", "minimum": 0}, "only the points after this Unix time (the last point's t)")])},
        "/api/v1/metrics/targets": {"get": op(
            "Where the workers', control worker's and beat's /metrics are: Prometheus HTTP service discovery",
            {"200": ok("target groups", {"type": "array", "items": obj({
                "targets": {"type": "array", "items": {"type": "string"}}, "labels": OBJECT})})},
            tags=["pool"], admin=True)},
        "/api/v1/tasks/{task_id}": {"get": op(
            "A write task's state (queued, waiting, running, broadcast, confirmed, failed), node, result or error; "
            "for the key that submitted it, or an admin",
            {"200": ok("the task", ref("Task"))}, tags=["tasks"], secured=True, not_found=True,
            params=[path_param("task_id", UUID),
                    query("wait", {"type": "integer", "minimum": 0, "maximum": MAX_WAIT}, "block up to this many seconds until the task is final")])},
        "/api/v1/tasks/lookup": {"post": op(
            "Many tasks' states at once (those of the caller's key, or any for an admin); the others listed as missing",
            {"200": ok("the tasks", obj({"tasks": {"type": "array", "items": ref("Task")},
                                         "missing": {"type": "array", "items": {"type": "string"}}}))},
            tags=["tasks"], secured=True,
            request=body({"ids": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_LOOKUP}}, ["ids"]))},
        "/api/v1/accounts": {
            "post": op("Create an account (encrypted keystore) owned by the caller's key, and fund it with gas money; result.address",
                       {"202": TASK_ACCEPTED}, tags=["accounts"], write=True,
                       request=body({"password": {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD_CHARS}}, ["password"])),
            "get": op("The caller's accounts (an admin's: every account of ESP's keystore, and the treasury)",
                      {"200": ok("accounts", obj({"accounts": {"type": "array", "items": obj({
                          "address": ADDRESS, "unlocked": {"type": "boolean"}, "unlocked_for_s": {"type": "integer", "minimum": 0}})},
                          "count": {"type": "integer", "minimum": 0}, "treasury": ADDRESS}, ["accounts", "count"]))},
                      tags=["accounts"], secured=True),
        },
        "/api/v1/accounts/{addr}/unlock": {"post": op(
            "Let one of the caller's accounts sign for `seconds`", {"200": ok("unlocked", unlocked)}, tags=["accounts"], params=[addr],
            secured=True, request=body({"password": {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD_CHARS},
                                        "seconds": {"type": "integer", "minimum": 1, "maximum": 86400}}, ["password"]))},
        "/api/v1/accounts/{addr}/balance": {"get": op("ETH balance (wei, ether) and token balance", {"200": ok("balance", obj({
            "address": ADDRESS, "wei": DECIMAL, "ether": {"type": "string"}, "node": {"type": "string"},
            "token": {"oneOf": [DECIMAL, {"type": "null"}]}}))}, tags=["accounts"], params=[addr])},
        "/api/v1/transactions": {"post": op(
            "Send ETH from one of the caller's unlocked accounts (the treasury: admin)", {"202": TASK_ACCEPTED}, tags=["accounts"],
            write=True, request=body({"from": ADDRESS, "to": ADDRESS, "value_wei": AMOUNT}, ["from", "to", "value_wei"]))},
        "/api/v1/transactions/batch": {"post": op(
            "Send many ETH transfers at once (one task each; all accepted or none; each counts against the rate limit)",
            {"202": ok("tasks accepted", obj({"tasks": {"type": "array", "items": OBJECT}, "count": {"type": "integer"}}))},
            tags=["accounts"], write=True,
            request=body({"transactions": {"type": "array", "minItems": 1, "items": obj(
                {"from": ADDRESS, "to": ADDRESS, "value_wei": AMOUNT}, ["from", "to", "value_wei"])}}, ["transactions"]))},
        "/api/v1/token/add": {"post": op("Mint `value` tokens to `address`", {"202": TASK_ACCEPTED}, tags=["token"],
                                         request=value_body, admin=True, write=True)},
        "/api/v1/token/delete": {"post": op("Burn `value` tokens from `address`", {"202": TASK_ACCEPTED}, tags=["token"],
                                            request=value_body, admin=True, write=True)},
        "/api/v1/token/set": {"post": op("Set `address`'s balance to exactly `value`", {"202": TASK_ACCEPTED}, tags=["token"],
                                         request=value_body, admin=True, write=True)},
        "/api/v1/token/transfer": {"post": op(
            "Move tokens from one of the caller's unlocked accounts", {"202": TASK_ACCEPTED}, tags=["token"], write=True,
            request=body({"from": ADDRESS, "to": ADDRESS, "value": AMOUNT}, ["from", "to", "value"]))},
        "/api/v1/token/balance/{addr}": {"get": op(
            "An account's token balance", {"200": ok("balance", obj({
                "address": ADDRESS, "balance": DECIMAL, "token": ADDRESS, "node": {"type": "string"}}))},
            tags=["token"], params=[addr])},
        "/api/v1/token/total": {"get": op("Total supply, name, symbol, decimals", {"200": ok("token", obj({
            "token": ADDRESS, "total_supply": DECIMAL, "name": {"type": "string"}, "symbol": {"type": "string"},
            "decimals": {"type": "integer"}}))}, tags=["token"])},
        "/api/v1/contracts": {
            "post": op("Deploy the platform (`name`: platform), a platform contract by name, or any contract from "
                       "{abi, bytecode, args}", {"202": TASK_ACCEPTED}, tags=["contracts"], admin=True, write=True, not_found=True,
                       request=body({"name": {"enum": ["platform", *artifact_names()]},
                                     "abi": {"type": "array", "maxItems": 500, "items": OBJECT},
                                     "bytecode": {"type": "string", "pattern": "^0x([0-9a-fA-F]{2})+$", "maxLength": 2 + 2 * 49152},
                                     "args": {"type": "array"}, "gas_price": AMOUNT,
                                     "gas_limit": {"type": "integer", "minimum": 21000, "maximum": settings().block_gas_limit}}, [])),
            "get": op("The deployed platform and the deployable contracts", {"200": ok("contracts", obj({
                "platform": {"type": ["object", "null"]}, "platform_contracts": {"type": "array", "items": {"type": "string"}},
                "artifacts": {"type": "array", "items": {"type": "string"}}}))}, tags=["contracts"]),
        },
        "/api/v1/projects": {
            "post": op("Publish a project as one of the caller's accounts: the file is stored content-addressed, its SHA-256 "
                       "goes on chain; result.project_id once confirmed", {"202": TASK_ACCEPTED}, tags=["projects"],
                       write=True,
                       request={"required": True, "content": {"multipart/form-data": {"schema": {
                           "type": "object", "required": ["publisher", "name", "price", "file"],
                           "properties": {"publisher": ADDRESS, "name": {"type": "string", "minLength": 1, "maxLength": 256},
                                          "price": DECIMAL,
                                          "file": {"type": "string", "contentMediaType": "application/octet-stream"}}}}}}),
            "get": op("Projects by id, paged", {"200": ok("projects", obj({
                "projects": {"type": "array", "items": ref("Project")}, "count": {"type": "integer", "minimum": 0},
                "offset": PROJECT_ID, "limit": {"type": "integer"}, "next_offset": {"type": ["integer", "null"]}},
                ["projects", "count", "offset", "limit", "next_offset"]))}, tags=["projects"],
                      params=[query("offset", PROJECT_ID, "the first project id"), limit(MAX_PAGE)]),
        },
        "/api/v1/projects/{pid}": {"get": op(
            "A project's summary; with ?account= (one of the caller's accounts) the view is recorded on chain (view_task)",
            {"200": ok("project", ref("Project"))}, tags=["projects"], optional_key=True, not_found=True,
            params=[pid, query("account", ADDRESS, "the viewer (records a view; needs an API key owning it)")])},
        "/api/v1/projects/{pid}/buy": {"post": op(
            "Buy a project as `buyer` (one of the caller's unlocked accounts)", {"202": TASK_ACCEPTED}, tags=["projects"],
            params=[pid], write=True, not_found=True, request=body({"buyer": ADDRESS}, ["buyer"]))},
        "/api/v1/projects/{pid}/file": {"get": op(
            "The project's file, for its publisher or a buyer (an account of the caller's key); the download is recorded "
            "on chain (ESP-Record-Task header)",
            {"200": ok("the file", {"type": "string", "contentMediaType": "application/octet-stream"}, media="application/octet-stream")},
            tags=["projects"], secured=True, not_found=True,
            params=[pid, query("account", ADDRESS, "the publisher or a buyer", required=True)])},
        "/api/v1/chain/block-number": {"get": op("The head block number", {"200": ok("block number", obj({
            "block_number": {"type": "integer", "minimum": 0}, "node": {"type": "string"}}))}, tags=["chain"])},
        "/api/v1/chain/gas-price": {"get": op("The suggested gas price (wei)", {"200": ok("gas price", obj({
            "gas_price_wei": DECIMAL, "node": {"type": "string"}}))}, tags=["chain"])},
        "/api/v1/chain/blocks/{block}": {"get": op("A block", {"200": ok("block", obj({"block": OBJECT, "node": {"type": "string"}}))},
                                                   tags=["chain"], not_found=True,
                                                   params=[block, query("full", {"type": "boolean"}, "include whole transactions")])},
        "/api/v1/chain/blocks/{block}/transaction-count": {"get": op(
            "How many transactions a block holds", {"200": ok("count", obj({
                "block": {"type": "string"}, "transaction_count": {"type": "integer", "minimum": 0}, "node": {"type": "string"}}))},
            tags=["chain"], not_found=True, params=[block])},
        "/api/v1/chain/transactions/{digest}": {"get": op("A transaction", {"200": ok("transaction", obj({
            "transaction": OBJECT, "node": {"type": "string"}}))}, tags=["chain"], not_found=True, params=[tx])},
        "/api/v1/chain/transactions/{digest}/receipt": {"get": op("A mined transaction's receipt", {"200": ok("receipt", obj({
            "receipt": OBJECT, "node": {"type": "string"}}))}, tags=["chain"], not_found=True, params=[tx])},
        "/api/v1/mining": {
            "get": op("Whether blocks are produced, how, and the head block", {"200": ok("mining")}, tags=["mining"]),
            "post": op("Start (block_time seconds; 0 = automine) or stop block production", {"200": ok("mining")},
                       tags=["mining"], admin=True,
                       request=body({"action": {"enum": list(ACTIONS)},
                                     "block_time": {"type": "integer", "minimum": 0, "maximum": MAX_BLOCK_TIME}}, ["action"])),
        },
        "/api/v1/events": {"get": op(
            "Platform events (published, purchased, viewed, downloaded, transfer), oldest first, paged by cursor",
            {"200": ok("events", obj({"events": {"type": "array", "items": OBJECT}, "count": {"type": "integer", "minimum": 0},
                                      "next_cursor": {"type": "string"}, "has_more": {"type": "boolean"},
                                      "head": {"type": "integer"}, "platform": OBJECT}))}, tags=["events"], problems=("409",),
            params=[query("account", ADDRESS), query("project", {"type": "integer", "minimum": 1, "maximum": MAX_PROJECT_ID}),
                    query("type", {"type": "string", "pattern": f"^{event_type}(,{event_type})*$"},
                          "comma-separated: " + ",".join(TYPES)),
                    query("cursor", {"type": "string", "pattern": f"^[A-Za-z0-9_-]{{1,{MAX_CURSOR_CHARS}}}$"},
                          "next_cursor of the previous page (409: it belongs to an earlier platform deployment)"),
                    limit(MAX_LIMIT)])},
        "/api/v1/keys": {
            "post": op("Create an API key (shown this once)", {"201": ok("the key", obj({
                **key_record["properties"], "key": {"type": "string"}, "note": {"type": "string"}}))}, tags=["keys"], admin=True,
                       request=body({"name": KEY_NAME, "role": ROLE}, ["name"])),
            "get": op("Every API key (never the keys themselves)", {"200": ok("keys", obj({
                "keys": {"type": "array", "items": key_record}, "count": {"type": "integer", "minimum": 0}}))},
                      tags=["keys"], admin=True),
        },
        "/api/v1/keys/{key_id}": {"delete": op(
            "Revoke an API key: it stops working at once", {"200": ok("the revoked key", key_record)}, tags=["keys"], admin=True,
            not_found=True, params=[path_param("key_id", KEY_ID)])},
    }


def spec() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "ESP API", "version": "1",
                 "description": "Ethereum service platform: a balanced node pool, writes as tasks (202 + task), reads at once. "
                                "Send an API key as `Authorization: Bearer <key>`: every write and private read needs one."},
        "paths": paths(),
        "components": {
            "securitySchemes": {SECURITY_SCHEME: {
                "type": "http", "scheme": "bearer",
                "description": "an API key (POST /api/v1/keys, or `flask --app app keys create`); ESP_ADMIN_KEY is an admin key"}},
            "schemas": {
                "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    "detail": {"type": "string"}, "instance": {"type": "string"}, "field": {"type": "string"},
                    "errors": {"type": "array", "items": obj({"field": {"type": "string"}, "detail": {"type": "string"}})}}},
                "Task": {"type": "object", "required": ["id", "operation", "kind", "state", "status_url"], "properties": {
                    "id": UUID, "operation": {"type": "string"}, "kind": {"type": "string"},
                    "state": {"enum": list(STATES)}, "node": NULLABLE_STRING, "attempts": {"type": "integer", "minimum": 0},
                    "created_at": {"type": "number"}, "started_at": {"type": ["number", "null"]}, "updated_at": {"type": "number"},
                    "params": OBJECT, "result": {"type": ["object", "null"]}, "error": {"type": ["object", "null"]},
                    "status_url": {"type": "string"}}},
                "Project": {"type": "object", "required": ["id", "publisher", "name", "file_hash", "price"], "properties": {
                    "id": PROJECT_ID, "publisher": ADDRESS, "name": {"type": "string"}, "file_hash": HASH,
                    "price": DECIMAL, "published_at": {"type": "integer"}, "buyers": {"type": "integer", "minimum": 0},
                    "file_url": {"type": "string"}, "account": ADDRESS, "bought": {"type": "boolean"}, "view_task": UUID}},
            },
        },
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of /api/v1."""
    return jsonify(spec())
