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
        if r["system"] != "esp" or r["nodes"] != nodes or r["scenario"] != "healthy" or r.get("backend", "process") != "process":
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


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def pool_ratios(runs: Sequence[dict[str, Any]], backend: str = "docker", pools: Sequence[int] = (3, 5),
                base: int = 1) -> list[dict[str, Any]]:
    """For each mix and concurrency: completion of ``base`` nodes and of each pool in ``pools``, and pool ÷ base.

    Only healthy ESP runs of ``backend`` with the esp policy; a run that did not finish has no completion and no ratio.
    """
    mine = {(r["mix"], r["concurrency"], r["nodes"]): r for r in runs
            if r["system"] == "esp" and r["scenario"] == "healthy" and r.get("backend", "process") == backend
            and r["policy"] == "esp"}
    out = []
    for mix, c in sorted({(m, c) for m, c, _ in mine}, key=lambda k: (k[0] != "thesis", k[0], k[1])):
        one = mine.get((mix, c, base))
        if one is None:
            continue
        row: dict[str, Any] = {"mix": mix, "concurrency": c, "count": one["count"],
                               f"n{base}_s": one["summary"]["completion_s"], f"n{base}_errors": one["summary"]["error_count"]}
        for n in pools:
            other = mine.get((mix, c, n))
            row[f"n{n}_s"] = other["summary"]["completion_s"] if other else None
            row[f"n{n}_errors"] = other["summary"]["error_count"] if other else None
            row[f"n{n}_ratio"] = _ratio(row[f"n{n}_s"], row[f"n{base}_s"])
        out.append(row)
    return out


def policy_ratios(runs: Sequence[dict[str, Any]], policy: str = "esp", baseline: str = "round_robin") -> list[dict[str, Any]]:
    """With a node degraded or killed: ``policy`` ÷ ``baseline``, for p99 latency and for completion, same pool, mix and C."""
    faulty = {(r["scenario"], r["mix"], r["nodes"], r["concurrency"], r["policy"]): r for r in runs
              if r["system"] == "esp" and r["scenario"] != "healthy" and r.get("backend", "process") == "process"}
    out = []
    for key in sorted(k[:4] for k in faulty if k[4] == policy):
        mine, theirs = faulty[(*key, policy)], faulty.get((*key, baseline))
        if theirs is None:
            continue
        a, b = mine["summary"], theirs["summary"]
        out.append({
            "scenario": key[0], "mix": key[1], "nodes": key[2], "concurrency": key[3], "count": mine["count"],
            "policy_p99_s": a["latency"]["p99_s"], "baseline_p99_s": b["latency"]["p99_s"],
            "p99_ratio": _ratio(a["latency"]["p99_s"], b["latency"]["p99_s"]),
            "policy_s": a["completion_s"], "baseline_s": b["completion_s"],
            "completion_ratio": _ratio(a["completion_s"], b["completion_s"]),
            "policy_errors": a["error_count"], "baseline_errors": b["error_count"],
        })
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value)


def runs_table(runs: Sequence[dict[str, Any]], part: bool = False) -> list[str]:
    """One row per run (with the part it came from when ``part``)."""
    head = "| system | mix | scenario | C | ops | completion s | ok ops/s | p50 s | p95 s | p99 s | send 202 p50 s | errors |"
    lines = [("| part " if part else "") + head, ("|---" if part else "") + "|---" * 12 + "|"]
    for r in runs:
        s = r["summary"]
        send_202 = s["by_operation"].get("send_transaction", {}).get("accepted", {}).get("p50_s")
        errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "0"
        completion = _fmt(s["completion_s"]) if s["finished"] else f"not finished ({_fmt(s['wall_s'])})"
        lines.append((f"| {r.get('part', '')} " if part else "")
                     + f"| {label(r)} | {r['mix']} | {r['scenario']} | {r['concurrency']} | {r['count']} | {completion} | "
                     f"{_fmt(s['throughput_ops_s'])} | {_fmt(s['latency']['p50_s'])} | {_fmt(s['latency']['p95_s'])} | "
                     f"{_fmt(s['latency']['p99_s'])} | {_fmt(send_202)} | {errors} |")
    return lines


def ratios_table(rows: Sequence[dict[str, Any]], part: bool = False) -> list[str]:
    """ESP-3 ÷ control rows as markdown (a completion of ``—`` is a run that did not finish)."""
    lines = [("| part " if part else "") + "| mix | C | ops | ESP-3 s | control s | ESP-3 ÷ control | ESP-3 errors | control errors |",
             ("|---" if part else "") + "|---" * 8 + "|"]
    lines += [(f"| {x.get('part', '')} " if part else "")
              + f"| {x['mix']} | {x['concurrency']} | {x['count']} | {_fmt(x['esp_s'])} | {_fmt(x['control_s'])} | "
              f"{_fmt(x['ratio'])} | {x['esp_errors']} | {x['control_errors']} |" for x in rows]
    return lines


def markdown(runs: Sequence[dict[str, Any]]) -> str:
    """One row per run, then the ESP-3 ÷ control ratios."""
    lines = runs_table(runs)
    rows = ratios(runs)
    if rows:
        lines += ["", *ratios_table(rows)]
    return "\n".join(lines)


def pool_table(rows: Sequence[dict[str, Any]], pools: Sequence[int] = (3, 5), base: int = 1) -> list[str]:
    cols = "".join(f" {n} nodes s | {n} ÷ {base} |" for n in pools)
    errs = " / ".join(str(n) for n in (base, *pools))
    lines = [f"| mix | C | ops | {base} node s |{cols} errors {errs} |", "|---" * (5 + 2 * len(pools)) + "|"]
    for x in rows:
        cells = "".join(f" {_fmt(x[f'n{n}_s'])} | {_fmt(x[f'n{n}_ratio'])} |" for n in pools)
        errors = " / ".join(_fmt(x[f"n{n}_errors"]) for n in (base, *pools))
        lines.append(f"| {x['mix']} | {x['concurrency']} | {x['count']} | {_fmt(x[f'n{base}_s'])} |{cells} {errors} |")
    return lines


def policy_table(rows: Sequence[dict[str, Any]], policy: str = "esp", baseline: str = "round_robin") -> list[str]:
    lines = [f"| scenario | mix | nodes | C | ops | {policy} p99 s | {baseline} p99 s | p99 ÷ | {policy} s | {baseline} s | "
             f"completion ÷ | errors {policy} / {baseline} |", "|---" * 12 + "|"]
    lines += [f"| {x['scenario']} | {x['mix']} | {x['nodes']} | {x['concurrency']} | {x['count']} | {_fmt(x['policy_p99_s'])} | "
              f"{_fmt(x['baseline_p99_s'])} | {_fmt(x['p99_ratio'])} | {_fmt(x['policy_s'])} | {_fmt(x['baseline_s'])} | "
              f"{_fmt(x['completion_ratio'])} | {x['policy_errors']} / {x['baseline_errors']} |" for x in rows]
    return lines


def load_parts(names: Sequence[str], out: Path = OUT) -> dict[str, dict[str, Any]]:
    """The results of every part of ``names`` that has a ``full-<part>.json`` in ``out``, in the order of ``names``."""
    return {name: json.loads(path.read_text()) for name in names if (path := out / f"full-{name}.json").exists()}


def merge(parts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run of every part, each marked with the part it came from."""
    return [{**run, "part": name} for name, data in parts.items() for run in data["runs"]]


def comparisons(parts: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The three comparisons of issue 11's closing note, each computed within one part (one run of the harness), never
    pairing a run of one part with a run of another: ESP-3 ÷ control; node-bound 3 ÷ 1 and 5 ÷ 1 nodes; esp ÷ round_robin
    with a node degraded or killed."""
    out: dict[str, list[dict[str, Any]]] = {"esp3_vs_control": [], "node_bound_pools": [], "esp_vs_round_robin": []}
    for name, data in parts.items():
        out["esp3_vs_control"] += [{**row, "part": name} for row in ratios(data["runs"])]
        out["node_bound_pools"] += [{**row, "part": name} for row in pool_ratios(data["runs"])]
        out["esp_vs_round_robin"] += [{**row, "part": name} for row in policy_ratios(data["runs"])]
    return out


def full_markdown(parts: dict[str, dict[str, Any]], names: Sequence[str]) -> str:
    """full.md: which parts ran where, the three comparisons, then every run."""
    missing = [n for n in names if n not in parts]
    lines = ["# Thesis experiment, full matrix (merged from its parts)", "",
             "Produced by `python -m bench.thesis report` from the parts' `full-<part>.json`; each part is run by "
             "`python -m bench.thesis full --part NAME`. Ratios pair runs of the same part only (same machine, same "
             "operation count, same session).", "",
             "| part | runs | ops per run | cap s | machine | commit | date | took s |", "|---" * 8 + "|"]
    for name, data in parts.items():
        lines.append(f"| {name} | {len(data['runs'])} | {data['count']} | {_fmt(data['cap_s'])} | {data['machine']} | "
                     f"{data['commit']} | {data['date']} | {_fmt(data['took_s'])} |")
    lines += ["", f"Parts not run yet: {', '.join(missing)}." if missing else "Every part has run."]
    table = comparisons(parts)
    by_part: dict[str, list[dict[str, Any]]] = {}
    for row in table["node_bound_pools"]:
        by_part.setdefault(row["part"], []).append(row)
    lines += ["", "## ESP with 3 nodes ÷ the single-node control (completion time, all nodes healthy)", ""]
    lines += ratios_table(table["esp3_vs_control"], part=True) if table["esp3_vs_control"] else ["No part measured both yet."]
    lines += ["", "## Node-bound (nodes capped in containers): 3 nodes ÷ 1 node and 5 ÷ 1 (completion time)", ""]
    if by_part:
        for name, rows in by_part.items():
            lines += [f"part {name}:", "", *pool_table(rows), ""]
    else:
        lines += ["No node-bound runs yet.", ""]
    lines += ["## One node degraded or killed: the esp policy ÷ round_robin (p99 latency and completion time)", ""]
    lines += policy_table(table["esp_vs_round_robin"]) if table["esp_vs_round_robin"] else ["No part measured both yet."]
    runs = merge(parts)
    lines += ["", "A completion of — is a run that did not finish within its cap (its wall time is in the table below).",
              "", "## Every run", "", *(runs_table(runs, part=True) if runs else ["No runs yet."])]
    return "\n".join(lines)


def write_full(names: Sequence[str], out: Path = OUT) -> Path:
    """Merge whatever parts exist into ``full.md`` and ``full.json`` (the comparisons); the table's path."""
    parts = load_parts(names, out)
    meta = {name: {k: v for k, v in data.items() if k not in ("runs", "ratios")} for name, data in parts.items()}
    (out / "full.json").write_text(json.dumps({"parts": meta, **comparisons(parts)}, indent=1) + "\n")
    (out / "full.md").write_text(full_markdown(parts, names) + "\n")
    return out / "full.md"


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
