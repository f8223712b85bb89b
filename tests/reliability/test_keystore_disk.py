"""The keystore folder full, then read-only: account creation fails cleanly, and works again once it is fixed.

The folder is a small tmpfs mounted for the test (root is needed to mount one; the test fails, never
skips, without it). Full: a filler file takes every byte; read-only: the mount is remounted ``ro``.
Each refused creation must be an RFC 9457 problem naming ``keystore`` (507 when full, 503 when
read-only), with no key file, temporary file, task record or queued message left behind; once the
folder is fixed the same API process creates accounts again.
"""

from __future__ import annotations

import errno
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from access.keys import ApiKeyStore
from app import create_app
from tasks.routing import WRITE_QUEUES
from tests.conftest import DB_APP, fresh_redis, make_settings, redis_url
from tests.reliability.report import FaultRecord, Report

PASSWORD = "a keystore on a small disk"
ATTEMPTS = 5


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"mount {' '.join(args)}: {done.stderr.strip()} (the test needs root and CAP_SYS_ADMIN)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "keystore"
    folder.mkdir(mode=0o700)
    mount("-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def api(tmp_path: Path, small_disk: Path) -> Iterator[tuple[FlaskClient, redis.Redis]]:
    redis_client = fresh_redis(DB_APP)
    settings = make_settings(tmp_path, ESP_REDIS_URL=redis_url(DB_APP), ESP_KEYSTORE_DIR=str(small_disk),
                             ESP_KEYSTORE_SCRYPT_N="4096", ESP_FILES_DIR=str(tmp_path / "files"))
    app = create_app(settings)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + ApiKeyStore(redis_client).create("disk", "user")[1]
    try:
        yield client, redis_client
    finally:
        app.extensions["esp.pool"].close()
        redis_client.close()


def fill(folder: Path) -> Path:
    """Write a filler file until the disk says it is full."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def held(redis_client: redis.Redis) -> tuple[list[int], int]:
    return [int(redis_client.llen(q)) for q in WRITE_QUEUES], len(redis_client.keys("esp:task:*"))


def refused_cleanly(client: FlaskClient, redis_client: redis.Redis, folder: Path, status: int) -> list[str]:
    """Try ATTEMPTS creations; what went wrong with each (empty: each was the clean refusal)."""
    before_files, before_held = sorted(p.name for p in folder.iterdir()), held(redis_client)
    wrong = []
    for _ in range(ATTEMPTS):
        response = client.post("/api/v1/accounts", json={"password": PASSWORD})
        body = response.get_json()
        if response.status_code != status or response.content_type != "application/problem+json" \
                or body.get("field") != "keystore" or "no account was created" not in body.get("detail", ""):
            wrong.append(f"{response.status_code} {body}")
    if sorted(p.name for p in folder.iterdir()) != before_files:
        wrong.append(f"files left: {sorted(p.name for p in folder.iterdir())} (before: {before_files})")
    if held(redis_client) != before_held:
        wrong.append(f"queued or recorded: {held(redis_client)} (before: {before_held})")
    return wrong


def test_a_full_or_read_only_keystore_refuses_creation_cleanly_and_recovers(api, small_disk: Path, report: Report) -> None:
    client, redis_client = api
    first = client.post("/api/v1/accounts", json={"password": PASSWORD})
    assert first.status_code == 202, first.get_json()

    filler = fill(small_disk)
    when_full = refused_cleanly(client, redis_client, small_disk, 507)
    filler.unlink()
    t0 = time.monotonic()
    after_full = client.post("/api/v1/accounts", json={"password": PASSWORD})
    full_recovered = time.monotonic() - t0

    mount("-o", "remount,ro", str(small_disk))
    try:
        when_read_only = refused_cleanly(client, redis_client, small_disk, 503)
    finally:
        mount("-o", "remount,rw", str(small_disk))
    after_read_only = client.post("/api/v1/accounts", json={"password": PASSWORD})

    keys = sorted(p.name for p in small_disk.iterdir())
    record = report.add(FaultRecord(
        fault="keystore folder full (tmpfs filled), then read-only (remounted ro)",
        load=f"{ATTEMPTS} account creations during each",
        requests=2 * ATTEMPTS, client_errors=2 * ATTEMPTS, errors_allowed="each a 507/503 problem naming keystore",
        recover_s=full_recovered,
        notes=[f"refusals not clean: {when_full + when_read_only or 'none'}; key files after: {len(keys)}"
               " (one per accepted creation, none half-written); the same API process creates accounts once the disk is fixed"],
    ))
    assert when_full == [], when_full
    assert when_read_only == [], when_read_only
    assert after_full.status_code == 202 and after_read_only.status_code == 202
    assert len(keys) == 3 and all(k.startswith("UTC--") for k in keys), keys
    record.passed = True
