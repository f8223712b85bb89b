"""The thesis experiment: ESP against the single-node monolith (issue 11).

``python -m bench.thesis quick``: the thesis mix at C = 200 and 600 against ESP
with 3 nodes and against the control, the same operation list for both at each C;
writes bench/results/thesis/quick.{json,md} and the plots, and prints the table
and ESP-3 ÷ control per concurrency with both sides' error counts. Sized to finish
in under 10 minutes on 2 cores (``--count``).

``python -m bench.thesis full --part NAME``: one part of the matrix (bench/thesis/plan.py:
``scale``, ``policies``, ``mixes``, ``node-bound``), each well under an hour on 2 cores,
each writing bench/results/thesis/full-<part>.{json,md} and its plots, then merging
every part there is into full.md. ``full`` alone runs every part in order; ``--dry-run``
prints each part's runs and estimated time and starts nothing. ``python -m bench.thesis
report`` only merges: full.md holds ESP-3 ÷ control at each C with both sides' errors,
node-bound 3 ÷ 1 and 5 ÷ 1 nodes, and esp ÷ round_robin with a node degraded or killed.

A degraded node is a follower SIGSTOPped in a duty cycle (as bench/policies.py
does); a killed node is a follower SIGKILLed a third of the way through; the
node-bound regime runs nodes as docker containers each capped to ``--cpu-limit``
of a core.

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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.policies import Stall
from bench.profile import Profile
from bench.stack import RESULTS, RunningStack, esp_setting
from bench.thesis import loadgen, report
from bench.thesis.loadgen import OpRecord
from bench.thesis.plan import PARTS, QUICK_CAP_S, QUICK_COUNT, QUICK_LEVELS, Case, Plan, describe, estimate, minutes, quick_plan
from bench.thesis.sampler import Sampler
from bench.thesis.servers import MonolithServer, SingleNode
from bench.thesis.targets import EspTarget, MonolithTarget
from bench.thesis.workloads import MIXES, sequence
from errors import ConfigError
from nodes.docker.engine import connect
from settings import ROOT, Settings
from wallet.kdf import DEFAULT_SCRYPT_N

SETUP_ACCOUNTS = 8
SETUP_TRANSACTIONS = 8
#: The degraded node: frozen 300 ms of every 700 ms. The period must not divide the monitor's 1 s interval: with a
#: 1 s period every sample hits the same phase of the cycle, and in ~70% of runs the snapshot never sees the freeze
#: (measured: the node then keeps ~38% of reads and writes; sampled in the freeze, 2.5% and 0.8%).
STALL_S, STALL_PERIOD_S = 0.3, 0.7
KILL_AT = 1 / 3  # the killed node dies once this share of the operations is done
POOL_UP_TIMEOUT_S = 90.0
BENCH_ENV = {"ESP_UNLOCK_RATE_LIMIT": "1000000 per minute", "ESP_DEPLOY_PLATFORM": "0", "ESP_BLOCK_TIME": "1"}


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


def run_esp(cases: Sequence[Case], scrypt_n: int, bar: Bar, cap_s: float, cpu_limit: float,
            esp_env: dict[str, str], profile_dir: Path | None = None) -> list[dict[str, Any]]:
    """Start one stack for the cases (they share pool size, policy and backend), set it up, measure each case."""
    first = cases[0]
    runs = []
    with tempfile.TemporaryDirectory(prefix="esp-thesis-") as tmp:
        bar.describe(f"starting ESP-{first.nodes} {first.policy} ({first.backend})")
        stack = RunningStack(Path(tmp), ESP_UNLOCK_RATE_LIMIT=BENCH_ENV["ESP_UNLOCK_RATE_LIMIT"],
                             ESP_DEPLOY_PLATFORM=BENCH_ENV["ESP_DEPLOY_PLATFORM"], ESP_BLOCK_TIME=BENCH_ENV["ESP_BLOCK_TIME"],
                             ESP_NODE_COUNT=str(first.nodes), ESP_BALANCER_POLICY=first.policy or "esp",
                             ESP_KEYSTORE_SCRYPT_N=str(scrypt_n), ESP_NODE_BACKEND=first.backend,
                             ESP_NODE_CPU_LIMIT=str(cpu_limit), **esp_env)
        try:
            target = EspTarget(stack.base, stack.key, stack.admin_key)
            bar.describe(f"setting up ESP-{first.nodes} {first.policy}")
            setup(target)
            for case in cases:
                wait_pool_up(stack, case.nodes)
                offset = stack.log_size()
                if profile_dir is None:
                    run = measure(target, lambda: [stack.proc.pid], case, bar, cap_s, scenario_hook(stack, case))
                else:
                    name = f"{report.label(asdict(case)).replace(' ', '_')}-{case.mix}-c{case.concurrency}"
                    with Profile(stack.proc.pid, profile_dir / f"{name}.raw") as profile:
                        run = measure(target, lambda: [stack.proc.pid], case, bar, cap_s, scenario_hook(stack, case))
                    if profile.summary is not None:
                        (profile_dir / f"{name}.md").write_text(profile.summary.markdown(f"{name}: {case.count} operations") + "\n")
                run["stack_log_problems"] = stack.problems_since(offset)  # what the stack's processes said went wrong
                runs.append(run)
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

def machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return {"machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM",
            "python": platform.python_version(), "commit": commit.stdout.strip(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def execute(groups: Sequence[Sequence[Case]], scrypt_n: int, cap_s: float, cpu_limit: float,
            esp_env: dict[str, str], profile_dir: Path | None = None) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    bar = Bar(sum(case.count for group in groups for case in group))
    with bar.progress:
        for group in groups:
            if group[0].system == "control":
                runs += run_control(group, scrypt_n, bar, cap_s)
            else:
                runs += run_esp(group, scrypt_n, bar, cap_s, cpu_limit, esp_env, profile_dir)
    return runs


def run_plan(name: str, title: str, groups: Plan, count: int | None, cap: float, args: argparse.Namespace,
             extra: dict[str, Any]) -> Path:
    """Run a plan, write its results under ``name``; the table's path."""
    cases = [c for g in groups for c in g]
    counts = sorted({c.count for c in cases})
    levels = sorted({c.concurrency for c in cases})
    started = time.monotonic()
    runs = execute(groups, args.scrypt_n, cap, args.cpu_limit, args.esp_env, args.profile)
    took = time.monotonic() - started
    meta = {**machine(), "mode": name, **extra, "count": count if count else counts, "levels": levels, "cap_s": cap,
            "scrypt_n": args.scrypt_n, "cpu_limit": args.cpu_limit, "esp_env": args.esp_env,
            "setup": {"accounts": SETUP_ACCOUNTS, "transactions": SETUP_TRANSACTIONS, "bench_env": BENCH_ENV},
            "took_s": round(took, 1), "title": f"# Thesis experiment, {title}: {count} operations per run, {machine()['machine']}"}
    json.dumps(meta)  # fail loudly here, not halfway through the write, if meta is not JSON
    path = report.write(name, meta, runs, args.out)
    print(path.read_text())
    for row in report.ratios(runs):
        print(f"{row['mix']} C={row['concurrency']}: ESP-3 ÷ control = {row['ratio']} ({row['esp_s']} s / {row['control_s']} s), "
              f"errors ESP-3 {row['esp_errors']}, control {row['control_errors']}")
    print(f"{name} took {took:.0f} s; figures in {path.parent}")
    return path


def engine_problem() -> str | None:
    """Why no container engine answers (the node-bound part needs one), or None when one does."""
    try:
        connect(Settings.from_env()).close()
    except ConfigError as exc:
        return str(exc)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.thesis", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("quick", "full", "report"))
    parser.add_argument("--part", choices=list(PARTS), action="append",
                        help="full: run only this part (repeatable); without it, every part in order")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and the estimated time, start nothing")
    parser.add_argument("--count", type=int, help=f"operations per run (quick {QUICK_COUNT}; full: each part's own)")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], help="concurrency levels, comma-separated")
    parser.add_argument("--scrypt-n", type=int, default=DEFAULT_SCRYPT_N, help="keystore scrypt cost on both sides")
    parser.add_argument("--cap", type=float, help="wall-clock cap of one run, in seconds (quick 120; full: each part's own)")
    parser.add_argument("--cpu-limit", type=float, default=0.5, help="node-bound: each node's CPU cap, in cores")
    parser.add_argument("--out", type=Path, default=report.OUT, help=f"results folder (default {report.OUT})")
    parser.add_argument("--esp-env", action="append", default=[], metavar="ESP_X=VALUE", type=esp_setting,
                        help="an ESP setting for the stack under test (repeatable; recorded with the results): for tuning")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy over ESP's stack during each ESP run, into DIR")
    parser.add_argument("--no-control", action="store_true", help="quick: ESP's runs only (tuning; no ratios)")
    args = parser.parse_args()
    args.esp_env = dict(args.esp_env)
    if args.mode == "report":
        print(report.write_full(list(PARTS), args.out).read_text())
        return
    if args.mode == "quick":
        count, cap = args.count or QUICK_COUNT, args.cap or QUICK_CAP_S
        groups = quick_plan(count, args.levels or list(QUICK_LEVELS))
        if args.no_control:
            groups = [g for g in groups if g[0].system != "control"]
        for line in describe("quick", groups, cap):
            print(line)
        if not args.dry_run:
            run_plan("quick", "quick", groups, count, cap, args, {})
        return
    parts = [PARTS[name] for name in (args.part or list(PARTS))]
    planned = [(part, part.plan(args.count, args.levels), args.cap or part.cap_s) for part in parts]
    total = [0.0, 0.0]
    for part, groups, cap in planned:
        for line in describe(f"part {part.name}", groups, cap):
            print(line)
        expected, worst = estimate(groups, cap)
        total = [total[0] + expected, total[1] + worst]
    if len(planned) > 1:
        print(f"all {len(planned)} parts: estimated {minutes(total[0])} (worst case {minutes(total[1])})")
    needs_engine = [part.name for part, groups, _ in planned if any(c.backend == "docker" for g in groups for c in g)]
    problem = engine_problem() if needs_engine else None
    if needs_engine:
        print(f"{', '.join(needs_engine)} needs a container engine: {problem or 'one answers'}")
    if args.dry_run:
        return
    if problem:  # fail before the first part, not after the others have run for an hour
        raise SystemExit(f"not starting: {problem}")
    for part, groups, cap in planned:
        print(f"part {part.name}: {part.question}")
        run_plan(f"full-{part.name}", f"full, part {part.name}", groups, args.count or part.count, cap, args,
                 {"part": part.name, "question": part.question})
        print(report.write_full(list(PARTS), args.out).read_text())  # the merge is current after every part


if __name__ == "__main__":
    main()
