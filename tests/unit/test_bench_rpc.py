"""bench.rpc's pure helpers: latency percentiles, what counts as an error, the ratio table and its markdown."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from bench.rpc import calls_for
from bench.rpc_control import balance_of_data, create_app
from bench.rpc_report import answer_error, cell_text, latency_summary, markdown, ratios


def cell(target: str, method: str, concurrency: int, rps: float, p50_ms: float, *, errors: int = 0,
         cut_short: bool = False) -> dict[str, Any]:
    return {"target": target, "method": method, "concurrency": concurrency, "requested": 100, "completed": 100,
            "cut_short": cut_short, "wall_s": 1.0, "rps": rps, "p50_ms": p50_ms, "p99_ms": p50_ms * 3,
            "errors": errors, "error_kinds": {"HTTP 502": errors} if errors else {}}


def full_matrix(method: str = "eth_getBalance") -> list[dict[str, Any]]:
    figures = {"direct": (8000.0, 0.2), "rpc_cached": (2000.0, 0.9), "rpc_uncached": (900.0, 1.6), "control": (300.0, 3.0)}
    return [cell(t, method, c, rps, p50) for t, (rps, p50) in figures.items() for c in (1, 16, 64)]


@pytest.mark.parametrize(("latencies", "p50", "p99"), [
    ([0.001] * 99 + [0.1], 1.0, 1.0),
    ([i / 1000 for i in range(1, 101)], 51.0, 99.0),
    ([0.0005], 0.5, 0.5),
])
def test_latency_summary_in_milliseconds(latencies: list[float], p50: float, p99: float) -> None:
    assert latency_summary(latencies) == {"p50_ms": p50, "p99_ms": p99}


def test_latency_summary_of_nothing_is_nan() -> None:
    summary = latency_summary([])
    assert math.isnan(summary["p50_ms"]) and math.isnan(summary["p99_ms"])


@pytest.mark.parametrize(("status", "body", "jsonrpc", "expected"), [
    (200, b'{"jsonrpc":"2.0","id":1,"result":"0x10"}', True, None),
    (200, b'{"jsonrpc":"2.0","id":1,"result":null}', True, None),
    (200, b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"no node"}}', True, "JSON-RPC -32000: no node"),
    (200, b'{"jsonrpc":"2.0","id":1}', True, "no result"),
    (200, b"[]", True, "not a JSON-RPC response object"),
    (200, b"<html>", True, "not JSON"),
    (502, b'{"jsonrpc":"2.0","id":1,"result":"0x1"}', True, "HTTP 502"),
    (200, b'{"wei":"5"}', False, None),
    (404, b'{"error":"Not Found"}', False, "HTTP 404"),
])
def test_answer_error(status: int, body: bytes, jsonrpc: bool, expected: str | None) -> None:
    assert answer_error(status, body, jsonrpc=jsonrpc) == expected


def test_ratios_per_method() -> None:
    r = ratios(full_matrix())["eth_getBalance"]
    assert r["uncached_vs_control_c64"] == 3.0
    assert r["cached_vs_direct"] == {"1": 0.25, "16": 0.25, "64": 0.25}
    assert r["added_p50_c1_ms"] == {"cached": 0.7, "uncached": 1.4}
    assert r["meets"] == {"uncached_vs_control_c64": True, "cached_vs_direct_c64": True,
                          "added_p50_c1_cached": True, "added_p50_c1_uncached": False}
    assert r["caveats"] == []


def test_ratios_without_the_gateway_are_unknown_not_failed() -> None:
    cells = [c for c in full_matrix() if c["target"] in ("direct", "control")]
    r = ratios(cells)["eth_getBalance"]
    assert r["uncached_vs_control_c64"] is None and r["cached_vs_direct_c64"] is None
    assert set(r["meets"].values()) == {None}


def test_ratios_name_cells_with_errors_or_cut_short() -> None:
    cells = full_matrix()
    cells[0] = {**cells[0], "errors": 3}  # direct c=1
    cells[-1] = {**cells[-1], "cut_short": True}  # control c=64
    assert ratios(cells)["eth_getBalance"]["caveats"] == ["control c=64: cut short", "direct c=1: 3 errors"]


def test_cell_text_shows_errors_and_cuts() -> None:
    assert cell_text(cell("direct", "eth_call", 16, 1234.4, 0.5)) == "1,234 · 0.50 · 1.50"
    marked = cell_text({**cell("direct", "eth_call", 16, 10.0, 0.5, errors=2), "cut_short": True, "completed": 40})
    assert "**2 err**" in marked and "40/100" in marked


def test_markdown_has_every_cell_and_the_errors() -> None:
    cells = full_matrix() + full_matrix("eth_call")
    cells[3] = {**cells[3], "errors": 5, "error_kinds": {"JSON-RPC -32603: internal": 5}}
    figures = {"started_at": "2026-11-28T00:00:00Z", "commit": "abc1234", "gateway_commit": "def5678", "setup": "loopback.",
               "machine": {"cores": 2, "ram_gib": 23.5, "cpu": "test cpu", "python": "3.11", "loadavg_1_5_15": {}},
               "control": {"config": "gthread 2x16", "why": "given"}, "requests_per_cell": {"1": 25, "16": 100, "64": 100},
               "gateway": {"server": "rpc.server", "processes": 2, "workers_seen_uncached": 2},
               "cells": cells, "ratios": ratios(cells), "notes": ["a note"]}
    text = markdown(figures)
    assert "| /rpc cache on (2 proc) | /rpc cache off (2 proc) |" in text and "ESP_RPC_PROCESSES=2" in text
    table_rows = [line for line in text.splitlines() if line.startswith("| eth_")]
    assert len(table_rows) == 2 * 3 + 2  # a row per method and concurrency, then one ratio row per method
    assert "JSON-RPC -32603: internal x5" in text and "- a note" in text and "3.00 ✓" in text


def test_calls_for_jsonrpc_targets_and_the_control() -> None:
    holder, token = "0x" + "ab" * 20, "0x" + "cd" * 20
    rpc = calls_for("rpc_cached", "http://127.0.0.1:1/rpc", token=token, holder=holder, key="k")
    assert rpc["eth_getBalance"].headers["Authorization"] == "Bearer k"
    body = json.loads(rpc["eth_call"].body or b"")
    assert body["params"] == [{"to": token, "data": "0x70a08231" + "0" * 24 + "ab" * 20}, "latest"]
    assert json.loads(rpc["eth_getBlockByNumber"].body or b"")["params"] == ["0x1", False]
    control = calls_for("control", "http://127.0.0.1:2", token=token, holder=holder)
    assert control["eth_getBlockByNumber"].url == "http://127.0.0.1:2/block/1" and not control["eth_call"].jsonrpc


def test_balance_of_data_pads_the_address() -> None:
    assert balance_of_data("0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266") == (
        "0x70a08231000000000000000000000000f39fd6e51aad88f6f4ce6ab8827279cfffb92266")


def test_control_app_builds_without_a_node() -> None:
    app = create_app("http://127.0.0.1:9", "0x" + "cd" * 20, "0x" + "ab" * 20)
    assert app.test_client().get("/healthz").get_json() == {"ok": True}
