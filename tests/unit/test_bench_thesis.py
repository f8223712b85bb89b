"""The pure parts of the thesis experiment (bench/thesis): the mixes, the percentile maths, the summary and tables,
the full matrix's parts and their estimates, and the merge of the parts' results with issue 11's three comparisons."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from balancer import POLICY_NAMES
from bench.thesis import workloads as w
from bench.thesis.loadgen import OpRecord, RunOutcome
from bench.thesis.plan import PARTS, Case, estimate
from bench.thesis.report import comparisons, full_markdown, label, load_parts, markdown, merge, percentile, ratios, summarize


def test_the_thesis_mix_is_table_5_1() -> None:
    assert dict(w.THESIS.weights) == {
        "balance": 20, "main_account": 5, "client_accounts": 5, "block_number": 10, "create_account": 5,
        "list_accounts": 5, "unlock_account": 5, "send_transaction": 30, "tx_receipt": 5, "tx_by_hash": 5,
        "deploy_contract": 5,
    }
    assert w.THESIS.write_share() == pytest.approx(0.40)


def test_the_other_mixes_lean_the_way_they_say() -> None:
    assert w.READ_HEAVY.write_share() < w.THESIS.write_share() < w.WRITE_HEAVY.write_share()
    assert set(w.MIXES) == {"thesis", "read_heavy", "write_heavy"}


def test_a_mix_whose_weights_do_not_sum_to_100_is_refused() -> None:
    with pytest.raises(ValueError, match="sum to 100"):
        w.Mix("bad", {w.BALANCE: 50})
    with pytest.raises(ValueError, match="unknown"):
        w.Mix("bad", {"mine_bitcoin": 100})


@pytest.mark.parametrize("count", [0, 1, 7, 100, 333, 1200])
@pytest.mark.parametrize("mix", list(w.MIXES.values()), ids=list(w.MIXES))
def test_a_sequence_holds_exactly_count_operations_in_the_mix_proportions(mix: w.Mix, count: int) -> None:
    ops = w.sequence(mix, count, seed=11)
    assert len(ops) == count
    seen = Counter(ops)
    for op, weight in mix.weights.items():
        assert abs(seen[op] - weight * count / 100) < 1  # largest remainder: never a whole op off
    assert set(seen) <= set(mix.weights)


def test_the_thesis_mix_of_1000_is_exact() -> None:
    assert Counter(w.sequence(w.THESIS, 1000, seed=1)) == {op: 10 * weight for op, weight in w.THESIS.weights.items()}


def test_a_sequence_is_fixed_by_its_seed() -> None:
    assert w.sequence(w.THESIS, 500, seed=3) == w.sequence(w.THESIS, 500, seed=3)
    assert w.sequence(w.THESIS, 500, seed=3) != w.sequence(w.THESIS, 500, seed=4)
    assert sorted(w.sequence(w.THESIS, 500, seed=3)) == sorted(w.sequence(w.THESIS, 500, seed=4))


@pytest.mark.parametrize(("values", "p", "expected"), [
    ([1.0], 99, 1.0),
    ([1.0, 2.0, 3.0, 4.0, 5.0], 50, 3.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
    ([5.0, 1.0, 4.0, 2.0, 3.0], 0, 1.0),
    ([5.0, 1.0, 4.0, 2.0, 3.0], 100, 5.0),
    ([float(i) for i in range(1, 101)], 95, 95.05),
    ([float(i) for i in range(1, 101)], 99, 99.01),
])
def test_percentile_interpolates_between_closest_ranks(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan() -> None:
    assert percentile([], 50) != percentile([], 50)


def records() -> list[OpRecord]:
    return [
        OpRecord(0, "balance", 0.0, 0.010, "ok", node="node-0"),
        OpRecord(1, "balance", 0.0, 0.030, "ok", node="node-1"),
        OpRecord(2, "send_transaction", 0.0, 1.5, "ok", accepted_s=0.2, node="node-0"),
        OpRecord(3, "send_transaction", 0.1, 2.5, "ok", accepted_s=0.4, node="node-0"),
        OpRecord(4, "deploy_contract", 0.2, 0.9, "http_500"),
    ]


def test_a_finished_run_is_summarised() -> None:
    s = summarize(RunOutcome(records(), wall_s=2.6, capped=False, not_started=0), count=5)
    assert s["finished"] and s["completion_s"] == 2.6
    assert (s["ok"], s["error_count"], s["errors"]) == (4, 1, {"http_500": 1})
    assert s["throughput_ops_s"] == pytest.approx(4 / 2.6, abs=0.05)
    assert s["by_operation"]["balance"]["p50_s"] == pytest.approx(0.02)
    assert s["by_operation"]["send_transaction"]["accepted"]["p50_s"] == pytest.approx(0.3)
    assert s["by_operation"]["deploy_contract"] == {"n": 0, "p50_s": None, "p95_s": None, "p99_s": None, "errors": 1}
    assert s["node_share"] == {"node-0": 0.75, "node-1": 0.25}


def test_a_capped_run_has_no_completion_time_and_counts_what_never_ran() -> None:
    s = summarize(RunOutcome(records()[:3], wall_s=60.0, capped=True, not_started=2), count=5)
    assert s["completion_s"] is None and not s["finished"]
    assert s["errors"] == {"not_started": 2}


def run(system: str, concurrency: int, completion: float, errors: int = 0) -> dict[str, object]:
    outcome = RunOutcome(records()[:4], wall_s=completion, capped=False, not_started=0)
    summary = summarize(outcome, count=4)
    summary["error_count"] = errors
    return {"system": system, "nodes": 3 if system == "esp" else 1, "policy": "esp" if system == "esp" else None,
            "scenario": "healthy", "mix": "thesis", "concurrency": concurrency, "count": 4, "summary": summary}


def test_the_ratio_is_esp_3_completion_over_the_control_at_the_same_concurrency() -> None:
    runs = [run("esp", 200, 6.0), run("control", 200, 3.0, errors=2), run("esp", 600, 4.0), run("control", 600, 5.0)]
    assert [(r["concurrency"], r["ratio"], r["esp_errors"], r["control_errors"]) for r in ratios(runs)] == [
        (200, 2.0, 0, 2), (600, 0.8, 0, 0)]


def test_the_markdown_table_has_a_row_per_run_and_the_ratios() -> None:
    table = markdown([run("esp", 200, 6.0), run("control", 200, 3.0)])
    lines = table.splitlines()
    assert lines[0].startswith("| system | mix | scenario | C |")
    assert lines[2] == ("| ESP-3 esp | thesis | healthy | 200 | 4 | 6 | 0.7 | 0.765 | 2.35 | 2.47 | 0.3 | 0 |")
    assert lines[3].startswith("| control | thesis | healthy | 200 | 4 | 3 |")
    assert "| thesis | 200 | 4 | 6 | 3 | 2 | 0 | 0 |" in lines


def test_a_run_is_labelled_by_its_system_pool_policy_and_scenario() -> None:
    assert label({"system": "control", "scenario": "healthy"}) == "control"
    assert label({"system": "esp", "nodes": 5, "policy": "round_robin", "scenario": "degraded"}) == "ESP-5 round_robin [degraded]"
    assert label({"system": "esp", "nodes": 3, "policy": "esp", "backend": "docker", "scenario": "healthy"}) == "ESP-3 esp docker"


# ---- the full matrix in parts: the plan, the merge and the three comparisons of issue 11 -------------------------

def measured(system: str = "esp", *, nodes: int = 3, policy: str | None = "esp", scenario: str = "healthy",
             mix: str = "thesis", c: int = 600, wall: float = 10.0, latencies: tuple[float, ...] = (0.5, 1.0),
             backend: str = "process", failed: int = 0, finished: bool = True) -> dict[str, object]:
    """A run record as the harness writes it: the case, then summarize() of real operation records."""
    recs = [OpRecord(i, "balance", 0.0, lat, "ok", node="node-0") for i, lat in enumerate(latencies)]
    recs += [OpRecord(len(recs) + i, "send_transaction", 0.0, 1.0, "http_500") for i in range(failed)]
    outcome = RunOutcome(recs, wall_s=wall, capped=not finished, not_started=0)
    return {"system": system, "nodes": nodes if system == "esp" else 1, "policy": policy if system == "esp" else None,
            "scenario": scenario, "mix": mix, "concurrency": c, "count": len(recs), "seed": c, "backend": backend,
            "cap_s": 150.0, "summary": summarize(outcome, len(recs)), "resources": {}}


def part(runs: list[dict[str, object]], count: int = 2) -> dict[str, Any]:
    return {"machine": "x86_64, 2 cores", "commit": "abc1234", "date": "2026-11-27 12:00:00", "count": count,
            "cap_s": 150.0, "took_s": 60.0, "runs": runs}


def test_the_merge_keeps_every_run_of_every_part_marked_with_its_part(tmp_path: Path) -> None:
    scale = part([measured("control", wall=8.0), measured(wall=10.0)])
    mixes = part([measured(mix="read_heavy")])
    for name, data in (("mixes", mixes), ("scale", scale)):
        (tmp_path / f"full-{name}.json").write_text(json.dumps(data))
    loaded = load_parts(["scale", "policies", "mixes", "node-bound"], tmp_path)
    assert list(loaded) == ["scale", "mixes"]  # the order of the names; parts not run are absent
    runs = merge(loaded)
    assert [(r["part"], r["system"], r["mix"]) for r in runs] == [
        ("scale", "control", "thesis"), ("scale", "esp", "thesis"), ("mixes", "esp", "read_heavy")]
    assert all(r["summary"] == s["summary"] for r, s in zip(runs, [*scale["runs"], *mixes["runs"]], strict=True))


def test_esp_3_over_the_control_pairs_runs_of_one_part_only() -> None:
    parts = {
        "scale": part([measured("control", c=200, wall=8.0, failed=1), measured(c=200, wall=10.0),
                       measured("control", c=1200, wall=150.0, finished=False, failed=3), measured(c=1200, wall=40.0),
                       measured(nodes=5, c=200, wall=12.0)]),  # ESP-5 is not in this comparison
        "mixes": part([measured(c=600, wall=9.0)]),  # no control at C=600 in its part: nothing to pair
        "other": part([measured("control", c=600, wall=3.0)]),
    }
    rows = comparisons(parts)["esp3_vs_control"]
    assert [(r["part"], r["concurrency"], r["esp_s"], r["control_s"], r["ratio"], r["esp_errors"], r["control_errors"])
            for r in rows] == [("scale", 200, 10.0, 8.0, 1.25, 0, 1), ("scale", 1200, 40.0, None, None, 0, 3)]


def test_node_bound_gives_3_over_1_and_5_over_1_nodes_by_mix_and_concurrency() -> None:
    runs = [measured(nodes=n, mix=mix, c=200, wall=wall, backend="docker")
            for mix, walls in (("thesis", (100.0, 50.0, 40.0)), ("read_heavy", (60.0, 30.0, 90.0)))
            for n, wall in zip((1, 3, 5), walls, strict=True)]
    runs += [measured(nodes=1, wall=1.0), measured(nodes=3, wall=100.0)]  # uncapped processes: not node-bound
    runs += [measured(nodes=1, c=600, wall=120.0, backend="docker"),
             measured(nodes=3, c=600, wall=240.0, backend="docker", finished=False, failed=2)]
    rows = comparisons({"node-bound": part(runs)})["node_bound_pools"]
    assert [(r["mix"], r["concurrency"], r["n1_s"], r["n3_ratio"], r["n5_ratio"], r["n3_errors"], r["n5_errors"])
            for r in rows] == [("thesis", 200, 100.0, 0.5, 0.4, 0, 0), ("thesis", 600, 120.0, None, None, 2, None),
                               ("read_heavy", 200, 60.0, 0.5, 1.5, 0, 0)]


def test_with_a_node_degraded_or_killed_esp_is_compared_with_round_robin_on_p99_and_completion() -> None:
    runs = [measured(policy="esp", scenario="degraded", wall=30.0, latencies=(0.5, 1.0)),
            measured(policy="round_robin", scenario="degraded", wall=60.0, latencies=(0.5, 4.0), failed=1),
            measured(policy="least_inflight", scenario="degraded", wall=20.0),
            measured(policy="esp", scenario="killed", wall=50.0),
            measured(policy="round_robin", scenario="killed", wall=100.0, finished=False),
            measured(policy="esp", scenario="healthy", wall=5.0), measured(policy="round_robin", scenario="healthy", wall=4.0)]
    rows = comparisons({"policies": part(runs)})["esp_vs_round_robin"]
    assert [(r["scenario"], r["policy_p99_s"], r["baseline_p99_s"], r["p99_ratio"], r["policy_s"], r["baseline_s"],
             r["completion_ratio"], r["policy_errors"], r["baseline_errors"]) for r in rows] == [
        ("degraded", 0.995, 3.965, 0.25, 30.0, 60.0, 0.5, 0, 1),
        ("killed", 0.995, 0.995, 1.0, 50.0, None, None, 0, 0)]


def test_full_md_holds_the_three_comparisons_and_names_the_parts_not_run() -> None:
    parts = {"scale": part([measured("control", c=200, wall=8.0), measured(c=200, wall=10.0)]),
             "policies": part([measured(scenario="degraded", wall=30.0), measured(policy="round_robin", scenario="degraded",
                                                                                  wall=60.0)])}
    text = full_markdown(parts, ["scale", "policies", "mixes", "node-bound"])
    assert "Parts not run yet: mixes, node-bound." in text
    assert "| scale | thesis | 200 | 2 | 10 | 8 | 1.25 | 0 | 0 |" in text
    assert "No node-bound runs yet." in text
    assert "| degraded | thesis | 3 | 600 | 2 | 0.995 | 0.995 | 1 | 30 | 60 | 0.5 | 0 / 0 |" in text
    assert text.count("| scale | ESP-3 esp |") == 1 and text.count("| policies | ESP-3 round_robin [degraded] |") == 1


def test_every_part_is_estimated_well_under_an_hour_and_the_parts_cover_the_issue() -> None:
    for p in PARTS.values():
        expected, worst = estimate(p.plan(), p.cap_s)
        assert expected < 30 * 60 and worst < 60 * 60, p.name
    cases = {name: [c for g in p.plan() for c in g] for name, p in PARTS.items()}
    assert {(c.system, c.nodes, c.concurrency) for c in cases["scale"]} == {
        *{("esp", n, c) for n in (1, 3, 5, 8) for c in (200, 600, 1000, 1200)}, *{("control", 1, c) for c in (200, 600, 1000, 1200)}}
    assert {c.policy for c in cases["policies"] if c.scenario == "degraded"} == set(POLICY_NAMES)
    assert {c.policy for c in cases["policies"] if c.scenario == "killed"} == {"esp", "round_robin"}
    assert {(c.system, c.mix) for c in cases["mixes"]} == {(s, m) for s in ("esp", "control") for m in ("read_heavy", "write_heavy")}
    assert {(c.nodes, c.mix, c.backend) for c in cases["node-bound"]} == {
        (n, m, "docker") for n in (1, 3, 5) for m in ("thesis", "read_heavy")}
    for p in PARTS.values():  # one started system per group: the same pool, policy and backend throughout
        assert all(len({(c.system, c.nodes, c.policy, c.backend) for c in g}) == 1 for g in p.plan())


def test_the_estimate_adds_starts_and_runs_and_the_cap_bounds_a_run() -> None:
    plan = [[Case("control", 1, None, "healthy", "thesis", 200, 360, seed=200)]]
    assert estimate(plan, cap_s=300.0) == (15.0 + 10.0 + 5.0, 15.0 + 305.0)  # 360 ops at 36 ops/s
    assert estimate(plan, cap_s=4.0) == (15.0 + 4.0 + 5.0, 15.0 + 9.0)
