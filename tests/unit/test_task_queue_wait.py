"""How long a task waited in its queue, from the header its publisher stamped and Celery's ETA."""

from __future__ import annotations

from datetime import UTC, datetime

from tasks.metrics import SENT_AT_HEADER, _stamp_sent, queue_wait


def test_the_wait_runs_from_the_sending() -> None:
    assert queue_wait(100.0, None, 102.5) == 2.5
    assert queue_wait("100.25", None, 101.0) == 0.75  # as a header may come back from JSON


def test_a_countdown_waits_from_its_eta_not_from_its_sending() -> None:
    eta = datetime.fromtimestamp(130.0, tz=UTC).isoformat()
    assert queue_wait(100.0, eta, 131.0) == 1.0
    assert queue_wait(140.0, eta, 141.0) == 1.0  # an ETA already past when sent: from the sending


def test_no_stamp_is_no_figure_and_a_clock_behind_is_no_negative_wait() -> None:
    assert queue_wait(None, None, 10.0) is None
    assert queue_wait("soon", None, 10.0) is None
    assert queue_wait(12.0, None, 10.0) == 0.0  # the publisher's clock ahead of the worker's
    assert queue_wait(5.0, "not a date", 10.0) == 5.0


def test_every_publish_is_stamped_again() -> None:
    headers = {SENT_AT_HEADER: 1.0}
    _stamp_sent(headers=headers)
    assert headers[SENT_AT_HEADER] > 1.0
    _stamp_sent(headers=None)  # a publish without headers is left alone
