"""A fresh devnet behind an old Redis: what ESP kept about the old chain is forgotten, and its waiting tasks fail."""

from __future__ import annotations

from gateway.cache import cache_key
from gateway.kept import KEPT_KEY, KEPT_SET, KeptTransactions, RawTx
from gateway.shown import SEEN_KEY
from services.chainstate import reset_chain_state
from services.platform import DEPLOY_LOCK_KEY, PAYLOAD_KEY, PLATFORM_KEY
from services.records import CONFIRMED, FAILED, TaskStore
from services.watch import WATCH_SET, ReceiptWatch
from tests.conftest import DB_CHAINSTATE, fresh_redis
from wallet.broadcast import PREPARED_PREFIX
from wallet.nonces import PREFIX as NONCE_PREFIX


def test_reset_forgets_the_old_chain_and_fails_its_waiting_tasks() -> None:
    r = fresh_redis(DB_CHAINSTATE)
    store = TaskStore(r, ttl=3600)
    store.create("waiting", "send_eth", "call", {})
    store.create("done", "send_eth", "call", {})
    store.update("done", state=CONFIRMED)
    ReceiptWatch(r).add("waiting", ["0x" + "11" * 32], deadline=0)
    r.set(f"{NONCE_PREFIX}:31337:0xabc", "7")
    r.set(f"{NONCE_PREFIX}:1:0xabc", "3")  # another chain's nonces are not this devnet's to forget
    r.set(f"{PREPARED_PREFIX}waiting:0", "signed bytes")
    r.set(PLATFORM_KEY, "{}")
    r.set(DEPLOY_LOCK_KEY, "a-task")
    r.set(PAYLOAD_KEY.format("ab" * 32), "{}")  # a queued deploy's payload does not belong to a chain
    # What /rpc kept about the old chain: a cached block, raw bytes to re-send, the block a caller was shown.
    block_key = cache_key("eth_getBlockByNumber", ["0x1", False])
    r.set(block_key, "{}")
    KeptTransactions(r).keep(RawTx("0x" + "22" * 32, "0x02c0", 0, 31337))
    r.hset(SEEN_KEY.format("somekey"), "block", "40")

    deleted = reset_chain_state(r, 31337)

    assert deleted >= 5
    assert store.get("waiting").state == FAILED and store.get("waiting").error["type"] == "chain-reset"
    assert store.get("done").state == CONFIRMED
    assert not r.exists(WATCH_SET, f"{NONCE_PREFIX}:31337:0xabc", f"{PREPARED_PREFIX}waiting:0", PLATFORM_KEY, DEPLOY_LOCK_KEY)
    assert not r.exists(block_key, KEPT_SET, KEPT_KEY.format("0x" + "22" * 32), SEEN_KEY.format("somekey"))
    assert r.get(f"{NONCE_PREFIX}:1:0xabc") == b"3" and r.exists(PAYLOAD_KEY.format("ab" * 32))
