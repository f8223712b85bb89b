"""Policy benchmark: the same bounded read load against 3 nodes, one of them degraded for real, once per policy.

``python -m bench.policies`` starts 3 anvil nodes on one chain (a node manager
in-process, interval mining 1 s), a monitor thread sampling at the monitor
interval (the beat's job), and then, for every policy in balancer.POLICY_NAMES:

- the degraded node (a follower) is frozen for real: its anvil process is
  SIGSTOPped for ``--stall-ms`` out of every ``--period-ms`` (SIGCONT in between),
  as a node stalling on GC, disk or an overloaded host would. Its requests are not
  refused: they wait until it thaws, which is what makes a struggling node costly;
- ``--threads`` client threads send eth_getBalance reads through ReadClient (the
  API's read path: Placement with that policy, live in-flight counts, failover)
  until ``--reads`` reads or ``--seconds`` have passed;
- each read's latency, the node that answered it and every error are recorded.

Between policies the degradation stops, in-flight counters drain and the
calibration is reset, so every policy starts from the same idle pool. Also
measured: the monitor's sample time for 3 and 8 nodes. Figures go to
bench/results/policies.json and .md; the state plane under the esp run to
bench/results/policies-plane.svg. Loopback only, bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from app.nodes import nodes_document, plane_svg
from balancer import POLICY_NAMES
from bench.redis_server import PrivateRedis
from bench.stack import RESULTS, percentile, write_results
from nodepool.failover import ReadClient
from nodepool.placement import Placement
from nodepool.pool import Pool
from nodepool.snapshot import CALIBRATION_KEY, SNAPSHOT_HISTORY_KEY, load_snapshot_document
from nodes.manager import NodeManager, connect_redis
from services.monitor import ResourceSampler, sample_pool
from settings import Settings

DEGRADED = "node-2"
ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def bench_settings(run_dir: Path, redis_url: str, nodes: int, policy: str = "esp") -> Settings:
    """Settings of the bench's pool (never the real environment)."""
    return Settings.from_env({
        "ESP_RUN_DIR": str(run_dir), "ESP_REDIS_URL": redis_url, "ESP_BLOCK_TIME": "1",
        "ESP_NODE_COUNT": str(nodes), "ESP_MONITOR_INTERVAL": "1", "ESP_BALANCER_POLICY": policy,
        "ESP_KEYSTORE_DIR": str(run_dir / "keystore"),
    })


class Monitor:
    """Samples the pool every monitor interval in a thread, as the beat does; keeps sample times."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.sampler = ResourceSampler(pool.settings)
        self.times_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="monitor")

    def sample(self) -> None:
        started = time.perf_counter()
        sample_pool(self.pool, self.sampler)
        self.times_ms.append((time.perf_counter() - started) * 1000.0)

    def _run(self) -> None:
        interval = self.pool.settings.monitor_interval
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sample()
            next_at += interval
            self._stop.wait(max(next_at - time.monotonic(), 0.0))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.sampler.close()


class Stall:
    """Freezes one node process for ``stall`` seconds of every ``period`` (SIGSTOP/SIGCONT); always thaws it."""

    def __init__(self, pid: int, *, stall: float, period: float) -> None:
        self.pid, self.stall, self.period = pid, stall, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stall")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                os.kill(self.pid, signal.SIGSTOP)
                self._stop.wait(self.stall)
                os.kill(self.pid, signal.SIGCONT)
                self._stop.wait(self.period - self.stall)
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def __enter__(self) -> Stall:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        os.kill(self.pid, signal.SIGCONT)


def run_policy(base: Settings, policy: str, *, threads: int, reads: int, seconds: float, stall_pid: int,
               stall: float, period: float) -> tuple[dict[str, Any], Pool]:
    """One policy's run: the bounded read load while the degraded node stalls; its figures."""
    pool = Pool(base.replace(balancer_policy=policy))
    reader = ReadClient(pool, Placement(pool))
    lock = threading.Lock()
    latencies: list[float] = []
    answered: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    issued = 0
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal issued
        while time.monotonic() < deadline:
            with lock:
                if issued >= reads:
                    return
                issued += 1
            started = time.perf_counter()
            try:
                _, node = reader.call_with_node("eth_getBalance", [ACCOUNT, "latest"])
            except Exception as exc:  # every failure is a figure of the policy
                with lock:
                    errors[type(exc).__name__] += 1
                continue
            elapsed = (time.perf_counter() - started) * 1000.0
            with lock:
                latencies.append(elapsed)
                answered[node] += 1

    started = time.monotonic()
    started_at = time.time()
    with Stall(stall_pid, stall=stall, period=period):
        workers = [threading.Thread(target=client, name=f"client-{i}") for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(seconds + 30)
    wall = time.monotonic() - started
    done = sum(answered.values())
    history = [json.loads(raw) for raw in pool.redis.lrange(SNAPSHOT_HISTORY_KEY, 0, int(seconds * 4) + 10)]
    during = [h for h in history if h["t"] >= started_at]
    final = load_snapshot_document(pool.redis)
    calibration = (final or {}).get("pool", {}).get("calibration") or {}
    figures = {
        "policy": policy, "reads": done, "errors": sum(errors.values()), "error_kinds": dict(errors),
        "wall_s": round(wall, 2), "reads_per_s": round(done / wall, 1) if wall else 0.0,
        "p50_ms": round(percentile(latencies, 50), 3), "p90_ms": round(percentile(latencies, 90), 3),
        "p99_ms": round(percentile(latencies, 99), 3), "max_ms": round(max(latencies, default=float("nan")), 3),
        "share": {node: round(answered[node] / done, 4) if done else 0.0 for node in sorted(answered)},
        # The pool as the monitor saw it during the run (the snapshot's LBH, not the live one).
        "snapshots": len(during), "snapshots_paused": sum(1 for h in during if h["paused"]),
        "lbh_min": round(min((h["lbh"] for h in during), default=float("nan")), 4),
        "calibration_end": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in calibration.items()
                            if k in ("dis_ave_min", "dis_ave_max", "dis_ave", "source")},
    }
    return figures, pool


def settle(pool: Pool, seconds: float) -> None:
    """Let in-flight counters drain and the pool idle; start calibration over."""
    pool.redis.delete(CALIBRATION_KEY)
    time.sleep(seconds)  # idle samples teach Dis_ave_min again


def measure_monitor(run_dir: Path, redis_url: str, nodes: int, samples: int = 10) -> dict[str, float]:
    """The monitor's sample time over ``nodes`` idle nodes (ms)."""
    settings = bench_settings(run_dir / f"pool{nodes}", redis_url, nodes)
    client = connect_redis(settings)
    client.flushdb()
    manager = NodeManager(settings, client)
    manager.start()
    pool = Pool(settings)
    monitor = Monitor(pool)
    try:
        for _ in range(samples):
            monitor.sample()
            time.sleep(settings.monitor_interval / 4)
    finally:
        monitor.stop()
        pool.close()
        manager.close()
        client.flushdb()
    times = monitor.times_ms[1:]  # the first builds the backends and primes psutil
    return {"nodes": nodes, "p50_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


def table(figures: dict[str, Any]) -> str:
    """The figures as a Markdown page."""
    meta = figures["setup"]
    lines = [
        "# Balancer policies under one degraded node",
        "",
        f"`python -m bench.policies` on {meta['machine']}: 3 anvil nodes on one chain (1 s blocks), "
        f"{meta['threads']} client threads reading `eth_getBalance` through ReadClient, "
        f"up to {meta['reads']} reads or {meta['seconds']} s per policy, monitor every {meta['monitor_interval_s']} s. "
        f"Degraded: `{DEGRADED}` (a follower), its anvil SIGSTOPped {meta['stall_ms']} ms of every {meta['period_ms']} ms.",
        "",
        "| policy | reads | reads/s | errors | p50 ms | p90 ms | p99 ms | max ms | node-0 | node-1 | node-2 (degraded) | Dis_ave at end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in figures["results"]:
        share = r["share"]
        lines.append(
            f"| {r['policy']} | {r['reads']} | {r['reads_per_s']} | {r['errors']} | {r['p50_ms']} | {r['p90_ms']} | "
            f"{r['p99_ms']} | {r['max_ms']} | {share.get('node-0', 0):.1%} | {share.get('node-1', 0):.1%} | "
            f"{share.get('node-2', 0):.1%} | {r['calibration_end'].get('dis_ave', float('nan')):.3f} "
            f"({r['calibration_end'].get('source')}) |"
        )
    lines += ["", "Monitor sample time (idle pool, all nodes concurrently):", ""]
    for m in figures["monitor"]:
        lines.append(f"- {m['nodes']} nodes: p50 {m['p50_ms']} ms, max {m['max_ms']} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--stall-ms", type=int, default=200)
    parser.add_argument("--period-ms", type=int, default=600)
    parser.add_argument("--policies", default=",".join(POLICY_NAMES))
    args = parser.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]

    with tempfile.TemporaryDirectory(prefix="esp-bench-") as tmp, PrivateRedis() as server:
        run_dir = Path(tmp)
        monitor_figures = [measure_monitor(run_dir, server.url(), n) for n in (3, 8)]
        base = bench_settings(run_dir / "pool", server.url(), 3)
        client = connect_redis(base)
        client.flushdb()
        manager = NodeManager(base, client)
        manager.start()
        serve = threading.Thread(target=manager.serve, daemon=True, name="node-manager")
        serve.start()
        pool = Pool(base)
        monitor = Monitor(pool)
        monitor.start()
        results = []
        try:
            spec = pool.registry.get(DEGRADED)
            assert spec is not None and spec.pid
            for policy in policies:
                settle(pool, 3 * base.monitor_interval)
                figures, policy_pool = run_policy(
                    base, policy, threads=args.threads, reads=args.reads, seconds=args.seconds, stall_pid=spec.pid,
                    stall=args.stall_ms / 1000, period=args.period_ms / 1000,
                )
                if policy == "esp":
                    document = nodes_document(pool.nodes(), load_snapshot_document(pool.redis), now=time.time(),
                                              stale_after=base.stale_after, policy=policy)
                    RESULTS.mkdir(parents=True, exist_ok=True)
                    (RESULTS / "policies-plane.svg").write_text(plane_svg(document))
                policy_pool.close()
                results.append(figures)
                print(f"{policy:>16}: {figures['reads']:>6} reads, {figures['errors']} errors, p50 {figures['p50_ms']} ms, "
                      f"p99 {figures['p99_ms']} ms, share {figures['share']}", flush=True)
        finally:
            monitor.stop()
            manager.stop()
            serve.join(10)
            manager.close()
            pool.close()
            client.flushdb()
        figures_all = {
            "setup": {
                "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
                "nodes": 3, "degraded": DEGRADED, "threads": args.threads, "reads": args.reads, "seconds": args.seconds,
                "stall_ms": args.stall_ms, "period_ms": args.period_ms, "monitor_interval_s": base.monitor_interval,
                "monitor_samples_during_runs": len(monitor.times_ms),
                "monitor_sample_ms_p50_during_runs": round(statistics.median(monitor.times_ms), 2) if monitor.times_ms else None,
            },
            "results": results,
            "monitor": monitor_figures,
        }
        path = write_results("policies", figures_all, table(figures_all))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
