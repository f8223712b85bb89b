"""What the security fuzzers share: a real stack to fuzz, the admin key, and what a refusal must look like."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import DB_FUZZ
from tests.stack import LocalStack

ADMIN_KEY = "fuzz-admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
#: An address nobody holds a key for: valid as input, refused (or harmless) as a signer.
NOBODY = "0x000000000000000000000000000000000000dEaD"


def start_stack(tmp: Path) -> LocalStack:
    """Real Redis (database DB_FUZZ), 3 anvil nodes, Celery workers and beat, the platform deployed, as on `make up`."""
    # `esp node add` makes the API probe the URL it is given: the fuzzer's URLs may only name 127.0.0.9, where none of
    # this machine's services listen (its Redis binds 127.0.0.1 only), so no generated port reaches a real service.
    # A fuzzer is one caller sending thousands of requests a minute, on purpose: past the default rate limit, every
    # answer would be a 429 and no field would be reached. The limits have tests of their own (test_limits.py).
    stack = LocalStack(tmp, DB_FUZZ, name="fuzz", ESP_ADMIN_KEY=ADMIN_KEY, ESP_DEPLOY_PLATFORM="1", ESP_MAX_FILE_MB="1",
                       ESP_RATE_LIMIT="1000000 per minute", ESP_STATIC_NODE_HOSTS="127.0.0.9")
    try:
        stack.wait_platform(90)
    except BaseException:
        stack.close()
        raise
    return stack


def task_records(stack: LocalStack) -> int:
    """How many task records exist: a refused request must not have created one."""
    return len(stack.redis.keys("esp:task:*"))


def refusal_field(response: Any, *, thesis: bool = False) -> str:
    """The field a 4xx names; fails unless the body is an RFC 9457 problem (in the thesis's BaseResult on its routes)."""
    status = response.status_code
    if thesis:
        assert response.mimetype == "application/json", (status, response.get_data(as_text=True)[:500])
        body = json.loads(response.get_data())
        assert body["status"] == 500 and isinstance(body["message"], str), body
        problem = body["data"]
    else:
        assert response.mimetype == "application/problem+json", (status, response.get_data(as_text=True)[:500])
        problem = json.loads(response.get_data())
    assert problem["status"] == status and problem["title"] and problem["detail"], problem
    field = problem.get("field")
    assert isinstance(field, str) and field, f"a {status} problem must name the field at fault: {problem}"
    return field
