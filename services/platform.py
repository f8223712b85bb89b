"""The platform's contracts as ESP keeps track of them, and deploying them when the chain has none.

Every process finds the deployed platform's addresses in Redis (``platform_record``).
A custom contract's ABI and bytecode wait in Redis under their SHA-256 until its
deploy task runs (``store_payload``), so the task's argument is a hash.

Deploying the platform on a fresh devnet (what ``make up`` relies on): when the
control worker starts, it runs ``ensure_platform``, which waits for a node to
answer, then deploys unless the platform recorded in Redis is live on the current
chain (same chain id, code at both addresses, as the devnet leader sees it). A
Redis lock holding the deploying task's id keeps a second deploy from starting
while one is in flight; the control task checks again every 30 s until the
platform is live (so a failed deploy is retried, up to 10 times).
ESP_DEPLOY_PLATFORM=0 turns it off. It is safe to run at any time.

Redis, owned here::

    esp:platform             JSON: the deployed platform (addresses, chain id, deploy block, ...)
    esp:platform:deploying   the id of the deploy task in flight (a lock with a TTL)
    esp:payload:<sha256>     a custom contract's {abi, bytecode}, until its deploy runs
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

import redis

from contracts import PLATFORM_CONTRACTS
from errors import NodeError, NoHealthyNode
from nodepool.codec import as_text
from nodepool.failover import NoNodeAnswered, first_answer
from nodepool.pool import Pool
from nodepool.rpc import RpcClient
from services.operations import Enqueue, Operation
from services.records import TaskStore
from settings import Settings

log = logging.getLogger(__name__)

#: Where every process finds the platform's addresses (JSON; see ``platform_record``).
PLATFORM_KEY = "esp:platform"
#: Held (value: the deploying task's id) while a platform deploy is in flight.
DEPLOY_LOCK_KEY = "esp:platform:deploying"
DEPLOY_LOCK_TTL = 600
#: Custom contracts' {abi, bytecode}, by SHA-256 of their canonical JSON.
PAYLOAD_KEY = "esp:payload:{}"


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
    clients = [pool.rpc(spec, timeout=pool.settings.probe_timeout * 3) for spec in ordered]
    try:
        return first_answer(clients, lambda client: client.call("eth_blockNumber"), what="eth_blockNumber",
                            retry_on=(NodeError,))[0]
    except NoNodeAnswered as exc:
        raise NoHealthyNode(f"no node answers yet ({len(specs)} registered): {exc}") from None


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


def ensure_platform(pool: Pool, store: TaskStore, enqueue: Enqueue, deploy: Operation) -> dict[str, Any]:
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
        params = platform_params(settings, reason=reason)
        store.create(task_id, deploy.name, deploy.kind.value, params)
        enqueue(deploy, params, task_id)
    except Exception:
        pool.redis.delete(DEPLOY_LOCK_KEY)
        raise
    log.warning("the chain has no platform contracts (%s): deploy task %s enqueued", reason, task_id)
    return {"action": "enqueued", "task_id": task_id, "reason": reason}
