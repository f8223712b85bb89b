"""Reading the platform's contracts: where they are (Redis) and what their views say (the chain).

Every read goes through the pool's failover client, so it is placed by the balancer
and sent to another node when one does not answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from contracts.abi import artifact_abi, decode_output, encode_call, find_function, platform_decoder
from errors import EspError, NodeError, NotFound
from nodepool.failover import ReadClient
from services.platform import platform_record


class PlatformNotDeployed(EspError):
    """Raised when an operation needs the platform contracts and none are recorded yet (HTTP 503)."""

    status = 503
    field = "platform"


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


class PlatformViews:
    """The platform's addresses and its contracts' views, read through ``reader``."""

    def __init__(self, reader: ReadClient, client: redis.Redis) -> None:
        self.reader = reader
        self.redis = client

    def platform_addresses(self) -> dict[str, Any] | None:
        """{"PlatformToken": address, "ProjectMarket": address, "chain_id", "deploy_block", ...} once deployed, else None."""
        return platform_record(self.redis)


    def require_platform(self) -> dict[str, Any]:
        """The platform record; PlatformNotDeployed when there is none."""
        record = self.platform_addresses()
        if not record or "PlatformToken" not in record or "ProjectMarket" not in record:
            raise PlatformNotDeployed(
                "the platform contracts are not deployed yet: they are deployed on start "
                "(ESP_DEPLOY_PLATFORM) or by an admin with POST /api/v1/contracts {\"name\": \"platform\"}"
            )
        return record


    def call_view(self, address: str, artifact: str, function: str, args: list[Any] | None = None) -> tuple[list[Any], str]:
        """Call a view function through the reader; return its decoded outputs and the node that answered.

        A view with outputs that answers nothing (``0x``) ran on a node with no code at ``address``: one
        still behind the block that deployed it. The read goes to another node; when none has the code,
        NoHealthyNode (503), never an empty answer decoded as if it were one.
        """
        abi = artifact_abi(artifact)
        call = [{"to": address, "data": encode_call(abi, function, args or [])}, "latest"]
        behind: list[str] = []
        has_outputs = bool(find_function(abi, function).get("outputs"))
        result, node = self.reader.call_with_node("eth_call", call)
        while has_outputs and result in ("0x", ""):
            behind.append(node)
            result, node = self.reader.call_with_node("eth_call", call, exclude=behind)
        return decode_output(abi, function, result), node


    def token_balance(self, account: str) -> tuple[int, str]:
        """``account``'s token balance and the node that answered."""
        record = self.require_platform()
        values, node = self.call_view(record["PlatformToken"], "PlatformToken", "balanceOf", [account])
        return int(values[0]), node


    def token_balance_or_none(self, account: str) -> str | None:
        """The account's platform-token balance as a decimal string, or None before the token exists."""
        record = self.platform_addresses()
        if not record or "PlatformToken" not in record:
            return None
        try:
            values, _ = self.call_view(record["PlatformToken"], "PlatformToken", "balanceOf", [account])
        except (NodeError, EspError):
            return None
        return str(values[0])


    def token_summary(self) -> dict[str, Any]:
        """The token's address, name, symbol, decimals and total supply."""
        record = self.require_platform()
        token = record["PlatformToken"]
        supply, node = self.call_view(token, "PlatformToken", "totalSupply")
        return {
            "token": token,
            "name": record.get("token_name") or self.call_view(token, "PlatformToken", "name")[0][0],
            "symbol": record.get("token_symbol") or self.call_view(token, "PlatformToken", "symbol")[0][0],
            "decimals": record["decimals"] if record.get("decimals") is not None else self.call_view(token, "PlatformToken", "decimals")[0][0],
            "total_supply": str(supply[0]),
            "node": node,
        }


    def project_count(self) -> int:
        """How many projects the market holds (ids are 1..count)."""
        record = self.require_platform()
        values, _ = self.call_view(record["ProjectMarket"], "ProjectMarket", "projectCount")
        return int(values[0])


    def get_project(self, project_id: int, *, field: str = "id") -> Project:
        """Project ``project_id``'s summary; NotFound (naming ``field``) when it does not exist."""
        record = self.require_platform()
        if project_id < 1 or project_id > self.project_count():
            raise NotFound(f"no project {project_id} (unknown project)", field=field)
        values, _ = self.call_view(record["ProjectMarket"], "ProjectMarket", "getProject", [project_id])
        publisher, name, file_hash, price, published_at, buyers = values
        return Project(id=project_id, publisher=publisher, name=name, file_hash=file_hash, price=int(price),
                       published_at=int(published_at), buyers=int(buyers))


    def has_bought(self, project_id: int, account: str) -> bool:
        """Whether ``account`` bought project ``project_id``."""
        record = self.require_platform()
        values, _ = self.call_view(record["ProjectMarket"], "ProjectMarket", "hasBought", [project_id, account])
        return bool(values[0])


    def market_settings(self) -> dict[str, Any]:
        """The market's publish reward and fee, as the chain has them now."""
        market = self.require_platform()["ProjectMarket"]
        reward, _ = self.call_view(market, "ProjectMarket", "publishReward")
        fee, _ = self.call_view(market, "ProjectMarket", "feeBps")
        return {"market": market, "publish_reward": str(reward[0]), "fee_bps": int(fee[0])}


    def find_project(self, name: str | None, file_hash: str | None, *, field: str = "projectHash") -> Project:
        """The first project (lowest id) with this name and/or file hash, from the ProjectPublished logs."""
        record = self.require_platform()
        decoder = platform_decoder()
        query = {"fromBlock": hex(int(record.get("deploy_block") or 0)), "toBlock": "latest", "address": record["ProjectMarket"],
                 "topics": [decoder.topic("ProjectPublished")]}
        for log in decoder.decode_all(self.reader.call("eth_getLogs", [query]) or []):
            if (name is None or log.args["name"] == name) and (file_hash is None or log.args["fileHash"].lower() == file_hash.lower()):
                return self.get_project(int(log.args["id"]), field=field)
        wanted = " and ".join(f"{k} {v!r}" for k, v in (("name", name), ("file hash", file_hash)) if v is not None)
        raise NotFound(f"no project with {wanted} (unknown project)", field=field)
