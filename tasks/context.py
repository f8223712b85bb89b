"""What a worker process shares between its tasks, built once per process (after fork) on first use."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

from nodepool.placement import Placement
from nodepool.pool import Pool
from services.batch import BatchSender
from services.monitor import ResourceSampler
from services.operations import Planning
from services.outbox import Outbox
from services.plans import OPERATIONS
from services.records import TaskStore
from services.sending import Sender
from settings import Settings


@dataclass
class Worker:
    """The long-lived objects of one worker (or beat) process: its pool, placement, task records, sender."""

    settings: Settings

    @cached_property
    def pool(self) -> Pool:
        return Pool(self.settings)

    @cached_property
    def placement(self) -> Placement:
        return Placement(self.pool)

    @cached_property
    def store(self) -> TaskStore:
        return TaskStore(self.pool.redis, ttl=self.settings.result_expires)

    @cached_property
    def sender(self) -> Sender:
        return Sender(self.pool, self.placement, self.store)

    @cached_property
    def batcher(self) -> BatchSender:
        """Drains senders' outboxes (batched writes) with this process's sender."""
        return BatchSender(self.sender, Outbox(self.pool.redis), self.planning, OPERATIONS)

    @cached_property
    def planning(self) -> Planning:
        return Planning(treasury=str(self.sender.treasury.address), redis=self.pool.redis)

    @cached_property
    def sampler(self) -> ResourceSampler:
        """The control worker's resource sampler (its backends prime psutil across samples)."""
        return ResourceSampler(self.settings)


@cache
def worker(settings: Settings) -> Worker:
    """This process's Worker for ``settings`` (the Celery app's)."""
    return Worker(settings)
