"""Waiting in tests: a bounded poll on a condition, never a fixed sleep standing for "until it happened"."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds between two looks at the condition (the first look is immediate).
POLL_INTERVAL = 0.05


def wait_for(condition: Callable[[], T | None], timeout: float, what: str | Callable[[], str], *,
             interval: float = POLL_INTERVAL) -> T:
    """Return ``condition()``'s first truthy value, polling until ``timeout`` seconds have passed.

    Fails with an AssertionError naming ``what`` (a callable is called only then, e.g. to show
    the tail of a log as it is at that moment). The condition may assert on its own to fail
    early, say when the process it waits for has died.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            shown = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {shown}")
        time.sleep(min(interval, left))
