"""The limit settings: parsed and checked at start, with one line naming the variable."""

from __future__ import annotations

import pytest

from errors import ConfigError
from settings import Settings


@pytest.mark.parametrize("name", ["ESP_RATE_LIMIT", "ESP_RATE_LIMIT_ANONYMOUS", "ESP_UNLOCK_RATE_LIMIT", "ESP_UNLOCK_FAILURE_LIMIT"])
def test_a_limit_that_does_not_parse_names_its_variable(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: "lots per minute"})


def test_limits_take_the_limits_notation() -> None:
    settings = Settings.from_env({"ESP_RATE_LIMIT": "100/second; 5000/hour", "ESP_UNLOCK_FAILURE_LIMIT": "3 per 10 minutes"})
    assert settings.rate_limit == "100/second; 5000/hour"


@pytest.mark.parametrize(("env", "needle"), [
    ({"ESP_KDF_CONCURRENCY": "0"}, "ESP_KDF_CONCURRENCY"),
    ({"ESP_KDF_QUEUE": "-1"}, "ESP_KDF_QUEUE"),
    ({"ESP_API_WORKERS": "4", "ESP_KDF_CONCURRENCY": "2", "ESP_KDF_QUEUE": "2"}, "every API thread"),
    ({"ESP_MAX_BODY_KB": "0"}, "ESP_MAX_BODY_KB"),
])
def test_kdf_and_body_bounds_must_leave_room(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)


def test_the_defaults_leave_most_api_threads_free_of_kdf_work() -> None:
    settings = Settings.from_env({})
    assert settings.kdf_concurrency + settings.kdf_queue <= settings.api_workers // 2
