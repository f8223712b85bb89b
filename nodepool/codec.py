"""Redis replies as text: ESP's Redis clients return bytes (Celery's and scripts' may decode)."""

from __future__ import annotations


def as_text(value: object) -> str:
    """``value`` decoded as UTF-8 when it is bytes, else ``str(value)``."""
    return value.decode() if isinstance(value, bytes) else str(value)
