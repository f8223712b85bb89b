"""Static nodes an operator adds to or removes from a running pool (``esp node add|remove``).

A static node is one ESP only talks to (an existing geth, another anvil): it is never started,
stopped or restarted by ESP. Adding one checks, before it is registered, that it is on the
pool's chain: it must answer ``eth_chainId`` with the pool's chain id, *and* its genesis block
must be the pool's (a second anvil with the same chain id but its own genesis is another chain:
ESP's transactions would be valid there and its reads would be about a different history). ESP
does not import blocks into it: keeping it on the chain is its operator's business; the
monitor samples it like any node (a lagging one goes to zone III).

Its URL's host must be one of ESP_STATIC_NODE_HOSTS, checked before anything is sent: the API
makes the request, and an admin's request must not make it reach arbitrary hosts.

Nodes added here are registered like the others and also remembered (``NodeRegistry.added``) until
removed: a restart of the node manager, which registers the pool afresh, checks each again the same
way and registers it once more, or forgets it with a ``node-forgotten`` event saying why.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit

from errors import Conflict, NodeError, NotFound, ValidationError
from nodepool.chain import chain_mismatch
from nodepool.events import record_event
from nodepool.pool import Pool
from nodepool.snapshot import clear_status_override, load_fresh_snapshot
from nodepool.spec import ROLE_STANDALONE, NodeSpec
from nodepool.traffic import Traffic
from services.recycler import current_recycle

STATIC = "static"
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
NODE_ID_PATTERN = f"^{NODE_ID.pattern}$"
MAX_URL_LENGTH = 512
DEFAULT_PREFIX = "static-"


def check_node_id(value: Any, field: str = "id") -> str:
    """A node id: 1 to 32 ASCII letters, digits and ._-, starting with a letter or digit."""
    if not isinstance(value, str) or not NODE_ID.fullmatch(value):
        raise ValidationError(field, "must be 1 to 32 characters: ASCII letters, digits and ._-, starting with a letter or digit")
    return value


def check_node_url(value: Any, allowed_hosts: tuple[str, ...], field: str = "url") -> str:
    """An http(s) JSON-RPC URL on an allowed host, without credentials; returned without a trailing slash."""
    if not isinstance(value, str) or not value.isascii() or not 0 < len(value) <= MAX_URL_LENGTH or any(c.isspace() for c in value):
        raise ValidationError(field, f"must be an http(s) URL of at most {MAX_URL_LENGTH} ASCII characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(field, f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(field, "must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(field, "must not carry credentials: node URLs are shown to every client of GET /api/v1/nodes")
    if parts.hostname.lower() not in {h.lower() for h in allowed_hosts}:
        raise ValidationError(field, f"host {parts.hostname!r} is not in ESP_STATIC_NODE_HOSTS ({','.join(allowed_hosts)})")
    if port == 0:
        raise ValidationError(field, "port 0 is not a port a node listens on")
    return value.rstrip("/")




def add_static_node(pool: Pool, url: Any, node_id: Any = None) -> NodeSpec:
    """Register a static node on the pool's chain; ValidationError (422) naming the field when it is not one."""
    settings = pool.settings
    url = check_node_url(url, settings.static_node_hosts)
    specs = pool.nodes()
    if node_id is None:
        taken = {s.id for s in specs}
        node_id = next(f"{DEFAULT_PREFIX}{i}" for i in range(len(taken) + 1) if f"{DEFAULT_PREFIX}{i}" not in taken)
    node_id = check_node_id(node_id)
    if any(s.id == node_id for s in specs):
        raise Conflict(f"a node {node_id!r} is registered already", field="id")
    same = next((s for s in specs if s.url.rstrip("/").lower() == url.lower()), None)
    if same is not None:
        raise Conflict(f"{url} is registered already, as {same.id}", field="url")
    chain_id = int(pool.registry.pool().get("chain_id") or settings.chain_id)
    try:
        leader = pool.registry.leader()
        wrong = chain_mismatch(url, [s.url for s in specs], chain_id=chain_id, timeout=settings.probe_timeout * 3,
                               leader=leader.url if leader else None)
    except NodeError as exc:
        raise ValidationError("url", f"{url} is not a working Ethereum JSON-RPC endpoint ({exc})") from None
    if wrong is not None:
        raise ValidationError("url", wrong)
    spec = NodeSpec(id=node_id, url=url, backend=STATIC, role=ROLE_STANDALONE, started_at=time.time())
    if not pool.registry.register_new(spec):
        raise Conflict(f"a node {node_id!r} is registered already", field="id")
    pool.registry.remember_added(spec)
    record_event(pool.redis, "node-added", node_id, url=url, chain_id=chain_id)
    return spec


def remove_static_node(pool: Pool, node_id: str, *, now: float | None = None) -> NodeSpec:
    """Unregister a static node; refuses managed nodes, the devnet's leader, a node drained now and the last serving one."""
    now = time.time() if now is None else now
    spec = pool.registry.get(node_id)
    if spec is None:
        raise NotFound(f"no node {node_id!r} in the pool", field="node_id")
    if spec.backend != STATIC:
        raise Conflict(f"{node_id} is a {spec.backend} node owned by the node manager: only static nodes are removed"
                       " (recycle it, or change ESP_NODE_COUNT)", field="node_id")
    if pool.registry.pool().get("leader") == node_id:
        raise Conflict(f"{node_id} leads the devnet: it cannot be removed", field="node_id")
    current = current_recycle(pool.redis)
    if current is not None and current["node"] == node_id:
        raise Conflict(f"{node_id} is {current['phase']} by the recycler: undrain it first", field="node_id")
    others = [s.id for s in pool.nodes() if s.id != node_id]
    fresh = load_fresh_snapshot(pool.redis, now=now, stale_after=pool.settings.stale_after)
    if fresh is not None:
        serving = [n.id for n in fresh[1].serving() if n.id != node_id and n.id in others]
        if not serving:
            raise Conflict(f"{node_id} is the last serving node: add or heal another first", field="node_id")
    elif not others:
        raise Conflict(f"{node_id} is the pool's last node", field="node_id")
    pool.registry.remove(node_id)
    pool.registry.forget_added(node_id)
    clear_status_override(pool.redis, node_id)
    Traffic(pool.redis).forget(node_id)
    record_event(pool.redis, "node-removed", node_id, url=spec.url)
    return spec
