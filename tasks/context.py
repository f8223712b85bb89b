"""What a worker process shares between tasks, built once after fork on first use."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

from nodepool.placement import Placement
from nodepool.pool import Pool
from settings import Settings
from tasks.status import TaskStore


@cache
def services() -> Pool:
    """The worker's Pool, built from the environment on first use."""
    return Pool(Settings.from_env())


@dataclass
class Writer:
    """The write path's long-lived objects in one worker process."""

    pool: Pool

    @property
    def settings(self) -> Settings:
        return self.pool.settings

    @cached_property
    def placement(self) -> Placement:
        return Placement(self.pool)

    @cached_property
    def store(self) -> TaskStore:
        return TaskStore(self.pool.redis, ttl=self.settings.result_expires)

    @cached_property
    def sender(self):  # type: ignore[no-untyped-def]  # -> tasks.sending.Sender (imported late: it imports us)
        from tasks.sending import Sender

        return Sender(self.pool, self.placement, self.store)


@cache
def writer() -> Writer:
    """The worker's Writer."""
    return Writer(services())
