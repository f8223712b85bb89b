"""The state space: task kinds, configuration, normalisation and distance (thesis §3.2.1, formulas 3.1-3.5)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer import (
    DEFAULT_MEMORY_NEEDS,
    DIMENSIONS,
    MAX_DISTANCE,
    BalancerConfig,
    NodeSample,
    TaskKind,
    distance,
    normalise,
    order_by_priority,
    parse_weights,
    pool_max_head,
)

MIB = 1024 * 1024


def sample(node_id: str = "n1", **fields: Any) -> NodeSample:
    """An answering, idle node unless told otherwise."""
    values: dict[str, Any] = {"url": f"http://127.0.0.1/{node_id}", "backend": "process", "latency_ms": 1.0}
    values.update(fields)
    return NodeSample(node_id=node_id, **values)


# -- task kinds -----------------------------------------------------------------


def test_priority_is_read_deploy_account_call() -> None:
    assert sorted(TaskKind, key=lambda k: k.priority) == [TaskKind.READ, TaskKind.DEPLOY, TaskKind.ACCOUNT, TaskKind.CALL]
    assert [k.is_write for k in TaskKind] == [False, True, True, True]


def test_order_by_priority_keeps_arrival_order_within_a_kind() -> None:
    arrivals = [("c1", TaskKind.CALL), ("r1", TaskKind.READ), ("d1", TaskKind.DEPLOY), ("a1", TaskKind.ACCOUNT),
                ("r2", TaskKind.READ), ("c2", TaskKind.CALL), ("d2", TaskKind.DEPLOY)]
    ordered = order_by_priority(arrivals, lambda t: t[1])
    assert [name for name, _ in ordered] == ["r1", "r2", "d1", "d2", "a1", "c1", "c2"]


@pytest.mark.parametrize(("raw", "kind"), [("read", TaskKind.READ), ("DEPLOY", TaskKind.DEPLOY),
                                            (" account ", TaskKind.ACCOUNT), (TaskKind.CALL, TaskKind.CALL)])
def test_parse_task_kind(raw: str | TaskKind, kind: TaskKind) -> None:
    assert TaskKind.parse(raw) is kind


def test_parse_task_kind_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown task kind 'write'"):
        TaskKind.parse("write")


def test_memory_needs_default_and_override() -> None:
    config = BalancerConfig(memory_needs={"deploy": 100 * MIB})
    assert config.memory_need(TaskKind.DEPLOY) == 100 * MIB
    assert config.memory_need(TaskKind.READ) == DEFAULT_MEMORY_NEEDS[TaskKind.READ]
    assert DEFAULT_MEMORY_NEEDS[TaskKind.DEPLOY] > DEFAULT_MEMORY_NEEDS[TaskKind.CALL] > DEFAULT_MEMORY_NEEDS[TaskKind.READ]


# -- configuration ----------------------------------------------------------------


def test_thesis_config_is_memory_and_cpu_at_unit_weight_over_all_nodes() -> None:
    config = BalancerConfig.thesis()
    assert dict(config.weights) == {"memory": 1.0, "cpu": 1.0}
    assert config.lbh_over == "all"


def test_esp_default_uses_every_dimension() -> None:
    config = BalancerConfig()
    assert config.dimensions == DIMENSIONS
    assert config.lbh_over == "serving"


@pytest.mark.parametrize(("changes", "message"), [
    ({"weights": {}}, "at least one dimension"),
    ({"weights": {"disk": 1.0}}, "unknown dimension 'disk'"),
    ({"weights": {"cpu": 0.0}}, "cpu must be a finite number > 0"),
    ({"weights": {"cpu": math.nan}}, "cpu must be a finite number > 0"),
    ({"latency_target_ms": 0.0}, "latency_target_ms must be > 0"),
    ({"inflight_scale": -1.0}, "inflight_scale must be > 0"),
    ({"lbh_over": "some"}, "lbh_over must be one of"),
    ({"dis_ave_min": 0.6, "dis_ave_max": 0.5}, "must exceed dis_ave_min"),
    ({"dis_ave_max": 2.0}, r"dis_ave_max must lie in \[0, sqrt\(2\)\]"),
    ({"spill_ratio": 0.5}, "spill_ratio must be >= 1"),
    ({"calibration_window": 0}, "calibration_window must be >= 1"),
    ({"memory_needs": {"read": -1}}, "memory_needs: read must be >= 0"),
])
def test_config_rejects_values_that_cannot_work(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BalancerConfig(**changes)  # type: ignore[arg-type]


def test_config_copies_its_weights() -> None:
    weights = {"cpu": 1.0}
    config = BalancerConfig(weights=weights)
    weights["memory"] = 5.0
    assert config.dimensions == ("cpu",)


@pytest.mark.parametrize(("text", "weights"), [
    ("memory,cpu", {"memory": 1.0, "cpu": 1.0}),
    ("memory=2, cpu=0.5 ,latency", {"memory": 2.0, "cpu": 0.5, "latency": 1.0}),
    ("INFLIGHT=3,", {"inflight": 3.0}),
])
def test_parse_weights(text: str, weights: dict[str, float]) -> None:
    assert parse_weights(text) == weights


@pytest.mark.parametrize(("text", "message"), [("", "no dimension"), ("gpu=1", "unknown dimension 'gpu'"),
                                                ("cpu=x", "not a number")])
def test_parse_weights_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_weights(text)


# -- normalisation --------------------------------------------------------------------

ALL = BalancerConfig(latency_target_ms=50.0, latency_saturation=2.0, lag_scale=10.0, inflight_scale=16.0)


@pytest.mark.parametrize(("fields", "dimension", "expected"), [
    ({"memory": 0.25}, "memory", 0.25),
    ({"memory": 1.7}, "memory", 1.0),  # over the cap: clamped (the node is zone III anyway)
    ({"cpu": 0.6}, "cpu", 0.6),
    ({"cpu": 1.3}, "cpu", 1.0),  # briefly above the allowance
    ({"latency_ms": 25.0}, "latency", 0.25),  # 25 / (2 * 50)
    ({"latency_ms": 50.0}, "latency", 0.5),  # at the target: half way
    ({"latency_ms": 150.0}, "latency", 1.0),  # beyond 2 x target: saturated
    ({"latency_ms": None}, "latency", 1.0),  # failed probe: worst
    ({"error_rate": 0.2}, "errors", 0.2),
    ({"head": 95}, "lag", 0.5),  # (100 - 95) / 10
    ({"head": 100}, "lag", 0.0),
    ({"head": 70}, "lag", 1.0),
    ({"head": None}, "lag", 1.0),  # head unknown while others know theirs
    ({"inflight": 8}, "inflight", 0.5),  # 8 / 16
    ({"inflight": 40}, "inflight", 1.0),
])
def test_normalise_each_dimension(fields: dict[str, Any], dimension: str, expected: float) -> None:
    state = normalise(sample(**fields), ALL, max_head=100)
    assert state[dimension] == pytest.approx(expected)
    assert set(state) == set(DIMENSIONS)


def test_lag_is_zero_when_no_head_is_known() -> None:
    assert normalise(sample(head=None), ALL, max_head=None)["lag"] == 0.0


def test_pool_max_head_ignores_nodes_that_do_not_answer() -> None:
    samples = [sample("a", head=10), sample("b", head=50, alive=False), sample("c", head=12, latency_ms=None),
               sample("d", head=None)]
    assert pool_max_head(samples) == 10
    assert pool_max_head([sample("x", head=None)]) is None


def test_normalise_keeps_only_configured_dimensions() -> None:
    state = normalise(sample(memory=0.3, cpu=0.4, latency_ms=500.0), BalancerConfig.thesis(), max_head=None)
    assert state == {"memory": 0.3, "cpu": 0.4}


# -- distance ------------------------------------------------------------------------------


@pytest.mark.parametrize(("x1", "x2", "d"), [
    # Hand-worked with the thesis formula d = sqrt(x1² + x2²):
    (0.3, 0.4, 0.5),  # sqrt(0.09 + 0.16) = sqrt(0.25)
    (0.6, 0.8, 1.0),  # sqrt(0.36 + 0.64)
    (0.0, 0.0, 0.0),
    (1.0, 1.0, math.sqrt(2)),  # the farthest state
    (0.1, 0.0, 0.1),
])
def test_thesis_distance_hand_worked(x1: float, x2: float, d: float) -> None:
    config = BalancerConfig.thesis()
    state = normalise(sample(memory=x1, cpu=x2), config, max_head=None)
    assert distance(state, config.weights) == pytest.approx(d, abs=1e-12)


@given(st.floats(0, 1), st.floats(0, 1))
def test_thesis_distance_is_exactly_the_thesis_formula(x1: float, x2: float) -> None:
    config = BalancerConfig.thesis()
    # Exact, not approximate: the scale factor 2 / sum(w) is 1.0 for the thesis's weights.
    assert distance({"memory": x1, "cpu": x2}, config.weights) == math.sqrt(x1 ** 2 + x2 ** 2)


@pytest.mark.parametrize(("weights", "state", "d"), [
    # d = sqrt(2 * sum(w x²) / sum(w)), worked by hand:
    (dict.fromkeys(DIMENSIONS, 1.0), dict.fromkeys(DIMENSIONS, 0.5), math.sqrt(0.5)),  # sqrt(2 * 1.5 / 6)
    (dict.fromkeys(DIMENSIONS, 1.0), {**dict.fromkeys(DIMENSIONS, 0.0), "cpu": 1.0}, math.sqrt(1 / 3)),  # sqrt(2 * 1 / 6)
    (dict.fromkeys(DIMENSIONS, 1.0), dict.fromkeys(DIMENSIONS, 1.0), math.sqrt(2)),
    ({"memory": 3.0, "cpu": 1.0}, {"memory": 1.0, "cpu": 0.0}, math.sqrt(1.5)),  # sqrt(2 * 3 / 4)
    ({"latency": 1.0}, {"latency": 0.5}, math.sqrt(0.5)),  # sqrt(2 * 0.25 / 1)
])
def test_weighted_distance_hand_worked(weights: dict[str, float], state: dict[str, float], d: float) -> None:
    assert distance(state, weights) == pytest.approx(d)


@given(st.dictionaries(st.sampled_from(DIMENSIONS), st.floats(0.01, 100), min_size=1),
       st.lists(st.floats(0, 1), min_size=len(DIMENSIONS), max_size=len(DIMENSIONS)))
def test_distance_lies_between_zero_and_sqrt2(weights: dict[str, float], values: list[float]) -> None:
    state = dict(zip(DIMENSIONS, values, strict=True))
    d = distance(state, weights)
    assert 0.0 <= d <= MAX_DISTANCE + 1e-12
    # Monotone: pushing any dimension to 1 never brings the node closer to the origin.
    for name in weights:
        assert distance({**state, name: 1.0}, weights) >= d - 1e-12


# -- the sample --------------------------------------------------------------------------------


def test_sample_round_trips_through_a_dict() -> None:
    original = sample(cpu=0.5, memory=0.25, memory_bytes=10, memory_limit_bytes=40, head=7, inflight=3,
                      status="draining", error_rate=0.1)
    assert NodeSample.from_dict({**original.to_dict(), "extra": 1}) == original


def test_sample_free_memory() -> None:
    assert sample(memory_bytes=30 * MIB, memory_limit_bytes=100 * MIB).memory_free_bytes == 70 * MIB
    assert sample(memory_bytes=300 * MIB, memory_limit_bytes=100 * MIB).memory_free_bytes == 0
    assert sample(memory_bytes=30 * MIB, memory_limit_bytes=0).memory_free_bytes is None


@pytest.mark.parametrize("fields", [{"status": "sleeping"}, {"cpu": -0.1}, {"memory": math.inf},
                                    {"latency_ms": -1.0}, {"inflight": -1}, {"error_rate": math.nan}])
def test_sample_rejects_impossible_values(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        sample(**fields)
