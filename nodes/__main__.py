"""``python -m nodes``: run ESP's node pool (see nodes/manager.py).

The process's entry point (an edge like ``app`` and ``tasks.worker``): it reads the
environment once, and wires the node manager to the service that forgets an old
chain's state when a fresh devnet starts.
"""

from __future__ import annotations

import logging
import sys

from errors import ConfigError, NodeError
from nodes.manager import main
from services.chainstate import reset_chain_state
from settings import Settings


def run() -> int:
    try:
        settings = Settings.from_env()
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return main(settings, on_fresh_chain=reset_chain_state)
    except (ConfigError, NodeError) as exc:
        print(f"nodes: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
