"""The thesis's own routes, kept working: its paths, parameter names and ``BaseResult`` shape.

Every answer is ``{"status": 200|500, "message": ..., "data": ...}`` (the thesis's
BaseResult). Parameters are read from the query string, a form or a JSON body (later
ones win), under the thesis's names. Each route accepts GET and POST, as the
thesis's ``@RequestMapping`` did. The routes call the same services as /api/v1:

=================  =======================================  ===============================================
thesis route       parameters                               ESP service (data)
=================  =======================================  ===============================================
/contract/deploy   contract (name or "platform"), gasPrice, POST /api/v1/contracts (admin): task
                   gasLimit; abi, bytecode, args
/admin/new         password                                 POST /api/v1/accounts: task (result.address)
/admin/unlock      address, password, [seconds=300]         POST /api/v1/accounts/<a>/unlock: {address, ...}
/token/add         address, value                           POST /api/v1/token/add (admin): task
/token/delete      address, value                           POST /api/v1/token/delete (admin): task
/token/set         address, value                           POST /api/v1/token/set (admin): task
/token/transfer    from, to, value                          POST /api/v1/token/transfer: task
/token/publish     address, time, projectName, projectHash  POST /api/v1/projects: task (result.project_id);
                   [value = price, default 0; or a file]    projectHash = the file's SHA-256 (0x + 64 hex)
/token/buy, /token address, time, projectName, projectHash  POST /api/v1/projects/<id>/buy: task; the project
                   [or project = its id]                    is found by name and hash (lowest id)
/conn/connect      -                                        {connected, chain_id, block_number, nodes}
/conn/blockNum     -                                        GET /api/v1/chain/block-number: the number
/conn/gasPrice     -                                        GET /api/v1/chain/gas-price: wei (string)
/admin/list        -                                        GET /api/v1/accounts: [addresses]
/token/balance     address                                  GET /api/v1/token/balance/<a>: {address, balance}
/token/total       -                                        GET /api/v1/token/total: {total_supply, ...}
/tx/blockhash      blockHash                                GET /api/v1/chain/blocks/<hash>: the block
/tx/blocknumber    blockNum                                 GET /api/v1/chain/blocks/<number>: the block
/tx/txhash         txHash                                   GET /api/v1/chain/transactions/<hash>
/tx/txNum          blockNum                                 GET .../blocks/<number>/transaction-count: count
/tx/receipt        txHash                                   GET .../transactions/<hash>/receipt: {to, status,
                                                            receipt} (the thesis returns the receiver)
=================  =======================================  ===============================================

Writes are tasks as on /api/v1: ``data`` is the task record (``id``, ``state``,
``status_url``); ``wait=<seconds>`` (up to 60) blocks until the task is final and
returns it with its result. HTTP status: 202 while a task is in flight, 200 when
it is confirmed or a read succeeded; a task that failed answers 200 with
``status: 500`` and the error. A bad request keeps its 4xx HTTP status (and nothing
is enqueued); its body is a BaseResult with ``status: 500`` and the RFC 9457
problem (``field`` included) in ``data``. ``time`` is accepted and echoed back but
not stored: the chain stamps every record with its block's time.

The same rules as /api/v1 hold here (the thesis left them open): every write and
``/admin/list`` need an API key (``Authorization: Bearer``), a user's key acts only
as the accounts it created, the owner's token operations and deploys need an
admin's. Writes take POST only (a GET must not change anything); reads take GET
and POST. A password is never accepted in the query string.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app.auth import check_admin, key_required
from app.context import accounts, market, pool, reader, settings, task_store, views
from app.projects import publish_fields, upload_form
from app.validation import json_body, json_text
from errors import ValidationError
from nodepool.probe import probe_all
from services.chain import read_block, read_receipt, read_transaction, transaction_count
from services.fields import address, amount, file_hash, integer, project_name, required
from services.submit import Submitted
from wallet.keystore import check_password

bp = Blueprint("thesis", __name__)

STATUS_SUCCESS = 200
STATUS_FAIL = 500
MAX_WAIT = 60
DEFAULT_UNLOCK_SECONDS = 300
READ_METHODS = ["GET", "POST"]
WRITE_METHODS = ["POST"]


# -- the BaseResult shape ------------------------------------------------------------------------


def result(data: Any, message: str = "success", *, status: int = STATUS_SUCCESS, http: int = 200) -> tuple[Response, int]:
    """A thesis BaseResult response."""
    return jsonify({"status": status, "message": message, "data": data}), http


@bp.after_request
def as_base_result(response: Response) -> Response:
    """Turn an RFC 9457 problem raised by a thesis route into a BaseResult (status 500), keeping the HTTP code."""
    if response.mimetype != "application/problem+json":
        return response
    problem = json.loads(response.get_data())
    body = {"status": STATUS_FAIL, "message": problem.get("detail") or problem.get("title"), "data": problem}
    response.set_data(json.dumps(body))
    response.mimetype = "application/json"
    return response


def params() -> dict[str, Any]:
    """The request's parameters: query string, then form, then JSON body (later ones win)."""
    merged: dict[str, Any] = request.args.to_dict()
    form, _ = upload_form()  # bounded like /api/v1/projects: a file may come with /token/publish
    if form:
        merged.update(form.to_dict())
    if request.is_json:
        merged.update(json_body(request))
    return merged


def wait_param(p: dict[str, Any]) -> int:
    """A write's ``wait`` (0..60 seconds), checked before anything is enqueued."""
    return integer(p.get("wait", 0), "wait", low=0, high=MAX_WAIT)


def task_result(submitted: Submitted, wait: int, **extra: Any) -> tuple[Response, int]:
    """A write's BaseResult: the task record, after waiting up to ``wait`` seconds when asked."""
    record = submitted.record.public()
    if wait:
        record = task_store().wait(submitted.record.id, wait).public()
    data = {**record, **extra}
    if record["state"] == "failed":
        error = record.get("error") or {}
        return result(data, f"failed: {error.get('message', 'the task failed')}", status=STATUS_FAIL)
    if record["state"] == "confirmed":
        return result(data, "confirmed")
    return result(data, f"accepted: task {record['id']} is {record['state']}", http=202)


def route(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a thesis read for GET and POST."""
    return bp.route(path, methods=READ_METHODS)


def write(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a thesis write: POST only, and an API key required."""
    def register(view: Callable[..., Any]) -> Callable[..., Any]:
        guarded = view if getattr(view, "key_required", False) else key_required(view)  # one view under two paths
        return bp.route(path, methods=WRITE_METHODS)(guarded)
    return register


# -- writes --------------------------------------------------------------------------------------------


@write("/contract/deploy")
def contract_deploy() -> tuple[Response, int]:
    """Deploy the platform or a contract (thesis: Contract.class, gasPrice, gasLimit) - admin."""
    check_admin()
    p = params()
    wait = wait_param(p)
    body: dict[str, Any] = {"contract": p.get("contract"), "gas_price": p.get("gasPrice"), "gas_limit": p.get("gasLimit"),
            "abi": p.get("abi"), "bytecode": p.get("bytecode"), "args": p.get("args")}
    for key in ("abi", "args"):
        if isinstance(body[key], str):  # a form field carrying JSON
            body[key] = json_text(body[key], key)
    return task_result(market().deploy({k: v for k, v in body.items() if v is not None and v != ""}, name_field="contract"), wait)


@write("/admin/new")
def admin_new() -> tuple[Response, int]:
    """Create an account owned by the caller's key (thesis: password) and fund it; the result holds its address."""
    p = params()
    password = check_password(required(p, "password"))
    wait = wait_param(p)
    submitted = accounts().create(password)
    return task_result(submitted, wait, address=submitted.record.params["address"])


@write("/admin/unlock")
def admin_unlock() -> tuple[Response, int]:
    """Let one of the caller's accounts sign for a while (thesis: address, password)."""
    p = params()
    account = address(required(p, "address"), "address")
    password = check_password(required(p, "password"))
    seconds = integer(p.get("seconds", DEFAULT_UNLOCK_SECONDS), "seconds", low=1, high=86400)
    accounts().unlock(account, password, seconds)
    return result({"address": account, "unlocked": True, "seconds": seconds})


def _token_change(change: str) -> tuple[Response, int]:
    check_admin()
    p = params()
    account = address(required(p, "address"), "address")
    value = amount(required(p, "value"), "value")
    wait = wait_param(p)
    return task_result(market().token_change(change, account, value), wait, address=account)


@write("/token/add")
def token_add() -> tuple[Response, int]:
    """Mint tokens to an account (thesis: address, value) - admin."""
    return _token_change("add")


@write("/token/delete")
def token_delete() -> tuple[Response, int]:
    """Burn tokens from an account (thesis: address, value) - admin."""
    return _token_change("delete")


@write("/token/set")
def token_set() -> tuple[Response, int]:
    """Set an account's token balance (thesis: address, value) - admin."""
    return _token_change("set")


@write("/token/transfer")
def token_transfer() -> tuple[Response, int]:
    """Move tokens between accounts (thesis: from, to, value); ``from`` must be the caller's and unlocked."""
    p = params()
    sender = address(required(p, "from"), "from")
    to = address(required(p, "to"), "to")
    value = amount(required(p, "value"), "value")
    wait = wait_param(p)
    return task_result(market().token_transfer(sender, to, value), wait)


@write("/token/publish")
def token_publish() -> tuple[Response, int]:
    """Publish a project (thesis: address, time, projectName, projectHash; ``value`` is its price).

    With a file, its bytes are stored and bound to the publisher; with a hash alone,
    a file another publisher uploaded is refused (no one's file is published without its bytes).
    """
    p = params()
    p.setdefault("value", "0")
    wait = wait_param(p)
    publisher, name, price = publish_fields(p, names=("address", "projectName", "value"))
    platform = market()
    upload = request.files.get("file")
    if upload is not None:
        claimed = file_hash(p["projectHash"], "projectHash") if p.get("projectHash") else None
        digest, _ = platform.files.store(upload.stream)
        if claimed is not None and claimed != digest:
            raise ValidationError("projectHash", f"does not match the uploaded file's SHA-256 ({digest})")
        platform.bind_upload(digest, publisher)
    else:
        digest = file_hash(required(p, "projectHash"), "projectHash")
        platform.check_hash_only_publish(digest, publisher, "projectHash")
    submitted = platform.publish(publisher, name, price, digest, extra={"time": p["time"]} if p.get("time") else None)
    return task_result(submitted, wait, projectHash=digest, time=p.get("time"))


@write("/token/buy")
@write("/token")
def token_buy() -> tuple[Response, int]:
    """Buy a project (thesis: address, time, projectName, projectHash; or ``project`` = its id)."""
    p = params()
    wait = wait_param(p)
    buyer = address(required(p, "address"), "address")
    if p.get("project") not in (None, ""):
        project_id = integer(p["project"], "project", low=1, high=2**63)
        field = "project"
    else:
        name = project_name(p["projectName"], "projectName") if p.get("projectName") else None
        digest = file_hash(p["projectHash"], "projectHash") if p.get("projectHash") else None
        if name is None and digest is None:
            raise ValidationError("projectHash", "is required (or projectName, or project)")
        project_id = views().find_project(name, digest, field="projectHash" if digest else "projectName").id
        field = "projectHash" if digest else "projectName"
    return task_result(market().buy(buyer, project_id, buyer_field="address", id_field=field), wait, project_id=project_id,
                       time=p.get("time"))


# -- reads -------------------------------------------------------------------------------------------


@route("/conn/connect")
def conn_connect() -> tuple[Response, int]:
    """Whether ESP reaches the Ethereum pool: nodes answering, chain id and head."""
    nodes = [{k: v for k, v in n.items() if k not in ("url", "latency_ms")}
             for n in probe_all(pool(), pool().nodes(), settings().probe_timeout)]
    answering = [n for n in nodes if n["ok"]]
    data = {"connected": bool(answering), "chain_id": answering[0]["chain_id"] if answering else None,
            "block_number": max((int(n["block_number"]) for n in answering), default=None), "nodes": nodes}
    if not answering:
        return result(data, "no Ethereum node answers", status=STATUS_FAIL, http=503)
    return result(data, "connected")


@route("/conn/blockNum")
def conn_block_num() -> tuple[Response, int]:
    """The chain's head block number."""
    head = reader().call("eth_blockNumber", [])
    return result(int(head, 16))


@route("/conn/gasPrice")
def conn_gas_price() -> tuple[Response, int]:
    """The suggested gas price in wei (a decimal string)."""
    return result(str(int(reader().call("eth_gasPrice", []), 16)))


@route("/admin/list")
@key_required
def admin_list() -> tuple[Response, int]:
    """The caller's accounts (an admin's: every account of ESP's keystore, and the treasury)."""
    mine = accounts()
    data: dict[str, Any] = {"accounts": mine.visible()}
    if mine.caller.is_admin:
        data["treasury"] = mine.treasury
    return result(data)


@route("/token/balance")
def token_balance_route() -> tuple[Response, int]:
    """An account's token balance (thesis: address)."""
    p = params()
    account = address(required(p, "address"), "address")
    platform = views()
    balance, _ = platform.token_balance(account)
    return result({"address": account, "balance": str(balance), "token": platform.require_platform()["PlatformToken"]})


@route("/token/total")
def token_total() -> tuple[Response, int]:
    """The token's total supply."""
    return result(views().token_summary())


@route("/tx/blockhash")
def tx_block_hash() -> tuple[Response, int]:
    """A block by hash (thesis: blockHash)."""
    p = params()
    raw = required(p, "blockHash")
    if not isinstance(raw, str) or len(raw) != 66:
        raise ValidationError("blockHash", "must be a 0x-prefixed 32-byte hex hash")
    block, _ = read_block(reader(), raw, full=False, field="blockHash")
    return result(block)


@route("/tx/blocknumber")
def tx_block_number() -> tuple[Response, int]:
    """A block by number (thesis: blockNum)."""
    p = params()
    block, _ = read_block(reader(), _block_number(p), full=False, field="blockNum")
    return result(block)


@route("/tx/txhash")
def tx_by_hash() -> tuple[Response, int]:
    """A transaction by hash (thesis: txHash)."""
    tx, _ = read_transaction(reader(), required(params(), "txHash"), field="txHash")
    return result(tx)


@route("/tx/txNum")
def tx_num() -> tuple[Response, int]:
    """How many transactions a block holds (thesis: blockNum)."""
    count, _ = transaction_count(reader(), _block_number(params()), field="blockNum")
    return result(count)


@route("/tx/receipt")
def tx_receipt() -> tuple[Response, int]:
    """A transaction's receipt (thesis: txHash); the thesis returns its receiver, ``to``."""
    receipt, _ = read_receipt(reader(), required(params(), "txHash"), field="txHash")
    return result({"to": receipt.get("to"), "status": receipt.get("status"), "contract_address": receipt.get("contractAddress"),
                   "receipt": receipt})


def _block_number(p: dict[str, Any]) -> str:
    raw = required(p, "blockNum")
    if isinstance(raw, str) and raw in ("latest", "earliest", "pending"):
        return raw
    return str(integer(raw, "blockNum", low=0, high=2**63))
