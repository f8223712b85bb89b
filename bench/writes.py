"""Write-path benchmark: confirmed transfers per second and submit-to-confirmed latency, over HTTP.

``python -m bench.writes`` starts the real stack (3 anvil nodes, 1 s blocks,
gunicorn, the write and control workers, beat: ``scripts/up.sh`` on a Redis of its
own), creates the sending accounts through the API, then submits ETH transfers
from an asyncio client (aiohttp, C connections; httpx's pool spent a whole core
choosing connections and held submits near 80/s, with the API's threads idle):

- ``max``: as fast as the API takes them, once all from ONE account, once spread
  over ten: confirmed/s is transfers ÷ (last confirmation - first submit);
- ``paced``: open loop at a fixed rate (``--rate``, default half the one-sender
  ``max`` rate), where the latency figure means something: submit-to-confirmed
  p50/p99 from the task records (created_at -> updated_at of ``confirmed``);
- the same three again with ``--per-request`` transfers (default 100) in each
  ``POST /api/v1/transactions/batch``, the paced one at half that one-sender rate.

``--profile`` records py-spy over the whole stack during the one-sender ``max``
run (bench/results/profiles/). Bounded: a fixed number of transfers, each run
capped in time. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.profile import Profile
from bench.stack import RESULTS, RunningStack, esp_setting, percentile, write_results

PASSWORD = "bench password for accounts"
CLIENTS = 64
RUN_CAP_S = 300.0
TIMEOUT = aiohttp.ClientTimeout(total=60)
#: How often the settle loop reads the open tasks, and how many per lookup.
POLL_S = 0.5
LOOKUP_CHUNK = 1000


def make_accounts(stack: RunningStack, n: int) -> list[str]:
    tasks = [stack.post("/api/v1/accounts", {"password": PASSWORD})[1]["id"] for _ in range(n)]
    addresses = []
    for task_id in tasks:
        done = stack.wait(task_id)
        if done["state"] != "confirmed":
            raise RuntimeError(f"account creation failed: {done}")
        address = done["result"]["address"]
        stack.post(f"/api/v1/accounts/{address}/unlock", {"password": PASSWORD, "seconds": 3600})
        addresses.append(address)
    return addresses


async def _submit_all(stack: RunningStack, senders: list[str], count: int, rate: float | None,
                      per_request: int = 1) -> tuple[list[str], float]:
    """Submit ``count`` transfers (paced at ``rate`` per second when given; ``per_request`` > 1: that many per
    ``POST /api/v1/transactions/batch``); their task ids and the first submit time."""
    headers = {"Authorization": f"Bearer {stack.key}"}
    ids: list[str] = [""] * count
    started = time.time()
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(stack.base, connector=connector, headers=headers, timeout=TIMEOUT) as client:
        slots = asyncio.Semaphore(CLIENTS)

        def transfer(i: int) -> dict[str, Any]:
            return {"from": senders[i % len(senders)], "to": senders[(i + 1) % len(senders)], "value_wei": 1}

        async def submit(i: int) -> None:
            async with slots:
                if per_request > 1:
                    body: dict[str, Any] = {"transactions": [transfer(j) for j in range(i, min(i + per_request, count))]}
                    path = "/api/v1/transactions/batch"
                else:
                    body, path = transfer(i), "/api/v1/transactions"
                async with client.post(path, json=body) as response:
                    if response.status != 202:
                        raise RuntimeError(f"submit failed: {response.status} {(await response.text())[:300]}")
                    answer = await response.json()
                if per_request > 1:
                    ids[i:i + len(answer["tasks"])] = [t["id"] for t in answer["tasks"]]
                else:
                    ids[i] = answer["id"]

        jobs = []
        for i in range(0, count, per_request):
            if rate:
                await asyncio.sleep(max(0.0, started + i / rate - time.time()))
            jobs.append(asyncio.create_task(submit(i)))
        await asyncio.gather(*jobs)
    return ids, started


async def _settle(stack: RunningStack, ids: list[str], deadline: float) -> list[dict[str, Any]]:
    """Every task's record once final (or as it is at the deadline), read POLL_S apart through
    ``POST /api/v1/tasks/lookup`` (a long-poll per task cost the API more CPU than the submits)."""
    headers = {"Authorization": f"Bearer {stack.key}"}
    records: dict[str, dict[str, Any]] = {}
    open_ids = list(ids)
    async with aiohttp.ClientSession(stack.base, headers=headers, timeout=TIMEOUT) as client:
        while open_ids and time.time() < deadline:
            for at in range(0, len(open_ids), LOOKUP_CHUNK):
                async with client.post("/api/v1/tasks/lookup", json={"ids": open_ids[at:at + LOOKUP_CHUNK]}) as response:
                    for record in (await response.json())["tasks"]:
                        records[record["id"]] = record
            open_ids = [i for i in open_ids if records.get(i, {}).get("state") not in ("confirmed", "failed")]
            if open_ids:
                await asyncio.sleep(POLL_S)
    return [records.get(i, {"id": i, "state": "unknown"}) for i in ids]


def phases(confirmed: list[dict[str, Any]]) -> dict[str, float]:
    """Where submit-to-confirmed went (medians): waiting for a drain to take the write, then from there to the
    confirmed record; and how many blocks held the run (the most in one block beside it)."""
    timed = [r for r in confirmed if r["started_at"] is not None]
    if not timed:
        return {}
    per_block: dict[int, int] = {}
    for r in confirmed:
        per_block[r["result"]["block_number"]] = per_block.get(r["result"]["block_number"], 0) + 1
    return {
        "queued": round(percentile([r["started_at"] - r["created_at"] for r in timed], 50), 3),
        "taken_to_confirmed": round(percentile([r["updated_at"] - r["started_at"] for r in timed], 50), 3),
        "blocks": len(per_block), "most_in_a_block": max(per_block.values()),
    }


def run(stack: RunningStack, senders: list[str], count: int, *, rate: float | None = None, per_request: int = 1) -> dict[str, Any]:
    ids, started = asyncio.run(_submit_all(stack, senders, count, rate, per_request))
    submit_s = time.time() - started
    records = asyncio.run(_settle(stack, ids, started + RUN_CAP_S))
    confirmed = [r for r in records if r["state"] == "confirmed"]
    latencies = [r["updated_at"] - r["created_at"] for r in confirmed]
    last = max((r["updated_at"] for r in confirmed), default=started)
    errors: dict[str, int] = {}
    for r in records:
        if r["state"] != "confirmed":
            kind = (r.get("error") or {}).get("type", r["state"])
            errors[kind] = errors.get(kind, 0) + 1
    return {
        "senders": len(senders), "transactions": count, "per_request": per_request, "confirmed": len(confirmed), "errors": errors,
        "phases_p50_s": phases(confirmed),
        "paced_rate_per_s": rate, "submit_rate_per_s": round(count / submit_s, 1),
        "confirmed_per_s": round(len(confirmed) / (last - started), 1) if confirmed else 0.0,
        "latency_p50_s": round(percentile(latencies, 50), 3), "latency_p99_s": round(percentile(latencies, 99), 3),
        "wall_s": round(last - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="transfers per run (default 2000)")
    parser.add_argument("--many", type=int, default=10, help="sending accounts in the many-senders run (default 10)")
    parser.add_argument("--rate", type=float, help="the paced run's rate (default: half the one-sender max rate)")
    parser.add_argument("--per-request", type=int, default=100,
                        help="transfers per POST /api/v1/transactions/batch in the batched runs (default 100)")
    parser.add_argument("--profile", action="store_true", help="py-spy over the stack during the one-sender max run")
    parser.add_argument("--esp-env", action="append", default=[], metavar="ESP_X=VALUE", type=esp_setting,
                        help="an ESP setting for the stack under test (repeatable; recorded with the results)")
    parser.add_argument("--name", default="writes", help="results file name under bench/results (default writes)")
    args = parser.parse_args()
    profile_out = RESULTS / "profiles" / f"{args.name}-one-sender.raw"
    with tempfile.TemporaryDirectory(prefix="esp-bench-") as tmp:
        stack = RunningStack(Path(tmp), ESP_KEYSTORE_SCRYPT_N="4096", ESP_DEPLOY_PLATFORM="0", **dict(args.esp_env))
        try:
            accounts = make_accounts(stack, args.many)
            run(stack, accounts[:1], 100)  # warm-up: connections, imports, the first blocks
            if args.profile:
                with Profile(stack.proc.pid, profile_out) as profile:
                    one = run(stack, accounts[:1], args.count)
            else:
                one = run(stack, accounts[:1], args.count)
            many = run(stack, accounts, args.count)
            rate = args.rate or max(one["confirmed_per_s"] / 2, 1.0)
            paced = run(stack, accounts, args.count, rate=rate)
            one_batched = run(stack, accounts[:1], args.count, per_request=args.per_request)
            many_batched = run(stack, accounts, args.count, per_request=args.per_request)
            paced_batched = run(stack, accounts, args.count, rate=max(one_batched["confirmed_per_s"] / 2, 1.0),
                                per_request=args.per_request)
        finally:
            stack.close()
    figures = {"setup": f"3 anvil nodes (1 s interval blocks), the Procfile's API and workers, an aiohttp asyncio client with "
               f"{CLIENTS} connections, loopback", "esp_env": dict(args.esp_env), "one_sender": one, "many_senders": many, "paced": paced,
               "one_sender_batched": one_batched, "many_senders_batched": many_batched, "paced_batched": paced_batched}
    n = args.per_request
    rows = (("one sender, max", one), ("ten senders, max", many), (f"ten senders, paced {paced['paced_rate_per_s']:.0f}/s", paced),
            (f"one sender, max, {n} per request", one_batched), (f"ten senders, max, {n} per request", many_batched),
            (f"ten senders, paced {paced_batched['paced_rate_per_s']:.0f}/s, {n} per request", paced_batched))
    table = "\n".join([
        "| run | senders | tx | confirmed | errors | submit/s | confirmed/s | p50 s | p99 s | p50 queued / taken to confirmed s, blocks, most in one |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {name} | {r['senders']} | {r['transactions']} | {r['confirmed']} | {sum(r['errors'].values())} | "
          f"{r['submit_rate_per_s']} | {r['confirmed_per_s']} | {r['latency_p50_s']} | {r['latency_p99_s']} | "
          f"{' / '.join(str(v) for v in r['phases_p50_s'].values())} |" for name, r in rows),
    ])
    if args.profile and profile.summary is not None:
        (RESULTS / "profiles" / f"{args.name}-one-sender.md").write_text(
            profile.summary.markdown(f"{args.name}: one sender, {args.count} transfers at max rate") + "\n")
    path = write_results(args.name, figures, table)
    print(table)
    print(f"figures written to {path}")


if __name__ == "__main__":
    main()
