"""Settings: parsing, defaults, and clear errors for configuration that cannot work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from errors import ConfigError
from scripts.config_table import table
from settings import DEV_SECRET_KEY, ROOT, Settings


def test_defaults_work_on_a_fresh_machine():
    s = Settings.from_env({})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert (s.node_backend, s.node_count, s.api_port, s.flower_port) == ("process", 3, 8000, 5555)
    assert s.is_development and s.managed_nodes


def test_values_are_parsed_by_type(tmp_path: Path):
    s = Settings.from_env({
        "ESP_NODE_COUNT": "8", "ESP_BLOCK_TIME": "0.5", "ESP_RUN_DIR": str(tmp_path),
        "ESP_NODE_BACKEND": "static", "ESP_NODE_URLS": "http://127.0.0.1:8545, http://127.0.0.1:8546",
    })
    assert s.node_count == 8
    assert s.block_time == 0.5
    assert s.run_dir == tmp_path.resolve()
    assert s.node_urls == ("http://127.0.0.1:8545", "http://127.0.0.1:8546")


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"ESP_NODE_COUNT": "three"}, "ESP_NODE_COUNT"),
        ({"ESP_NODE_COUNT": "0"}, "ESP_NODE_COUNT"),
        ({"ESP_NODE_BACKEND": "geth"}, "ESP_NODE_BACKEND"),
        ({"ESP_NODE_BACKEND": "static"}, "ESP_NODE_URLS"),
        ({"ESP_NODE_BACKEND": "static", "ESP_NODE_URLS": "127.0.0.1:8545"}, "ESP_NODE_URLS"),
        ({"ESP_API_PORT": "70000"}, "ESP_API_PORT"),
        ({"ESP_MONITOR_INTERVAL": "0"}, "ESP_MONITOR_INTERVAL"),
        ({"ESP_ENV": "staging"}, "ESP_ENV"),
        ({"ESP_DOCKER_NAME_PREFIX": "my stack/"}, "ESP_DOCKER_NAME_PREFIX"),
        ({"ESP_DOCKER_NAME_PREFIX": "-esp"}, "ESP_DOCKER_NAME_PREFIX"),
    ],
)
def test_bad_values_name_the_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)


def test_production_refuses_development_secrets():
    with pytest.raises(ConfigError, match="ESP_SECRET_KEY"):
        Settings.from_env({"ESP_ENV": "production"})
    with pytest.raises(ConfigError, match="ESP_TREASURY_KEY"):
        Settings.from_env({"ESP_ENV": "production", "ESP_SECRET_KEY": "s3cret-from-vault"})
    ok = Settings.from_env({
        "ESP_ENV": "production", "ESP_SECRET_KEY": "x" * 32, "ESP_ADMIN_KEY": "y" * 32,
        "ESP_TREASURY_KEY": "0x" + "11" * 32,
    })
    assert ok.secret_key != DEV_SECRET_KEY


def test_readme_documents_every_variable():
    readme = (ROOT / "README.md").read_text()
    documented = readme.split("<!-- config-table:start -->\n", 1)[1].split("\n<!-- config-table:end -->", 1)[0]
    assert documented == table(), "README's configuration table is stale: paste `python -m scripts.config_table`"
    assert {name for name, _, _ in Settings.describe()} <= set(re.findall(r"`(ESP_[A-Z_]+)`", readme))
