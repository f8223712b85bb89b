"""gunicorn's configuration for ESP's API (the Procfile's ``api`` line; gunicorn also reads it by default from here).

Taken from Settings like every other process: the address, the threads, and the
logger that keeps secrets out of the access and error logs (``app.access_log``).
"""

from settings import Settings

_settings = Settings.from_env()

bind = f"{_settings.api_host}:{_settings.api_port}"
worker_class = "gthread"
workers = 2
#: Per process. Password KDFs hold at most ESP_KDF_CONCURRENCY + ESP_KDF_QUEUE of them (wallet.kdf).
threads = _settings.api_workers
graceful_timeout = 5
#: Seconds an idle client connection stays open. gunicorn's 2 s closes connections that HTTP clients keeping them
#: longer (httpx: 5 s) are about to reuse: measured as ReadErrors under load. The benchmark's control uses 10 s too.
keepalive = 10
accesslog = "-"
logger_class = "app.access_log.RedactingLogger"
