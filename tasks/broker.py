"""ESP's broker transport: kombu's Redis transport, made to survive Redis going away under load.

With kombu 5.7.0 and Celery 5.7.0, a worker that loses Redis while it holds unacknowledged messages
exits with "Unrecoverable error: AttributeError('NoneType' object has no attribute 'hostname')"
(``tests/reliability/test_redis_outage.py`` found it; the process runner then stopped the whole stack).
The consumer first *collects* the lost connection: that closes its channel, cut short by the dead
socket of the BRPOP in flight, and detaches the transport's client. It then *closes* the same
connection, which closes the channel a second time; this time the channel tries to put its unacked
messages back on their queues through the detached transport, and kombu's ``_connparams`` reads
``conninfo.hostname`` of ``None``. An AttributeError is not a connection error, so Celery's
reconnect loop does not catch it.

The fix is the smallest that keeps kombu's own behaviour: a channel whose transport is already
detached does not try the restore (``do_restore``, kombu's own switch for it). Nothing can reach
Redis through a detached transport anyway: those messages stay in the transport's unacked hash in
Redis, and come back when their tasks' acks remove them or, for a task whose ack was lost with the
connection, when kombu's ``restore_visible`` re-delivers them after ``visibility_timeout``
(``tasks.config``), as it does for a worker killed outright. ESP's writes are idempotent on
re-delivery (a task record, kept signed bytes), and a batched write's outbox is drained by the
sweep within seconds whatever becomes of its message.

A second path to the same crash (found by the fault suite's next run): a task a pool process finished
while the consumer was reconnecting is acknowledged on the channel that was closed meanwhile, and the
ack tries to reach Redis through that channel's detached transport ("'NoneType' object has no
attribute 'client'"). Nothing can be acknowledged there: the channel's close restored its unacked
messages (or, when it could not, ``restore_visible`` will), so the message runs again, which ESP's
writes are made for. The QoS of a closed channel therefore drops acks and rejects, with a log line.

Selected by ``broker_transport`` in ``tasks.config``; the URL stays ``redis://``.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS; an ack or reject arriving after its channel was closed is dropped, not a crash."""

    def ack(self, delivery_tag: Any) -> None:
        if self._closed():
            log.warning("ack of message %s after its channel closed (Redis went away): it will be delivered again", delivery_tag)
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._closed():
            log.warning("reject of message %s after its channel closed (Redis went away): it will be delivered again", delivery_tag)
            return
        super().reject(delivery_tag, requeue=requeue)

    def _closed(self) -> bool:
        return bool(self.channel.closed or self.channel.connection is None)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel; closing it after its transport was detached skips the restore it cannot do."""

    QoS = QoS

    def close(self) -> None:
        transport = self.connection
        if transport is not None and getattr(transport, "client", None) is None:
            self.do_restore = False
        super().close()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with ESP's channel."""

    Channel = Channel
