"""The application factory takes its configuration from the Settings it is given, never from the environment."""

from __future__ import annotations

import pytest

from app import create_app
from errors import ConfigError
from settings import Settings
from tasks.app import make_celery

BAD_ENVIRONMENT = {"ESP_NODE_COUNT": "999", "ESP_BLOCK_TIME": "-1", "ESP_ENV": "staging", "ESP_REDIS_URL": "not a url",
                   "ESP_BALANCER_POLICY": "nope", "ESP_API_PORT": "http"}


@pytest.fixture
def bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BAD_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError):
        Settings.from_env()  # the environment really is bad


def test_create_app_uses_the_settings_it_is_given(bad_environment: None, tmp_path) -> None:
    settings = Settings.from_env({"ESP_RUN_DIR": str(tmp_path), "ESP_REDIS_URL": "redis://127.0.0.1:1/3", "ESP_API_PORT": "8123"})
    app = create_app(settings)
    assert app.config["ESP_SETTINGS"] is settings
    celery = app.extensions["esp.celery"]
    assert celery.conf.broker_url == "redis://127.0.0.1:1/3" and celery.settings is settings


def test_make_celery_configures_queues_routes_and_schedule_from_settings(bad_environment: None) -> None:
    settings = Settings.from_env({"ESP_REDIS_URL": "redis://127.0.0.1:1/4", "ESP_MONITOR_INTERVAL": "2.5"})
    celery = make_celery(settings, current=False)
    assert [q.name for q in celery.conf.task_queues] == ["esp.control", "esp.deploy", "esp.accounts", "esp.calls"]
    assert celery.conf.beat_schedule["monitor-pool"]["schedule"] == 2.5
    assert {"tasks.writes.send_eth", "tasks.control.track_receipts"} <= set(celery.tasks)
