"""ESP's Celery edge: thin tasks over ``services``, the router that places them, the app that runs them.

- ``app``: ``make_celery(settings)``; ``worker``: the processes' entry point (``celery -A tasks.worker …``);
- ``writes``: one task per write operation (a call's drains its sender's outbox), ``drain_sender``;
  ``control``: the beat tasks (monitor, recycler, receipts, outbox sweep, platform);
- ``routing``: the queues and the router; ``config``: Celery's settings; ``context``: a worker process's objects;
- ``metrics``: task run time and outcomes by class (Celery signals); ``exporter``: each process's ``/metrics``
  and its registration; ``metrics_dir``: the prometheus_client folder of a process tree.
"""
