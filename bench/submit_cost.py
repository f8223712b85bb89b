"""What one submit costs the API: CPU per ``POST /api/v1/transactions``, in process, against a real Redis.

No HTTP server and no worker: the Flask app handles each request in this process
(Flask's test client), with a Redis of its own (``bench.redis_server``), and the
figure is CPU time per accepted transfer (``time.process_time``), with Redis's
own CPU per request beside it and cProfile's top entries. A ratio against the same run's
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


def _redis_cpu(client: redis.Redis) -> float:
    info: Any = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


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

        def run(method: str, path: str, **kw: Any) -> dict[str, float]:
            redis_before, cpu_before, wall_before = _redis_cpu(client), time.process_time(), time.perf_counter()
            for _ in range(count):
                response = http.open(path, method=method, headers=headers, **kw)
                if response.status_code >= 400:
                    raise SystemExit(f"{method} {path}: {response.status_code} {response.get_json()}")
            return {"cpu_ms": (time.process_time() - cpu_before) * 1000 / count,
                    "wall_ms": (time.perf_counter() - wall_before) * 1000 / count,
                    "redis_cpu_ms": (_redis_cpu(client) - redis_before) * 1000 / count}

        health = run("GET", "/healthz")
        submit = run("POST", "/api/v1/transactions", json=body)
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
        return {"count": count, "healthz": health, "submit": submit,
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
    for route in ("healthz", "submit"):
        f = figures[route]
        print(f"{route:8} cpu {f['cpu_ms']:.3f} ms  wall {f['wall_ms']:.3f} ms  redis cpu {f['redis_cpu_ms']:.3f} ms per request")
    print(f"submit ÷ healthz (cpu): {figures['submit_over_healthz_cpu']:.1f}")
    if top:
        print(top)


if __name__ == "__main__":
    main()
