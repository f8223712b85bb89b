"""Why the balancer could not name a node.

    LookupError
     └── NoEligibleNode     no node may take this task now
          └── PoolUnhealthy  the pool's health index LBH < 0: dispatch is paused

The balancer imports nothing of ESP's; the edges map these to ``errors.NoHealthyNode``
(HTTP 503 / a Celery retry). ``except NoEligibleNode`` catches both; catch
``PoolUnhealthy`` first to tell a pause (wait, it passes) from an empty pool.
"""

from __future__ import annotations


class NoEligibleNode(LookupError):
    """Raised when no node may take the task: all are zone III, excluded, or lack the free memory it needs."""

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class PoolUnhealthy(NoEligibleNode):
    """Raised by the state-feedback policies while LBH < 0: dispatch pauses until the pool recovers."""

    def __init__(self, message: str, *, lbh: float, kind: str | None = None) -> None:
        super().__init__(message, kind=kind)
        self.lbh = lbh
