"""How ESP runs anvil: where its binary is and the flags every devnet node gets."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

from errors import ConfigError
from nodepool.spec import ROLE_FOLLOWER, ROLE_LEADER
from settings import ROOT, Settings

#: Recent states each node keeps in memory (rollback depth, recent eth_call blocks).
KEPT_STATES = 32

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def find_anvil(settings: Settings) -> Path:
    """Return the anvil binary: ESP_ANVIL_BIN, the npm one in node_modules/, or PATH."""
    if settings.anvil_bin:
        path = Path(settings.anvil_bin)
        if not path.is_file():
            raise ConfigError(f"ESP_ANVIL_BIN={settings.anvil_bin} does not exist; unset it to use the npm one (`make install`)")
        return path
    system = platform.system().lower()
    arch = _ARCH.get(platform.machine().lower(), platform.machine().lower())
    # The npm package ships the native binary in a per-platform optional dependency;
    # run it directly, not through the node wrapper, so signals reach anvil itself.
    native = ROOT / "node_modules" / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / "anvil"
    if native.is_file():
        return native
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise ConfigError("anvil is missing: run `make install` (npm install puts it in node_modules/) or set ESP_ANVIL_BIN")


def anvil_args(settings: Settings, *, port: int, role: str, host: str | None = None, cache_dir: Path | None = None) -> list[str]:
    """The command-line flags of one devnet node.

    Every node gets the same genesis (timestamp, chain id, gas limit, dev accounts)
    and FIFO ordering, so that a follower re-executing the leader's transactions
    builds identical blocks. Only the leader mines; followers mine on demand
    when they import a block.
    """
    args = [
        "--host", host or settings.node_host,
        "--port", str(port),
        "--chain-id", str(settings.chain_id),
        "--timestamp", str(settings.genesis_timestamp),
        "--gas-limit", str(settings.block_gas_limit),
        "--order", "fifo",
        # Without pruning anvil writes ~73 MB per 1,000 blocks under ~/.foundry and never cleans it.
        # Keeping the last few states in memory (not on disk) lets a follower roll back one
        # imported block (anvil_rollback) when a gossiped transaction slipped into it.
        "--prune-history", str(KEPT_STATES),
        "--silent",
    ]
    if cache_dir is not None:
        args += ["--cache-path", str(cache_dir)]
    if role == ROLE_LEADER:
        if settings.block_time > 0:
            # Interval mining: automine stalled in 7 of 16 bursty runs here.
            args += ["--block-time", _seconds(settings.block_time)]
    elif role == ROLE_FOLLOWER:
        args += ["--no-mining"]
    return args


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
