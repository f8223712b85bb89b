"""Devnet benchmark: block replay speed, catch-up of a restarted follower, 1,000 transactions on 3 and 8 nodes.

    .venv/bin/python -m bench.devnet            # about a minute on 2 cores
    .venv/bin/python -m bench.devnet --quick    # smaller counts, a smoke run

Real anvil processes (the process backend) in a temporary run folder; no Redis. Every phase is
bounded in count and time, and every node is stopped at the end. The figures go to
bench/results/devnet.json (and a summary to stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils import to_checksum_address

from nodepool.rpc import RpcClient, to_int
from nodepool.spec import ROLE_FOLLOWER
from nodes.devnet.devnet import Devnet
from nodes.devnet.importer import BlockImporter
from nodes.process import ProcessBackend
from settings import ROOT, Settings

RESULTS = ROOT / "bench" / "results" / "devnet.json"
MNEMONIC = "test test test test test test test test test test test junk"
CHAIN_ID = 31337
SENDERS = 10
PHASE_TIMEOUT = 120.0


@dataclass(frozen=True)
class Signed:
    tx_hash: str
    raw: str


class Signer:
    """Transfers from anvil's dev accounts with explicit nonces, round-robin over the senders."""

    def __init__(self, senders: int = SENDERS) -> None:
        Account.enable_unaudited_hdwallet_features()
        self.accounts = [Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(senders)]
        self.nonces = [0] * senders
        self.count = 0

    def transfers(self, n: int) -> list[Signed]:
        """``n`` signed transfers, sender i mod SENDERS, each to a fresh-looking recipient."""
        out = []
        for _ in range(n):
            k = self.count % len(self.accounts)
            signed = self.accounts[k].sign_transaction(
                {"chainId": CHAIN_ID, "nonce": self.nonces[k], "to": to_checksum_address(f"0x{0xE5B0000 + self.count % 64:040x}"),
                 "value": 1 + self.count, "gas": 21000, "maxFeePerGas": 100 * 10**9, "maxPriorityFeePerGas": 10**9}
            )
            self.nonces[k] += 1
            self.count += 1
            out.append(Signed(signed.hash.to_0x_hex(), signed.raw_transaction.to_0x_hex()))
        return out


def settings_for(run_dir: Path, **env: str) -> Settings:
    return Settings.from_env({"ESP_RUN_DIR": str(run_dir), "ESP_KEYSTORE_DIR": str(run_dir / "keystore"), **env})


def all_receipts(client: RpcClient, hashes: Sequence[str], *, timeout: float) -> None:
    """Poll until every transaction has a receipt on this node; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    missing = list(hashes)
    while missing:
        got: list[Any] = []
        for i in range(0, len(missing), 250):
            got += client.batch([("eth_getTransactionReceipt", [h]) for h in missing[i : i + 250]])
        missing = [h for h, r in zip(missing, got, strict=True) if r is None]
        if missing:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} transactions without a receipt on {client.url}")
            time.sleep(0.05)


# -- phase 1: replay speed ------------------------------------------------------------


def bench_replay(run_dir: Path, *, single: int, big_blocks: int, big_size: int, empty: int) -> dict[str, Any]:
    """Import speed of one follower (BlockImporter alone): 1-tx blocks, full blocks, empty blocks."""
    backend = ProcessBackend(settings_for(run_dir / "replay", ESP_BLOCK_TIME="1"))
    out: dict[str, Any] = {}
    try:
        # The "leader" mines by hand (no-mining flags, evm_mine), so the chain is exactly what is measured.
        leader = RpcClient(backend.start("lead", role=ROLE_FOLLOWER).url, timeout=30)
        follower = RpcClient(backend.start("follow", role=ROLE_FOLLOWER).url, timeout=30)
        importer = BlockImporter(follower, node_id="follow")
        signer = Signer()
        segments: list[tuple[str, int, int, int]] = []  # name, first block, last block, transactions

        start = to_int(leader.call("eth_blockNumber")) + 1
        for t in signer.transfers(single):
            leader.call("eth_sendRawTransaction", [t.raw])
            leader.call("evm_mine")
        segments.append(("one_tx_blocks", start, start + single - 1, single))

        start = to_int(leader.call("eth_blockNumber")) + 1
        for _ in range(big_blocks):
            txs = signer.transfers(big_size)
            for i in range(0, len(txs), 200):
                leader.batch([("eth_sendRawTransaction", [t.raw]) for t in txs[i : i + 200]])
            leader.call("evm_mine")
        segments.append(("full_blocks", start, start + big_blocks - 1, big_blocks * big_size))

        start = to_int(leader.call("eth_blockNumber")) + 1
        leader.call("anvil_mine", [hex(empty), hex(1)])
        segments.append(("empty_blocks", start, start + empty - 1, 0))

        for name, first, last, tx_count in segments:
            began = time.perf_counter()
            head = first - 1
            while head < last:
                head = importer.import_range(leader, head + 1, min(last, head + 64))
            seconds = time.perf_counter() - began
            blocks = last - first + 1
            out[name] = {
                "blocks": blocks,
                "transactions": tx_count,
                "seconds": round(seconds, 3),
                "blocks_per_s": round(blocks / seconds, 1),
                "tx_per_s": round(tx_count / seconds, 1) if tx_count else None,
            }
        same = follower.call("eth_getBlockByNumber", ["latest", False])["hash"] == leader.call("eth_getBlockByNumber", ["latest", False])["hash"]
        out["identical_head"] = same
        out["imports_redone"] = importer.rollbacks
        leader.close()
        follower.close()
    finally:
        backend.close()
    return out


# -- phase 2: catch-up of a restarted follower ----------------------------------------


def bench_catch_up(run_dir: Path, *, transactions: int) -> dict[str, Any]:
    """Devnet of 3 (automine): ``transactions`` 1-tx blocks, then restart a follower and time its catch-up."""
    settings = settings_for(run_dir / "catchup", ESP_BLOCK_TIME="0", ESP_NODE_COUNT="3")
    devnet = Devnet(settings, ProcessBackend(settings))
    try:
        devnet.start()
        leader = devnet.client("node-0")
        txs = Signer().transfers(transactions)
        for t in txs:
            leader.call("eth_sendRawTransaction", [t.raw])
        all_receipts(leader, [t.tx_hash for t in txs], timeout=PHASE_TIMEOUT)
        head = devnet.wait_all_synced(timeout=PHASE_TIMEOUT)
        began = time.perf_counter()
        devnet.restart("node-2", timeout=PHASE_TIMEOUT)
        seconds = time.perf_counter() - began
        st = devnet.status()["node-2"]
        return {
            "blocks": head,
            "transactions": transactions,
            "restart_to_caught_up_s": round(seconds, 3),
            "blocks_per_s": round(head / seconds, 1),
            "imported_blocks": st.imported_blocks,
            "imported_txs": st.imported_txs,
        }
    finally:
        devnet.close()


# -- phase 3: 1,000 transactions round-robin -----------------------------------------


def bench_thousand(run_dir: Path, *, nodes: int, block_time: str, count: int) -> dict[str, Any]:
    """``count`` transfers sent round-robin to every node; time until every node has every receipt and one head."""
    settings = settings_for(run_dir / f"tx-{nodes}-{block_time}", ESP_BLOCK_TIME=block_time, ESP_NODE_COUNT=str(nodes))
    devnet = Devnet(settings, ProcessBackend(settings))
    try:
        specs = devnet.start()
        txs = Signer().transfers(count)
        clients = [RpcClient(s.url, timeout=10) for s in specs]
        began = time.perf_counter()

        def send(i: int) -> None:
            clients[i % len(clients)].call("eth_sendRawTransaction", [txs[i].raw])

        # Automine: one client thread (bursts from many at once stalled anvil's automine here).
        with ThreadPoolExecutor(max_workers=1 if block_time == "0" else 4) as pool:
            list(pool.map(send, range(count)))
        sent = time.perf_counter() - began
        hashes = [t.tx_hash for t in txs]
        all_receipts(devnet.client(devnet.leader_id), hashes, timeout=PHASE_TIMEOUT)
        mined = time.perf_counter() - began
        for client in clients:
            all_receipts(client, hashes, timeout=PHASE_TIMEOUT)
        head = devnet.wait_all_synced(timeout=PHASE_TIMEOUT)
        everywhere = time.perf_counter() - began
        hashes_at_head = {c.call("eth_getBlockByNumber", [hex(head), False])["hash"] for c in clients}
        status = devnet.status()
        for client in clients:
            client.close()
        return {
            "nodes": nodes,
            "block_time_s": float(block_time),
            "transactions": count,
            "send_s": round(sent, 3),
            "all_mined_on_leader_s": round(mined, 3),
            "all_receipts_on_every_node_s": round(everywhere, 3),
            "blocks": head,
            "one_chain": len(hashes_at_head) == 1,
            "imports_redone": sum(s.rollbacks for s in status.values()),
        }
    finally:
        devnet.close()


def main(argv: list[str] | None = None) -> int:
    """Run every phase and write bench/results/devnet.json."""
    parser = argparse.ArgumentParser(prog="python -m bench.devnet", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    scale = 0.2 if args.quick else 1.0
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="esp-bench-devnet-") as tmp:
        run_dir = Path(tmp)
        results["replay"] = bench_replay(run_dir, single=int(500 * scale), big_blocks=max(1, int(4 * scale)), big_size=1000, empty=int(1000 * scale))
        results["catch_up"] = bench_catch_up(run_dir, transactions=int(500 * scale))
        count = max(100, int(1000 * scale))
        results["thousand_tx"] = [
            bench_thousand(run_dir, nodes=3, block_time="0.25", count=count),
            bench_thousand(run_dir, nodes=8, block_time="0.25", count=count),
            bench_thousand(run_dir, nodes=3, block_time="1", count=count),
            bench_thousand(run_dir, nodes=8, block_time="1", count=count),
            bench_thousand(run_dir, nodes=3, block_time="0", count=count),
        ]
    results["seconds"] = round(time.monotonic() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    replay = results["replay"]
    print(f"replay: {replay['one_tx_blocks']['blocks_per_s']} blocks/s (1-tx blocks), "
          f"{replay['full_blocks']['tx_per_s']} tx/s (full blocks), {replay['empty_blocks']['blocks_per_s']} empty blocks/s")
    c = results["catch_up"]
    print(f"catch-up: restarted follower at {c['blocks']} blocks ready in {c['restart_to_caught_up_s']} s")
    for r in results["thousand_tx"]:
        print(f"{r['transactions']} tx, {r['nodes']} nodes, block time {r['block_time_s']} s: every receipt on every node in "
              f"{r['all_receipts_on_every_node_s']} s (sent in {r['send_s']} s, {r['blocks']} blocks, one chain: {r['one_chain']})")
    print(f"wrote {args.out} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
