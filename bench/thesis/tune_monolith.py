"""Choose the control's gunicorn configuration by trying: a bounded read+write mix against each.

    .venv/bin/python -m bench.thesis.tune_monolith            # 4 configurations x 2 rounds, ~3.5 minutes on 2 cores
    .venv/bin/python -m bench.thesis.tune_monolith --ops 400 --concurrency 100   # smaller

Each configuration gets a fresh anvil (started as ESP starts its nodes, 1 s blocks) and a
fresh monolith with ESP's scrypt cost, a few accounts created and unlocked beforehand,
then ``--ops`` operations of the thesis's Table 5.1 mix fired at ``--concurrency`` over
loopback (httpx, asyncio), capped at ``--cap`` seconds. Every configuration runs ``--rounds``
times, interleaved, because other work shares the cores; the best is the one with the fewest
failed operations, then the shortest median completion time. The figures of each and the
choice go to bench/results/monolith_config.json, for the thesis runner to start the control with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from random import Random
from typing import Any

import httpx
import psutil

from bench.thesis.servers import MonolithServer, SingleNode
from settings import ROOT
from wallet.kdf import DEFAULT_SCRYPT_N

RESULTS = ROOT / "bench" / "results" / "monolith_config.json"
#: (worker class, workers, threads): gthread with few processes and many threads, and sync processes.
CONFIGS: tuple[tuple[str, int, int], ...] = (("gthread", 2, 16), ("gthread", 4, 32), ("gthread", 4, 64), ("sync", 8, 1))
#: The thesis's Table 5.1, in percent.
MIX = {"balance": 20, "main_account": 5, "node_accounts": 5, "block_number": 10, "create_account": 5,
       "list_accounts": 5, "unlock": 5, "send": 30, "receipt": 5, "tx_by_hash": 5, "deploy": 5}
PASSWORD = "tuning passphrase"
SINK = "0x000000000000000000000000000000000000dEaD"
SENDERS = 4
UNLOCK_SECONDS = 3600
REQUEST_TIMEOUT = 120.0


@dataclass
class Figures:
    """What one configuration did with the mix."""

    config: str
    worker_class: str
    workers: int
    threads: int
    ops: int
    concurrency: int
    completion_s: float = 0.0
    throughput_ops_s: float = 0.0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    p50_ms_by_op: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    capped: bool = False


def sequence(count: int, seed: int) -> list[str]:
    """``count`` operations in the mix's proportions (largest remainder), shuffled by ``seed``."""
    exact = {op: weight * count / 100 for op, weight in MIX.items()}
    whole = {op: int(share) for op, share in exact.items()}
    for op in sorted(MIX, key=lambda op: whole[op] - exact[op])[: count - sum(whole.values())]:
        whole[op] += 1
    ops = [op for op, n in whole.items() for _ in range(n)]
    Random(seed).shuffle(ops)
    return ops


class Driver:
    """Turns an operation name into the monolith's route, with the accounts and hashes set up beforehand."""

    def __init__(self, client: httpx.AsyncClient, senders: list[str], tx_hash: str) -> None:
        self.client = client
        self.senders = senders
        self.hashes = [tx_hash]
        self.turn = 0

    def _sender(self) -> str:
        self.turn += 1
        return self.senders[self.turn % len(self.senders)]

    async def call(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        response = await self.client.request(method, path, json=body)
        if response.status_code >= 400:
            raise OpFailed(f"http_{response.status_code}")
        answer: dict[str, Any] = response.json()
        return answer

    async def run(self, op: str) -> None:
        """One operation of the mix, done when the monolith answers."""
        if op == "balance":
            await self.call("GET", f"/balance/{self._sender()}")
        elif op == "main_account":
            await self.call("GET", "/main-account")
        elif op == "node_accounts":
            await self.call("GET", "/node-accounts")
        elif op == "block_number":
            await self.call("GET", "/block-number")
        elif op == "create_account":
            await self.call("POST", "/accounts", {"password": PASSWORD})
        elif op == "list_accounts":
            await self.call("GET", "/accounts")
        elif op == "unlock":
            await self.call("POST", f"/accounts/{self._sender()}/unlock", {"password": PASSWORD, "seconds": UNLOCK_SECONDS})
        elif op == "send":
            sent = await self.call("POST", "/transactions", {"from": self._sender(), "to": SINK, "value_wei": "1"})
            self.hashes.append(sent["tx_hash"])
        elif op == "receipt":
            await self.call("GET", f"/transactions/{self.hashes[-1]}/receipt")
        elif op == "tx_by_hash":
            await self.call("GET", f"/transactions/{self.hashes[-1]}")
        elif op == "deploy":
            await self.call("POST", "/contracts", {"name": "PlatformToken"})
        else:
            raise ValueError(f"unknown operation {op}")


class OpFailed(Exception):
    """An operation answered with an error status."""


async def prepare(client: httpx.AsyncClient) -> Driver:
    """Create and unlock the senders, and send one transfer whose hash the hash reads use."""
    created = await asyncio.gather(*(client.post("/accounts", json={"password": PASSWORD}) for _ in range(SENDERS)))
    senders = [response.raise_for_status().json()["address"] for response in created]
    for address in senders:
        (await client.post(f"/accounts/{address}/unlock", json={"password": PASSWORD, "seconds": UNLOCK_SECONDS})).raise_for_status()
    sent = await client.post("/transactions", json={"from": senders[0], "to": SINK, "value_wei": "1"})
    return Driver(client, senders, sent.raise_for_status().json()["tx_hash"])


async def fire(server: MonolithServer, ops: list[str], concurrency: int, cap_s: float, figures: Figures) -> None:
    """Send ``ops`` with at most ``concurrency`` in flight, for at most ``cap_s`` seconds; fill ``figures``."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=REQUEST_TIMEOUT) as client:
        driver = await prepare(client)
        latencies: dict[str, list[float]] = {op: [] for op in MIX}
        errors: Counter[str] = Counter()
        pending = iter(ops)
        peak_rss = 0.0

        async def worker() -> None:
            for op in pending:
                start = time.perf_counter()
                try:
                    await driver.run(op)
                except (OpFailed, httpx.HTTPError) as exc:
                    errors[str(exc) if isinstance(exc, OpFailed) else type(exc).__name__] += 1
                else:
                    latencies[op].append(time.perf_counter() - start)

        async def sample() -> None:
            nonlocal peak_rss
            while True:
                peak_rss = max(peak_rss, rss_mb(server.pids()))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), cap_s)
        except TimeoutError:
            figures.capped = True
        finally:
            sampler.cancel()
        elapsed = time.perf_counter() - started
    every = sorted(x for values in latencies.values() for x in values)
    figures.completion_s = round(elapsed, 2)
    figures.ok = len(every)
    figures.throughput_ops_s = round(len(every) / elapsed, 1)
    figures.errors = dict(errors)
    if figures.capped:
        figures.errors["not_done_in_cap"] = len(ops) - figures.ok - sum(errors.values())
    if every:
        figures.p50_ms, figures.p95_ms, figures.p99_ms = (round(1000 * percentile(every, q), 1) for q in (50, 95, 99))
    figures.p50_ms_by_op = {op: round(1000 * statistics.median(values), 1) for op, values in latencies.items() if values}
    figures.peak_rss_mb = round(peak_rss, 1)


def percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile of sorted values (nearest rank)."""
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes together, in MiB."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def try_config(worker_class: str, workers: int, threads: int, *, ops: list[str], concurrency: int, cap_s: float,
               scrypt_n: int, block_time: float) -> Figures:
    """One configuration on a fresh node and a fresh monolith."""
    label = f"gthread {workers}x{threads}" if worker_class == "gthread" else f"sync {workers}"
    figures = Figures(label, worker_class, workers, threads, len(ops), concurrency)
    with tempfile.TemporaryDirectory(prefix="esp-tune-") as tmp, SingleNode(Path(tmp), block_time=block_time) as node, \
            MonolithServer(node.url, Path(tmp), workers=workers, threads=threads, worker_class=worker_class,
                           scrypt_n=scrypt_n) as server:
        asyncio.run(fire(server, ops, concurrency, cap_s, figures))
    return figures


def summarise(tried: list[Figures]) -> list[dict[str, Any]]:
    """Per configuration: its rounds' failed operations (summed) and median completion time and p99."""
    by_config: dict[str, list[Figures]] = {}
    for figures in tried:
        by_config.setdefault(figures.config, []).append(figures)
    return [{"config": label, "worker_class": runs[0].worker_class, "workers": runs[0].workers, "threads": runs[0].threads,
             "rounds": len(runs), "failed_ops": sum(f.ops - f.ok for f in runs),
             "median_completion_s": round(statistics.median(f.completion_s for f in runs), 2),
             "median_p99_ms": round(statistics.median(f.p99_ms for f in runs), 1)}
            for label, runs in by_config.items()]


def best(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """Fewest failed operations, then the shortest median completion time."""
    return min(summary, key=lambda s: (s["failed_ops"], s["median_completion_s"]))


def main(argv: list[str] | None = None) -> int:
    """Try each configuration, print a line per configuration, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=600, help="operations per configuration (default 600)")
    parser.add_argument("--concurrency", type=int, default=200, help="operations in flight (default 200)")
    parser.add_argument("--cap", type=float, default=50.0, help="seconds one configuration's run may take (default 50)")
    parser.add_argument("--scrypt-n", type=int, default=DEFAULT_SCRYPT_N, help="keystore scrypt N (default ESP's, geth's standard 2**18)")
    parser.add_argument("--block-time", type=float, default=1.0, help="seconds between blocks (default ESP's 1.0)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every configuration, interleaved (default 2)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not 1 <= args.ops <= 5000 or not 1 <= args.concurrency <= 1200 or not 1 <= args.cap <= 120 or not 1 <= args.rounds <= 5:
        parser.error("keep it bounded: --ops 1..5000, --concurrency 1..1200, --cap 1..120 s, --rounds 1..5")
    ops = sequence(args.ops, args.seed)
    tried = []
    load_before = psutil.getloadavg()
    # Interleaved rounds: a burst of other work on the shared cores then hits every configuration, not one.
    for worker_class, workers, threads in [config for _ in range(args.rounds) for config in CONFIGS]:
        figures = try_config(worker_class, workers, threads, ops=ops, concurrency=args.concurrency, cap_s=args.cap,
                             scrypt_n=args.scrypt_n, block_time=args.block_time)
        tried.append(figures)
        print(f"{figures.config:>14}: {figures.completion_s:6.1f} s, {figures.throughput_ops_s:6.1f} ops/s, "
              f"p50 {figures.p50_ms:.0f} ms, p99 {figures.p99_ms:.0f} ms, ok {figures.ok}/{figures.ops}, "
              f"errors {figures.errors or 0}, peak RSS {figures.peak_rss_mb:.0f} MiB", flush=True)
    summary = summarise(tried)
    chosen = best(summary)
    document = {
        "best": {key: chosen[key] for key in ("worker_class", "workers", "threads", "config")},
        "summary": summary,
        "how": "python -m bench.thesis.tune_monolith " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mix": MIX, "ops": args.ops, "concurrency": args.concurrency, "cap_s": args.cap, "scrypt_n": args.scrypt_n,
        "block_time_s": args.block_time, "seed": args.seed, "rounds": args.rounds,
        # Others share these cores: the load averages say how quiet the machine was.
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in psutil.getloadavg()],
        "machine": {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version(), "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tried": [asdict(f) for f in tried],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    for row in summary:
        print(f"{row['config']:>14}: median {row['median_completion_s']:.1f} s, median p99 {row['median_p99_ms']:.0f} ms, "
              f"failed {row['failed_ops']}")
    print(f"best: {chosen['config']} -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
