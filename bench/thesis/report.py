"""The experiment's figures: per-run summaries, the JSON, the markdown table and the PNG plots.

A run is a dict (so that the JSON is the record): what ran (``system``, ``nodes``,
``policy``, ``scenario``, ``mix``, ``concurrency``, ``count``) and what came of it
(``summarize``): the completion time of the fixed count (``None`` when the cap cut
the run short or an operation never ran), throughput of successful operations,
latency percentiles overall and by operation, ESP writes' 202 latency apart,
errors by kind, each node's share, and the resource series.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.stack import RESULTS
from bench.thesis.loadgen import OpRecord, RunOutcome

OUT = RESULTS / "thesis"
PERCENTILES = (50, 95, 99)


def agg_figure(size: tuple[float, float]) -> Figure:
    """A figure drawn by the Agg backend (files only, no display, no pyplot state)."""
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile by linear interpolation between closest ranks (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """n and p50/p95/p99 in seconds (rounded to the millisecond; None when there are no values)."""
    stats: dict[str, float | int | None] = {"n": len(values)}
    for p in PERCENTILES:
        stats[f"p{p}_s"] = round(percentile(values, p), 4) if values else None
    return stats


def summarize(outcome: RunOutcome, count: int) -> dict[str, Any]:
    """A run's figures from its operation records."""
    records: list[OpRecord] = outcome.records
    ok = [r for r in records if r.outcome == "ok"]
    errors: Counter[str] = Counter(r.outcome for r in records if r.outcome != "ok")
    if outcome.not_started:
        errors["not_started"] += outcome.not_started
    finished = not outcome.capped and not outcome.not_started and len(records) == count
    by_op: dict[str, Any] = {}
    for op in sorted({r.op for r in records}):
        mine = [r for r in records if r.op == op]
        mine_ok = [r.latency_s for r in mine if r.outcome == "ok"]
        entry: dict[str, Any] = {**latency_stats(mine_ok), "errors": len(mine) - len(mine_ok)}
        accepted = [r.accepted_s for r in mine if r.outcome == "ok" and r.accepted_s is not None]
        if accepted:
            entry["accepted"] = latency_stats(accepted)
        by_op[op] = entry
    nodes = Counter(r.node for r in ok if r.node)
    total_nodes = sum(nodes.values())
    return {
        "completion_s": round(outcome.wall_s, 3) if finished else None,
        "wall_s": round(outcome.wall_s, 3),
        "finished": finished,
        "ok": len(ok),
        "error_count": sum(errors.values()),
        "errors": dict(sorted(errors.items())),
        "throughput_ops_s": round(len(ok) / outcome.wall_s, 1) if outcome.wall_s > 0 else 0.0,
        "latency": latency_stats([r.latency_s for r in ok]),
        "by_operation": by_op,
        "node_share": {node: round(n / total_nodes, 3) for node, n in sorted(nodes.items())},
    }


def label(run: dict[str, Any]) -> str:
    """A run's system as a legend names it: ``control`` or ``ESP-3 esp`` (plus a scenario other than healthy)."""
    if run["system"] == "control":
        name = "control"
    else:
        name = f"ESP-{run['nodes']} {run['policy']}"
        if run.get("backend", "process") != "process":
            name += f" {run['backend']}"
    return name if run.get("scenario", "healthy") == "healthy" else f"{name} [{run['scenario']}]"


def ratios(runs: Sequence[dict[str, Any]], nodes: int = 3) -> list[dict[str, Any]]:
    """ESP with ``nodes`` nodes ÷ the control, completion time, for each mix and concurrency both measured healthy."""
    out = []
    controls = {(r["mix"], r["concurrency"]): r for r in runs if r["system"] == "control" and r["scenario"] == "healthy"}
    for r in runs:
        if r["system"] != "esp" or r["nodes"] != nodes or r["scenario"] != "healthy":
            continue
        control = controls.get((r["mix"], r["concurrency"]))
        if control is None:
            continue
        esp_s, control_s = r["summary"]["completion_s"], control["summary"]["completion_s"]
        out.append({
            "mix": r["mix"], "concurrency": r["concurrency"], "policy": r["policy"], "count": r["count"],
            "esp_s": esp_s, "control_s": control_s,
            "ratio": round(esp_s / control_s, 2) if esp_s and control_s else None,
            "esp_errors": r["summary"]["error_count"], "control_errors": control["summary"]["error_count"],
        })
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value)


def markdown(runs: Sequence[dict[str, Any]]) -> str:
    """One row per run, then the ESP-3 ÷ control ratios."""
    lines = [
        "| system | mix | scenario | C | ops | completion s | ok ops/s | p50 s | p95 s | p99 s | send 202 p50 s | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s = r["summary"]
        send_202 = s["by_operation"].get("send_transaction", {}).get("accepted", {}).get("p50_s")
        errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "0"
        completion = _fmt(s["completion_s"]) if s["finished"] else f"not finished ({_fmt(s['wall_s'])})"
        lines.append(f"| {label(r)} | {r['mix']} | {r['scenario']} | {r['concurrency']} | {r['count']} | {completion} | "
                     f"{_fmt(s['throughput_ops_s'])} | {_fmt(s['latency']['p50_s'])} | {_fmt(s['latency']['p95_s'])} | "
                     f"{_fmt(s['latency']['p99_s'])} | {_fmt(send_202)} | {errors} |")
    rows = ratios(runs)
    if rows:
        lines += ["", "| mix | C | ops | ESP-3 s | control s | ESP-3 ÷ control | ESP-3 errors | control errors |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {x['mix']} | {x['concurrency']} | {x['count']} | {_fmt(x['esp_s'])} | {_fmt(x['control_s'])} | "
                  f"{_fmt(x['ratio'])} | {x['esp_errors']} | {x['control_errors']} |" for x in rows]
    return "\n".join(lines)


def plot_completion(runs: Sequence[dict[str, Any]], path: Path) -> None:
    """Completion time against concurrency, one line per system (pool size, policy, scenario) and mix."""
    fig = agg_figure((8, 5))
    ax = fig.subplots()
    series: dict[str, list[tuple[int, float]]] = {}
    for r in runs:
        if r["summary"]["completion_s"] is not None:
            series.setdefault(f"{label(r)} ({r['mix']})", []).append((r["concurrency"], r["summary"]["completion_s"]))
    for name, points in sorted(series.items()):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("concurrent operations (C)")
    ax.set_ylabel("completion time of the fixed count (s)")
    ax.set_title("Completion time vs concurrency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_latency(runs: Sequence[dict[str, Any]], path: Path) -> None:
    """Per operation: p50 bars with a whisker up to p99, one bar per run, one panel per concurrency."""
    levels = sorted({r["concurrency"] for r in runs})
    fig = agg_figure((11, 3.6 * len(levels)))
    axes = fig.subplots(len(levels), 1, squeeze=False)
    for ax, level in zip(axes[:, 0], levels, strict=True):
        mine = [r for r in runs if r["concurrency"] == level]
        ops = sorted({op for r in mine for op in r["summary"]["by_operation"]})
        width = 0.8 / max(len(mine), 1)
        for i, r in enumerate(mine):
            stats = [r["summary"]["by_operation"].get(op, {}) for op in ops]
            p50 = [s.get("p50_s") or 0.0 for s in stats]
            p99 = [s.get("p99_s") or 0.0 for s in stats]
            xs = [j + i * width for j in range(len(ops))]
            ax.bar(xs, p50, width, label=f"{label(r)} p50 (whisker p99)",
                   yerr=[[0.0] * len(ops), [max(b - a, 0.0) for a, b in zip(p50, p99, strict=True)]], capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ops))], ops, rotation=25, fontsize=7, ha="right")
        ax.set_ylabel("latency (s)")
        ax.set_title(f"C = {level}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_resources(run: dict[str, Any], path: Path) -> None:
    """CPU (% of one core) and RSS (MB) of every component over the run."""
    res = run["resources"]
    fig = agg_figure((9, 6))
    cpu_ax, mem_ax = fig.subplots(2, 1, sharex=True)
    palette = colormaps["tab20"]  # ESP has a dozen components: the default 10 colours would repeat
    for i, name in enumerate(sorted(res["cpu_percent"])):
        cpu_ax.plot(res["t"], res["cpu_percent"][name], label=name, linewidth=1, color=palette(i % palette.N))
        mem_ax.plot(res["t"], res["rss_mb"][name], label=name, linewidth=1, color=palette(i % palette.N))
    cpu_ax.set_ylabel("CPU (% of one core)")
    mem_ax.set_ylabel("RSS (MB)")
    mem_ax.set_xlabel("time since the run started (s)")
    cpu_ax.set_title(f"{label(run)}, {run['mix']} mix, C = {run['concurrency']}, {run['count']} ops")
    cpu_ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def slug(run: dict[str, Any]) -> str:
    return "-".join(str(part) for part in (label(run), run["mix"], f"c{run['concurrency']}")).replace(" ", "_") \
        .replace("[", "").replace("]", "")


def write(name: str, meta: dict[str, Any], runs: Sequence[dict[str, Any]], out: Path = OUT) -> Path:
    """The JSON, the markdown table and the plots of a set of runs, into ``out``; the table's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({**meta, "runs": list(runs), "ratios": ratios(runs)}, indent=1) + "\n")
    table = markdown(runs)
    (out / f"{name}.md").write_text(f"{meta.get('title', name)}\n\n{table}\n")
    plot_completion(runs, out / f"{name}-completion.png")
    plot_latency(runs, out / f"{name}-latency.png")
    for run in runs:
        if run.get("resources", {}).get("t"):
            plot_resources(run, out / f"{name}-resources-{slug(run)}.png")
    return out / f"{name}.md"
