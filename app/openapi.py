"""The OpenAPI 3.1 description of /api/v1, served at ``GET /api/v1/openapi.json``.

Written by hand (the routes are few and their contracts matter more than their
plumbing); a test checks that every /api/v1 route Flask registers appears here,
with the same methods.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

ADDRESS = {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$", "description": "20-byte address; mixed case must be a valid EIP-55 checksum"}
HASH = {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"}
AMOUNT = {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^[0-9]+$"}],
          "description": "a whole, non-negative amount up to 2^256-1 (JSON integer or decimal string)"}
DECIMAL = {"type": "string", "pattern": "^[0-9]+$", "description": "a whole amount as a decimal string"}
OBJECT = {"type": "object", "additionalProperties": True}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": properties, "required": required}}}}


def ok(description: str, schema: dict[str, Any] | None = None, *, media: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema or OBJECT}}}


PROBLEM = {"description": "RFC 9457 problem naming the field at fault",
           "content": {"application/problem+json": {"schema": ref("Problem")}}}
TASK_ACCEPTED = {"description": "Accepted: the task record (poll status_url, or GET it with ?wait=)",
                 "content": {"application/json": {"schema": ref("Task")}}, "headers": {"Location": {"schema": {"type": "string"}}}}


def op(summary: str, responses: dict[str, Any], *, tags: list[str], params: list[dict[str, Any]] | None = None,
       request: dict[str, Any] | None = None, admin: bool = False, write: bool = False) -> dict[str, Any]:
    item: dict[str, Any] = {"summary": summary, "tags": tags, "responses": {**responses, "4XX": PROBLEM}}
    if params:
        item["parameters"] = params
    if request:
        item["requestBody"] = request
    if admin:
        item["security"] = [{"adminKey": []}]
    if write:
        item.setdefault("parameters", []).append(
            {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 255},
             "description": "the same key returns the same task instead of a second transaction"})
    return item


def path_param(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def query(name: str, schema: dict[str, Any], description: str = "", *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def paths() -> dict[str, Any]:
    """Every /api/v1 path and operation."""
    value_body = body({"address": ADDRESS, "value": AMOUNT}, ["address", "value"])
    block = path_param("block", {"type": "string"}, "a block number (decimal or 0x hex), a tag (latest...) or a 32-byte hash")
    tx = path_param("digest", HASH, "transaction hash")
    pid = path_param("pid", {"type": "integer", "minimum": 1}, "project id")
    addr = path_param("addr", ADDRESS)
    return {
        "/api/v1/openapi.json": {"get": op("This document", {"200": ok("OpenAPI 3.1")}, tags=["meta"])},
        "/api/v1/nodes": {"get": op("The node pool", {"200": ok("nodes")}, tags=["pool"])},
        "/api/v1/nodes/events": {"get": op("Recent node events, newest first", {"200": ok("events")}, tags=["pool"],
                                           params=[query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})])},
        "/api/v1/nodes/history": {"get": op("The last snapshots of the pool, compact, oldest first", {"200": ok("history")},
                                            tags=["pool"], params=[query("limit", {"type": "integer", "minimum": 1})])},
        "/api/v1/nodes/plane.svg": {"get": op("The balancer's state plane as an SVG image",
                                              {"200": ok("image", {"type": "string"}, media="image/svg+xml")}, tags=["pool"])},
        "/api/v1/nodes/plane": {"get": op("A page redrawing the state plane every second",
                                          {"200": ok("page", {"type": "string"}, media="text/html")}, tags=["pool"])},
        "/api/v1/tasks/{task_id}": {"get": op(
            "A write task's state (queued, waiting, running, broadcast, confirmed, failed), node, result or error",
            {"200": ok("the task", ref("Task"))}, tags=["tasks"],
            params=[path_param("task_id", {"type": "string"}), query("wait", {"type": "integer", "minimum": 0, "maximum": 60},
                                                                     "block up to this many seconds until the task is final")])},
        "/api/v1/accounts": {
            "post": op("Create an account (encrypted keystore) and fund it with gas money; result.address",
                       {"202": TASK_ACCEPTED}, tags=["accounts"], write=True,
                       request=body({"password": {"type": "string", "minLength": 1, "maxLength": 1024}}, ["password"])),
            "get": op("Every account of ESP's keystore", {"200": ok("accounts")}, tags=["accounts"]),
        },
        "/api/v1/accounts/{addr}/unlock": {"post": op(
            "Let the account sign for `seconds`", {"200": ok("unlocked")}, tags=["accounts"], params=[addr],
            request=body({"password": {"type": "string"}, "seconds": {"type": "integer", "minimum": 1, "maximum": 86400}},
                         ["password"]))},
        "/api/v1/accounts/{addr}/balance": {"get": op("ETH balance (wei, ether) and token balance", {"200": ok("balance")},
                                                      tags=["accounts"], params=[addr])},
        "/api/v1/transactions": {"post": op(
            "Send ETH from an unlocked account", {"202": TASK_ACCEPTED}, tags=["accounts"], write=True,
            request=body({"from": ADDRESS, "to": ADDRESS, "value_wei": AMOUNT}, ["from", "to", "value_wei"]))},
        "/api/v1/token/add": {"post": op("Mint `value` tokens to `address`", {"202": TASK_ACCEPTED}, tags=["token"],
                                         request=value_body, admin=True, write=True)},
        "/api/v1/token/delete": {"post": op("Burn `value` tokens from `address`", {"202": TASK_ACCEPTED}, tags=["token"],
                                            request=value_body, admin=True, write=True)},
        "/api/v1/token/set": {"post": op("Set `address`'s balance to exactly `value`", {"202": TASK_ACCEPTED}, tags=["token"],
                                         request=value_body, admin=True, write=True)},
        "/api/v1/token/transfer": {"post": op(
            "Move tokens from an unlocked account", {"202": TASK_ACCEPTED}, tags=["token"], write=True,
            request=body({"from": ADDRESS, "to": ADDRESS, "value": AMOUNT}, ["from", "to", "value"]))},
        "/api/v1/token/balance/{addr}": {"get": op(
            "An account's token balance", {"200": ok("balance", {"type": "object", "properties": {
                "address": ADDRESS, "balance": DECIMAL, "token": ADDRESS, "node": {"type": "string"}}})},
            tags=["token"], params=[addr])},
        "/api/v1/token/total": {"get": op("Total supply, name, symbol, decimals", {"200": ok("token")}, tags=["token"])},
        "/api/v1/contracts": {
            "post": op("Deploy the platform (`name`: platform), a platform contract by name, or any contract from "
                       "{abi, bytecode, args}", {"202": TASK_ACCEPTED}, tags=["contracts"], admin=True, write=True,
                       request=body({"name": {"type": "string", "description": "platform, PlatformToken or ProjectMarket"},
                                     "abi": {"type": "array", "items": OBJECT}, "bytecode": {"type": "string"},
                                     "args": {"type": "array"}, "gas_price": AMOUNT,
                                     "gas_limit": {"type": "integer", "minimum": 21000}}, [])),
            "get": op("The deployed platform and the deployable contracts", {"200": ok("contracts")}, tags=["contracts"]),
        },
        "/api/v1/projects": {
            "post": op("Publish a project: the file is stored content-addressed, its SHA-256 goes on chain; "
                       "result.project_id once confirmed", {"202": TASK_ACCEPTED, "413": PROBLEM}, tags=["projects"], write=True,
                       request={"required": True, "content": {"multipart/form-data": {"schema": {
                           "type": "object", "required": ["publisher", "name", "price", "file"],
                           "properties": {"publisher": ADDRESS, "name": {"type": "string", "maxLength": 256},
                                          "price": DECIMAL, "file": {"type": "string", "contentMediaType": "application/octet-stream"}}}}}}),
            "get": op("Projects by id, paged", {"200": ok("projects")}, tags=["projects"],
                      params=[query("offset", {"type": "integer", "minimum": 1}), query("limit", {"type": "integer", "minimum": 1, "maximum": 100})]),
        },
        "/api/v1/projects/{pid}": {"get": op(
            "A project's summary; with ?account= the view is recorded on chain (view_task)", {"200": ok("project", ref("Project"))},
            tags=["projects"], params=[pid, query("account", ADDRESS, "the viewer (records a view)")])},
        "/api/v1/projects/{pid}/buy": {"post": op(
            "Buy a project as `buyer` (an unlocked account)", {"202": TASK_ACCEPTED}, tags=["projects"], params=[pid], write=True,
            request=body({"buyer": ADDRESS}, ["buyer"]))},
        "/api/v1/projects/{pid}/file": {"get": op(
            "The project's file, for its publisher or a buyer; the download is recorded on chain (ESP-Record-Task header)",
            {"200": ok("the file", {"type": "string", "contentMediaType": "application/octet-stream"}, media="application/octet-stream")},
            tags=["projects"], params=[pid, query("account", ADDRESS, "the publisher or a buyer", required=True)])},
        "/api/v1/chain/block-number": {"get": op("The head block number", {"200": ok("block number")}, tags=["chain"])},
        "/api/v1/chain/gas-price": {"get": op("The suggested gas price (wei)", {"200": ok("gas price")}, tags=["chain"])},
        "/api/v1/chain/blocks/{block}": {"get": op("A block", {"200": ok("block")}, tags=["chain"],
                                                   params=[block, query("full", {"type": "boolean"}, "include whole transactions")])},
        "/api/v1/chain/blocks/{block}/transaction-count": {"get": op("How many transactions a block holds",
                                                                     {"200": ok("count")}, tags=["chain"], params=[block])},
        "/api/v1/chain/transactions/{digest}": {"get": op("A transaction", {"200": ok("transaction")}, tags=["chain"], params=[tx])},
        "/api/v1/chain/transactions/{digest}/receipt": {"get": op("A mined transaction's receipt", {"200": ok("receipt")},
                                                                  tags=["chain"], params=[tx])},
        "/api/v1/mining": {
            "get": op("Whether blocks are produced, how, and the head block", {"200": ok("mining")}, tags=["mining"]),
            "post": op("Start (block_time seconds; 0 = automine) or stop block production", {"200": ok("mining")},
                       tags=["mining"], admin=True,
                       request=body({"action": {"enum": ["start", "stop"]}, "block_time": {"type": "integer", "minimum": 0}}, ["action"])),
        },
        "/api/v1/events": {"get": op(
            "Platform events (published, purchased, viewed, downloaded, transfer), oldest first, paged by cursor",
            {"200": ok("events")}, tags=["events"],
            params=[query("account", ADDRESS), query("project", {"type": "integer", "minimum": 1}),
                    query("type", {"type": "string"}, "comma-separated: published,purchased,viewed,downloaded,transfer"),
                    query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 200})])},
    }


def spec() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "ESP API", "version": "1",
                 "description": "Ethereum service platform: a balanced node pool, writes as tasks (202 + task), reads at once."},
        "paths": paths(),
        "components": {
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer", "description": "ESP_ADMIN_KEY"}},
            "schemas": {
                "Problem": {"type": "object", "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                    "detail": {"type": "string"}, "instance": {"type": "string"}, "field": {"type": "string"}}},
                "Task": {"type": "object", "properties": {
                    "id": {"type": "string"}, "operation": {"type": "string"}, "kind": {"type": "string"},
                    "state": {"enum": ["queued", "waiting", "running", "broadcast", "confirmed", "failed"]},
                    "node": {"type": ["string", "null"]}, "params": OBJECT, "result": {"type": ["object", "null"]},
                    "error": {"type": ["object", "null"]}, "status_url": {"type": "string"}}},
                "Project": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "publisher": ADDRESS, "name": {"type": "string"}, "file_hash": HASH,
                    "price": DECIMAL, "published_at": {"type": "integer"}, "buyers": {"type": "integer"},
                    "view_task": {"type": "string"}}},
            },
        },
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of /api/v1."""
    return jsonify(spec())
