"""Write-path benchmark: confirmed transactions per second and submit-to-confirm latency.

``python -m bench.writes`` starts the real stack (3 anvil nodes, 1 s blocks,
gunicorn, two Celery worker processes, beat), creates the sending accounts
through the API, then submits ETH transfers over HTTP from 16 client threads:
once all from ONE account, once spread over many. Latency is the task record's
submit-to-confirm time (created_at -> updated_at of the confirmed record).
Bounded: a fixed number of transfers, each run capped in time. Loopback only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.stack import RunningStack, percentile, write_results

PASSWORD = "bench password for accounts"


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


def run(stack: RunningStack, senders: list[str], count: int, *, clients: int = 16) -> dict[str, Any]:
    def submit(i: int) -> tuple[str, float]:
        status, body = stack.post("/api/v1/transactions", {"from": senders[i % len(senders)], "to": senders[(i + 1) % len(senders)], "value_wei": 1})
        if status != 202:
            raise RuntimeError(f"submit failed: {status} {body}")
        return body["id"], time.time()

    started = time.time()
    with ThreadPoolExecutor(clients) as pool:
        submitted = list(pool.map(submit, range(count)))
    submit_s = time.time() - started
    with ThreadPoolExecutor(clients) as pool:
        records = list(pool.map(lambda item: stack.wait(item[0], timeout=300), submitted))
    confirmed = [r for r in records if r["state"] == "confirmed"]
    latencies = [r["updated_at"] - r["created_at"] for r in confirmed]
    last = max((r["updated_at"] for r in confirmed), default=started)
    return {
        "senders": len(senders), "transactions": count, "confirmed": len(confirmed),
        "failed": len(records) - len(confirmed),
        "submit_rate_per_s": round(count / submit_s, 1),
        "confirmed_per_s": round(len(confirmed) / (last - started), 1) if confirmed else 0.0,
        "latency_p50_s": round(percentile(latencies, 50), 3), "latency_p99_s": round(percentile(latencies, 99), 3),
        "wall_s": round(last - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="transfers per run (default 1000)")
    parser.add_argument("--many", type=int, default=10, help="sending accounts in the many-senders run (default 10)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="esp-bench-") as tmp:
        stack = RunningStack(Path(tmp), ESP_KEYSTORE_SCRYPT_N="4096", ESP_DEPLOY_PLATFORM="0")
        try:
            accounts = make_accounts(stack, args.many)
            one = run(stack, accounts[:1], args.count)
            many = run(stack, accounts, args.count)
        finally:
            stack.close()
    figures = {"setup": "3 anvil nodes (1 s interval blocks), gunicorn 2 workers x 4 threads, one write worker of 2 processes, "
               "16 HTTP client threads, loopback, 2-core machine", "one_sender": one, "many_senders": many}
    table = "\n".join([
        "| run | senders | tx | confirmed | submit/s | confirmed/s | p50 s | p99 s |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {name} | {r['senders']} | {r['transactions']} | {r['confirmed']} | {r['submit_rate_per_s']} | "
          f"{r['confirmed_per_s']} | {r['latency_p50_s']} | {r['latency_p99_s']} |" for name, r in (("one sender", one), ("many senders", many))),
    ])
    path = write_results("writes", figures, table)
    print(table)
    print(f"figures written to {path}")


if __name__ == "__main__":
    main()
