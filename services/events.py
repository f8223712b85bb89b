"""Platform events, paged: what ``GET /api/v1/events?account=&project=&type=&cursor=&limit=`` answers.

Read with ``eth_getLogs`` (through the reader, so a dead node is replaced) over the
platform's contracts, from the block they were deployed in: ProjectPublished,
ProjectPurchased, ProjectViewed, ProjectDownloaded (market) and Transfer (token).

- ``type``: published, purchased, viewed, downloaded, transfer (or the event
  names), comma-separated; default all;
- ``project``: a project id (market events only, so no transfers);
- ``account``: events naming that address in any role (publisher, buyer,
  viewer, downloader, transfer from or to);
- ``limit``: 1..200 events per page (default 50);
- ``cursor``: the ``next_cursor`` of the previous page. It is opaque (a block and
  log position, bound to the platform deployment it came from) and always given,
  so a client can poll it for new events; ``has_more`` says whether the chain
  already holds more past it. One page scans at most MAX_SCAN_BLOCKS blocks.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from contracts.abi import DecodedLog, platform_decoder
from errors import NodeUnreachable, ValidationError
from nodepool.failover import ReadClient, first_answer
from nodepool.pool import Pool
from services.fields import MAX_BLOCK_NUMBER
from services.views import PlatformViews

#: type name -> (event, contract)
TYPES = {
    "published": ("ProjectPublished", "ProjectMarket"),
    "purchased": ("ProjectPurchased", "ProjectMarket"),
    "viewed": ("ProjectViewed", "ProjectMarket"),
    "downloaded": ("ProjectDownloaded", "ProjectMarket"),
    "transfer": ("Transfer", "PlatformToken"),
}
TYPE_OF_EVENT = {event: name for name, (event, _) in TYPES.items()}
ACCOUNT_ARGS = ("publisher", "buyer", "account", "from", "to")
AMOUNT_ARGS = ("value", "price", "fee")
WINDOW = 5000
MAX_SCAN_BLOCKS = 100_000
MAX_LIMIT = 200
END_OF_BLOCK = 2**31  # a log index past every log of a block
#: encode_cursor writes ~60 characters; anything much longer is not one of ours.
MAX_CURSOR_CHARS = 200
MAX_PROJECT_ID = 2**63


def parse_types(raw: str | None) -> list[str]:
    """The event types asked for (all when none)."""
    if not raw:
        return list(TYPES)
    chosen = []
    for part in raw.split(","):
        name = part.strip()
        name = TYPE_OF_EVENT.get(name, name.lower())
        if name not in TYPES:
            raise ValidationError("type", f"must be one of {', '.join(TYPES)} (comma-separated), not {part.strip()!r}")
        if name not in chosen:
            chosen.append(name)
    return chosen


def encode_cursor(block: int, index: int, deployment: str) -> str:
    """An opaque cursor: the position of the last event read, bound to the platform deployment."""
    raw = json.dumps({"b": block, "i": index, "d": deployment[:18]}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(raw: str, deployment: str) -> tuple[int, int]:
    """The (block, log index) position of a cursor; 400/409 naming ``cursor`` when it is not one of ours.

    Everything in it is checked for what encode_cursor writes: a JSON object of two
    integers in range and a string. A client can send anything base64 carries (a float
    of 1e400, digits of another script, nesting thousands deep), and none of it may
    reach int() or a node unchecked.
    """
    invalid = ValidationError("cursor", "is not a cursor this API returned", status=400)
    if len(raw) > MAX_CURSOR_CHARS or not raw.isascii():
        raise invalid
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, RecursionError, binascii.Error):
        raise invalid from None
    if not isinstance(data, dict) or set(data) != {"b", "i", "d"} or not isinstance(data["d"], str):
        raise invalid
    block, index = data["b"], data["i"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (block, index)):
        raise invalid
    if not (0 <= block <= MAX_BLOCK_NUMBER and -1 <= index <= END_OF_BLOCK):
        raise invalid
    if data["d"] != deployment[:18]:
        raise ValidationError("cursor", "belongs to an earlier platform deployment: start again without a cursor", status=409)
    return block, index


def event_json(log: DecodedLog, contract: str) -> dict[str, Any]:
    """A decoded log as the API shows it (amounts as decimal strings)."""
    args = {k: (str(v) if k in AMOUNT_ARGS else v) for k, v in log.args.items()}
    body: dict[str, Any] = {
        "type": TYPE_OF_EVENT[log.event], "event": log.event, "contract": contract, "address": log.address,
        "block_number": log.block_number, "log_index": log.log_index, "tx_hash": log.tx_hash, "args": args,
    }
    if "id" in log.args:
        body["project"] = log.args["id"]
    return body


def read_logs(reader: ReadClient, pool: Pool, first: int, last: int, addresses: list[str], topics: list[Any]) -> tuple[list[dict[str, Any]], int]:
    """Logs of blocks ``first..`` up to ``last`` or the answering node's head; returns them and the last block read.

    The logs come from the node whose head was just read (through the reader), so a
    follower a block behind cannot make the cursor skip a block it did not have yet.
    """
    def attempt(_: int) -> tuple[list[dict[str, Any]], int]:
        head, node_id = reader.call_with_node("eth_blockNumber", [])
        upto = min(last, int(head, 16))
        if upto < first:
            return [], first - 1
        spec = pool.registry.get(node_id)
        if spec is None:
            raise NodeUnreachable(f"{node_id} left the pool", node_id=node_id)
        query = {"fromBlock": hex(first), "toBlock": hex(upto), "address": addresses, "topics": topics}
        return pool.rpc(spec).call("eth_getLogs", [query]) or [], upto

    return first_answer(range(3), attempt, what="eth_getLogs")[1]


def list_events(views: PlatformViews, pool: Pool, *, types: list[str], account: str | None, project: int | None,
                limit: int, cursor: str | None) -> dict[str, Any]:
    """The platform's events, oldest first, filtered by account, project and type; paged by ``cursor``."""
    if project is not None:
        types = [t for t in types if TYPES[t][1] == "ProjectMarket"]
    record = views.require_platform()
    deployment = str(record.get("deploy_tx") or record["ProjectMarket"])
    after = decode_cursor(cursor, deployment) if cursor else (int(record.get("deploy_block") or 0), -1)
    head = int(views.reader.call("eth_blockNumber", []), 16)
    decoder = platform_decoder()
    contracts = {name: record[name] for name in ("PlatformToken", "ProjectMarket")}
    by_address = {addr.lower(): name for name, addr in contracts.items()}
    addresses = sorted({contracts[TYPES[t][1]] for t in types})
    topics: list[Any] = [[decoder.topic(TYPES[t][0]) for t in types]]
    if project is not None:
        topics.append("0x" + project.to_bytes(32, "big").hex())
    events: list[dict[str, Any]] = []
    position = after
    block = after[0]
    last_block = min(head, after[0] + MAX_SCAN_BLOCKS - 1)
    while types and block <= last_block and len(events) < limit:
        logs, end = read_logs(views.reader, pool, block, min(last_block, block + WINDOW - 1), addresses, topics)
        decoded = [d for d in decoder.decode_all(logs or []) if d.event in TYPE_OF_EVENT]
        decoded.sort(key=lambda d: (d.block_number, d.log_index))
        for log in decoded:
            where = (log.block_number, log.log_index)
            if where <= after:
                continue
            position = where
            if account is not None and account not in [log.args.get(k) for k in ACCOUNT_ARGS]:
                continue
            events.append(event_json(log, by_address.get(log.address.lower(), "")))
            if len(events) == limit:
                break
        if len(events) < limit:
            position = max(position, (end, END_OF_BLOCK))  # the whole window is read
        if end < block or end < min(last_block, block + WINDOW - 1):
            break  # the node's head was reached
        block = end + 1
    if not types:
        position = (max(after[0], head), END_OF_BLOCK)
    has_more = position[0] < head or (len(events) == limit and position[1] != END_OF_BLOCK)
    return {"events": events, "count": len(events), "next_cursor": encode_cursor(position[0], position[1], deployment),
            "has_more": has_more, "head": head, "platform": contracts}
