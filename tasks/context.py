"""What a worker process shares between tasks: one Pool, built after fork on first use."""

from __future__ import annotations

from functools import cache

from nodes.pool import Pool
from settings import Settings


@cache
def services() -> Pool:
    """The worker's Pool, built from the environment on first use."""
    return Pool(Settings.from_env())
