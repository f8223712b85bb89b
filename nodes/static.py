"""The ``static`` backend: nodes given by URL (an existing geth, a provider), not owned by ESP."""

from __future__ import annotations

from errors import NodeError
from nodepool.rpc import RpcClient
from nodepool.spec import ROLE_STANDALONE, NodeSpec
from nodes.base import ResourceStats


class StaticBackend:
    """Nodes ESP only talks to: their resource state is unknown, they cannot be restarted."""

    name = "static"
    manages = False

    def __init__(self, urls: tuple[str, ...], *, timeout: float = 2.0) -> None:
        self.urls = urls
        self.timeout = timeout

    def specs(self) -> list[NodeSpec]:
        """One record per configured URL, ids node-0, node-1, ..."""
        return [NodeSpec(id=f"node-{i}", url=url, backend=self.name, role=ROLE_STANDALONE) for i, url in enumerate(self.urls)]

    def start(self, node_id: str, *, role: str, port: int | None = None) -> NodeSpec:
        raise NodeError(f"{node_id}: static nodes are not started by ESP", node_id=node_id)

    def stop(self, spec: NodeSpec) -> None:
        raise NodeError(f"{spec.id}: static nodes are not stopped by ESP", node_id=spec.id)

    def restart(self, spec: NodeSpec) -> NodeSpec:
        raise NodeError(f"{spec.id}: static nodes cannot be restarted by ESP", node_id=spec.id)

    def stats(self, spec: NodeSpec) -> ResourceStats:
        # No process or container to measure: liveness comes from the RPC probe,
        # and the balancer leans on latency, errors and lag for such nodes.
        client = RpcClient(spec.url, timeout=self.timeout, node_id=spec.id)
        try:
            client.call("eth_chainId")
            return ResourceStats(alive=True)
        except NodeError:
            return ResourceStats(alive=False)
        finally:
            client.close()

    def close(self) -> None:
        pass
