"""The selection policies: zone preference, admission, LBH pause, never zone III, fallback on a stale snapshot."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer import (
    POLICY_NAMES,
    STATUSES,
    BalancerConfig,
    Calibrator,
    NodeSample,
    NoEligibleNode,
    PoolUnhealthy,
    Snapshot,
    TaskKind,
    answering_ids,
    build_snapshot,
    choose_fallback,
    make_policy,
    route,
)

MIB = 1024 * 1024
WRITES = [TaskKind.DEPLOY, TaskKind.ACCOUNT, TaskKind.CALL]

# Thesis plane with Dis_ave = (0.2 + 0.8) / 2 = 0.5; memory_limit 1 GiB so admission can be judged.
THESIS = BalancerConfig.thesis(dis_ave_min=0.2, dis_ave_max=0.8)
ESP = BalancerConfig(weights={"memory": 1.0, "cpu": 1.0, "inflight": 1.0}, dis_ave_min=0.2, dis_ave_max=0.8,
                     inflight_scale=10.0)


def sample(node_id: str, **fields: Any) -> NodeSample:
    values: dict[str, Any] = {"url": f"http://127.0.0.1/{node_id}", "backend": "process", "latency_ms": 1.0,
                                 "memory_limit_bytes": 1024 * MIB}
    values.update(fields)
    if "memory_bytes" not in values:
        values["memory_bytes"] = int(values.get("memory", 0.0) * values["memory_limit_bytes"])
    return NodeSample(node_id=node_id, **values)


def snap(samples: list[NodeSample], config: BalancerConfig = THESIS, now: float = 100.0) -> Snapshot:
    return build_snapshot(samples, config, Calibrator.start(config), "test", now)


def choose(name: str, snapshot: Snapshot, kind: TaskKind, config: BalancerConfig = THESIS, *,
           inflight: dict[str, int] | None = None, exclude: frozenset[str] = frozenset(), seed: int = 0) -> str:
    return make_policy(name, config).choose(snapshot, kind, inflight=inflight or {}, rng=random.Random(seed),
                                            exclude=exclude)


# Zones in the thesis plane (Dis_ave 0.5):
#   i1 (0.1, 0.1) d 0.14 I     i2 (0.2, 0.2) d 0.28 I     ii (0.3, 0.5) d 0.58 II
#   dead: down                  hot (0.9, 0.9) d 1.27 III (>= recycle 1.2)
MIXED = [sample("i1", memory=0.1, cpu=0.1), sample("i2", memory=0.2, cpu=0.2), sample("ii", memory=0.3, cpu=0.5),
         sample("dead", alive=False, status="down", latency_ms=None), sample("hot", memory=0.9, cpu=0.9)]


def test_mixed_pool_zones() -> None:
    # LBH over all nodes (thesis): (0.5-0.141) + (0.5-0.283) + (0.5-0.583) + (0.5-0) + (0.5-1.273) = 0.220 >= 0
    s = snap(MIXED)
    assert {n.id: n.zone for n in s.nodes} == {"i1": "I", "i2": "I", "ii": "II", "dead": "III", "hot": "III"}
    assert s.pool.lbh == pytest.approx(0.2204, abs=1e-3) and not s.pool.paused


@pytest.mark.parametrize(("kind", "exclude", "expected"), [
    (TaskKind.DEPLOY, frozenset(), "i1"),  # writes: zone I first, the first node in it (gethPool.get(0))
    (TaskKind.ACCOUNT, frozenset(), "i1"),
    (TaskKind.CALL, frozenset(), "i1"),
    (TaskKind.CALL, frozenset({"i1"}), "i2"),
    (TaskKind.CALL, frozenset({"i1", "i2"}), "ii"),  # zone I empty: writes fall back to zone II
    (TaskKind.READ, frozenset(), "ii"),  # reads: zone II first
    (TaskKind.READ, frozenset({"ii"}), "i1"),  # zone II empty: reads fall back to zone I
])
def test_thesis_zone_preference(kind: TaskKind, exclude: frozenset[str], expected: str) -> None:
    assert choose("thesis", snap(MIXED), kind, exclude=exclude) == expected


def test_thesis_is_deterministic_and_herds() -> None:
    s = snap(MIXED)
    picks = {choose("thesis", s, TaskKind.CALL, seed=seed, inflight={"i1": 1000}) for seed in range(20)}
    assert picks == {"i1"}  # live load is ignored: the thesis reads the snapshot only


@pytest.mark.parametrize(("kind", "exclude", "expected"), [
    (TaskKind.CALL, frozenset({"i1"}), "i2"),  # one zone-I node left
    (TaskKind.CALL, frozenset({"i1", "i2"}), "ii"),
    (TaskKind.READ, frozenset(), "ii"),
    (TaskKind.READ, frozenset({"ii", "i2"}), "i1"),
])
def test_esp_zone_preference(kind: TaskKind, exclude: frozenset[str], expected: str) -> None:
    # inflight 0 everywhere: ESP's live zones equal the snapshot's here (inflight is not a thesis-plane dimension).
    assert choose("esp", snap(MIXED), kind, exclude=exclude) == expected


def test_esp_within_zone_picks_the_less_loaded_of_two() -> None:
    s = snap(MIXED)
    # Two zone-I nodes: power of two choices samples both, so the one with less in flight always wins.
    picks = {choose("esp", s, TaskKind.CALL, inflight={"i1": 6, "i2": 1}, seed=seed) for seed in range(30)}
    assert picks == {"i2"}
    picks = {choose("esp", s, TaskKind.CALL, inflight={"i1": 0, "i2": 3}, seed=seed) for seed in range(30)}
    assert picks == {"i1"}


def test_esp_spreads_equal_nodes_and_reacts_between_samples() -> None:
    # Four identical idle nodes, one stale snapshot; the caller counts what it placed (live in-flight).
    config = BalancerConfig()  # every dimension, default calibration
    s = snap([sample(f"n{i}", memory=0.1, cpu=0.1) for i in range(4)], config)
    policy, rng, live = make_policy("esp", config), random.Random(7), Counter[str]()
    for _ in range(40):
        live[policy.choose(s, TaskKind.CALL, inflight=live, rng=rng)] += 1
    assert len(live) == 4 and max(live.values()) - min(live.values()) <= 2
    lowest = make_policy("lowest_distance", config)
    herd = Counter(lowest.choose(s, TaskKind.CALL, inflight=live, rng=rng) for _ in range(40))
    assert herd == Counter({"n0": 40})  # the stale "best node" takes everything


def test_esp_live_inflight_moves_a_node_to_zone_two() -> None:
    # ESP plane (memory, cpu, inflight; scale 10), Dis_ave 0.5. Both nodes idle in the snapshot:
    # d = sqrt(2/3 * (0.1² + 0.1²)) = 0.115 -> zone I. Live, a has 10 in flight: inflight dim 1,
    # d = sqrt(2/3 * (0.01 + 0.01 + 1)) = 0.825 -> zone II. A read (zone II first) now goes to a,
    # a write (zone I first) to b: the zones moved without a new sample.
    s = snap([sample("a", memory=0.1, cpu=0.1), sample("b", memory=0.1, cpu=0.1)], ESP)
    assert {n.zone for n in s.nodes} == {"I"}
    live = {"a": 10, "b": 0}
    config = dataclasses.replace(ESP, spill_ratio=None)  # strict zones for this check
    assert choose("esp", s, TaskKind.READ, config, inflight=live) == "a"
    assert choose("esp", s, TaskKind.CALL, config, inflight=live) == "b"


def test_esp_spill_guard_stops_a_lone_zone_two_node_drawing_every_read() -> None:
    # ii is the only zone-II node and already has 9 reads in flight; i1 has none.
    # cost(ii) = (9 + 1) * (1 + 0.58) = 15.8 > 2 * cost(i1) = 2 * (0 + 1) * (1 + 0.14) = 2.3 -> spill to zone I.
    s = snap(MIXED)
    live = {"ii": 9, "i1": 0, "i2": 0}
    assert choose("esp", s, TaskKind.READ, inflight=live, exclude=frozenset({"i2"})) == "i1"
    strict = BalancerConfig.thesis(dis_ave_min=0.2, dis_ave_max=0.8, spill_ratio=None)
    assert choose("esp", s, TaskKind.READ, strict, inflight=live, exclude=frozenset({"i2"})) == "ii"
    # With equal load the preferred zone keeps the read: (1+1) * 1.58 = 3.17 <= 2 * (1+1) * 1.14 = 4.57.
    assert choose("esp", s, TaskKind.READ, inflight={"ii": 1, "i1": 1}, exclude=frozenset({"i2"})) == "ii"
    # One more read on ii than on i1 is already past the ratio: 2 * 1.58 = 3.17 > 2 * 1.14 = 2.28.
    assert choose("esp", s, TaskKind.READ, inflight={"ii": 1, "i1": 0}, exclude=frozenset({"i2"})) == "i1"


# -- admission (t_memory <= con_memory) -------------------------------------------------------


def tight_pool() -> list[NodeSample]:
    # roomy: 1 GiB limit, 100 MiB used -> 924 MiB free; tight: 1000 MiB used -> 24 MiB free. Both zone I.
    return [sample("roomy", cpu=0.1, memory_bytes=100 * MIB), sample("tight", cpu=0.05, memory_bytes=1000 * MIB)]


@pytest.mark.parametrize("name", ["thesis", "esp"])
@pytest.mark.parametrize(("kind", "excluded", "expected"), [
    (TaskKind.DEPLOY, frozenset({"roomy"}), None),  # needs 64 MiB, tight has 24: nobody may take it
    (TaskKind.CALL, frozenset({"roomy"}), "tight"),  # needs 16 MiB: fits in 24
    (TaskKind.READ, frozenset({"roomy"}), "tight"),  # needs 1 MiB
    (TaskKind.DEPLOY, frozenset(), "roomy"),  # tight would come first by order, but is not admitted
])
def test_admission_by_free_memory(name: str, kind: TaskKind, excluded: frozenset[str], expected: str | None) -> None:
    s = snap(tight_pool())
    if expected is None:
        with pytest.raises(NoEligibleNode, match="bytes free") as err:
            choose(name, s, kind, exclude=excluded)
        assert not isinstance(err.value, PoolUnhealthy)
    else:
        assert choose(name, s, kind, exclude=excluded, inflight={"roomy": 0, "tight": 0}) == expected


def test_esp_reserves_memory_for_tasks_placed_since_the_sample() -> None:
    # roomy has 924 MiB free at sample time. 14 deploys placed since reserve 14 * 64 = 896 MiB,
    # leaving 28 MiB < the 64 MiB a further deploy needs; after 13 (832 MiB) 92 MiB are left: admitted.
    s = snap(tight_pool())
    with pytest.raises(NoEligibleNode, match="bytes free"):
        choose("esp", s, TaskKind.DEPLOY, inflight={"roomy": 14, "tight": 0})
    assert choose("esp", s, TaskKind.DEPLOY, inflight={"roomy": 13, "tight": 0}) == "roomy"
    assert choose("thesis", s, TaskKind.DEPLOY, inflight={"roomy": 14, "tight": 0}) == "roomy"  # the thesis reads the sample only


def test_unknown_memory_limit_admits() -> None:
    s = snap([sample("x", cpu=0.1, memory_limit_bytes=0, memory_bytes=0)])
    assert choose("thesis", s, TaskKind.DEPLOY) == "x"


# -- LBH pause ----------------------------------------------------------------------------------

# b (0.6, 0.8) d 1.0; a (0.3, 0.4) d 0.5; e (0, 0.3) d 0.3: LBH = -0.5 + 0 + 0.2 = -0.3 < 0.
UNHEALTHY = [sample("b", memory=0.6, cpu=0.8), sample("a", memory=0.3, cpu=0.4), sample("e", memory=0.0, cpu=0.3)]


@pytest.mark.parametrize("name", ["thesis", "esp"])
@pytest.mark.parametrize("kind", list(TaskKind))
def test_negative_lbh_pauses_state_feedback(name: str, kind: TaskKind) -> None:
    s = snap(UNHEALTHY)
    assert s.pool.paused
    with pytest.raises(PoolUnhealthy) as err:
        choose(name, s, kind)
    assert err.value.lbh == pytest.approx(-0.3)
    assert isinstance(err.value, NoEligibleNode)


@pytest.mark.parametrize("name", ["round_robin", "random", "least_inflight", "latency", "lowest_distance"])
def test_baselines_ignore_lbh(name: str) -> None:
    assert choose(name, snap(UNHEALTHY), TaskKind.CALL) in {"a", "b", "e"}


def test_esp_pause_follows_live_load_between_samples() -> None:
    # ESP plane, Dis_ave 0.5, two idle nodes d 0.115: LBH = 2 * 0.385 = 0.77 in the snapshot.
    # Live, both at 10 in flight: d 0.825 each, LBH = 2 * (0.5 - 0.825) = -0.65 -> paused now.
    s = snap([sample("a", memory=0.1, cpu=0.1), sample("b", memory=0.1, cpu=0.1)], ESP)
    assert not s.pool.paused
    with pytest.raises(PoolUnhealthy) as err:
        choose("esp", s, TaskKind.CALL, ESP, inflight={"a": 10, "b": 10})
    assert err.value.lbh == pytest.approx(-0.65, abs=0.01)
    assert choose("esp", s, TaskKind.CALL, ESP, inflight={"a": 0, "b": 1}) == "a"


# -- baselines -------------------------------------------------------------------------------------


def test_round_robin_cycles_and_skips_zone_three() -> None:
    policy, s = make_policy("round_robin"), snap(MIXED)
    picks = [policy.choose(s, TaskKind.READ, inflight={}, rng=random.Random(0)) for _ in range(7)]
    assert picks == ["i1", "i2", "ii", "i1", "i2", "ii", "i1"]


def test_least_inflight_and_latency() -> None:
    s = snap([sample("a", latency_ms=10.0), sample("b", latency_ms=2.0), sample("c", latency_ms=4.0)])
    assert choose("least_inflight", s, TaskKind.READ, inflight={"a": 0, "b": 3, "c": 1}) == "a"
    # latency * (inflight + 1): a 10*1 = 10, b 2*6 = 12, c 4*2 = 8 -> c
    assert choose("latency", s, TaskKind.READ, inflight={"a": 0, "b": 5, "c": 1}) == "c"
    assert choose("latency", s, TaskKind.READ, inflight={}) == "b"


def test_lowest_distance_takes_the_nearest() -> None:
    assert choose("lowest_distance", snap(MIXED), TaskKind.CALL) == "i1"


def test_every_named_policy_exists() -> None:
    for name in POLICY_NAMES:
        assert make_policy(name).name == name
    with pytest.raises(ValueError, match="unknown balancer policy 'best'"):
        make_policy("best")


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_no_serving_node_raises_no_eligible_node(name: str) -> None:
    s = snap([sample("dead", alive=False, status="down", latency_ms=None), sample("busy", status="draining")])
    with pytest.raises(NoEligibleNode) as err:
        choose(name, s, TaskKind.READ)
    assert not isinstance(err.value, PoolUnhealthy)
    with pytest.raises(NoEligibleNode):
        choose(name, snap(MIXED), TaskKind.READ, exclude=frozenset({"i1", "i2", "ii"}))


# -- never zone III (property, every policy) -----------------------------------------------------

node_samples = st.builds(
    NodeSample,
    node_id=st.sampled_from([f"n{i}" for i in range(8)]),
    url=st.just("http://127.0.0.1:1"),
    backend=st.just("process"),
    status=st.sampled_from(STATUSES),
    alive=st.booleans(),
    cpu=st.floats(0, 1.5),
    memory=st.floats(0, 1.3),
    memory_bytes=st.integers(0, 2048 * MIB),
    memory_limit_bytes=st.sampled_from([0, 1024 * MIB, 2048 * MIB]),
    latency_ms=st.none() | st.floats(0, 500),
    error_rate=st.floats(0, 1),
    head=st.none() | st.integers(0, 50),
    inflight=st.integers(0, 40),
)
configs = st.sampled_from([
    BalancerConfig(), BalancerConfig.thesis(), THESIS, ESP, BalancerConfig(recycle_distance=0.6, dis_ave_min=0.0,
                                                                           dis_ave_max=0.3),
])


@settings(max_examples=300, deadline=None)
@given(samples=st.lists(node_samples, max_size=8, unique_by=lambda s: s.node_id), config=configs,
       name=st.sampled_from(POLICY_NAMES), kind=st.sampled_from(list(TaskKind)),
       inflight=st.dictionaries(st.sampled_from([f"n{i}" for i in range(8)]), st.integers(0, 60)),
       exclude=st.frozensets(st.sampled_from([f"n{i}" for i in range(8)]), max_size=3), seed=st.integers(0, 2 ** 32))
def test_zone_three_or_down_is_never_chosen(*, samples: list[NodeSample], config: BalancerConfig, name: str, kind: TaskKind,
                                            inflight: dict[str, int], exclude: frozenset[str], seed: int) -> None:
    s = build_snapshot(samples, config, Calibrator.start(config), name, 0.0)
    serving = {n.id for n in s.nodes if n.zone in ("I", "II")} - exclude
    try:
        chosen = make_policy(name, config).choose(s, kind, inflight=inflight, rng=random.Random(seed), exclude=exclude)
    except PoolUnhealthy:
        assert name in ("thesis", "esp")  # only the state-feedback policies pause
        return
    except NoEligibleNode:
        # Baselines fail only when nothing serves; the thesis policies may also lack free memory.
        assert not serving or name in ("thesis", "esp")
        return
    assert chosen in serving
    view = s.node(chosen)
    assert view is not None and view.alive and view.status == "up" and view.latency_ms is not None
    assert view.zone != "III"


# -- stale snapshot fallback --------------------------------------------------------------------------


def test_answering_ids_ignore_zones() -> None:
    # hot is zone III by distance but answers and is up; dead does not answer; a draining node is leaving.
    assert answering_ids(snap(MIXED)) == ["hot", "i1", "i2", "ii"]
    assert answering_ids(snap([*MIXED, sample("leaving", status="draining")])) == ["hot", "i1", "i2", "ii"]
    assert answering_ids(None) == []


def test_fallback_prefers_the_less_loaded_answering_node() -> None:
    picks = {choose_fallback(["a", "b"], inflight={"a": 5, "b": 0}, rng=random.Random(s)) for s in range(20)}
    assert picks == {"b"}
    assert choose_fallback(["a", "b"], inflight={}, rng=random.Random(0), exclude=frozenset({"a"})) == "b"
    with pytest.raises(NoEligibleNode, match="no answering node"):
        choose_fallback([], inflight={}, rng=random.Random(0))


def test_route_uses_the_policy_while_fresh_and_the_fallback_when_stale() -> None:
    s = snap(MIXED, now=100.0)
    policy = make_policy("thesis", THESIS)
    fresh = route(policy, s, TaskKind.CALL, now=101.0, max_age=2.0, inflight={}, rng=random.Random(0))
    assert (fresh.node_id, fresh.fallback, fresh.zone) == ("i1", False, "I")
    stale = route(policy, s, TaskKind.CALL, now=110.0, max_age=2.0, inflight={"i1": 9, "i2": 9, "ii": 9, "hot": 0},
                  rng=random.Random(0))
    assert stale.fallback and stale.zone is None and stale.node_id in answering_ids(s)
    told = route(policy, None, TaskKind.CALL, now=110.0, max_age=2.0, inflight={}, rng=random.Random(0),
                 answering=["x"])
    assert (told.node_id, told.fallback) == ("x", True)
    with pytest.raises(NoEligibleNode):
        route(policy, None, TaskKind.CALL, now=0.0, max_age=2.0, inflight={}, rng=random.Random(0))


def test_route_passes_a_pause_through() -> None:
    with pytest.raises(PoolUnhealthy):
        route(make_policy("esp", THESIS), snap(UNHEALTHY), TaskKind.READ, now=100.0, max_age=2.0, inflight={},
              rng=random.Random(0))


@pytest.mark.parametrize("kind", WRITES)
def test_reads_and_writes_accept_kind_names(kind: TaskKind) -> None:
    s = snap(MIXED)
    policy = make_policy("thesis", THESIS)
    assert policy.choose(s, kind.value, inflight={}, rng=random.Random(0)) == "i1"
    assert policy.choose(s, "read", inflight={}, rng=random.Random(0)) == "ii"
