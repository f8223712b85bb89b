"""Calibration of Dis_ave: configured, default, learned idle at start and under poor service (formulas 3.3-3.6)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer import MAX_DISTANCE, BalancerConfig, Calibrator, NodeSample, build_snapshot, observe_pool

# The thesis's plane keeps the arithmetic checkable by hand: d = sqrt(mem² + cpu²).
# One poor observation teaches here (streak 1), as in the thesis; the default streak is tested below.
CONFIG = BalancerConfig.thesis(latency_target_ms=50.0, poor_error_rate=0.05, calibration_window=4,
                               calibration_min_spread=0.1, calibration_poor_streak=1)


def sample(node_id: str, **fields: Any) -> NodeSample:
    values: dict[str, Any] = {"url": f"http://127.0.0.1/{node_id}", "backend": "process", "latency_ms": 2.0}
    values.update(fields)
    return NodeSample(node_id=node_id, **values)


def idle_pool(cpu: float) -> list[NodeSample]:
    """Two idle nodes at distance ``cpu`` each (memory 0)."""
    return [sample("a", cpu=cpu), sample("b", cpu=cpu)]


def poor_pool(cpu: float, **fields: object) -> list[NodeSample]:
    """Two busy nodes answering slowly (mean latency 80 ms > target 50 ms)."""
    values: dict[str, Any] = {"latency_ms": 80.0, "inflight": 4}
    values.update(fields)
    return [sample("a", cpu=cpu, **values), sample("b", cpu=cpu, **values)]


def test_start_uses_defaults_until_observed() -> None:
    cal = Calibrator.start(CONFIG)
    assert (cal.dis_ave_min, cal.dis_ave_max) == (CONFIG.default_dis_ave_min, MAX_DISTANCE)
    assert (cal.source_min, cal.source_max, cal.source) == ("default", "default", "default")


def test_configured_bounds_are_used_and_never_learned_over() -> None:
    config = BalancerConfig.thesis(dis_ave_min=0.2, dis_ave_max=0.8)
    cal = Calibrator.start(config)
    assert cal.dis_ave == 0.5 and cal.source == "configured"
    for _ in range(5):
        cal = cal.observe(idle_pool(0.05), config).observe(poor_pool(1.0), config)
    assert (cal.dis_ave_min, cal.dis_ave_max, cal.source) == (0.2, 0.8, "configured")


def test_first_idle_samples_measure_the_minimum() -> None:
    # Two idle observations at mean d 0.1 then 0.3: Dis_ave_min = (0.1 + 0.3) / 2 = 0.2 (formula 3.3).
    cal = Calibrator.start(CONFIG).observe(idle_pool(0.1), CONFIG)
    assert cal.dis_ave_min == pytest.approx(0.1) and cal.source_min == "learned" and cal.idle_seen == 1
    cal = cal.observe(idle_pool(0.3), CONFIG)
    assert cal.dis_ave_min == pytest.approx(0.2)
    assert cal.source == "default"  # the max has not been seen yet: the weaker source shows


def test_poor_service_under_load_teaches_the_maximum() -> None:
    # Idle at d = 0.1, then the pool answers at 80 ms (> 50 ms target) with d = 0.9 and 1.0:
    # Dis_ave_max = (0.9 + 1.0) / 2 = 0.95, Dis_ave = (0.1 + 0.95) / 2 = 0.525 (formulas 3.5, 3.6).
    cal = Calibrator.start(CONFIG).observe(idle_pool(0.1), CONFIG)
    cal = cal.observe(poor_pool(0.9), CONFIG).observe(poor_pool(1.0), CONFIG)
    assert cal.dis_ave_max == pytest.approx(0.95)
    assert cal.dis_ave == pytest.approx(0.525)
    assert (cal.source_max, cal.source, cal.poor_seen) == ("learned", "learned", 2)


def test_errors_also_count_as_poor_service() -> None:
    cal = Calibrator.start(CONFIG).observe(idle_pool(0.1), CONFIG)
    cal = cal.observe(poor_pool(0.7, latency_ms=5.0, error_rate=0.2), CONFIG)
    assert cal.dis_ave_max == pytest.approx(0.7) and cal.source_max == "learned"


def test_busy_but_serving_well_teaches_nothing() -> None:
    start = Calibrator.start(CONFIG).observe(idle_pool(0.1), CONFIG)
    after = start.observe(poor_pool(0.8, latency_ms=10.0), CONFIG)  # busy, 10 ms, no errors
    assert after == start


def test_poor_service_near_idle_does_not_drag_the_maximum_down() -> None:
    # Errors at d = 0.12 (within the 0.1 spread of the idle 0.1) are not caused by load.
    start = Calibrator.start(CONFIG).observe(idle_pool(0.1), CONFIG)
    after = start.observe(poor_pool(0.12, latency_ms=5.0, error_rate=0.5), CONFIG)
    assert after.dis_ave_max == MAX_DISTANCE and after.source_max == "default"


def test_learned_bounds_become_a_moving_average_after_the_window() -> None:
    cal = Calibrator.start(CONFIG)
    for _ in range(4):  # the window: a plain mean of four 0.2s
        cal = cal.observe(idle_pool(0.2), CONFIG)
    assert cal.dis_ave_min == pytest.approx(0.2)
    cal = cal.observe(idle_pool(0.6), CONFIG)  # fifth: weight 1/4 -> 0.2 + (0.6 - 0.2) / 4 = 0.3
    assert cal.dis_ave_min == pytest.approx(0.3)


def test_bounds_are_kept_apart() -> None:
    # Idle learned at 0.9 while the max is configured at 0.95: the learned min yields, 0.95 - 0.1.
    config = BalancerConfig.thesis(dis_ave_max=0.95, calibration_min_spread=0.1)
    cal = Calibrator.start(config).observe(idle_pool(0.9), config)
    assert cal.dis_ave_min == pytest.approx(0.85) and cal.dis_ave_max == 0.95
    # Without a configured max, the max is raised instead: learned poor at 0.5, idle drifts to 0.6.
    cal = Calibrator.start(CONFIG).observe(idle_pool(0.1), CONFIG).observe(poor_pool(0.5), CONFIG)
    cal = cal.observe(idle_pool(0.6), CONFIG)
    assert cal.dis_ave_min == pytest.approx(0.35)  # (0.1 + 0.6) / 2
    assert cal.dis_ave_max == pytest.approx(0.5)
    cal = cal.observe(idle_pool(0.9), CONFIG)  # min (0.1 + 0.6 + 0.9) / 3 = 0.5333 -> max >= 0.6333
    assert cal.dis_ave_max == pytest.approx(cal.dis_ave_min + 0.1)


def test_nodes_that_do_not_serve_are_not_observed() -> None:
    samples = [sample("a", cpu=0.1), sample("b", cpu=1.0, latency_ms=None), sample("c", cpu=1.0, status="draining"),
               sample("d", cpu=1.0, alive=False)]
    seen = observe_pool(samples, CONFIG)
    assert seen is not None and seen.mean_distance == pytest.approx(0.1) and seen.idle
    assert observe_pool([sample("b", latency_ms=None)], CONFIG) is None
    cal = Calibrator.start(CONFIG)
    assert cal.observe([], CONFIG) is cal


def test_round_trips_through_json() -> None:
    cal = Calibrator.start(CONFIG).observe(idle_pool(0.1), CONFIG).observe(poor_pool(0.9), CONFIG)
    data = json.loads(json.dumps(cal.to_dict()))
    assert data["source"] == "learned" and data["dis_ave"] == pytest.approx(0.5)
    assert Calibrator.from_dict(data) == cal


def test_reconcile_applies_a_changed_configuration() -> None:
    learned = Calibrator.start(CONFIG).observe(idle_pool(0.1), CONFIG).observe(poor_pool(0.9), CONFIG)
    fixed = BalancerConfig.thesis(dis_ave_max=0.7)
    now = learned.reconcile(fixed)
    assert (now.dis_ave_min, now.source_min) == (learned.dis_ave_min, "learned")
    assert (now.dis_ave_max, now.source_max) == (0.7, "configured")
    back = now.reconcile(CONFIG)  # the fixed max is dropped again: back to the default until seen
    assert (back.dis_ave_max, back.source_max) == (MAX_DISTANCE, "default")


observations = st.lists(st.tuples(st.booleans(), st.floats(0, 1), st.floats(0, 1)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(observations, st.floats(0, 1))
def test_an_idle_pool_is_never_left_paused(history: list[tuple[bool, float, float]], idle_cpu: float) -> None:
    """Whatever the calibrator saw before, once the pool idles its LBH returns to >= 0 (no deadlocked pause)."""
    config = BalancerConfig.thesis(calibration_window=10)
    cal = Calibrator.start(config)
    for poor, mem, cpu in history:
        pool = poor_pool(cpu, memory=mem) if poor else [sample("a", cpu=cpu, memory=mem), sample("b", cpu=cpu)]
        cal = cal.observe(pool, config)
        assert cal.dis_ave_max - cal.dis_ave_min >= config.calibration_min_spread - 1e-9
    idle = idle_pool(idle_cpu)
    for _ in range(60):  # 0.9 ** 60 < 0.002: the moving average has forgotten the history
        cal = cal.observe(idle, config)
    snapshot = build_snapshot(idle, config, cal, "thesis", 0.0)
    assert snapshot.pool.lbh >= 0 and not snapshot.pool.paused
    assert math.isfinite(cal.dis_ave)


def test_a_streak_of_poor_samples_is_needed_by_default() -> None:
    config = BalancerConfig.thesis(latency_target_ms=50.0, calibration_min_spread=0.1)
    assert config.calibration_poor_streak == 3
    cal = Calibrator.start(config).observe(idle_pool(0.1), config)
    cal = cal.observe(poor_pool(0.9), config).observe(poor_pool(0.9), config)
    assert cal.dis_ave_max == MAX_DISTANCE and cal.poor_streak == 2  # two slow beats teach nothing
    broken = cal.observe(poor_pool(0.9, latency_ms=5.0), config)  # a good beat breaks the streak
    assert broken.poor_streak == 0 and broken.dis_ave_max == MAX_DISTANCE
    learned = cal.observe(poor_pool(0.9), config)  # the third in a row does
    assert learned.dis_ave_max == pytest.approx(0.9) and learned.source_max == "learned"


def test_one_stalled_node_is_not_a_poorly_serving_pool() -> None:
    # Two nodes answer in 3 ms, one stalls at 150 ms: the mean (52 ms) is over the 50 ms target,
    # the median (3 ms) is not. Routing around the stalled node is the policies' job.
    samples = [sample("a", cpu=0.5, latency_ms=3.0, inflight=2), sample("b", cpu=0.5, latency_ms=3.0, inflight=2),
               sample("c", cpu=0.5, latency_ms=150.0, inflight=2)]
    seen = observe_pool(samples, CONFIG)
    assert seen is not None and not seen.poor
    cal = Calibrator.start(CONFIG).observe(idle_pool(0.1), CONFIG)
    assert cal.observe(samples, CONFIG).dis_ave_max == MAX_DISTANCE
