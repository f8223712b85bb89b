"""What counting the API's requests for the dashboard costs a request, in process, against a real Redis.

Three variants of one app, measured in interleaved rounds on ``GET /api/v1/nodes`` (a cheap
route that reads Redis): with no counting (the baseline), with ESP's counting (a per-process
``Tally``, sent by a background thread at most twice a second), and with one INCR of its own per
request (how it was counted before). The figures are the median microseconds per request and
each variant's ratio to the baseline of the same run, written to ``bench/results/request-counting.json``.

    python -m bench.request_counting [--requests N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from flask import Flask, Response

from app import create_app
from app.dashboard import count_requests
from bench.redis_server import PrivateRedis
from nodepool.activity import REQUESTS_KEY
from settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
ROUTE = "/api/v1/nodes"


def per_request_incr(app: Flask) -> Callable[[Response], Response]:
    """The earlier way: one INCR round trip after every request."""
    client = app.extensions["esp.pool"].redis

    def hook(response: Response) -> Response:
        client.incr(REQUESTS_KEY)
        return response
    return hook


def measure(requests: int, rounds: int) -> dict[str, Any]:
    with PrivateRedis() as server, tempfile.TemporaryDirectory() as run_dir:
        url = server.url(0)
        settings = Settings.from_env({"ESP_RUN_DIR": run_dir, "ESP_KEYSTORE_DIR": f"{run_dir}/keystore",
                                      "ESP_FILES_DIR": f"{run_dir}/files", "ESP_REDIS_URL": url,
                                      "ESP_RATE_LIMIT_ANONYMOUS": "100000000 per minute"})
        app = create_app(settings)
        client = redis.Redis.from_url(url)
        hooks = app.after_request_funcs[None]
        assert count_requests in hooks, "the app no longer counts its requests with app.dashboard.count_requests"
        baseline = [h for h in hooks if h is not count_requests]
        variants = {"none": baseline, "tally": list(hooks), "incr-per-request": [*baseline, per_request_incr(app)]}
        http = app.test_client()

        def run(n: int) -> float:
            started = time.perf_counter()
            for _ in range(n):
                answer = http.get(ROUTE)
                assert answer.status_code == 200, answer.get_data(as_text=True)
            return (time.perf_counter() - started) / n * 1e6

        app.after_request_funcs[None] = variants["tally"]
        run(min(requests, 300))  # warm: imports, connections, the tally's thread
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, funcs in variants.items():
                app.after_request_funcs[None] = funcs
                samples[name].append(run(requests))
        app.after_request_funcs[None] = variants["tally"]
        app.extensions["esp.activity"].close()
        counted = int(client.get(REQUESTS_KEY) or 0)
        client.close()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    expected = min(requests, 300) + 2 * rounds * requests  # the tally's and the per-request INCR's requests
    return {
        "route": ROUTE, "requests_per_round": requests, "rounds": rounds,
        "us_per_request": {name: round(value, 1) for name, value in medians.items()},
        "ratio_to_none": {name: round(value / medians["none"], 3) for name, value in medians.items()},
        "requests_counted": counted, "requests_expected": expected,
        "note": "in process (Flask's test client), private Redis on loopback; medians of interleaved rounds",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per variant and round (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be at least 1")
    result = measure(args.requests, args.rounds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "request-counting.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")
    return 0 if result["requests_counted"] == result["requests_expected"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
