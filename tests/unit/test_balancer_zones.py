"""Zones, LBH and the snapshot, against hand-worked examples of the thesis's formulas (3.6-3.8)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer import (
    MAX_DISTANCE,
    BalancerConfig,
    Calibrator,
    NodeSample,
    Snapshot,
    age,
    build_snapshot,
    classify,
    is_paused,
    is_stale,
    lbh,
    zone_of,
)
from balancer.zones import (
    REASON_DOWN,
    REASON_DRAINING,
    REASON_NOT_ANSWERING,
    REASON_OVER_MEMORY_CAP,
    REASON_RECYCLE_DISTANCE,
    REASON_RECYCLING,
)

MIB = 1024 * 1024

# Calibration of the worked examples: Dis_ave = (0.2 + 0.8) / 2 = 0.5.
THESIS = BalancerConfig.thesis(dis_ave_min=0.2, dis_ave_max=0.8)


def sample(node_id: str, **fields: Any) -> NodeSample:
    values: dict[str, Any] = {"url": f"http://127.0.0.1/{node_id}", "backend": "process", "latency_ms": 1.0}
    values.update(fields)
    return NodeSample(node_id=node_id, **values)


def snap(samples: list[NodeSample], config: BalancerConfig = THESIS, now: float = 1000.0) -> Snapshot:
    return build_snapshot(samples, config, Calibrator.start(config), "thesis", now)


def test_boundary_is_the_mean_of_the_calibration_bounds() -> None:
    assert Calibrator.start(THESIS).dis_ave == 0.5  # (0.2 + 0.8) / 2


def test_thesis_example_zones_and_lbh() -> None:
    # node   (x1=mem, x2=cpu)   d = sqrt(x1² + x2²)   zone (Dis_ave 0.5)   Dis_ave - d
    # a      (0.3, 0.4)         0.5                   II (d >= Dis_ave)     0.0
    # b      (0.6, 0.8)         1.0                   II                    -0.5
    # c      (0.1, 0.0)         0.1                   I                     +0.4
    # d      (0.0, 0.0)         0.0                   I                     +0.5
    # LBH = 0.0 - 0.5 + 0.4 + 0.5 = 0.4 >= 0: healthy, dispatch goes on.
    s = snap([sample("a", memory=0.3, cpu=0.4), sample("b", memory=0.6, cpu=0.8),
              sample("c", memory=0.1, cpu=0.0), sample("d", memory=0.0, cpu=0.0)])
    got = {n.id: (n.distance, n.zone) for n in s.nodes}
    assert got == {"a": (0.5, "II"), "b": (1.0, "II"), "c": (pytest.approx(0.1), "I"), "d": (0.0, "I")}
    assert s.pool.lbh == pytest.approx(0.4)
    assert s.pool.paused is False
    assert s.pool.dis_ave == 0.5


def test_thesis_example_negative_lbh_pauses() -> None:
    # b (0.6, 0.8) d=1.0: -0.5;  a (0.3, 0.4) d=0.5: 0.0;  e (0.0, 0.3) d=0.3: +0.2
    # LBH = -0.5 + 0.0 + 0.2 = -0.3 < 0: dispatch pauses.
    s = snap([sample("b", memory=0.6, cpu=0.8), sample("a", memory=0.3, cpu=0.4), sample("e", memory=0.0, cpu=0.3)])
    assert s.pool.lbh == pytest.approx(-0.3)
    assert s.pool.paused is True


def test_thesis_lbh_counts_every_node_esp_only_serving_ones() -> None:
    # A node past the recycle distance (1.2): f (0.9, 0.9) d = sqrt(1.62) = 1.2728 -> zone III.
    # Thesis (all nodes): LBH = (0.5-0.1) + (0.5-1.2728) = 0.4 - 0.7728 = -0.3728 -> paused.
    # ESP scope (serving only): LBH = 0.4 -> not paused; the dead weight is being recycled.
    samples = [sample("c", memory=0.1, cpu=0.0), sample("f", memory=0.9, cpu=0.9)]
    thesis = snap(samples)
    assert thesis.node("f").zone == "III"  # type: ignore[union-attr]
    assert thesis.pool.lbh == pytest.approx(0.4 - 0.7727922, abs=1e-6)
    assert thesis.pool.paused
    serving = snap(samples, BalancerConfig.thesis(dis_ave_min=0.2, dis_ave_max=0.8, lbh_over="serving"))
    assert serving.pool.lbh == pytest.approx(0.4)
    assert not serving.pool.paused


@pytest.mark.parametrize(("d", "dis_ave", "zone"), [(0.0, 0.5, "I"), (0.4999, 0.5, "I"), (0.5, 0.5, "II"), (1.3, 0.5, "II")])
def test_zone_of(d: float, dis_ave: float, zone: str) -> None:
    assert zone_of(d, dis_ave) == zone


@pytest.mark.parametrize(("fields", "reason"), [
    ({"status": "down"}, REASON_DOWN),
    ({"alive": False}, REASON_DOWN),
    ({"latency_ms": None}, REASON_NOT_ANSWERING),
    ({"status": "draining"}, REASON_DRAINING),
    ({"status": "recycling"}, REASON_RECYCLING),
    ({"memory": 1.01}, REASON_OVER_MEMORY_CAP),
    ({"memory": 0.9, "cpu": 0.9}, REASON_RECYCLE_DISTANCE),  # d = 1.27 >= 1.2
])
def test_zone_three_rules(fields: dict[str, Any], reason: str) -> None:
    node = sample("x", **fields)
    d = 1.27 if reason == REASON_RECYCLE_DISTANCE else 0.1
    assert classify(node, d, 0.5, THESIS) == ("III", reason)


def test_recycle_distance_can_be_disabled() -> None:
    config = BalancerConfig.thesis(dis_ave_min=0.2, dis_ave_max=0.8, recycle_distance=None)
    assert classify(sample("x", memory=1.0, cpu=1.0), MAX_DISTANCE, 0.5, config) == ("II", None)


def test_lbh_of_nothing_is_zero_and_not_paused() -> None:
    assert lbh(0.5, []) == 0.0
    assert not is_paused(0.0)
    assert is_paused(-1e-9)


@given(st.floats(0, MAX_DISTANCE), st.lists(st.floats(0, MAX_DISTANCE), max_size=20))
def test_lbh_is_n_times_the_gap_to_the_mean(dis_ave: float, distances: list[float]) -> None:
    # Formula 3.8 summed: LBH = n * (Dis_ave - mean d), so LBH < 0 exactly when the mean is past the boundary.
    value = lbh(dis_ave, distances)
    if distances:
        mean = sum(distances) / len(distances)
        assert value == pytest.approx(len(distances) * (dis_ave - mean), abs=1e-9)


# -- the snapshot --------------------------------------------------------------------------


def rich_samples() -> list[NodeSample]:
    return [
        sample("n2", cpu=0.9, memory=0.2, memory_bytes=400 * MIB, memory_limit_bytes=2048 * MIB, latency_ms=80.0,
               error_rate=0.1, head=98, inflight=5),
        sample("n1", cpu=0.1, memory=0.05, memory_bytes=100 * MIB, memory_limit_bytes=2048 * MIB, latency_ms=2.0,
               head=100, inflight=0),
        sample("n3", alive=False, status="down", latency_ms=None, head=None),
    ]


def test_snapshot_fields_sorted_by_id() -> None:
    s = build_snapshot(rich_samples(), BalancerConfig(), Calibrator.start(BalancerConfig()), "esp", 1000.0)
    assert [n.id for n in s.nodes] == ["n1", "n2", "n3"]
    n2 = s.node("n2")
    assert n2 is not None
    assert n2.lag == 2 and n2.head == 98 and n2.inflight == 5
    assert n2.state["lag"] == pytest.approx(0.2)  # 2 blocks / lag_scale 10
    assert n2.memory_free_bytes == 1648 * MIB
    n3 = s.node("n3")
    assert n3 is not None and n3.zone == "III" and n3.zone_reason == REASON_DOWN and n3.lag is None
    assert s.pool.max_head == 100
    assert s.pool.policy == "esp"
    assert s.pool.calibration_source == "default"
    assert s.pool.weights == dict(BalancerConfig().weights)
    assert s.is_eligible("n1") and not s.is_eligible("n3") and not s.is_eligible("nope")
    assert [n.id for n in s.serving()] == ["n1", "n2"]


def test_snapshot_round_trips_through_json() -> None:
    s = build_snapshot(rich_samples(), BalancerConfig(), Calibrator.start(BalancerConfig()), "esp", 1000.0)
    text = json.dumps(s.to_dict(), allow_nan=False)
    assert Snapshot.from_dict(json.loads(text)) == s


def test_snapshot_dict_carries_the_api_names() -> None:
    s = build_snapshot(rich_samples(), BalancerConfig(), Calibrator.start(BalancerConfig()), "esp", 1000.0)
    data = s.to_dict(now=1002.5)
    assert {"id", "url", "backend", "status", "state", "distance", "zone", "inflight", "head"} <= set(data["nodes"][0])
    assert {"dis_ave", "dis_ave_min", "dis_ave_max", "calibration_source", "lbh", "paused", "policy", "taken_at",
            "snapshot_age_s"} <= set(data["pool"])
    assert data["pool"]["snapshot_age_s"] == 2.5
    assert Snapshot.from_dict(data) == s  # the age is display only


def test_duplicate_node_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        snap([sample("a"), sample("a")])


@pytest.mark.parametrize(("now", "max_age", "expected_age", "stale"), [
    (1000.0, 2.0, 0.0, False),
    (1002.0, 2.0, 2.0, False),
    (1002.01, 2.0, 2.01, True),
    (990.0, 2.0, 0.0, False),  # the reader's clock is behind the monitor's: age 0, not negative
])
def test_age_and_staleness(now: float, max_age: float, expected_age: float, stale: bool) -> None:
    s = snap([sample("a")], now=1000.0)
    assert age(s, now) == pytest.approx(expected_age)
    assert is_stale(s, now, max_age) is stale


def test_missing_snapshot_is_stale() -> None:
    assert is_stale(None, 0.0, 10.0)
