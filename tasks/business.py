"""The private-equity platform's write operations, their confirm hooks, and deploying the platform.

Operations (Celery tasks ``tasks.writes.<name>``, built by ``@write_operation``):

=================  ==========  =================  ==============================================
operation          class       signed by          transactions
=================  ==========  =================  ==============================================
deploy_platform    deploy      treasury           PlatformToken, ProjectMarket, token.setOperator
deploy_contract    deploy      treasury           one contract (platform artifact or a payload)
token_add          call        treasury           token.add(address, value)
token_remove       call        treasury           token.remove(address, value)
token_set          call        treasury           token.set(address, value)
token_transfer     call        ``sender``         token.transfer(to, value)
publish            call        ``publisher``      market.publish(name, file hash, price)
buy                call        ``buyer``          market.buy(project id)
record_view        call        treasury           market.recordView(project id, account)
record_download    call        treasury           market.recordDownload(project id, account)
=================  ==========  =================  ==============================================

Task arguments are addresses, amounts, ids and hashes: a custom contract's ABI
and bytecode are stored in Redis under their SHA-256 (``store_payload``) and the
task gets the hash. A step that finds something wrong raises TaskFailed, which
ends the task record as failed (a plan function must not raise: the record would
stay queued).

Once confirmed, hooks add to the result: the platform's addresses (also saved in
Redis under PLATFORM_KEY, where every process finds them), a published project's
id (decoded from its ProjectPublished log), a purchase's price and fee.

Deploying the platform on a fresh devnet (what ``make up`` relies on): when the
control worker (the one consuming ``esp.control``) is ready, a ``worker_ready``
handler sends ``tasks.business.ensure_platform`` to ``esp.control``. That task
waits (retrying) for a node to answer, then deploys unless the platform recorded
in Redis is live on the current chain (same chain id, code at both addresses, as
the devnet leader sees it). A Redis lock holding the deploying task's id keeps a
second deploy from starting while one is in flight; the task checks again every
30 s until the platform is live (so a failed deploy is retried, up to 10 times).
ESP_DEPLOY_PLATFORM=0 turns it off. The task is safe to run at any time (from
beat, say, to redeploy after a devnet restart behind a running control worker).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from typing import Any

import redis
from celery import Celery, Task, shared_task
from celery.signals import worker_ready

from balancer import TaskKind
from contracts import PLATFORM_CONTRACTS, load_artifact
from contracts.abi import AbiError, artifact_abi, encode_call, encode_deploy, platform_decoder
from errors import NodeError, NoHealthyNode
from nodepool.codec import as_text
from nodepool.pool import Pool
from nodepool.rpc import RpcClient, to_int
from settings import Settings
from tasks.operations import OPERATIONS, on_confirmed
from tasks.sending import SendContext, TaskFailed, TxRequest
from tasks.status import TaskStore
from tasks.writes import Plan, treasury_address, write_operation

log = logging.getLogger(__name__)

#: Where every process finds the platform's addresses (JSON; see ``platform_record``).
PLATFORM_KEY = "esp:platform"
#: Held (value: the deploying task's id) while a platform deploy is in flight.
DEPLOY_LOCK_KEY = "esp:platform:deploying"
DEPLOY_LOCK_TTL = 600
#: Custom contracts' {abi, bytecode}, by SHA-256 of their canonical JSON.
PAYLOAD_KEY = "esp:payload:{}"

#: Explicit gas for steps that call or construct against a contract created earlier in the same
#: task: it is not mined when the step is signed, so eth_estimateGas cannot see it.
#: Measured on anvil 1.7.1: ProjectMarket's creation 1,277,610; setOperator 47,865.
MARKET_DEPLOY_GAS = 1_800_000
SET_OPERATOR_GAS = 80_000

CONTROL_QUEUE = "esp.control"
ENSURE_RETRY_SECONDS = 2.0
ENSURE_MAX_RETRIES = 90
ENSURE_RECHECKS = 10
ENSURE_RECHECK_SECONDS = 30.0


# -- helpers ---------------------------------------------------------------------------


def platform_record(client: redis.Redis) -> dict[str, Any] | None:
    """The deployed platform as recorded in Redis (addresses, chain id, deploy block...), or None."""
    raw = client.get(PLATFORM_KEY)
    return json.loads(raw) if raw else None


def store_payload(client: redis.Redis, abi: list[Any], bytecode: str, *, ttl: int) -> str:
    """Keep a custom contract's ABI and bytecode in Redis; return their SHA-256 (the task's argument)."""
    canonical = json.dumps({"abi": abi, "bytecode": bytecode}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    client.set(PAYLOAD_KEY.format(digest), canonical, ex=ttl)
    return digest


def load_payload(client: redis.Redis, digest: str) -> dict[str, Any] | None:
    """The {abi, bytecode} stored under ``digest``, or None when it expired."""
    raw = client.get(PAYLOAD_KEY.format(digest))
    if raw is None:
        return None
    if hashlib.sha256(raw if isinstance(raw, bytes) else str(raw).encode()).hexdigest() != digest:
        return None  # never deploy something other than what was hashed
    payload: dict[str, Any] = json.loads(raw)
    return payload


def _redis() -> redis.Redis:
    from tasks.context import writer

    return writer().pool.redis


def _call(address: str, abi_name: str, function: str, args: list[Any], *, gas: int | None = None,
          gas_price: int | None = None) -> TxRequest:
    try:
        data = encode_call(artifact_abi(abi_name), function, args)
    except AbiError as exc:
        raise TaskFailed(f"cannot encode {function}: {exc}", kind="bad-arguments") from None
    return TxRequest(to=address, data=data, gas=gas, gas_price=gas_price)


# -- deploys ------------------------------------------------------------------------------


@write_operation("deploy_platform", TaskKind.DEPLOY)
def deploy_platform(*, token_name: str, token_symbol: str, decimals: int, publish_reward: int, fee_bps: int,
                    fee_recipient: str | None = None, chain_id: int | None = None, gas_price: int | None = None,
                    reason: str = "api") -> Plan:
    """Deploy PlatformToken and ProjectMarket from the treasury and make the market a token operator."""
    treasury = treasury_address()
    token, market = load_artifact("PlatformToken"), load_artifact("ProjectMarket")
    price = int(gas_price) if gas_price is not None else None

    def deploy_token(ctx: SendContext) -> TxRequest:
        return TxRequest(to=None, data=encode_deploy(token["abi"], token["bytecode"], [token_name, token_symbol, int(decimals)]),
                         gas_price=price)

    def deploy_market(ctx: SendContext) -> TxRequest:
        args = [ctx.created[0], int(publish_reward), int(fee_bps), fee_recipient or treasury]
        return TxRequest(to=None, data=encode_deploy(market["abi"], market["bytecode"], args), gas=MARKET_DEPLOY_GAS,
                         gas_price=price)

    def set_operator(ctx: SendContext) -> TxRequest:
        return _call(ctx.created[0], "PlatformToken", "setOperator", [ctx.created[1], True], gas=SET_OPERATOR_GAS, gas_price=price)

    return Plan(treasury, [deploy_token, deploy_market, set_operator], result={"contract": "platform"})


@on_confirmed("deploy_platform")
def platform_deployed(params: dict[str, Any], receipts: list[dict[str, Any]], client: Any) -> dict[str, Any]:
    """Record the new platform's addresses in Redis for every process; release the deploy lock."""
    token, market = receipts[0].get("contractAddress"), receipts[1].get("contractAddress")
    if not token or not market:
        raise ValueError("the platform deploy's receipts carry no contract address")
    from eth_utils import to_checksum_address

    record = {
        "PlatformToken": to_checksum_address(token),
        "ProjectMarket": to_checksum_address(market),
        "chain_id": params.get("chain_id"),
        "deploy_block": min(to_int(r["blockNumber"]) for r in receipts),
        "deploy_tx": receipts[0]["transactionHash"],
        "deployed_at": time.time(),
        "owner": receipts[0].get("from"),
        "token_name": params.get("token_name"),
        "token_symbol": params.get("token_symbol"),
        "decimals": params.get("decimals"),
        "publish_reward": params.get("publish_reward"),
        "fee_bps": params.get("fee_bps"),
    }
    pipe = client.pipeline()
    pipe.set(PLATFORM_KEY, json.dumps(record))
    pipe.delete(DEPLOY_LOCK_KEY)
    pipe.execute()
    log.info("platform deployed: token %s, market %s (block %d)", record["PlatformToken"], record["ProjectMarket"],
             record["deploy_block"])
    return {"platform": {k: record[k] for k in ("PlatformToken", "ProjectMarket", "chain_id", "deploy_block")}}


@write_operation("deploy_contract", TaskKind.DEPLOY)
def deploy_contract(name: str | None = None, payload: str | None = None, args: list[Any] | None = None,
                    gas_price: int | None = None, gas_limit: int | None = None) -> Plan:
    """Deploy one contract from the treasury: a platform artifact by name, or a stored {abi, bytecode} payload."""

    def build(ctx: SendContext) -> TxRequest:
        if name is not None:
            artifact = load_artifact(name)
            abi, bytecode = artifact["abi"], artifact["bytecode"]
        else:
            stored = load_payload(_redis(), str(payload))
            if stored is None:
                raise TaskFailed(f"the contract payload {payload} is no longer stored (expired)", kind="payload-missing",
                                 field="bytecode")
            abi, bytecode = stored["abi"], stored["bytecode"]
        try:
            data = encode_deploy(abi, bytecode, list(args or []))
        except AbiError as exc:
            raise TaskFailed(f"cannot encode the constructor arguments: {exc}", kind="bad-arguments", field="args") from None
        return TxRequest(to=None, data=data, gas=int(gas_limit) if gas_limit else None,
                         gas_price=int(gas_price) if gas_price is not None else None)

    return Plan(treasury_address(), [build], result={"contract": name or "custom", "payload": payload})


# -- the token --------------------------------------------------------------------------------


def _owner_call(function: str, token: str, address: str, value: int) -> Plan:
    return Plan(treasury_address(), [lambda ctx: _call(token, "PlatformToken", function, [address, int(value)])],
                result={"token": token, "address": address, "value": str(value)})


@write_operation("token_add", TaskKind.CALL)
def token_add(token: str, address: str, value: int) -> Plan:
    """Mint ``value`` tokens to ``address`` (the treasury owns the token)."""
    return _owner_call("add", token, address, value)


@write_operation("token_remove", TaskKind.CALL)
def token_remove(token: str, address: str, value: int) -> Plan:
    """Burn ``value`` tokens from ``address``."""
    return _owner_call("remove", token, address, value)


@write_operation("token_set", TaskKind.CALL)
def token_set(token: str, address: str, value: int) -> Plan:
    """Make ``address``'s balance exactly ``value``."""
    return _owner_call("set", token, address, value)


@write_operation("token_transfer", TaskKind.CALL)
def token_transfer(token: str, sender: str, to: str, value: int) -> Plan:
    """Move ``value`` of ``sender``'s tokens to ``to`` (``sender`` signs: it must be unlocked)."""
    return Plan(sender, [lambda ctx: _call(token, "PlatformToken", "transfer", [to, int(value)])],
                result={"token": token, "to": to, "value": str(value)})


# -- the market ---------------------------------------------------------------------------------


@write_operation("publish", TaskKind.CALL)
def publish(market: str, publisher: str, name: str, file_hash: str, price: int, file_size: int | None = None,
            time: str | None = None) -> Plan:
    """Publish a project as ``publisher`` (who signs and is rewarded); ``file_size`` and ``time`` are only reported."""
    result: dict[str, Any] = {"market": market, "publisher": publisher, "file_hash": file_hash, "price": str(price)}
    if file_size is not None:
        result["file_size"] = int(file_size)
    if time is not None:
        result["time"] = time
    return Plan(publisher, [lambda ctx: _call(market, "ProjectMarket", "publish", [name, file_hash, int(price)])], result=result)


@on_confirmed("publish")
def project_published(params: dict[str, Any], receipts: list[dict[str, Any]], client: Any) -> dict[str, Any]:
    """The new project's id, from its ProjectPublished log."""
    decoded = platform_decoder().decode_all(receipts[0].get("logs") or [], address=params["market"])
    for event in decoded:
        if event.event == "ProjectPublished":
            return {"project_id": event.args["id"], "name": event.args["name"]}
    raise ValueError("the publish receipt has no ProjectPublished log")


@write_operation("buy", TaskKind.CALL)
def buy(market: str, buyer: str, project_id: int) -> Plan:
    """Buy project ``project_id`` as ``buyer`` (who signs and pays)."""
    return Plan(buyer, [lambda ctx: _call(market, "ProjectMarket", "buy", [int(project_id)])],
                result={"market": market, "buyer": buyer, "project_id": int(project_id)})


@on_confirmed("buy")
def project_purchased(params: dict[str, Any], receipts: list[dict[str, Any]], client: Any) -> dict[str, Any]:
    """What the purchase paid: price, platform fee and publisher, from its ProjectPurchased log."""
    for event in platform_decoder().decode_all(receipts[0].get("logs") or [], address=params["market"]):
        if event.event == "ProjectPurchased":
            return {"price": str(event.args["price"]), "fee": str(event.args["fee"]), "publisher": event.args["publisher"]}
    raise ValueError("the buy receipt has no ProjectPurchased log")


@write_operation("record_view", TaskKind.CALL)
def record_view(market: str, project_id: int, account: str) -> Plan:
    """Record on chain that ``account`` viewed project ``project_id``'s summary (treasury signs)."""
    return Plan(treasury_address(), [lambda ctx: _call(market, "ProjectMarket", "recordView", [int(project_id), account])],
                result={"market": market, "project_id": int(project_id), "account": account})


@write_operation("record_download", TaskKind.CALL)
def record_download(market: str, project_id: int, account: str) -> Plan:
    """Record on chain that ``account`` downloaded project ``project_id``'s file (treasury signs)."""
    return Plan(treasury_address(), [lambda ctx: _call(market, "ProjectMarket", "recordDownload", [int(project_id), account])],
                result={"market": market, "project_id": int(project_id), "account": account})


# -- deploying the platform when the chain has none ------------------------------------------------


def platform_params(settings: Settings, *, reason: str) -> dict[str, Any]:
    """The deploy_platform arguments the settings describe."""
    return {
        "token_name": settings.token_name, "token_symbol": settings.token_symbol, "decimals": settings.token_decimals,
        "publish_reward": settings.publish_reward, "fee_bps": settings.fee_bps, "chain_id": settings.chain_id,
        "reason": reason,
    }


def block_producer(pool: Pool) -> RpcClient:
    """A client of the node whose view of the chain is authoritative: the devnet leader, else the first that answers."""
    facts = pool.registry.pool()
    specs = pool.nodes()
    leader = facts.get("leader")
    ordered = sorted(specs, key=lambda s: s.id != leader)
    last: Exception | None = None
    for spec in ordered:
        client = pool.rpc(spec, timeout=pool.settings.probe_timeout * 3)
        try:
            client.call("eth_blockNumber")
            return client
        except NodeError as exc:
            last = exc
    raise NoHealthyNode(f"no node answers yet ({len(specs)} registered): {last}")


def is_live(record: dict[str, Any] | None, chain_id: int, client: RpcClient) -> bool:
    """Whether the recorded platform exists on the chain ``client`` serves."""
    if not record or record.get("chain_id") not in (None, chain_id):
        return False
    for name in PLATFORM_CONTRACTS:
        address = record.get(name)
        if not address:
            return False
        code = client.call("eth_getCode", [address, "latest"])
        if not code or code in ("0x", "0x0"):
            return False
    return True


def claim_deploy(client: redis.Redis, store: TaskStore, task_id: str) -> str | None:
    """Take the deploy lock for ``task_id``; return the id of an in-flight deploy holding it instead."""
    for _ in range(3):
        if client.set(DEPLOY_LOCK_KEY, task_id, nx=True, ex=DEPLOY_LOCK_TTL):
            return None
        holder_raw = client.get(DEPLOY_LOCK_KEY)
        if holder_raw is None:
            continue
        holder = as_text(holder_raw)
        record = store.find(holder)
        if record is not None and not record.is_final:
            return holder
        # The holder ended (failed, or confirmed without its hook running): the lock is stale.
        # Delete it only if it still names that holder (another process may have taken it since).
        with client.pipeline() as pipe:
            try:
                pipe.watch(DEPLOY_LOCK_KEY)
                if pipe.get(DEPLOY_LOCK_KEY) == holder_raw:
                    pipe.multi()
                    pipe.delete(DEPLOY_LOCK_KEY)
                    pipe.execute()
            except redis.WatchError:
                pass
    holder_raw = client.get(DEPLOY_LOCK_KEY)
    return as_text(holder_raw)


def hold_deploy_lock(client: redis.Redis, task_id: str) -> None:
    """Mark ``task_id`` (an admin's deploy) as the platform deploy in flight."""
    client.set(DEPLOY_LOCK_KEY, task_id, ex=DEPLOY_LOCK_TTL)


def enqueue(app: Celery, store: TaskStore, operation: str, params: dict[str, Any], task_id: str | None = None) -> str:
    """Create the task record and send the task, as the API's submit() does, from a worker."""
    op = OPERATIONS[operation]
    task_id = task_id or str(uuid.uuid4())
    store.create(task_id, operation, op.kind.value, params)
    app.send_task(op.task, kwargs=params, task_id=task_id)
    return task_id


def ensure_platform(pool: Pool, store: TaskStore, app: Celery) -> dict[str, Any]:
    """Deploy the platform unless it is live on the current chain or a deploy is in flight."""
    settings = pool.settings
    if not settings.deploy_platform:
        return {"action": "disabled"}
    client = block_producer(pool)
    record = platform_record(pool.redis)
    if is_live(record, settings.chain_id, client):
        return {"action": "live", "platform": record}
    task_id = str(uuid.uuid4())
    holder = claim_deploy(pool.redis, store, task_id)
    if holder is not None:
        return {"action": "in-flight", "task_id": holder}
    reason = "fresh-chain" if record else "none-recorded"
    try:
        enqueue(app, store, "deploy_platform", platform_params(settings, reason=reason), task_id)
    except Exception:
        pool.redis.delete(DEPLOY_LOCK_KEY)
        raise
    log.warning("the chain has no platform contracts (%s): deploy task %s enqueued", reason, task_id)
    return {"action": "enqueued", "task_id": task_id, "reason": reason}


@shared_task(bind=True, name="tasks.business.ensure_platform", queue=CONTROL_QUEUE, ignore_result=True,
             max_retries=ENSURE_MAX_RETRIES)
def ensure_platform_task(self: Task, recheck: int = 0) -> dict[str, Any]:
    """Deploy the platform contracts when the chain has none (waits for the pool to answer).

    After enqueueing a deploy (or finding one in flight) it checks again later, so a
    deploy that failed is tried again (at most ENSURE_RECHECKS times).
    """
    from tasks.context import writer

    w = writer()
    try:
        outcome = ensure_platform(w.pool, w.store, self.app)
    except (NodeError, NoHealthyNode) as exc:
        log.info("platform check waits for the pool: %s", exc)
        raise self.retry(countdown=ENSURE_RETRY_SECONDS, exc=exc) from None
    log.info("platform check: %s", outcome["action"])
    if outcome["action"] in ("enqueued", "in-flight") and recheck < ENSURE_RECHECKS:
        self.apply_async(kwargs={"recheck": recheck + 1}, countdown=ENSURE_RECHECK_SECONDS, queue=CONTROL_QUEUE)
    return outcome


@worker_ready.connect
def _ensure_platform_on_start(sender: Any = None, **_: Any) -> None:
    """On the control worker's start, check (once) that the platform is deployed."""
    try:
        queues = set((sender.app.amqp.queues.consume_from or {}).keys())
    except AttributeError:
        return
    if CONTROL_QUEUE not in queues:
        return
    try:
        ensure_platform_task.apply_async(queue=CONTROL_QUEUE)
    except Exception:  # a broker hiccup must not keep the worker from starting; the check can run later
        log.exception("could not schedule the platform check")
