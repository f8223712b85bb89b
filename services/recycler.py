"""The recycler: drains a node stuck in zone III, restarts it through the node manager, returns it to the pool.

A non-blocking state machine advanced one step per beat (the control worker is a
solo process that also runs the monitor, so a step never waits on anything):

    pick        a node that has been zone III in ESP_RECYCLE_AFTER consecutive snapshots
                for a reason a restart can cure (down, not answering, over its memory cap,
                beyond the recycle distance) -- a follower that is syncing and whose head
                advanced since the previous snapshot is catching up, not stuck, and is left
                alone; only when no other node is being recycled, and only when at least
                ESP_MIN_SERVING_NODES other nodes serve (zone I or II): a pool where too few
                serve keeps its zone-III node rather than risk the rest (recorded once as
                "recycle-held"). Static nodes cannot be restarted: skipped, recorded once.
    draining    the node is marked "draining" (``esp:node-status``): placement gives it no
                new work at once, the next snapshot puts it in zone III. The step waits
                until its in-flight count is 0 -- but at least two monitor intervals, so
                every Placement (which caches for one interval) has seen the override --
                or until ESP_DRAIN_TIMEOUT has passed.
    recycling   marked "recycling"; the restart command goes to the node manager
                (``NodeControl.send``); later steps poll its reply, which comes once the
                node answers again and has caught up with the chain.
    done        the override is cleared: the node's samples decide its status again.

An operator may ask for a node instead (``request_operation``; ``esp node drain|recycle|undrain``):
the request waits in ``esp:recycler:request`` for the next step, which starts it as if the node
were due, under the same rules (one at a time, the serving minimum, never a static node's restart);
the request is refused at once when those rules already forbid it, and recorded as "<action>-refused"
when they forbid it by the time the step comes. A drain the operator asked for holds the node
"drained" (phase ``drained``, the key without a TTL) until it is undrained or recycled; a node due for
a recycle meanwhile waits for it, recorded once as "recycle-held" naming the drained node.

Every step is recorded as a node event. The recycle in progress is a Redis key
with a TTL (``esp:recycler:current``, set only if absent): one node at a time,
and a recycler that died mid-way frees the pool when it expires (a later step
clears the override such a recycle left behind).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from prometheus_client import Counter

from balancer import STATUS_DRAINING, STATUS_RECYCLING, ZONE_III, Snapshot
from balancer.zones import REASON_DOWN, REASON_NOT_ANSWERING, REASON_OVER_MEMORY_CAP, REASON_RECYCLE_DISTANCE
from errors import Conflict, NotFound
from nodepool.events import record_event
from nodepool.pool import Pool
from nodepool.registry import NodeControl
from nodepool.snapshot import clear_status_override, load_fresh_snapshot, set_status_override, status_overrides
from nodepool.sync import SYNCING
from nodepool.traffic import Traffic

log = logging.getLogger(__name__)

CURRENT_KEY = "esp:recycler:current"
STREAKS_KEY = "esp:recycler:streaks"
NOTED_KEY = "esp:recycler:noted"
STEP_LOCK_KEY = "esp:recycler:lock"
REQUEST_KEY = "esp:recycler:request"

#: Zone-III reasons a restart can cure (draining and recycling are the recycler's own doing).
RECYCLABLE_REASONS = frozenset({REASON_DOWN, REASON_NOT_ANSWERING, REASON_OVER_MEMORY_CAP, REASON_RECYCLE_DISTANCE})
#: Seconds the node manager may take to restart a node and let it catch up (its own default).
RESTART_TIMEOUT = 120.0
#: The recycle-in-progress key outlives the longest recycle by this much.
CURRENT_TTL_MARGIN = 60.0
#: A draining node keeps its override at least this many monitor intervals (Placement caches one).
MIN_DRAIN_INTERVALS = 2.0
STEP_LOCK_TTL = 30.0

PHASE_DRAINING = "draining"
PHASE_DRAINED = "drained"
PHASE_RECYCLING = "recycling"

ACTION_DRAIN = "drain"
ACTION_RECYCLE = "recycle"
ACTION_UNDRAIN = "undrain"
ACTIONS = (ACTION_DRAIN, ACTION_RECYCLE, ACTION_UNDRAIN)
#: An operator's request the beat has not taken by then is dropped (no control worker is running).
REQUEST_TTL = 60.0
#: Recycles by what happened: started (draining), finished (the node is back), failed, abandoned, held (too few
#: nodes serve: counted once per zone-III episode, as its event), skipped (a static node: once per episode).
RECYCLE_EVENTS = ("started", "finished", "failed", "abandoned", "held", "skipped")
RECYCLES = Counter("esp_recycles", "recycler events: started, finished, failed, abandoned, held, skipped", ["event"])
for _event in RECYCLE_EVENTS:
    RECYCLES.labels(_event)  # shown at 0 from the start (a rate misses a series' first count)


def recycle_step(pool: Pool, *, control: NodeControl | None = None, now: float | None = None) -> dict[str, Any]:
    """Advance the recycler by one step; returns what it did (``action``, ``node``) for logs and tests."""
    now = time.time() if now is None else now
    control = control or NodeControl(pool.redis)
    lock = pool.redis.lock(STEP_LOCK_KEY, timeout=STEP_LOCK_TTL, blocking=False)
    if not lock.acquire():
        return {"action": "busy"}
    try:
        return _step(pool, control, now)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass  # expired during a very slow step: nothing to release


def current_recycle(client: redis.Redis) -> dict[str, Any] | None:
    """The recycle in progress (node, phase, times, command id), or None."""
    raw = client.get(CURRENT_KEY)
    return json.loads(raw) if raw else None


def _step(pool: Pool, control: NodeControl, now: float) -> dict[str, Any]:
    client = pool.redis
    current = current_recycle(client)
    overrides = status_overrides(client)
    for node_id in overrides:
        if current is None or node_id != current["node"]:
            # Left by a recycle whose key expired (the recycler died): give the node back.
            clear_status_override(client, node_id)
            RECYCLES.labels("abandoned").inc()
            record_event(client, "recycle-abandoned", node_id, override=overrides[node_id])
    request = pending_request(client)
    if current is not None:
        if request is not None:
            client.delete(REQUEST_KEY)
            if request["node"] == current["node"]:
                current = _apply_request(pool, current, request)
                if current is None:
                    return {"action": "undrained", "node": request["node"]}
            else:
                record_event(client, f"{request['action']}-refused", request["node"],
                             reason=f"{current['node']} is {current['phase']}: one node at a time")
        if current.get("hold"):
            _note_held_behind(pool, current, now)
        return _advance(pool, control, current, now)

    fresh = load_fresh_snapshot(client, now=now, stale_after=pool.settings.stale_after)
    if fresh is None:
        return {"action": "stale"}
    document, snapshot = fresh
    if request is not None:
        client.delete(REQUEST_KEY)
        return _start_requested(pool, snapshot, request, now)
    streaks = _update_streaks(client, document)
    for node_id in _due(streaks, pool.settings.recycle_after):
        spec = pool.registry.get(node_id)
        if spec is None:
            continue
        view = snapshot.node(node_id)
        reason = view.zone_reason if view else None
        if spec.backend == "static":
            if _note_once(client, "static", node_id, "recycle-skipped", reason="static nodes cannot be restarted by ESP",
                          zone_reason=reason):
                RECYCLES.labels("skipped").inc()
            continue
        serving = [n.id for n in snapshot.serving() if n.id != node_id]
        if len(serving) < pool.settings.min_serving_nodes:
            if _note_once(client, "held", node_id, "recycle-held", zone_reason=reason, serving=len(serving),
                          min_serving=pool.settings.min_serving_nodes):
                RECYCLES.labels("held").inc()
            return {"action": "held", "node": node_id, "serving": len(serving)}
        if not _begin_drain(pool, node_id, now, reason=reason, hold=False):
            return {"action": "busy"}
        RECYCLES.labels("started").inc()
        record_event(client, "recycle-draining", node_id, zone_reason=reason, streak=streaks[node_id]["n"],
                     distance=round(view.distance, 4) if view else None)
        log.warning("recycling %s (%s): draining", node_id, reason)
        return {"action": "draining", "node": node_id, "reason": reason}
    return {"action": "idle"}


def _note_held_behind(pool: Pool, current: dict[str, Any], now: float) -> None:
    """While an operator holds a node drained, say once of each node then due for a recycle that it waits.

    One node at a time holds for the operator's drain too, so a node that dies meanwhile is not healed
    until the drained one is undrained or recycled: a ``recycle-held`` event (and count) tells the
    operator so, as the serving minimum's does.
    """
    client = pool.redis
    fresh = load_fresh_snapshot(client, now=now, stale_after=pool.settings.stale_after)
    if fresh is None:
        return
    document, snapshot = fresh
    for node_id in _due(_update_streaks(client, document), pool.settings.recycle_after):
        if node_id == current["node"]:
            continue
        spec = pool.registry.get(node_id)
        if spec is None or spec.backend == "static":
            continue
        view = snapshot.node(node_id)
        if _note_once(client, "held", node_id, "recycle-held", zone_reason=view.zone_reason if view else None,
                      behind=current["node"], reason=f"{current['node']} is drained by an operator: one node at a time"
                                                     " (undrain or recycle it)"):
            RECYCLES.labels("held").inc()


def _begin_drain(pool: Pool, node_id: str, now: float, *, reason: str | None, hold: bool) -> bool:
    """Make ``node_id`` the one node out of service (False when another one is); a held drain keeps no TTL."""
    record = {"node": node_id, "phase": PHASE_DRAINING, "reason": reason, "drain_started": now, "hold": hold}
    ttl = pool.settings.drain_timeout + RESTART_TIMEOUT + CURRENT_TTL_MARGIN
    if not pool.redis.set(CURRENT_KEY, json.dumps(record), nx=True, px=None if hold else int(ttl * 1000)):
        return False
    set_status_override(pool.redis, node_id, STATUS_DRAINING)
    return True


# -- operators' requests ------------------------------------------------------------------


def pending_request(client: redis.Redis) -> dict[str, Any] | None:
    """The operator's request the next step will take (node, action, requested_at), or None."""
    raw = client.get(REQUEST_KEY)
    return json.loads(raw) if raw else None


def request_operation(pool: Pool, node_id: str, action: str, *, now: float | None = None) -> dict[str, Any]:
    """Ask the recycler to drain, recycle or undrain ``node_id`` at its next step.

    Refuses at once (NotFound, Conflict naming ``node_id``) what the step would refuse now: an unknown
    node, a static node's restart, a second node while one is out of service or asked for, a pool that
    would keep fewer than ESP_MIN_SERVING_NODES serving nodes. Asking again for what is already under
    way is accepted and changes nothing. Returns the request and the operation in progress.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    now = time.time() if now is None else now
    client = pool.redis
    spec = pool.registry.get(node_id)
    if spec is None:
        raise NotFound(f"no node {node_id!r} in the pool", field="node_id")
    if action == ACTION_RECYCLE and spec.backend == "static":
        raise Conflict(f"{node_id} is a static node: ESP cannot restart it (drain it, or remove it)", field="node_id")
    current, pending = current_recycle(client), pending_request(client)
    if current is not None and current["node"] != node_id:
        raise Conflict(f"{current['node']} is {current['phase']} now: one node at a time, ask again when it is done",
                       field="node_id")
    if pending is not None and pending["node"] != node_id:
        raise Conflict(f"{pending['node']} has a pending {pending['action']} request: one node at a time", field="node_id")
    record = {"node": node_id, "action": action, "requested_at": now}
    if action == ACTION_UNDRAIN:
        if current is None or not current.get("hold"):
            raise Conflict(f"{node_id} was not drained by an operator (nothing to undrain)", field="node_id")
    elif current is None:
        _check_serving(pool, node_id, now)
    elif action == ACTION_DRAIN or not current.get("hold"):
        return {**record, "accepted": False, "current": current}  # already under way
    client.set(REQUEST_KEY, json.dumps(record), px=int(REQUEST_TTL * 1000))
    record_event(client, f"{action}-requested", node_id)
    return {**record, "accepted": True, "current": current}


def _check_serving(pool: Pool, node_id: str, now: float) -> None:
    """Conflict unless at least ESP_MIN_SERVING_NODES other nodes serve in a fresh snapshot."""
    fresh = load_fresh_snapshot(pool.redis, now=now, stale_after=pool.settings.stale_after)
    if fresh is None:
        raise Conflict("the pool's snapshot is missing or stale (is the beat running?): the recycler cannot act now",
                       field="node_id")
    serving = [n.id for n in fresh[1].serving() if n.id != node_id]
    if len(serving) < pool.settings.min_serving_nodes:
        raise Conflict(f"taking {node_id} out would leave {len(serving)} serving node(s), fewer than"
                       f" ESP_MIN_SERVING_NODES={pool.settings.min_serving_nodes}", field="node_id")


def _start_requested(pool: Pool, snapshot: Snapshot, request: dict[str, Any], now: float) -> dict[str, Any]:
    """Start the operator's drain or recycle, if the rules still allow it."""
    client, node_id, action = pool.redis, request["node"], request["action"]
    spec = pool.registry.get(node_id)
    serving = [n.id for n in snapshot.serving() if n.id != node_id]
    reason = None
    if spec is None:
        reason = "no longer registered"
    elif action == ACTION_UNDRAIN:
        reason = "not drained"
    elif action == ACTION_RECYCLE and spec.backend == "static":
        reason = "static nodes cannot be restarted by ESP"
    elif len(serving) < pool.settings.min_serving_nodes:
        reason = f"{len(serving)} other node(s) serve, fewer than ESP_MIN_SERVING_NODES={pool.settings.min_serving_nodes}"
    if reason is None and not _begin_drain(pool, node_id, now, reason="operator", hold=action == ACTION_DRAIN):
        reason = "another node is out of service"
    if reason is not None:
        record_event(client, f"{action}-refused", node_id, reason=reason)
        return {"action": "refused", "node": node_id, "reason": reason}
    if action == ACTION_RECYCLE:
        RECYCLES.labels("started").inc()
    record_event(client, "drain-started" if action == ACTION_DRAIN else "recycle-draining", node_id, zone_reason="operator")
    log.warning("%s %s (operator): draining", "draining" if action == ACTION_DRAIN else "recycling", node_id)
    return {"action": "draining", "node": node_id, "reason": "operator"}


def _apply_request(pool: Pool, current: dict[str, Any], request: dict[str, Any]) -> dict[str, Any] | None:
    """The operator's request for the node out of service: undrain it (None), or turn its held drain into a recycle."""
    client, node_id = pool.redis, current["node"]
    if request["action"] == ACTION_UNDRAIN and current.get("hold"):
        _finish(client, node_id)
        record_event(client, "drain-ended", node_id)
        return None
    if request["action"] == ACTION_RECYCLE and current.get("hold"):
        current["hold"] = False  # a recycle's key expires, as the recycler's own do
        ttl = pool.settings.drain_timeout + RESTART_TIMEOUT + CURRENT_TTL_MARGIN
        client.set(CURRENT_KEY, json.dumps(current), xx=True, px=int(ttl * 1000))
        RECYCLES.labels("started").inc()
        record_event(client, "recycle-draining", node_id, zone_reason="operator", drained_before=current["phase"] == PHASE_DRAINED)
    return current


def _advance(pool: Pool, control: NodeControl, current: dict[str, Any], now: float) -> dict[str, Any]:
    client = pool.redis
    node_id = current["node"]
    settings = pool.settings
    if current["phase"] in (PHASE_DRAINING, PHASE_DRAINED):
        elapsed = now - float(current["drain_started"])
        inflight = Traffic(client).inflight([node_id])[node_id]
        settled = elapsed >= MIN_DRAIN_INTERVALS * settings.monitor_interval
        if current["phase"] == PHASE_DRAINING and (not settled or (inflight > 0 and elapsed < settings.drain_timeout)):
            return {"action": "waiting-drain", "node": node_id, "inflight": inflight}
        if current.get("hold"):
            if current["phase"] == PHASE_DRAINING:
                current["phase"] = PHASE_DRAINED
                client.set(CURRENT_KEY, json.dumps(current), xx=True)
                record_event(client, "drain-done", node_id, drained_s=round(elapsed, 3), inflight_left=inflight,
                             timed_out=inflight > 0)
            return {"action": "drained", "node": node_id, "inflight": inflight}
        if pool.registry.get(node_id) is None:
            _finish(client, node_id)
            RECYCLES.labels("abandoned").inc()
            record_event(client, "recycle-abandoned", node_id, reason="no longer registered")
            return {"action": "abandoned", "node": node_id}
        set_status_override(client, node_id, STATUS_RECYCLING)
        command = control.send("restart", node_id, timeout=RESTART_TIMEOUT)
        current.update(phase=PHASE_RECYCLING, command=command, restart_sent=now, inflight_left=inflight)
        client.set(CURRENT_KEY, json.dumps(current), xx=True, keepttl=True)
        record_event(client, "recycle-restarting", node_id, drained_s=round(elapsed, 3), inflight_left=inflight,
                     timed_out=inflight > 0)
        log.warning("recycling %s: restart sent (%d in flight left)", node_id, inflight)
        return {"action": "restarting", "node": node_id, "inflight_left": inflight}

    reply = control.poll(current["command"])
    took = round(now - float(current["restart_sent"]), 3)
    if reply is None:
        if now - float(current["restart_sent"]) > RESTART_TIMEOUT + CURRENT_TTL_MARGIN / 2:
            _finish(client, node_id)
            RECYCLES.labels("failed").inc()
            record_event(client, "recycle-failed", node_id, error="the node manager did not answer the restart", took_s=took)
            return {"action": "failed", "node": node_id}
        return {"action": "waiting-restart", "node": node_id}
    _finish(client, node_id)
    if not reply.get("ok"):
        RECYCLES.labels("failed").inc()
        record_event(client, "recycle-failed", node_id, error=reply.get("error"), took_s=took)
        log.error("recycling %s failed: %s", node_id, reply.get("error"))
        return {"action": "failed", "node": node_id, "error": reply.get("error")}
    generation = (reply.get("node") or {}).get("generation")
    Traffic(client).forget(node_id)  # what failed while it restarted says nothing of the fresh node
    RECYCLES.labels("finished").inc()
    record_event(client, "recycle-done", node_id, generation=generation, took_s=took,
                 total_s=round(now - float(current["drain_started"]), 3))
    log.warning("recycled %s in %.1f s (generation %s)", node_id, took, generation)
    return {"action": "recycled", "node": node_id, "generation": generation}


def _finish(client: redis.Redis, node_id: str) -> None:
    """End the recycle: the node's samples decide its status again, and its zone-III count starts over."""
    clear_status_override(client, node_id)
    client.delete(CURRENT_KEY)
    raw = client.get(STREAKS_KEY)
    if raw:
        state = json.loads(raw)
        if node_id in state.get("nodes", {}):
            state["nodes"][node_id]["n"] = 0
            client.set(STREAKS_KEY, json.dumps(state))


def _update_streaks(client: redis.Redis, document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Count, per node, the consecutive snapshots that showed it recyclable (once per new snapshot)."""
    raw = client.get(STREAKS_KEY)
    state: dict[str, Any] = json.loads(raw) if raw else {"taken_at": 0.0, "nodes": {}}
    taken_at = float(document["pool"]["taken_at"])
    if taken_at <= float(state.get("taken_at", 0.0)):
        return dict(state.get("nodes", {}))  # no new sample since the last step
    nodes: dict[str, dict[str, Any]] = {}
    back: list[str] = []
    for node in document["nodes"]:
        before = state.get("nodes", {}).get(node["id"], {"n": 0, "head": None})
        head = node.get("head")
        recyclable = node["zone"] == ZONE_III and node.get("zone_reason") in RECYCLABLE_REASONS
        catching_up = (node.get("sync") == SYNCING and head is not None
                       and before.get("head") is not None and head > before["head"])
        count = before["n"] + 1 if recyclable and not catching_up else 0
        if node["zone"] != ZONE_III:
            back.append(node["id"])
        nodes[node["id"]] = {"n": count, "head": head}
    pipe = client.pipeline(transaction=False)
    pipe.set(STREAKS_KEY, json.dumps({"taken_at": taken_at, "nodes": nodes}))
    for node_id in back:  # a node serving again may be noted again in a later episode
        pipe.srem(NOTED_KEY, f"static:{node_id}", f"held:{node_id}")
    pipe.execute()
    return nodes


def _due(streaks: dict[str, dict[str, Any]], recycle_after: int) -> list[str]:
    """The nodes zone III long enough to be recycled, the longest first (then by id)."""
    return sorted((n for n, s in streaks.items() if s["n"] >= recycle_after), key=lambda n: (-streaks[n]["n"], n))


def _note_once(client: redis.Redis, what: str, node_id: str, kind: str, **data: Any) -> bool:
    """Record an event the first time ``what`` happens to ``node_id`` in this zone-III episode; True when it did."""
    if client.sadd(NOTED_KEY, f"{what}:{node_id}"):
        record_event(client, kind, node_id, **data)
        return True
    return False
