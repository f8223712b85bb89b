"""ESP's domain services: plain Python that returns records and raises domain errors (``errors``).

No web and no queue here: the edges (``app/`` for HTTP, ``tasks/`` for Celery) parse,
call a service, and render. Services use the pool (``nodepool``), the wallet, access
rules (``access``) and, for the node manager's work, the backends.

- writes: ``submit`` (task record + Idempotency-Key + hand-over), ``records`` (task records),
  ``idempotency``, ``operations`` (what an operation is), ``plans`` (every operation's transactions),
  ``sending`` (sign and broadcast), ``watch`` and ``receipts`` (settling what was broadcast);
- the business: ``accounts``, ``market`` (token, deploys, projects), ``files``, ``views`` (contract reads),
  ``platform`` (the deployed platform and deploying it), ``fields`` (field checks naming the field);
- the pool's upkeep: ``monitor`` (sampling into the snapshot), ``recycler``, ``mining``;
- ``exporters``: where the Celery processes' Prometheus metrics are (a TTL registry in Redis).
"""
