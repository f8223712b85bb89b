"""The control tasks, run by beat on the control queue (a ``-P solo`` worker): thin wrappers of services.

- ``sample_pool``: the monitor samples every node into the balancer's snapshot (``services.monitor``);
- ``recycle_step``: the recycler advances by one step (``services.recycler``);
- ``track_receipts``: confirm, fail, re-broadcast or replace watched transactions (``services.receipts``);
- ``resend_kept``: send again the raw transactions ``/rpc`` accepted and no block holds yet (``gateway.kept``);
- ``sweep_outboxes``: a drain for every sender whose batched writes wait with no drain holding them
  (``services.outbox``: a drain message lost with its worker, a holder that died);
- ``ensure_platform``: deploy the platform contracts when the chain has none (``services.platform``);
  also run once when the control worker starts;
- ``node_head``: a node's chain id and head through the broker (a round-trip check).

Each task's name is declared here once; the beat schedule (``tasks.config``) uses these names.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task, shared_task
from celery.signals import worker_ready

from balancer import TaskKind
from errors import NodeError, NodeUnreachable, NoHealthyNode
from gateway.kept import KeptTransactions, resend_pass
from nodepool.spec import ROLE_LEADER
from services.monitor import MONITOR_LOCK_KEY, sample_pool
from services.plans import OPERATIONS
from services.platform import ensure_platform
from services.receipts import track
from services.recycler import recycle_step
from tasks.context import worker
from tasks.routing import CONTROL_QUEUE, QUEUES
from tasks.writes import DRAIN_SENDER, enqueue_on

log = logging.getLogger(__name__)

SAMPLE_POOL = "tasks.control.sample_pool"
RECYCLE_STEP = "tasks.control.recycle_step"
TRACK_RECEIPTS = "tasks.control.track_receipts"
RESEND_KEPT = "tasks.control.resend_kept"
SWEEP_OUTBOXES = "tasks.control.sweep_outboxes"
ENSURE_PLATFORM = "tasks.control.ensure_platform"
NODE_HEAD = "tasks.control.node_head"

ENSURE_RETRY_SECONDS = 2.0
ENSURE_MAX_RETRIES = 90
ENSURE_RECHECKS = 10
ENSURE_RECHECK_SECONDS = 30.0


@shared_task(bind=True, name=SAMPLE_POOL, queue=CONTROL_QUEUE, ignore_result=True)
def sample_pool_task(self: Task) -> None:
    """Beat task: sample the pool once (skipped while another sample still runs)."""
    w = worker(self.app.settings)
    pool = w.pool
    lock = pool.redis.lock(MONITOR_LOCK_KEY, timeout=max(2 * pool.settings.monitor_interval, 1.0), blocking=False)
    try:
        if not lock.acquire():
            log.info("previous pool sample still running: skipped")
            return
        try:
            sample_pool(pool, w.sampler, queues=QUEUES)
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass  # it expired while we sampled; the next beat takes it again
    except redis.RedisError as exc:
        log.warning("pool sample failed: Redis: %s", exc)


@shared_task(bind=True, name=RECYCLE_STEP, queue=CONTROL_QUEUE, ignore_result=True)
def recycle_step_task(self: Task) -> None:
    """Beat task: advance the recycler by one step."""
    try:
        result = recycle_step(worker(self.app.settings).pool)
    except redis.RedisError as exc:
        log.warning("recycler step failed: Redis: %s", exc)
        return
    if result["action"] not in ("idle", "stale", "busy"):
        log.info("recycler: %s", result)


@shared_task(bind=True, name=RESEND_KEPT, queue=CONTROL_QUEUE, ignore_result=True)
def resend_kept(self: Task) -> dict[str, int]:
    """Beat task: the raw transactions ``/rpc`` kept: forget the mined, send the others again (one pass)."""
    w = worker(self.app.settings)
    specs = sorted(w.pool.nodes(), key=lambda spec: spec.role != ROLE_LEADER)  # the block producer first
    try:
        return resend_pass(KeptTransactions(w.pool.redis), [w.pool.rpc(spec) for spec in specs],
                           depth=w.settings.rpc_reorg_depth)
    except redis.RedisError as exc:
        log.warning("kept transactions skipped: Redis: %s", exc)
        return {}


@shared_task(bind=True, name=TRACK_RECEIPTS, queue=CONTROL_QUEUE, ignore_result=True)
def track_receipts(self: Task) -> dict[str, int]:
    """Beat task: confirm, fail, re-broadcast or replace the watched transactions (one pass)."""
    w = worker(self.app.settings)
    try:
        clients = w.sender.clients(TaskKind.READ, None)
        return track(
            w.store, w.sender.watch, clients, confirmations=w.settings.confirmations,
            deadline_action=w.settings.tx_deadline_action, tx_deadline=w.settings.tx_deadline,
            signer=w.sender.signer, nonces=w.sender.nonces,
        )
    except NodeUnreachable as exc:
        log.warning("receipt check skipped: %s", exc)
        return {}


@shared_task(bind=True, name=SWEEP_OUTBOXES, queue=CONTROL_QUEUE, ignore_result=True)
def sweep_outboxes(self: Task) -> int:
    """Beat task: send a drain for every sender whose outbox waits, quiet, with no drain holding it."""
    try:
        senders = worker(self.app.settings).batcher.outbox.idle_senders()
    except redis.RedisError as exc:
        log.warning("outbox sweep failed: Redis: %s", exc)
        return 0
    for sender in senders:
        log.info("outbox of %s waits with no drain: one is sent", sender)
        self.app.tasks[DRAIN_SENDER].apply_async(kwargs={"sender": sender})
    return len(senders)


@shared_task(bind=True, name=ENSURE_PLATFORM, queue=CONTROL_QUEUE, ignore_result=True, max_retries=ENSURE_MAX_RETRIES)
def ensure_platform_task(self: Task, recheck: int = 0) -> dict[str, Any]:
    """Deploy the platform contracts when the chain has none (waits for the pool to answer).

    After enqueueing a deploy (or finding one in flight) it checks again later, so a
    deploy that failed is tried again (at most ENSURE_RECHECKS times).
    """
    w = worker(self.app.settings)
    try:
        outcome = ensure_platform(w.pool, w.store, enqueue_on(self.app), OPERATIONS["deploy_platform"])
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
        sender.app.tasks[ENSURE_PLATFORM].apply_async(queue=CONTROL_QUEUE)
    except Exception:  # a broker hiccup must not keep the worker from starting; the check can run later
        log.exception("could not enqueue the platform check")


@shared_task(bind=True, name=NODE_HEAD, queue=CONTROL_QUEUE)
def node_head(self: Task, node_id: str) -> dict[str, Any]:
    """Read a node's chain id and head block through the worker (a broker round trip)."""
    pool = worker(self.app.settings).pool
    spec = pool.registry.get(node_id)
    if spec is None:
        raise NodeError(f"no node {node_id!r} is registered", node_id=node_id)
    chain_id, head = pool.rpc(spec).batch([("eth_chainId", []), ("eth_blockNumber", [])])
    return {"node": node_id, "chain_id": int(chain_id, 16), "head": int(head, 16)}
