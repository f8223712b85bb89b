"""``eth_sendRawTransaction``: the signed bytes kept by hash, then sent by the write path's protocol.

The bytes are stored (``gateway.kept``) before any node sees them, so a node dying with them in its
pool loses nothing: the control worker's ``resend_kept`` sends them again until a block holds them.
They go to the pool's block producer first (a devnet's leader: its followers only relay), then to the
nodes the balancer would take writes on; ``wallet.broadcast`` (in a thread: it is the write path's
synchronous protocol) tells "taken" from "refused" from "maybe taken", and counts "already known" and
"nonce too low" with our hash on chain as taken. A refusal is passed on as the node gave it.
"""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis

from balancer import TaskKind
from gateway.kept import KEPT_KEY, KeptTransactions, RawTx, decode_raw
from gateway.methods import InvalidParams
from gateway.protocol import INVALID_PARAMS, NO_NODE, RpcFault
from gateway.state import Shared
from nodepool.placement import Placement, PlacementView
from nodepool.pool import Pool
from nodepool.rpc import RpcClient
from nodepool.spec import ROLE_LEADER
from wallet.broadcast import Broadcast, broadcast
from wallet.errors import BroadcastFailed, NonceTooLow, TxRejected

#: anvil's and geth's code for a refused transaction (EIP-1474: "transaction rejected").
TX_REJECTED = -32003


def producer(view: PlacementView) -> str | None:
    """The pool's block producer (a devnet's leader), or None for a pool of equals."""
    return next((s.id for s in view.specs.values() if s.role == ROLE_LEADER), None)


class RawSender:
    """Keeps and sends raw transactions for one gateway process."""

    def __init__(self, pool: Pool, placement: Placement, aredis: aioredis.Redis, *, rpc_timeout: float) -> None:
        self.pool = pool
        self.placement = placement
        self.redis = aredis
        self.rpc_timeout = rpc_timeout

    async def send(self, raw: str, state: Shared, chain_id: int | None) -> tuple[str, str | None]:
        """The transaction's hash, and the node that took it (None: kept, and a node may hold it). RpcFault otherwise."""
        try:
            tx = decode_raw(raw)
        except InvalidParams as exc:
            raise RpcFault(INVALID_PARAMS, f"invalid params: {exc}") from None
        if tx.chain_id is not None and chain_id is not None and tx.chain_id != chain_id:
            raise RpcFault(NO_NODE, f"invalid chain id: the transaction is signed for chain {tx.chain_id}, "
                           f"the pool serves chain {chain_id}")
        keep = self.redis.pipeline(transaction=True)
        KeptTransactions.keep_on(keep, tx)
        await keep.execute()  # kept before any node sees it, so that a node dying with it loses nothing
        try:
            sent = await self._broadcast(tx, state)
        except TxRejected as exc:
            await self._forget(tx.tx_hash)
            raise RpcFault(exc.node_code if exc.node_code is not None else NO_NODE, exc.node_message, exc.node_data) from None
        except NonceTooLow:
            await self._forget(tx.tx_hash)
            raise RpcFault(TX_REJECTED, "nonce too low") from None
        except BroadcastFailed as exc:
            if not exc.may_have_reached_node:
                await self._forget(tx.tx_hash)
                raise RpcFault(NO_NODE, str(exc)) from None
            return tx.tx_hash, None  # a node may hold it; kept, it is sent again until mined
        return tx.tx_hash, sent.node_id

    async def resend(self, tx_hash: str, state: Shared) -> bool:
        """Send kept bytes again now (a lookup found them nowhere); False when ``tx_hash`` is not kept.

        What then happens to them (mined, refused, replaced) is the beat's pass's to decide.
        """
        raw = await self.redis.get(KEPT_KEY.format(tx_hash.lower()))
        if raw is None:
            return False
        record = json.loads(raw)
        tx = RawTx(record["tx_hash"], record["raw"], record["nonce"], record.get("chain_id"))
        try:
            await self._broadcast(tx, state)
        except (TxRejected, NonceTooLow, BroadcastFailed):
            pass
        return True

    async def _broadcast(self, tx: RawTx, state: Shared) -> Broadcast:
        return await asyncio.to_thread(broadcast, tx.raw_bytes(), tx.tx_hash, self._senders(state), nonce=tx.nonce,
                                       timeout=self.rpc_timeout)

    async def _forget(self, tx_hash: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        KeptTransactions.forget_on(pipe, tx_hash)
        await pipe.execute()

    def _senders(self, state: Shared) -> list[RpcClient]:
        """The block producer first, then the nodes that may take writes, best first; nodes left alone last."""
        first = producer(state.view)
        specs = sorted(state.view.specs.values(), key=lambda s: (s.id != first, s.id in state.blocked,
                                                                not self.placement.is_eligible(s.id, TaskKind.CALL), s.id))
        return [self.pool.rpc(spec) for spec in specs]
