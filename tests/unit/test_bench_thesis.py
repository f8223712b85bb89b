"""The pure parts of the thesis experiment (bench/thesis): the mixes, the percentile maths, the summary and table."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.thesis import workloads as w
from bench.thesis.loadgen import OpRecord, RunOutcome
from bench.thesis.report import label, markdown, percentile, ratios, summarize


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
