"""What one submit costs the API: CPU per ``POST /api/v1/transactions``, in process, against a real Redis.

No HTTP server and no worker: the Flask app handles each request in this process
(Flask's test client), with a Redis of its own (``bench.redis_server``), and the
figure is CPU time per accepted transfer (``time.process_time``), with Redis's
own CPU per request beside it and cProfile's top entries; and the same per transfer when
they come 100 to a ``POST /api/v1/transactions/batch``. A ratio against the same run's
``GET /healthz`` (the cheapest route, through the same guards) says how much of
a submit is the route's own work.

    python -m bench.submit_cost [--count N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from eth_account import Account

from access.keys import ApiKeyStore
from app import create_app
from bench.redis_server import PrivateRedis
from settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
TREASURY_TO = "0x000000000000000000000000000000000000dEaD"
#: Transfers per request in the batched measurement.
BATCH = 100


def _redis_cpu(client: redis.Redis) -> float:
    info: Any = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _redis_calls(client: redis.Redis) -> dict[str, int]:
    """Commands run so far, by name (a script's own commands count under their names too)."""
    stats: Any = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def measure(count: int, *, profile: bool) -> dict[str, Any]:
    with PrivateRedis() as server, tempfile.TemporaryDirectory() as run_dir:
        url = server.url(0)
        settings = Settings.from_env({"ESP_RUN_DIR": run_dir, "ESP_KEYSTORE_DIR": f"{run_dir}/keystore",
                                      "ESP_FILES_DIR": f"{run_dir}/files", "ESP_REDIS_URL": url})
        app = create_app(settings)
        client = redis.Redis.from_url(url)
        _, secret = ApiKeyStore(client).create("bench", "admin")
        headers = {"Authorization": f"Bearer {secret}"}
        http = app.test_client()
        body = {"from": Account.from_key(settings.treasury_key).address, "to": TREASURY_TO, "value_wei": 1}
        first = http.post("/api/v1/transactions", json=body, headers=headers)
        if first.status_code != 202:
            raise SystemExit(f"submit refused: {first.status_code} {first.get_json()}")

        def run(method: str, path: str, *, requests: int = count, per_request: int = 1, **kw: Any) -> dict[str, Any]:
            """Figures per transfer (per request when ``per_request`` is 1)."""
            n = requests * per_request
            calls_before = _redis_calls(client)
            redis_before, cpu_before, wall_before = _redis_cpu(client), time.process_time(), time.perf_counter()
            for _ in range(requests):
                response = http.open(path, method=method, headers=headers, **kw)
                if response.status_code >= 400:
                    raise SystemExit(f"{method} {path}: {response.status_code} {response.get_json()}")
            figures = {"cpu_ms": (time.process_time() - cpu_before) * 1000 / n,
                       "wall_ms": (time.perf_counter() - wall_before) * 1000 / n,
                       "redis_cpu_ms": (_redis_cpu(client) - redis_before) * 1000 / n}
            after = _redis_calls(client)
            per = {name: round((calls - calls_before.get(name, 0)) / n, 2) for name, calls in sorted(after.items())
                   if name not in ("info",) and calls - calls_before.get(name, 0) > 0}
            return {**figures, "redis_commands": per}

        health = run("GET", "/healthz")
        submit = run("POST", "/api/v1/transactions", json=body)
        batched = run("POST", "/api/v1/transactions/batch", requests=max(count // BATCH, 1), per_request=BATCH,
                      json={"transactions": [body] * BATCH})
        top = ""
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            run("POST", "/api/v1/transactions", json=body)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(40)
            top = out.getvalue()
        app.extensions["esp.pool"].close()
        client.close()
        return {"count": count, "healthz": health, "submit": submit, f"batch_of_{BATCH}_per_transfer": batched,
                "submit_over_healthz_cpu": submit["cpu_ms"] / health["cpu_ms"], "profile": top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="requests per route (default 2000)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top entries of a further submit run")
    parser.add_argument("--name", default="submit-cost", help="results file name under bench/results")
    args = parser.parse_args()
    figures = measure(args.count, profile=args.profile)
    top = figures.pop("profile")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    for route in ("healthz", "submit", f"batch_of_{BATCH}_per_transfer"):
        f = figures[route]
        print(f"{route:8} cpu {f['cpu_ms']:.3f} ms  wall {f['wall_ms']:.3f} ms  redis cpu {f['redis_cpu_ms']:.3f} ms per request")
        print(f"{'':8} redis commands per request: {f['redis_commands']}")
    print(f"submit ÷ healthz (cpu): {figures['submit_over_healthz_cpu']:.1f}")
    if top:
        print(top)


if __name__ == "__main__":
    main()
