"""JSON-RPC read path: requests/s and p50/p99 of four calls, straight to a node, through ``/rpc``, and a control.

``python -m bench.rpc`` starts the real stack (``scripts/up.sh``: 3 anvil nodes on one
chain, 1 s blocks, the platform deployed, on a Redis of its own), waits for the chain to
pass block 20, then sends each of

- ``eth_blockNumber``, ``eth_getBalance(treasury, "latest")``, ``eth_call`` of the platform
  token's ``balanceOf(treasury)`` at ``"latest"``, ``eth_getBlockByNumber(1, false)`` (deep)

to four targets, in ONE run on one machine:

- ``direct``: the devnet leader anvil (its URL from ``GET /api/v1/nodes``);
- ``rpc_cached``: ``POST /rpc`` of the stack's JSON-RPC gateway (``rpc.server``, the Procfile's
  ``rpc`` line: gunicorn with ``gunicorn_rpc.conf.py``, ESP_RPC_PROCESSES aiohttp workers;
  ESP_RPC_CACHE=1), at ``RunningStack.rpc_url``;
- ``rpc_uncached``: ``POST /rpc`` of a second gateway server (the same command on a port and a run
  folder of its own, same ESP_ environment, same Redis and nodes, ESP_RPC_CACHE=0);
- ``control``: ``bench.rpc_control``, a thesis-style Flask + web3.py app calling the leader
  synchronously, one node call per request, under gunicorn in the best of a few configurations
  tried first (``--control`` picks one and skips the trial).

at concurrency 1, 16 and 64: a fixed number of requests per cell (``--count``; a quarter of it
at c=1), from an aiohttp asyncio client keeping its connections alive, after a short warm-up.
A cell stops after ``CELL_CAP_S`` and says it was cut short. An error is a transport failure, a
status other than 200, or an answer that is not a JSON-RPC result (an ``error`` object): every
cell counts them. The ratios the gateway's issue names are computed per method (see ``ratios``).

Results: ``bench/results/rpc/<UTC time>.json`` and ``.md``, and ``latest.json`` / ``latest.md``.
The client, the stack and the control share the machine's cores: the direct figures are bounded
by this Python client (about 10k requests/s here), not by anvil (about 70k with wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import requests
from eth_account import Account

from bench.rpc_control import ControlServer, balance_of_data
from bench.rpc_report import (
    CONCURRENCY,
    METHODS,
    TARGETS,
    answer_error,
    cell_text,
    latency_summary,
    markdown,
    ratios,
)
from bench.stack import RESULTS, RunningStack, esp_setting
from nodes.process import free_port
from settings import DEV_TREASURY_KEY, ROOT, Settings

OUT = RESULTS / "rpc"
#: A cell stops sending after this many seconds and is reported as cut short.
CELL_CAP_S = 60.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
#: The deep block read, and how far the head must be past it first.
DEEP_BLOCK = 1
MIN_HEAD = 20
#: gunicorn configurations of the control tried before the matrix (worker class, workers, threads).
CONTROL_CONFIGS: tuple[tuple[str, int, int], ...] = (("gthread", 2, 16), ("gthread", 4, 8), ("sync", 4, 1))
#: The stack's per-key limit on /rpc for the run (both gateway servers count against it, in the same Redis).
RPC_RATE_LIMIT = "100000000 per minute"


# -- the load ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request as the client sends it, again and again."""

    verb: str
    url: str
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    jsonrpc: bool = True


def jsonrpc_body(method: str, params: list[Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()


def calls_for(target: str, url: str, *, token: str, holder: str, key: str = "") -> dict[str, Call]:
    """The four calls for ``target`` at ``url`` (a node, an API's /rpc, or the control)."""
    if target == "control":
        return {"eth_blockNumber": Call("GET", url + "/blockNumber", jsonrpc=False),
                "eth_getBalance": Call("GET", f"{url}/balance/{holder}", jsonrpc=False),
                "eth_call": Call("GET", url + "/call", jsonrpc=False),
                "eth_getBlockByNumber": Call("GET", f"{url}/block/{DEEP_BLOCK}", jsonrpc=False)}
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    params: dict[str, list[Any]] = {
        "eth_blockNumber": [],
        "eth_getBalance": [holder, "latest"],
        "eth_call": [{"to": token, "data": balance_of_data(holder)}, "latest"],
        "eth_getBlockByNumber": [hex(DEEP_BLOCK), False],
    }
    return {method: Call("POST", url, jsonrpc_body(method, p), headers) for method, p in params.items()}


async def _load(call: Call, count: int, concurrency: int, cap_s: float, warmup: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:
        async def one() -> tuple[float, str | None]:
            started = time.perf_counter()
            try:
                async with session.request(call.verb, call.url, data=call.body, headers=call.headers) as response:
                    body = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                return time.perf_counter() - started, type(exc).__name__
            return time.perf_counter() - started, answer_error(status, body, jsonrpc=call.jsonrpc)

        async def run(n: int, deadline: float, latencies: list[float], errors: Counter[str]) -> None:
            taken = 0

            async def worker() -> None:
                nonlocal taken
                while taken < n and time.perf_counter() < deadline:
                    taken += 1
                    latency, error = await one()
                    latencies.append(latency)
                    if error:
                        errors[error] += 1

            await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))

        await run(warmup, time.perf_counter() + cap_s, [], Counter())
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        started = time.perf_counter()
        await run(count, started + cap_s, latencies, errors)
        wall = time.perf_counter() - started
    return {"requested": count, "completed": len(latencies), "cut_short": len(latencies) < count,
            "wall_s": round(wall, 3), "rps": round(len(latencies) / wall, 1) if wall > 0 else 0.0,
            **latency_summary(latencies), "errors": sum(errors.values()), "error_kinds": dict(errors.most_common(5))}


def run_cell(target: str, method: str, call: Call, count: int, concurrency: int, cap_s: float = CELL_CAP_S) -> dict[str, Any]:
    """One cell: ``count`` requests of ``call`` from ``concurrency`` connections, after a warm-up; capped at ``cap_s``."""
    warmup = min(max(2 * concurrency, 50), count)
    result = asyncio.run(_load(call, count, concurrency, cap_s, warmup))
    return {"target": target, "method": method, "concurrency": concurrency, **result,
            "loadavg_1min_after": round(os.getloadavg()[0], 2)}


# -- the processes ----------------------------------------------------------------------------


def rpc_call(url: str, method: str, params: list[Any], key: str = "", timeout: float = 10) -> Any:
    """One JSON-RPC call's result (RuntimeError with the answer when it is not a result)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                             headers=headers, timeout=timeout)
    if response.status_code != 200:
        raise RuntimeError(f"{method} at {url}: HTTP {response.status_code} {response.text[:300]}")
    payload = response.json()
    if not isinstance(payload, dict) or "result" not in payload:
        raise RuntimeError(f"{method} at {url}: {str(payload)[:300]}")
    return payload["result"]


def wait_for(what: str, probe: Any, timeout: float, interval: float = 0.5) -> Any:
    """``probe()``'s first truthy answer, polled every ``interval`` s (RuntimeError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = probe()
        except (OSError, RuntimeError, requests.RequestException, KeyError, TypeError):
            found = None
        if found:
            return found
        time.sleep(interval)
    raise RuntimeError(f"{what}: not there after {timeout:.0f} s")


def leader_url(stack: RunningStack) -> str | None:
    """The devnet leader's JSON-RPC URL from ``GET /api/v1/nodes``."""
    status, body = stack.get("/api/v1/nodes")
    if status != 200:
        return None
    return next((n["url"] for n in body["nodes"] if n["role"] == "leader"), None)


def token_address(stack: RunningStack) -> str | None:
    """The platform token's address from ``GET /api/v1/contracts`` once the platform is deployed."""
    status, body = stack.get("/api/v1/contracts")
    return (body.get("platform") or {}).get("PlatformToken") if status == 200 else None


class SecondGateway:
    """One more JSON-RPC gateway server as the Procfile's ``rpc`` line starts it (gunicorn with gunicorn_rpc.conf.py), on its own port."""

    def __init__(self, environment: Mapping[str, str], log_path: Path, key: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/rpc"
        self.log_path = log_path
        child = {**environment, "ESP_RPC_PORT": str(self.port), **env}
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "gunicorn"), "--config", "gunicorn_rpc.conf.py",
                                      "rpc.server:make_app()"],
                                     cwd=ROOT, env=child, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for("the second gateway's eth_blockNumber", lambda: self.proc.poll() is None
                     and rpc_call(self.url, "eth_blockNumber", [], key, timeout=2), 60, 0.3)
        except BaseException:
            self.close()
            raise

    def workers(self) -> int:
        """How many worker processes gunicorn runs under this server now."""
        try:
            return len(Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split())
        except OSError:
            return 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def machine() -> dict[str, Any]:
    """Cores, RAM and CPU model of this machine."""
    cpu, ram_kib = platform.processor() or "unknown", 0
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        ram_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                           if line.startswith("MemTotal")))
    except (OSError, StopIteration, ValueError):
        pass
    return {"cores": os.cpu_count(), "ram_gib": round(ram_kib / 2**20, 1), "cpu": cpu, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()} {platform.machine()}"}


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def tune_control(node: str, token: str, holder: str, run_dir: Path, count: int,
                 configs: Sequence[tuple[str, int, int]]) -> tuple[tuple[str, int, int], list[dict[str, Any]]]:
    """Try each configuration at c=64 with eth_getBalance; the best (no errors, most requests/s) and every trial."""
    trials = []
    for worker_class, workers, threads in configs:
        with ControlServer(node, token, holder, run_dir / "control.log", worker_class=worker_class,
                           workers=workers, threads=threads) as server:
            call = calls_for("control", server.url, token=token, holder=holder)["eth_getBalance"]
            cell = run_cell("control", "eth_getBalance", call, count, 64)
            trials.append({"config": server.label, "worker_class": worker_class, "workers": workers, "threads": threads,
                           "rps": cell["rps"], "p50_ms": cell["p50_ms"], "p99_ms": cell["p99_ms"], "errors": cell["errors"]})
            print(f"  control {server.label}: {cell['rps']:,.0f} req/s, p99 {cell['p99_ms']} ms, {cell['errors']} errors",
                  flush=True)
    best = max(trials, key=lambda t: (t["errors"] == 0, t["rps"]))
    return (best["worker_class"], best["workers"], best["threads"]), trials


def parse_control(text: str) -> tuple[str, int, int]:
    """``gthread:2x16`` or ``sync:4`` -> (class, workers, threads)."""
    kind, _, shape = text.partition(":")
    workers, _, threads = shape.partition("x")
    if kind not in ("gthread", "sync") or not workers.isdigit() or (threads and not threads.isdigit()):
        raise argparse.ArgumentTypeError(f"expected gthread:WxT or sync:W, not {text!r}")
    return kind, int(workers), int(threads or 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="requests per cell at c=16 and c=64 (c=1: a quarter; default 2000)")
    parser.add_argument("--quick", action="store_true", help="a short run: 300 requests per cell, a smaller control trial")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--control", type=parse_control, metavar="gthread:WxT|sync:W",
                        help="run the control in this gunicorn configuration instead of trying a few")
    parser.add_argument("--cap", type=float, default=CELL_CAP_S, help=f"seconds a cell may take (default {CELL_CAP_S:g})")
    parser.add_argument("--esp-env", action="append", default=[], metavar="ESP_X=VALUE", type=esp_setting,
                        help="an ESP setting for the stack under test (repeatable; recorded with the results)")
    parser.add_argument("--no-save", action="store_true", help="print the table only, write no results files")
    args = parser.parse_args()
    count = 300 if args.quick and args.count == parser.get_default("count") else args.count
    per_cell = {1: max(count // 4, 1), 16: count, 64: count}
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    holder = Account.from_key(DEV_TREASURY_KEY).address
    notes: list[str] = []
    cells: list[dict[str, Any]] = []
    control: dict[str, Any] = {"config": None, "why": "not run", "trials": []}
    agreement: dict[str, Any] = {}
    load: dict[str, list[float]] = {}
    gateway: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="esp-bench-rpc-") as tmp:
        run_dir = Path(tmp)
        # One client key sends every request: the per-key limit on /rpc must not be what this measures.
        stack = RunningStack(run_dir, ESP_RPC_CACHE="1", ESP_RPC_RATE_LIMIT=RPC_RATE_LIMIT, **dict(args.esp_env))
        processes = Settings.from_env(stack.environment).rpc_processes
        gateway.update({"server": "rpc.server (aiohttp) under gunicorn, gunicorn_rpc.conf.py", "processes": processes})
        second: SecondGateway | None = None
        server: ControlServer | None = None
        try:
            print(f"stack up on {stack.base}; waiting for the platform token, the leader and block {MIN_HEAD}", flush=True)
            token = wait_for("the platform token", lambda: token_address(stack), 180)
            node = wait_for("the devnet leader", lambda: leader_url(stack), 60)
            wait_for(f"block {MIN_HEAD}", lambda: int(rpc_call(node, "eth_blockNumber", []), 16) > MIN_HEAD, 120)
            offset = stack.log_size()
            urls = {"direct": node, "rpc_cached": stack.rpc_url}
            if {"rpc_cached", "rpc_uncached"} & set(targets):
                if not (ROOT / "rpc" / "server.py").exists():
                    notes.append("rpc/server.py is not in this checkout: the gateway's targets were skipped")
                    targets = [t for t in targets if not t.startswith("rpc_")]
                else:
                    wait_for("the stack's gateway (eth_blockNumber on rpc_url)",
                             lambda: rpc_call(stack.rpc_url, "eth_blockNumber", [], stack.key, timeout=2), 60)
            if "rpc_uncached" in targets:
                # A run folder of its own: gunicorn_rpc.conf.py empties <run_dir>/prometheus-rpc when a server starts.
                uncached_dir = run_dir / "rpc-uncached"
                uncached_dir.mkdir(parents=True, exist_ok=True)
                second = SecondGateway(stack.environment, run_dir / "rpc-uncached.log", stack.key, ESP_RPC_CACHE="0",
                                       ESP_RUN_DIR=str(uncached_dir))
                urls["rpc_uncached"] = second.url
            if "control" in targets:
                control_count = 500 if args.quick else 2000
                if args.control:
                    chosen, control["why"] = args.control, "given with --control"
                else:
                    print("trying the control's gunicorn configurations (eth_getBalance, c=64)", flush=True)
                    chosen, control["trials"] = tune_control(node, token, holder, run_dir, control_count, CONTROL_CONFIGS)
                    control["why"] = (f"best of {len(CONTROL_CONFIGS)} tried with {control_count} eth_getBalance at c=64: "
                                      + ", ".join(f"{t['config']} {t['rps']:,.0f}/s" for t in control["trials"]))
                server = ControlServer(node, token, holder, run_dir / "control.log", worker_class=chosen[0],
                                       workers=chosen[1], threads=chosen[2]).start()
                control["config"] = server.label
                urls["control"] = server.url
            calls = {t: calls_for(t, urls[t], token=token, holder=holder, key=stack.key) for t in targets}
            agreement = check_agreement(calls, targets)
            load["before"] = [round(x, 2) for x in os.getloadavg()]
            for concurrency in CONCURRENCY:
                for method in METHODS:
                    for target in targets:
                        cell = run_cell(target, method, calls[target][method], per_cell[concurrency], concurrency, args.cap)
                        cells.append(cell)
                        print(f"  {target:13} {method:21} c={concurrency:<3} {cell_text(cell)}", flush=True)
            load["after"] = [round(x, 2) for x in os.getloadavg()]
            if second is not None:
                gateway["workers_seen_uncached"] = second.workers()
            head = int(rpc_call(node, "eth_blockNumber", []), 16)
            problems = stack.problems_since(offset)
            if problems["count"]:
                notes.append(f"the stack's log had {problems['count']} problem lines during the run; first: {problems['first'][:3]}")
        finally:
            if server is not None:
                server.close()
            if second is not None:
                second.close()
            stack.close()
    figures: dict[str, Any] = {
        "started_at": started_at, "machine": {**machine(), "loadavg_1_5_15": load}, "commit": git("rev-parse", "--short", "HEAD"),
        "gateway_commit": git("log", "-1", "--format=%h", "--", "rpc", "gateway", "gunicorn_rpc.conf.py") or None,
        "gateway": gateway,
        "setup": ("The stack: `scripts/up.sh`, 3 anvil nodes on one chain (1 s blocks), the platform deployed, the API "
                  "(gunicorn gthread 2 processes x ESP_API_WORKERS threads) and the JSON-RPC gateway (rpc.server: gunicorn "
                  f"with aiohttp workers, ESP_RPC_PROCESSES={gateway.get('processes')}) on a private Redis; a second gateway "
                  "server of the same command with ESP_RPC_CACHE=0; one aiohttp asyncio client (keep-alive, one connection per "
                  "concurrent request) in the benchmark's process; all on loopback and on the same cores. The direct "
                  "figures are bounded by this Python client (anvil alone answers ~70k/s with wrk here), so they "
                  "understate the node and cached ÷ direct overstates the gateway. "
                  f"Calls: eth_getBalance and balanceOf of the treasury {holder}, eth_call to the platform token "
                  f"{token}, eth_getBlockByNumber({DEEP_BLOCK}, false) with the head past {MIN_HEAD} (at the end: {head})."),
        "esp_env": dict(args.esp_env), "requests_per_cell": {str(c): n for c, n in per_cell.items()}, "cell_cap_s": args.cap,
        "control": control, "agreement": agreement, "cells": cells, "ratios": ratios(cells), "notes": notes,
    }
    table = markdown(figures)
    if not args.no_save:
        OUT.mkdir(parents=True, exist_ok=True)
        stamp = started_at.replace(":", "").replace("-", "")
        for name in (stamp, "latest"):
            (OUT / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
            (OUT / f"{name}.md").write_text(table + "\n")
        print(f"figures written to {OUT / (stamp + '.json')} and latest.json / latest.md")
    print(table)


def check_agreement(calls: Mapping[str, Mapping[str, Call]], targets: Sequence[str]) -> dict[str, Any]:
    """Whether every JSON-RPC target gives the node's answer for the immutable calls (the deep block, the token call)."""
    answers: dict[str, dict[str, Any]] = {}
    for target in targets:
        if target == "control":
            continue
        answers[target] = {}
        for method in ("eth_getBlockByNumber", "eth_call"):
            call = calls[target][method]
            response = requests.post(call.url, data=call.body, headers=dict(call.headers), timeout=10)
            try:
                answers[target][method] = response.json().get("result")
            except ValueError:
                answers[target][method] = f"HTTP {response.status_code}"
    reference = answers.get("direct", {})
    return {target: {method: value == reference.get(method) for method, value in got.items()}
            for target, got in answers.items() if target != "direct"}


if __name__ == "__main__":
    main()
