"""``python -m nodes``: run ESP's node pool (see nodes/manager.py)."""

from __future__ import annotations

import logging
import sys

from errors import ConfigError, NodeError
from nodes.manager import main
from settings import Settings


def run() -> int:
    try:
        settings = Settings.from_env()
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return main(settings)
    except (ConfigError, NodeError) as exc:
        print(f"nodes: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
