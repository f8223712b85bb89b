"""A batch of transfers counts against the caller's rate limit once per transfer (the app over a real Redis; no worker)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from eth_account import Account
from flask import Flask

from app import create_app
from settings import Settings
from tests.conftest import DB_APP, fresh_redis, redis_url

ADMIN_KEY = "batch-limits-admin-key-0123456789"
DEAD = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture
def limited(settings_factory: Callable[..., Settings]) -> Iterator[Flask]:
    fresh_redis(DB_APP).close()
    app = create_app(settings_factory(ESP_REDIS_URL=redis_url(DB_APP), ESP_ADMIN_KEY=ADMIN_KEY, ESP_RATE_LIMIT="10 per minute",
                                      ESP_FILES_DIR="files"))
    yield app
    app.extensions["esp.pool"].close()


def test_each_transfer_of_a_batch_counts_against_the_rate_limit(limited: Flask) -> None:
    client = limited.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_KEY}"
    treasury = Account.from_key(limited.extensions["esp.pool"].settings.treasury_key).address

    def batch(n: int):  # type: ignore[no-untyped-def]
        return client.post("/api/v1/transactions/batch", json={"transactions": [{"from": treasury, "to": DEAD, "value_wei": 1}] * n})

    first = batch(8)
    assert first.status_code == 202 and first.get_json()["count"] == 8, first.get_json()
    refused = batch(5)  # 8 + 5 > 10
    assert refused.status_code == 429 and refused.mimetype == "application/problem+json"
    assert client.get("/api/v1/tasks/" + first.get_json()["tasks"][0]["id"]).status_code == 200  # 9 of 10
    assert batch(1).status_code == 202  # 10 of 10
    assert client.get("/api/v1/accounts").status_code == 429
