"""ESP's write operations: what each sends, and what its confirmation adds to the result.

The write operations (one Celery task each, made by ``tasks.writes``; every call-class one is
``batched``: sent in one batch with its sender's other queued calls, ``services.batch``):

=================  ==========  =================  ==============================================
operation          class       signed by          transactions
=================  ==========  =================  ==============================================
fund_account       accounts    treasury           gas money to a new account
send_eth           call        ``sender``         ETH to ``to``
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
and bytecode are stored in Redis under their SHA-256 (``services.platform.store_payload``) and the
task gets the hash. A step that finds something wrong raises TaskFailed, which
ends the task record as failed (a plan function must not raise: the record would
stay queued).

Once confirmed, hooks add to the result: the platform's addresses (also saved in
Redis under PLATFORM_KEY, where every process finds them), a published project's
id (decoded from its ProjectPublished log), a purchase's price and fee.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from eth_utils import to_checksum_address

from balancer import TaskKind
from contracts import load_artifact
from contracts.abi import AbiError, artifact_abi, encode_call, encode_deploy, platform_decoder
from nodepool.rpc import to_int
from services.operations import Operation, Plan, Planning
from services.platform import DEPLOY_LOCK_KEY, PLATFORM_KEY, load_payload
from services.sending import SendContext, TaskFailed, TxRequest

log = logging.getLogger(__name__)

#: Explicit gas for steps that call or construct against a contract created earlier in the same
#: task: it is not mined when the step is signed, so eth_estimateGas cannot see it.
#: Measured on anvil 1.7.1: ProjectMarket's creation 1,277,610; setOperator 47,865.
MARKET_DEPLOY_GAS = 1_800_000
SET_OPERATOR_GAS = 80_000


def _call(address: str, abi_name: str, function: str, args: list[Any], *, gas: int | None = None,
          gas_price: int | None = None) -> TxRequest:
    try:
        data = encode_call(artifact_abi(abi_name), function, args)
    except AbiError as exc:
        raise TaskFailed(f"cannot encode {function}: {exc}", kind="bad-arguments") from None
    return TxRequest(to=address, data=data, gas=gas, gas_price=gas_price)


# -- ETH -------------------------------------------------------------------------------------


def fund_account(planning: Planning, address: str, value_wei: int) -> Plan:
    """Send gas money from the treasury to a new account."""
    return Plan(planning.treasury, [lambda ctx: TxRequest(to=address, value=int(value_wei), gas=21_000)],
                result={"address": address, "funded_wei": str(value_wei)})


def send_eth(planning: Planning, sender: str, to: str, value_wei: int) -> Plan:
    """Send ETH from an unlocked ESP account (or the treasury)."""
    return Plan(sender, [lambda ctx: TxRequest(to=to, value=int(value_wei), gas=21_000)],
                result={"to": to, "value_wei": str(value_wei)})


# -- deploys ------------------------------------------------------------------------------


def deploy_platform(planning: Planning, *, token_name: str, token_symbol: str, decimals: int, publish_reward: int, fee_bps: int,
                    fee_recipient: str | None = None, chain_id: int | None = None, gas_price: int | None = None,
                    reason: str = "api") -> Plan:
    """Deploy PlatformToken and ProjectMarket from the treasury and make the market a token operator."""
    treasury = planning.treasury
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


def platform_deployed(params: dict[str, Any], receipts: list[dict[str, Any]], client: Any) -> dict[str, Any]:
    """Record the new platform's addresses in Redis for every process; release the deploy lock."""
    token, market = receipts[0].get("contractAddress"), receipts[1].get("contractAddress")
    if not token or not market:
        raise ValueError("the platform deploy's receipts carry no contract address")
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


def deploy_contract(planning: Planning, name: str | None = None, payload: str | None = None, args: list[Any] | None = None,
                    gas_price: int | None = None, gas_limit: int | None = None) -> Plan:
    """Deploy one contract from the treasury: a platform artifact by name, or a stored {abi, bytecode} payload."""

    def build(ctx: SendContext) -> TxRequest:
        if name is not None:
            artifact = load_artifact(name)
            abi, bytecode = artifact["abi"], artifact["bytecode"]
        else:
            stored = load_payload(planning.redis, str(payload))
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

    return Plan(planning.treasury, [build], result={"contract": name or "custom", "payload": payload})


# -- the token --------------------------------------------------------------------------------


def _owner_call(planning: Planning, function: str, token: str, address: str, value: int) -> Plan:
    return Plan(planning.treasury, [lambda ctx: _call(token, "PlatformToken", function, [address, int(value)])],
                result={"token": token, "address": address, "value": str(value)})


def token_add(planning: Planning, token: str, address: str, value: int) -> Plan:
    """Mint ``value`` tokens to ``address`` (the treasury owns the token)."""
    return _owner_call(planning, "add", token, address, value)


def token_remove(planning: Planning, token: str, address: str, value: int) -> Plan:
    """Burn ``value`` tokens from ``address``."""
    return _owner_call(planning, "remove", token, address, value)


def token_set(planning: Planning, token: str, address: str, value: int) -> Plan:
    """Make ``address``'s balance exactly ``value``."""
    return _owner_call(planning, "set", token, address, value)


def token_transfer(planning: Planning, token: str, sender: str, to: str, value: int) -> Plan:
    """Move ``value`` of ``sender``'s tokens to ``to`` (``sender`` signs: it must be unlocked)."""
    return Plan(sender, [lambda ctx: _call(token, "PlatformToken", "transfer", [to, int(value)])],
                result={"token": token, "to": to, "value": str(value)})


# -- the market ---------------------------------------------------------------------------------


def publish(planning: Planning, market: str, publisher: str, name: str, file_hash: str, price: int, file_size: int | None = None,
            time: str | None = None) -> Plan:
    """Publish a project as ``publisher`` (who signs and is rewarded); ``file_size`` and ``time`` are only reported."""
    result: dict[str, Any] = {"market": market, "publisher": publisher, "file_hash": file_hash, "price": str(price)}
    if file_size is not None:
        result["file_size"] = int(file_size)
    if time is not None:
        result["time"] = time
    return Plan(publisher, [lambda ctx: _call(market, "ProjectMarket", "publish", [name, file_hash, int(price)])], result=result)


def project_published(params: dict[str, Any], receipts: list[dict[str, Any]], client: Any) -> dict[str, Any]:
    """The new project's id, from its ProjectPublished log."""
    decoded = platform_decoder().decode_all(receipts[0].get("logs") or [], address=params["market"])
    for event in decoded:
        if event.event == "ProjectPublished":
            return {"project_id": event.args["id"], "name": event.args["name"]}
    raise ValueError("the publish receipt has no ProjectPublished log")


def buy(planning: Planning, market: str, buyer: str, project_id: int) -> Plan:
    """Buy project ``project_id`` as ``buyer`` (who signs and pays)."""
    return Plan(buyer, [lambda ctx: _call(market, "ProjectMarket", "buy", [int(project_id)])],
                result={"market": market, "buyer": buyer, "project_id": int(project_id)})


def project_purchased(params: dict[str, Any], receipts: list[dict[str, Any]], client: Any) -> dict[str, Any]:
    """What the purchase paid: price, platform fee and publisher, from its ProjectPurchased log."""
    for event in platform_decoder().decode_all(receipts[0].get("logs") or [], address=params["market"]):
        if event.event == "ProjectPurchased":
            return {"price": str(event.args["price"]), "fee": str(event.args["fee"]), "publisher": event.args["publisher"]}
    raise ValueError("the buy receipt has no ProjectPurchased log")


def record_view(planning: Planning, market: str, project_id: int, account: str) -> Plan:
    """Record on chain that ``account`` viewed project ``project_id``'s summary (treasury signs)."""
    return Plan(planning.treasury, [lambda ctx: _call(market, "ProjectMarket", "recordView", [int(project_id), account])],
                result={"market": market, "project_id": int(project_id), "account": account})


def record_download(planning: Planning, market: str, project_id: int, account: str) -> Plan:
    """Record on chain that ``account`` downloaded project ``project_id``'s file (treasury signs)."""
    return Plan(planning.treasury, [lambda ctx: _call(market, "ProjectMarket", "recordDownload", [int(project_id), account])],
                result={"market": market, "project_id": int(project_id), "account": account})


#: Every write operation, by name: the one list the API, the Celery edge and the receipt tracker share.
OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("fund_account", TaskKind.ACCOUNT, fund_account),
    Operation("send_eth", TaskKind.CALL, send_eth, batched=True),
    Operation("deploy_platform", TaskKind.DEPLOY, deploy_platform, on_confirmed=platform_deployed),
    Operation("deploy_contract", TaskKind.DEPLOY, deploy_contract),
    Operation("token_add", TaskKind.CALL, token_add, batched=True),
    Operation("token_remove", TaskKind.CALL, token_remove, batched=True),
    Operation("token_set", TaskKind.CALL, token_set, batched=True),
    Operation("token_transfer", TaskKind.CALL, token_transfer, batched=True),
    Operation("publish", TaskKind.CALL, publish, on_confirmed=project_published, batched=True),
    Operation("buy", TaskKind.CALL, buy, on_confirmed=project_purchased, batched=True),
    Operation("record_view", TaskKind.CALL, record_view, batched=True),
    Operation("record_download", TaskKind.CALL, record_download, batched=True),
)}
