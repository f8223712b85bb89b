"""The platform contracts as the API reads them: their addresses (kept in Redis) and their views.

Every read goes through ``reader()``, so it is placed by the balancer and fails
over to another node when one does not answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.context import pool, reader
from contracts.abi import artifact_abi, decode_output, encode_call
from errors import EspError, NodeError, NotFound
from tasks.business import PLATFORM_KEY, platform_record

__all__ = ["PLATFORM_KEY", "PlatformNotDeployed", "platform_addresses", "require_platform", "token_balance_or_none"]


class PlatformNotDeployed(EspError):
    """Raised when an operation needs the platform contracts and none are recorded yet (HTTP 503)."""

    status = 503
    field = "platform"


def platform_addresses() -> dict[str, Any] | None:
    """{"PlatformToken": address, "ProjectMarket": address, "chain_id", "deploy_block", ...} once deployed, else None."""
    return platform_record(pool().redis)


def require_platform() -> dict[str, Any]:
    """The platform record; PlatformNotDeployed when there is none."""
    record = platform_addresses()
    if not record or "PlatformToken" not in record or "ProjectMarket" not in record:
        raise PlatformNotDeployed(
            "the platform contracts are not deployed yet: they are deployed on start "
            "(ESP_DEPLOY_PLATFORM) or by an admin with POST /api/v1/contracts {\"name\": \"platform\"}"
        )
    return record


def call_view(address: str, artifact: str, function: str, args: list[Any] | None = None) -> tuple[list[Any], str]:
    """Call a view function through the reader; return its decoded outputs and the node that answered."""
    abi = artifact_abi(artifact)
    data = encode_call(abi, function, args or [])
    result, node = reader().call_with_node("eth_call", [{"to": address, "data": data}, "latest"])
    return decode_output(abi, function, result), node


# -- the token -----------------------------------------------------------------------------


def token_balance(account: str) -> tuple[int, str]:
    """``account``'s token balance and the node that answered."""
    record = require_platform()
    values, node = call_view(record["PlatformToken"], "PlatformToken", "balanceOf", [account])
    return int(values[0]), node


def token_balance_or_none(account: str) -> str | None:
    """The account's platform-token balance as a decimal string, or None before the token exists."""
    record = platform_addresses()
    if not record or "PlatformToken" not in record:
        return None
    try:
        values, _ = call_view(record["PlatformToken"], "PlatformToken", "balanceOf", [account])
    except (NodeError, EspError):
        return None
    return str(values[0])


def token_summary() -> dict[str, Any]:
    """The token's address, name, symbol, decimals and total supply."""
    record = require_platform()
    token = record["PlatformToken"]
    supply, node = call_view(token, "PlatformToken", "totalSupply")
    return {
        "token": token,
        "name": record.get("token_name") or call_view(token, "PlatformToken", "name")[0][0],
        "symbol": record.get("token_symbol") or call_view(token, "PlatformToken", "symbol")[0][0],
        "decimals": record["decimals"] if record.get("decimals") is not None else call_view(token, "PlatformToken", "decimals")[0][0],
        "total_supply": str(supply[0]),
        "node": node,
    }


# -- the market ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    """A project's public summary as the market stores it."""

    id: int
    publisher: str
    name: str
    file_hash: str
    price: int
    published_at: int
    buyers: int

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "publisher": self.publisher, "name": self.name, "file_hash": self.file_hash,
            "price": str(self.price), "published_at": self.published_at, "buyers": self.buyers,
            "file_url": f"/api/v1/projects/{self.id}/file",
        }


def project_count() -> int:
    """How many projects the market holds (ids are 1..count)."""
    record = require_platform()
    values, _ = call_view(record["ProjectMarket"], "ProjectMarket", "projectCount")
    return int(values[0])


def get_project(project_id: int, *, field: str = "id") -> Project:
    """Project ``project_id``'s summary; NotFound (naming ``field``) when it does not exist."""
    record = require_platform()
    if project_id < 1 or project_id > project_count():
        raise NotFound(f"no project {project_id} (unknown project)", field=field)
    values, _ = call_view(record["ProjectMarket"], "ProjectMarket", "getProject", [project_id])
    publisher, name, file_hash, price, published_at, buyers = values
    return Project(id=project_id, publisher=publisher, name=name, file_hash=file_hash, price=int(price),
                   published_at=int(published_at), buyers=int(buyers))


def has_bought(project_id: int, account: str) -> bool:
    """Whether ``account`` bought project ``project_id``."""
    record = require_platform()
    values, _ = call_view(record["ProjectMarket"], "ProjectMarket", "hasBought", [project_id, account])
    return bool(values[0])


def market_settings() -> dict[str, Any]:
    """The market's publish reward and fee, as the chain has them now."""
    market = require_platform()["ProjectMarket"]
    reward, _ = call_view(market, "ProjectMarket", "publishReward")
    fee, _ = call_view(market, "ProjectMarket", "feeBps")
    return {"market": market, "publish_reward": str(reward[0]), "fee_bps": int(fee[0])}


def find_project(name: str | None, file_hash: str | None, *, field: str = "projectHash") -> Project:
    """The first project (lowest id) with this name and/or file hash, from the ProjectPublished logs."""
    from contracts.abi import platform_decoder

    record = require_platform()
    decoder = platform_decoder()
    query = {"fromBlock": hex(int(record.get("deploy_block") or 0)), "toBlock": "latest", "address": record["ProjectMarket"],
             "topics": [decoder.topic("ProjectPublished")]}
    for log in decoder.decode_all(reader().call("eth_getLogs", [query]) or []):
        if (name is None or log.args["name"] == name) and (file_hash is None or log.args["fileHash"].lower() == file_hash.lower()):
            return get_project(int(log.args["id"]), field=field)
    wanted = " and ".join(f"{k} {v!r}" for k, v in (("name", name), ("file hash", file_hash)) if v is not None)
    raise NotFound(f"no project with {wanted} (unknown project)", field=field)
