"""The monitor's pure parts: a node's status word, the stored calibration, the history entry (no Redis, no node).

``node_status`` decides which nodes the balancer may use at all, from the probe, the
backend's resource stats, the recycler's override and the node manager's sync record;
until now it only ran inside ``sample_pool`` against a live pool.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from balancer import (
    STATUS_DOWN,
    STATUS_DRAINING,
    STATUS_RECYCLING,
    STATUS_UP,
    BalancerConfig,
    Calibrator,
    NodeSample,
    build_snapshot,
)
from balancer.calibration import SOURCE_CONFIGURED, SOURCE_DEFAULT, SOURCE_LEARNED
from nodepool.sync import DIVERGED, SYNC_STOPPED, SYNCED, SYNCING
from nodes.base import ResourceStats
from services.monitor import Probe, history_entry, load_calibration, node_status

LAG_SCALE = 10
ANSWERED = Probe(ok=True, latency_ms=3.0, head=100)
FAILED = Probe(ok=False, error="connection refused")
RUNNING = ResourceStats(alive=True, cpu=0.1, memory=0.2)
GONE = ResourceStats(alive=False)


def sync(status: str, *, head: int = -1, leader_head: int = -1) -> dict[str, Any]:
    """A sync record as the node manager publishes it (``nodepool.sync.SyncStatus`` as JSON)."""
    return {"node_id": "node-1", "role": "follower", "status": status, "head": head, "leader_head": leader_head}


def status(probe: Probe, stats: ResourceStats | None, *, override: str | None = None,
           record: dict[str, Any] | None = None, max_head: int | None = 100) -> tuple[str, bool]:
    return node_status(probe, stats, override=override, sync=record, max_head=max_head, lag_scale=LAG_SCALE)


# -- node_status -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probe", "stats", "record", "expected"),
    [
        # Liveness: the backend's word when it has one, else the probe's (static nodes have no stats).
        pytest.param(ANSWERED, RUNNING, None, (STATUS_UP, True), id="running-and-answering"),
        pytest.param(ANSWERED, None, None, (STATUS_UP, True), id="static-answering"),
        pytest.param(FAILED, None, None, (STATUS_DOWN, False), id="static-not-answering"),
        pytest.param(ANSWERED, GONE, None, (STATUS_DOWN, False), id="process-gone-though-a-probe-answered"),
        # A running node whose probe failed keeps the word "up": the failed probe leaves it without a
        # latency, which is what keeps it from serving (NodeSample.is_answering), not its status.
        pytest.param(FAILED, RUNNING, None, (STATUS_UP, True), id="running-probe-failed"),
        # The node manager's sync record.
        pytest.param(ANSWERED, RUNNING, sync(SYNCED, head=100, leader_head=100), (STATUS_UP, True), id="synced"),
        pytest.param(ANSWERED, RUNNING, sync(DIVERGED, head=100, leader_head=100), (STATUS_DOWN, True),
                     id="diverged-though-answering"),
        # "down" from the manager counts only with our own failed probe: its follower loop also
        # reports a follower down while the *leader* does not answer, and that follower still serves.
        pytest.param(ANSWERED, RUNNING, sync(SYNC_STOPPED), (STATUS_UP, True), id="sync-stopped-but-our-probe-answered"),
        pytest.param(FAILED, RUNNING, sync(SYNC_STOPPED), (STATUS_DOWN, True), id="sync-stopped-and-our-probe-failed"),
        pytest.param(FAILED, None, sync(SYNC_STOPPED), (STATUS_DOWN, False), id="sync-stopped-static-not-answering"),
    ],
)
def test_node_status_from_liveness_and_sync(probe: Probe, stats: ResourceStats | None, record: dict[str, Any] | None,
                                           expected: tuple[str, bool]) -> None:
    assert status(probe, stats, record=record) == expected


@pytest.mark.parametrize("override", [STATUS_DRAINING, STATUS_RECYCLING])
@pytest.mark.parametrize(("probe", "stats"), [(ANSWERED, RUNNING), (FAILED, GONE), (FAILED, None)])
def test_the_recyclers_override_wins_and_liveness_is_still_reported(override: str, probe: Probe,
                                                                     stats: ResourceStats | None) -> None:
    expected_alive = stats.alive if stats is not None else probe.ok
    # Even a diverged or gone node shows the recycler's word while the recycler holds it.
    assert status(probe, stats, override=override, record=sync(DIVERGED)) == (override, expected_alive)


@pytest.mark.parametrize(
    ("head", "max_head", "expected"),
    [
        pytest.param(90, 100, STATUS_UP, id="exactly-lag-scale-behind"),
        pytest.param(89, 100, STATUS_DOWN, id="one-more-than-lag-scale-behind"),
        pytest.param(100, 100, STATUS_UP, id="at-the-head"),
    ],
)
def test_a_syncing_follower_is_judged_by_our_probe_against_the_pools_head(head: int, max_head: int, expected: str) -> None:
    # The manager's record says it is far behind; our fresher probe (head vs the pool's max head) decides.
    record = sync(SYNCING, head=0, leader_head=1000)
    probe = Probe(ok=True, latency_ms=2.0, head=head)
    assert status(probe, RUNNING, record=record, max_head=max_head) == (expected, True)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        pytest.param(sync(SYNCING, head=90, leader_head=100), STATUS_UP, id="record-lag-scale-behind"),
        pytest.param(sync(SYNCING, head=89, leader_head=100), STATUS_DOWN, id="record-far-behind"),
        pytest.param(sync(SYNCING, head=-1, leader_head=100), STATUS_DOWN, id="record-head-unknown"),
    ],
)
def test_a_syncing_follower_without_a_probed_head_is_judged_by_the_managers_record(record: dict[str, Any],
                                                                                   expected: str) -> None:
    assert status(FAILED, RUNNING, record=record) == (expected, True)  # the probe failed: no head of ours
    assert status(ANSWERED, RUNNING, record=record, max_head=None) == (expected, True)  # no pool head to compare with


# -- the stored calibration --------------------------------------------------------------------

CONFIG = BalancerConfig()


def learned() -> Calibrator:
    """A calibration that has learned both bounds, as the monitor stores it."""
    return Calibrator(dis_ave_min=0.21, dis_ave_max=0.87, source_min=SOURCE_LEARNED, source_max=SOURCE_LEARNED,
                      idle_seen=4, poor_seen=2, poor_streak=1)


@pytest.mark.parametrize("raw", [None, b"", ""])
def test_no_stored_calibration_starts_from_the_config(raw: bytes | str | None) -> None:
    assert load_calibration(raw, CONFIG) == Calibrator.start(CONFIG)
    assert Calibrator.start(CONFIG).source == SOURCE_DEFAULT


@pytest.mark.parametrize("encode", [lambda d: json.dumps(d).encode(), json.dumps], ids=["bytes", "str"])
def test_a_stored_calibration_is_read_back_as_it_was(encode: Any) -> None:
    assert load_calibration(encode(learned().to_dict()), CONFIG) == learned()


def test_a_bound_configured_since_the_calibration_was_stored_wins() -> None:
    config = BalancerConfig(dis_ave_min=0.1)
    loaded = load_calibration(json.dumps(learned().to_dict()), config)
    assert (loaded.dis_ave_min, loaded.source_min, loaded.idle_seen) == (0.1, SOURCE_CONFIGURED, 0)
    assert (loaded.dis_ave_max, loaded.source_max, loaded.poor_seen) == (0.87, SOURCE_LEARNED, 2)  # the learned one is kept


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(json.dumps({"dis_ave_min": 0.2}).encode(), id="missing-fields"),
        pytest.param(json.dumps({**learned().to_dict(), "dis_ave_max": "high"}).encode(), id="wrong-type"),
        # JSON that is not an object: the monitor must not fail every beat until someone deletes the key.
        pytest.param(b"[]", id="a-list"),
        pytest.param(b"null", id="null"),
        pytest.param(b"5", id="a-number"),
    ],
)
def test_an_unreadable_stored_calibration_starts_over(raw: bytes) -> None:
    assert load_calibration(raw, CONFIG) == Calibrator.start(CONFIG)


# -- the history entry ---------------------------------------------------------------------------


def test_history_entry_is_the_compact_form_of_the_snapshot() -> None:
    samples = [
        NodeSample(node_id="node-0", url="http://n0", backend="process", cpu=0.123456, memory=0.5, latency_ms=4.0,
                   head=100, inflight=2),
        NodeSample(node_id="node-1", url="http://n1", backend="process", status=STATUS_DOWN, alive=False),
    ]
    snapshot = build_snapshot(samples, CONFIG, learned(), "esp", now=1_700_000_000.123456)
    entry = history_entry(snapshot)
    assert json.loads(json.dumps(entry)) == entry  # stored as JSON as it is
    assert entry["t"] == 1_700_000_000.123 and entry["paused"] is snapshot.pool.paused
    assert entry["lbh"] == round(snapshot.pool.lbh, 4) and entry["dis_ave"] == round(learned().dis_ave, 4)
    assert set(entry["nodes"]) == {"node-0", "node-1"}
    for view in snapshot.nodes:
        compact = entry["nodes"][view.id]
        assert compact == {"d": round(view.distance, 4), "z": view.zone, "s": view.status, "i": view.inflight,
                           "x": {k: round(v, 4) for k, v in view.state.items()}}
    assert entry["nodes"]["node-0"]["i"] == 2 and entry["nodes"]["node-0"]["x"]["cpu"] == 0.1235
    assert entry["nodes"]["node-1"]["s"] == STATUS_DOWN and entry["nodes"]["node-1"]["z"] == "III"
