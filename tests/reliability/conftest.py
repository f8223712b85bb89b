"""The fault suite's session report (``tests/reliability/report.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.report import Report, report_folder


@pytest.fixture(scope="session")
def report() -> Iterator[Report]:
    """The session's fault report: tests ``add`` a record per fault; written when the session ends."""
    session = Report(report_folder())
    try:
        yield session
    finally:
        session.close()
