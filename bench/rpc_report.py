"""The figures of ``bench.rpc``: latency summaries, errors of an answer, the issue's ratios, the markdown table.

Pure: no network, no stack; ``bench.rpc`` measures and this reads what it measured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from bench.stack import percentile

TARGETS = ("direct", "rpc_cached", "rpc_uncached", "control")
TARGET_TITLES = {"direct": "direct (leader anvil)", "rpc_cached": "/rpc cache on", "rpc_uncached": "/rpc cache off",
                 "control": "control (Flask + web3.py)"}
METHODS = ("eth_blockNumber", "eth_getBalance", "eth_call", "eth_getBlockByNumber")
CONCURRENCY = (1, 16, 64)

#: The issue's targets: uncached ÷ control at c=64 at least, cached ÷ direct at least, added p50 at c=1 at most (ms).
TARGET_VS_CONTROL = 2.0
TARGET_VS_DIRECT = 0.15
TARGET_ADDED_P50_MS = 1.0


# -- pure helpers ---------------------------------------------------------------------------


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds (NaN when there are none), rounded to microseconds."""
    return {"p50_ms": round(percentile(list(latencies_s), 50) * 1000, 3),
            "p99_ms": round(percentile(list(latencies_s), 99) * 1000, 3)}


def answer_error(status: int, body: bytes, *, jsonrpc: bool) -> str | None:
    """Why an answer counts as an error (None when it is a good one): the status, bad JSON, or a JSON-RPC error."""
    if status != 200:
        return f"HTTP {status}"
    try:
        payload = json.loads(body)
    except ValueError:
        return "not JSON"
    if not jsonrpc:
        return None
    if not isinstance(payload, dict):
        return "not a JSON-RPC response object"
    if "error" in payload:
        error = payload["error"] if isinstance(payload["error"], dict) else {}
        return f"JSON-RPC {error.get('code')}: {str(error.get('message'))[:80]}"
    if "result" not in payload:
        return "no result"
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 3)


def _diff(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    return round(a - b, 3)


def ratios(cells: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method, the issue's three figures from the cells (None where a cell is missing):

    - ``uncached_vs_control_c64``: /rpc without cache ÷ control, requests/s at c=64 (target >= 2);
    - ``cached_vs_direct``: /rpc with cache ÷ the node, requests/s, at every concurrency (target >= 0.15);
      ``cached_vs_direct_c64`` repeats the c=64 one;
    - ``added_p50_c1_ms``: p50 of /rpc minus p50 of the node at c=1, cached and uncached (target <= 1 ms).

    ``meets`` says per figure whether the target holds (None when it cannot be told);
    a figure taken from a cell with errors or cut short is listed in ``caveats``.
    """
    index = {(c["target"], c["method"], c["concurrency"]): c for c in cells}

    def get(target: str, method: str, concurrency: int, key: str) -> float | None:
        cell = index.get((target, method, concurrency))
        return None if cell is None else cell[key]

    out: dict[str, dict[str, Any]] = {}
    for method in sorted({c["method"] for c in cells}, key=lambda m: METHODS.index(m) if m in METHODS else len(METHODS)):
        vs_control = _ratio(get("rpc_uncached", method, 64, "rps"), get("control", method, 64, "rps"))
        vs_direct = {str(c): _ratio(get("rpc_cached", method, c, "rps"), get("direct", method, c, "rps")) for c in CONCURRENCY}
        added = {name: _diff(get(target, method, 1, "p50_ms"), get("direct", method, 1, "p50_ms"))
                 for name, target in (("cached", "rpc_cached"), ("uncached", "rpc_uncached"))}
        used = [index.get(key) for key in ((t, method, 64) for t in ("rpc_uncached", "control", "rpc_cached", "direct"))]
        used += [index.get((t, method, 1)) for t in ("rpc_cached", "rpc_uncached", "direct")]
        caveats = sorted({f"{c['target']} c={c['concurrency']}: " + ("cut short" if c["cut_short"] else f"{c['errors']} errors")
                          for c in used if c is not None and (c["errors"] or c["cut_short"])})
        out[method] = {
            "uncached_vs_control_c64": vs_control,
            "cached_vs_direct": vs_direct,
            "cached_vs_direct_c64": vs_direct["64"],
            "added_p50_c1_ms": added,
            "meets": {
                "uncached_vs_control_c64": None if vs_control is None else vs_control >= TARGET_VS_CONTROL,
                "cached_vs_direct_c64": None if vs_direct["64"] is None else vs_direct["64"] >= TARGET_VS_DIRECT,
                "added_p50_c1_cached": None if added["cached"] is None else added["cached"] <= TARGET_ADDED_P50_MS,
                "added_p50_c1_uncached": None if added["uncached"] is None else added["uncached"] <= TARGET_ADDED_P50_MS,
            },
            "caveats": caveats,
        }
    return out


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def cell_text(cell: Mapping[str, Any] | None) -> str:
    """``rps · p50 · p99`` of a cell, with its errors and a cut-short mark when it has them."""
    if cell is None:
        return "—"
    text = f"{cell['rps']:,.0f} · {_num(cell['p50_ms'])} · {_num(cell['p99_ms'])}"
    if cell["errors"]:
        text += f" **{cell['errors']} err**"
    if cell["cut_short"]:
        text += f" (cut at {cell['wall_s']:.0f} s: {cell['completed']}/{cell['requested']})"
    return text


def markdown(figures: Mapping[str, Any]) -> str:
    """The run as markdown: where and what, the figures table, the ratios, and the errors seen."""
    cells = figures["cells"]
    index = {(c["target"], c["method"], c["concurrency"]): c for c in cells}
    targets = [t for t in TARGETS if any(c["target"] == t for c in cells)]
    machine = figures["machine"]
    gateway = figures.get("gateway") or {}
    processes = gateway.get("processes")
    titles = {t: TARGET_TITLES[t] + (f" ({processes} proc)" if processes and t.startswith("rpc_") else "") for t in targets}
    lines = [
        f"# JSON-RPC read path, {figures['started_at']}",
        "",
        f"Machine: {machine['cores']} cores, {machine['ram_gib']} GiB RAM, {machine['cpu']}; Python {machine['python']}. "
        f"Commit {figures['commit']} (gateway: {figures['gateway_commit'] or 'not present'}). "
        f"{figures['setup']}",
        f"Load average (1, 5, 15 min) before / after the cells: {machine.get('loadavg_1_5_15', {}).get('before')} / "
        f"{machine.get('loadavg_1_5_15', {}).get('after')} (the machine is shared; the stack's own processes count too).",
        f"Gateway: {gateway.get('server') or '—'}, ESP_RPC_PROCESSES={processes if processes is not None else '—'} "
        f"per server (cache on: the stack's; cache off: a second server)"
        + (f"; workers seen under the cache-off server: {gateway['workers_seen_uncached']}"
           if gateway.get("workers_seen_uncached") is not None else "") + ".",
        f"Control: {figures['control']['config'] or '—'} ({figures['control']['why']}).",
        "",
        "Each cell: requests/s · p50 ms · p99 ms (errors and cuts are marked). Requests per cell: "
        + ", ".join(f"c={c}: {n}" for c, n in figures["requests_per_cell"].items()) + ".",
        "",
        "| method | c | " + " | ".join(titles[t] for t in targets) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for method in METHODS:
        for concurrency in CONCURRENCY:
            if not any((t, method, concurrency) in index for t in targets):
                continue
            lines.append(f"| {method} | {concurrency} | "
                         + " | ".join(cell_text(index.get((t, method, concurrency))) for t in targets) + " |")
    lines += [
        "",
        f"| method | /rpc uncached ÷ control, c=64 (≥ {TARGET_VS_CONTROL:g}) | /rpc cached ÷ direct, c=64 (≥ {TARGET_VS_DIRECT:g}) "
        f"| … at c=16 / c=1 | added p50 at c=1, cached (≤ {TARGET_ADDED_P50_MS:g} ms) | added p50 at c=1, uncached | caveats |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, r in figures["ratios"].items():
        meets = r["meets"]
        lines.append(
            f"| {method} | {_num(r['uncached_vs_control_c64'])}{_mark(meets['uncached_vs_control_c64'])} "
            f"| {_num(r['cached_vs_direct_c64'], 3)}{_mark(meets['cached_vs_direct_c64'])} "
            f"| {_num(r['cached_vs_direct']['16'], 3)} / {_num(r['cached_vs_direct']['1'], 3)} "
            f"| {_num(r['added_p50_c1_ms']['cached'], 3)}{_mark(meets['added_p50_c1_cached'])} "
            f"| {_num(r['added_p50_c1_ms']['uncached'], 3)}{_mark(meets['added_p50_c1_uncached'])} "
            f"| {'; '.join(r['caveats']) or '—'} |")
    errors = [c for c in cells if c["errors"]]
    if errors:
        lines += ["", "Errors by cell:", ""]
        lines += [f"- {c['target']} {c['method']} c={c['concurrency']}: {c['errors']} of {c['completed']} "
                  f"({', '.join(f'{k} x{v}' for k, v in c['error_kinds'].items())})" for c in errors]
    if figures.get("notes"):
        lines += ["", *(f"- {note}" for note in figures["notes"])]
    return "\n".join(lines)
