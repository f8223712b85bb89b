"""The thesis experiment: ESP against the single-node monolith (issue 11).

``python -m bench.thesis quick``: the thesis mix at C = 200 and 600 against ESP
with 3 nodes and against the control, the same operation list for both at each C;
writes bench/results/thesis/quick.{json,md} and the plots, and prints the table
and ESP-3 ÷ control per concurrency with both sides' error counts. Sized to finish
in under 10 minutes on 2 cores (``--count``).

``python -m bench.thesis full``: the matrix: C = 200/600/1,000/1,200 x pool sizes
1/3/5/8 x every ESP_BALANCER_POLICY x scenarios healthy / one node degraded
(a follower SIGSTOPped in a duty cycle, as bench/policies.py does) / one node
killed (a follower SIGKILLed a third of the way through), plus the control at
each C; ``--node-bound`` adds the regime where nodes are docker containers each
capped to ``--cpu-limit`` of a core (pools 1/3/5, thesis and read-heavy mixes).

Every run: a fixed number of operations, a wall-clock cap, loopback only. Both
sides use the same scrypt cost for keystores (``--scrypt-n``, ESP's default),
the same anvil binary and flags, 1 s blocks. Setup (accounts, transactions to
read back, one of every operation) happens before the measured window. For the
benchmark ESP's per-key and per-account unlock rate limits are raised: the
control has none, and they are not what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from balancer import POLICY_NAMES
from bench.policies import Stall
from bench.stack import RESULTS, RunningStack
from bench.thesis import loadgen, report
from bench.thesis.loadgen import OpRecord
from bench.thesis.sampler import Sampler
from bench.thesis.servers import MonolithServer, SingleNode
from bench.thesis.targets import EspTarget, MonolithTarget
from bench.thesis.workloads import MIXES, READ_HEAVY, THESIS, sequence
from settings import ROOT
from wallet.keystore import DEFAULT_SCRYPT_N

LEVELS = (200, 600, 1000, 1200)
POOL_SIZES = (1, 3, 5, 8)
NODE_BOUND_POOLS = (1, 3, 5)
SCENARIOS = ("healthy", "degraded", "killed")
QUICK_LEVELS = (200, 600)
QUICK_COUNT = 1200
FULL_COUNT = 2400
QUICK_CAP_S = 120.0  # 4 runs x 120 s + 2 starts and setups stays under 10 minutes
FULL_CAP_S = 300.0
SETUP_ACCOUNTS = 8
SETUP_TRANSACTIONS = 8
STALL_S, STALL_PERIOD_S = 0.3, 1.0  # the degraded node: frozen 300 ms of every second
KILL_AT = 1 / 3  # the killed node dies once this share of the operations is done
POOL_UP_TIMEOUT_S = 90.0
REDIS_DB = 11  # bench.writes uses 5, bench.policies 6, the tests 7-10 and 13-15
BENCH_ENV = {"ESP_UNLOCK_RATE_LIMIT": "1000000 per minute", "ESP_DEPLOY_PLATFORM": "0", "ESP_BLOCK_TIME": "1"}


@dataclass(frozen=True)
class Case:
    """One measured run: which system, how configured, which load."""

    system: str  # "esp" or "control"
    nodes: int
    policy: str | None
    scenario: str
    mix: str
    concurrency: int
    count: int
    seed: int
    backend: str = "process"


class Bar:
    """A rich progress bar over every operation of every planned run."""

    def __init__(self, total: int) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self.task = self.progress.add_task("starting", total=total)

    def describe(self, text: str) -> None:
        self.progress.update(self.task, description=escape(text))

    def advance(self, _record: OpRecord) -> None:
        self.progress.advance(self.task)

    def skip(self, n: int) -> None:
        """Operations planned but not run (a capped run) still move the bar to where it should be."""
        self.progress.advance(self.task, n)

    def log(self, text: str) -> None:
        self.progress.console.print(escape(text))  # "[degraded]" is a label, not rich markup


def measure(target: EspTarget | MonolithTarget, roots: Callable[[], Iterable[int]], case: Case, bar: Bar, cap_s: float,
            during: Callable[[Callable[[], int]], Any] | None = None) -> dict[str, Any]:
    """Fire the case's operations at the target while sampling its processes; the run's record."""
    ops = sequence(MIXES[case.mix], case.count, case.seed)
    done = 0

    def on_record(record: OpRecord) -> None:
        nonlocal done
        done += 1
        bar.advance(record)

    bar.describe(f"{report.label(asdict(case))} {case.mix} C={case.concurrency}")
    with Sampler(roots) as sampler, (during(lambda: done) if during else _nothing()):
        outcome = loadgen.run(target, ops, case.concurrency, cap_s=cap_s, on_record=on_record)
    bar.skip(case.count - done)
    summary = report.summarize(outcome, case.count)
    s = summary
    bar.log(f"{report.label(asdict(case))} C={case.concurrency}: "
            + (f"{s['completion_s']} s" if s["finished"] else f"NOT FINISHED in {s['wall_s']} s")
            + f", {s['ok']} ok, errors {s['errors'] or 0}")
    return {**asdict(case), "cap_s": cap_s, "summary": summary, "resources": sampler.series.as_dict()}


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def setup(target: EspTarget | MonolithTarget) -> None:
    """The target's setup phase, outside any measured window."""
    async def job(client: Any) -> None:
        await target.setup(client, accounts=SETUP_ACCOUNTS, transactions=SETUP_TRANSACTIONS)
    asyncio.run(loadgen.with_client(target.base_url, job))


# ---- ESP ------------------------------------------------------------------------------------------

def pool_nodes(stack: RunningStack) -> list[dict[str, Any]]:
    status, body = stack.get("/api/v1/nodes", key=stack.admin_key)
    if status != 200:
        raise RuntimeError(f"GET /api/v1/nodes: {status} {body}")
    return list(body["nodes"])


def wait_pool_up(stack: RunningStack, nodes: int) -> None:
    """Bounded wait until every node of the pool is up again (after a kill), so the next run starts whole."""
    deadline = time.monotonic() + POOL_UP_TIMEOUT_S
    while time.monotonic() < deadline:
        if sum(1 for n in pool_nodes(stack) if n.get("status") == "up") >= nodes:
            return
        time.sleep(1.0)
    raise RuntimeError(f"the pool did not have {nodes} nodes up within {POOL_UP_TIMEOUT_S} s")


def follower_pid(stack: RunningStack) -> int:
    """The pid of the last node's anvil (a follower: node-0 leads), found by its port among the stack's processes."""
    node = pool_nodes(stack)[-1]
    port = node["url"].rsplit(":", 1)[1].rstrip("/")
    for proc in psutil.Process(stack.proc.pid).children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if "--port" in cmd[:-1] and cmd[cmd.index("--port") + 1] == port:
            return proc.pid
    raise RuntimeError(f"no anvil process listens on port {port} ({node['id']})")


def scenario_hook(stack: RunningStack, case: Case) -> Callable[[Callable[[], int]], Any] | None:
    """What happens to one node during the run: nothing, a SIGSTOP duty cycle, or a SIGKILL a third of the way."""
    if case.scenario == "healthy":
        return None
    pid = follower_pid(stack)
    if case.scenario == "degraded":
        return lambda _done: Stall(pid, stall=STALL_S, period=STALL_PERIOD_S)

    @contextmanager
    def kill(done: Callable[[], int]) -> Iterator[None]:
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.05):
                if done() >= case.count * KILL_AT:
                    os.kill(pid, signal.SIGKILL)
                    return
        thread = threading.Thread(target=watch, daemon=True, name="kill-node")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
    return kill


def run_esp(cases: Sequence[Case], scrypt_n: int, bar: Bar, cap_s: float, cpu_limit: float) -> list[dict[str, Any]]:
    """Start one stack for the cases (they share pool size, policy and backend), set it up, measure each case."""
    first = cases[0]
    runs = []
    with tempfile.TemporaryDirectory(prefix="esp-thesis-") as tmp:
        bar.describe(f"starting ESP-{first.nodes} {first.policy} ({first.backend})")
        stack = RunningStack(Path(tmp), redis_db=REDIS_DB, ESP_UNLOCK_RATE_LIMIT=BENCH_ENV["ESP_UNLOCK_RATE_LIMIT"],
                             ESP_DEPLOY_PLATFORM=BENCH_ENV["ESP_DEPLOY_PLATFORM"], ESP_BLOCK_TIME=BENCH_ENV["ESP_BLOCK_TIME"],
                             ESP_NODE_COUNT=str(first.nodes), ESP_BALANCER_POLICY=first.policy or "esp",
                             ESP_KEYSTORE_SCRYPT_N=str(scrypt_n), ESP_NODE_BACKEND=first.backend,
                             ESP_NODE_CPU_LIMIT=str(cpu_limit))
        try:
            target = EspTarget(stack.base, stack.key, stack.admin_key)
            bar.describe(f"setting up ESP-{first.nodes} {first.policy}")
            setup(target)
            for case in cases:
                wait_pool_up(stack, case.nodes)
                runs.append(measure(target, lambda: [stack.proc.pid], case, bar, cap_s, scenario_hook(stack, case)))
        finally:
            stack.close()
    return runs


# ---- the control ----------------------------------------------------------------------------------

def tuned_monolith() -> dict[str, Any]:
    """The control's best gunicorn configuration, as ``python -m bench.thesis.tune_monolith`` chose it (its defaults if never tuned)."""
    path = RESULTS / "monolith_config.json"
    if not path.exists():
        return {}
    best = json.loads(path.read_text())["best"]
    return {"workers": int(best["workers"]), "threads": int(best["threads"]), "worker_class": str(best["worker_class"])}


def run_control(cases: Sequence[Case], scrypt_n: int, bar: Bar, cap_s: float) -> list[dict[str, Any]]:
    """Start the one anvil and the monolith, set up, measure each case."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="control-thesis-") as tmp:
        bar.describe("starting the control")
        best = tuned_monolith()
        with SingleNode(Path(tmp), block_time=1.0) as node, MonolithServer(node.url, Path(tmp), scrypt_n=scrypt_n, **best) as mono:
            target = MonolithTarget(mono.url)
            bar.describe("setting up the control")
            setup(target)
            for case in cases:
                runs.append(measure(target, lambda: [*mono.pids(), node.pid], case, bar, cap_s))
            meta_label = mono.label
    for run in runs:
        run["server"] = meta_label
    return runs


# ---- plans ----------------------------------------------------------------------------------------

def quick_plan(count: int, levels: Sequence[int]) -> list[list[Case]]:
    esp = [Case("esp", 3, "esp", "healthy", THESIS.name, c, count, seed=c) for c in levels]
    control = [Case("control", 1, None, "healthy", THESIS.name, c, count, seed=c) for c in levels]
    return [esp, control]


def full_plan(count: int, levels: Sequence[int], pools: Sequence[int], policies: Sequence[str], node_bound: bool) -> list[list[Case]]:
    groups = [[Case("control", 1, None, "healthy", THESIS.name, c, count, seed=c) for c in levels]]
    for nodes in pools:
        for policy in policies:
            scenarios = SCENARIOS if nodes > 1 else ("healthy",)  # one node has no other to fail over to
            groups.append([Case("esp", nodes, policy, s, THESIS.name, c, count, seed=c) for s in scenarios for c in levels])
    if node_bound:
        for nodes in NODE_BOUND_POOLS:
            groups.append([Case("esp", nodes, "esp", "healthy", mix.name, c, count, seed=c, backend="docker")
                           for mix in (THESIS, READ_HEAVY) for c in levels])
    return groups


def machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return {"machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM",
            "python": platform.python_version(), "commit": commit.stdout.strip(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def execute(groups: Sequence[Sequence[Case]], scrypt_n: int, cap_s: float, cpu_limit: float) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    bar = Bar(sum(case.count for group in groups for case in group))
    with bar.progress:
        for group in groups:
            if group[0].system == "control":
                runs += run_control(group, scrypt_n, bar, cap_s)
            else:
                runs += run_esp(group, scrypt_n, bar, cap_s, cpu_limit)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.thesis", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("quick", "full"))
    parser.add_argument("--count", type=int, help=f"operations per run (quick {QUICK_COUNT}, full {FULL_COUNT})")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], help="concurrency levels, comma-separated")
    parser.add_argument("--scrypt-n", type=int, default=DEFAULT_SCRYPT_N, help="keystore scrypt cost on both sides")
    parser.add_argument("--cap", type=float, help="wall-clock cap of one run, in seconds (quick 120, full 300)")
    parser.add_argument("--pools", type=lambda s: [int(x) for x in s.split(",")], default=list(POOL_SIZES))
    parser.add_argument("--policies", type=lambda s: s.split(","), default=list(POLICY_NAMES))
    parser.add_argument("--node-bound", action="store_true", help="full: add the docker regime (needs a container engine)")
    parser.add_argument("--cpu-limit", type=float, default=0.5, help="node-bound: each node's CPU cap, in cores")
    args = parser.parse_args()
    started = time.monotonic()
    if args.mode == "quick":
        count, levels = args.count or QUICK_COUNT, args.levels or list(QUICK_LEVELS)
        groups = quick_plan(count, levels)
    else:
        count, levels = args.count or FULL_COUNT, args.levels or list(LEVELS)
        groups = full_plan(count, levels, args.pools, args.policies, args.node_bound)
    cap = args.cap or (QUICK_CAP_S if args.mode == "quick" else FULL_CAP_S)
    print(f"{args.mode}: {sum(len(g) for g in groups)} runs of {count} operations each (thesis mix), "
          f"C = {', '.join(map(str, levels))}, scrypt n = {args.scrypt_n}, cap {cap:.0f} s per run")
    runs = execute(groups, args.scrypt_n, cap, args.cpu_limit)
    took = time.monotonic() - started
    meta = {**machine(), "mode": args.mode, "count": count, "levels": levels, "cap_s": cap, "scrypt_n": args.scrypt_n,
            "setup": {"accounts": SETUP_ACCOUNTS, "transactions": SETUP_TRANSACTIONS, "bench_env": BENCH_ENV},
            "took_s": round(took, 1),
            "title": f"# Thesis experiment, {args.mode}: {count} operations per run, {machine()['machine']}"}
    path = report.write(args.mode, meta, runs)
    print(path.read_text())
    for row in report.ratios(runs):
        print(f"C={row['concurrency']}: ESP-3 ÷ control = {row['ratio']} ({row['esp_s']} s / {row['control_s']} s), "
              f"errors ESP-3 {row['esp_errors']}, control {row['control_errors']}")
    print(f"{args.mode} took {took:.0f} s; figures in {path.parent}")
    json.dumps(meta)  # fail loudly here, not halfway through a later write, if meta is not JSON


if __name__ == "__main__":
    main()
