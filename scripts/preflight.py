"""Checks before the stack starts; each failure is one clear line and exit code 2.

Run as ``python -m scripts.preflight``: settings are valid, Redis answers,
anvil is installed (managed backends) or every static node answers JSON-RPC,
and the API and Flower ports are free.
"""

from __future__ import annotations

import sys

from errors import ConfigError, EspError
from nodepool.spec import NodeSpec
from nodes.anvil import find_anvil
from nodes.manager import check_one_chain, connect_redis
from nodes.process import port_is_free
from settings import Settings


def check() -> list[str]:
    """Run every check; return what the stack will listen on."""
    settings = Settings.from_env()
    connect_redis(settings).close()
    if settings.node_backend == "process":
        find_anvil(settings)
    elif settings.node_backend == "static":
        specs = [NodeSpec(id=f"node-{i}", url=url, backend="static") for i, url in enumerate(settings.node_urls)]
        check_one_chain(specs, settings.chain_id, timeout=settings.probe_timeout * 3)
    for name, host, port in (
        ("ESP_API_PORT", settings.api_host, settings.api_port),
        ("ESP_RPC_PORT", settings.rpc_host, settings.rpc_port),
        ("ESP_FLOWER_PORT", "127.0.0.1", settings.flower_port),
    ):
        if not port_is_free(host, port):
            raise ConfigError(f"port {port} on {host} is in use (another ESP running?): stop it or set {name}")
    if settings.node_port_base:
        for i in range(settings.node_count):
            if not port_is_free(settings.node_host, settings.node_port_base + i):
                raise ConfigError(
                    f"node port {settings.node_port_base + i} is in use (a stale anvil?): stop it or change ESP_NODE_PORT_BASE"
                )
    return [
        f"API      http://{settings.api_host}:{settings.api_port}  (/readyz, /api/v1/nodes)",
        f"JSON-RPC http://{settings.rpc_host}:{settings.rpc_port}/rpc  (any web3 client, with an API key)",
        f"Flower   http://127.0.0.1:{settings.flower_port}",
        f"Redis    {settings.redis_url}",
        f"Nodes    {settings.node_count if settings.managed_nodes else len(settings.node_urls)} x {settings.node_backend}"
        " (their URLs follow from the nodes process)",
    ]


def main() -> int:
    try:
        lines = check()
    except (ConfigError, EspError) as exc:
        print(f"esp: {exc}", file=sys.stderr)
        return 2
    print("ESP is starting:")
    for line in lines:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
