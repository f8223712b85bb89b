"""Whether a JSON-RPC endpoint is on the pool's chain: its chain id, its genesis and its history.

A node with the pool's chain id may still be on another chain: an anvil with a genesis of its own,
or one that kept an earlier run's history after the devnet started again from the same genesis.
``chain_mismatch`` compares all three against a node of the pool: the chain id, the genesis block,
and the block at the lower of the two heads (two chains that share a genesis part at some block,
and every later block differs from there on).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from errors import NodeError
from nodepool.rpc import RpcClient, to_int


@dataclass(frozen=True)
class ChainView:
    """What one endpoint says of its chain: its id, its head's number and its genesis block's hash."""

    chain_id: int
    head: int
    genesis: str


def chain_view(url: str, *, timeout: float) -> ChainView:
    """The endpoint's chain id, head and genesis hash in one batch (NodeError when it does not answer them)."""
    client = RpcClient(url, timeout=timeout)
    try:
        chain_id, head, genesis = client.batch([("eth_chainId", []), ("eth_blockNumber", []),
                                                ("eth_getBlockByNumber", ["0x0", False])])
        if not isinstance(genesis, dict) or not isinstance(genesis.get("hash"), str):
            raise NodeError(f"{url} has no genesis block")
        return ChainView(chain_id=to_int(chain_id), head=to_int(head), genesis=genesis["hash"])
    except (ValueError, TypeError) as exc:
        raise NodeError(f"{url} answered eth_chainId/eth_blockNumber with something else ({exc})") from None
    finally:
        client.close()


def block_hash(url: str, number: int, *, timeout: float) -> str:
    """The hash of block ``number`` on the endpoint (NodeError when it has none)."""
    client = RpcClient(url, timeout=timeout)
    try:
        block = client.call("eth_getBlockByNumber", [hex(number), False])
    finally:
        client.close()
    if not isinstance(block, dict) or not isinstance(block.get("hash"), str):
        raise NodeError(f"{url} has no block {number}")
    return block["hash"]


#: Blocks a node may be ahead of a devnet's leader when it is read (the leader mined while both were asked).
AHEAD_SLACK = 2


def chain_mismatch(url: str, pool_urls: Iterable[str], *, chain_id: int, timeout: float,
                   leader: str | None = None) -> str | None:
    """None when ``url`` is on the chain the pool's nodes serve; otherwise one sentence saying why not.

    The reference is the first that answers of ``leader`` (a devnet's leader URL, when the pool has one)
    and ``pool_urls`` in order. A devnet's leader makes its chain, so a node more than AHEAD_SLACK blocks
    ahead of it has another history even where the blocks both have agree (a devnet started again from
    genesis, read while it is still young). When no reference answers, only the chain id is checked.
    NodeError when ``url`` itself does not answer.
    """
    candidate = chain_view(url, timeout=timeout)
    if candidate.chain_id != chain_id:
        return f"{url} serves chain id {candidate.chain_id}, not the pool's {chain_id}"
    references = ([leader] if leader else []) + [u for u in pool_urls if u != leader]
    for reference in references:
        try:
            ours = chain_view(reference, timeout=timeout)
            height = min(candidate.head, ours.head)
            ours_at = block_hash(reference, height, timeout=timeout) if height else ours.genesis
        except NodeError:
            continue
        if reference == leader and candidate.head > ours.head + AHEAD_SLACK:
            return (f"{url} serves chain id {chain_id} but another history: its head {candidate.head} is ahead of"
                    f" the pool leader's {ours.head}")
        if candidate.genesis != ours.genesis:
            return (f"{url} serves chain id {chain_id} but another chain: its genesis block is {candidate.genesis},"
                    f" the pool's {ours.genesis}")
        theirs_at = block_hash(url, height, timeout=timeout) if height else candidate.genesis
        if theirs_at != ours_at:
            return f"{url} serves chain id {chain_id} but another history: its block {height} is {theirs_at}, the pool's {ours_at}"
        return None
    return None
