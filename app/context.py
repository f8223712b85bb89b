"""Accessors for what create_app() put on the app."""

from __future__ import annotations

from functools import cache

from celery import Celery
from eth_account import Account
from flask import current_app

from access.keys import ApiKeyStore
from access.owners import Owners
from nodepool.failover import ReadClient
from nodepool.placement import Placement
from nodepool.pool import Pool
from settings import Settings
from tasks.status import TaskStore
from wallet.kdf import KdfGate
from wallet.keystore import Keystore
from wallet.unlock import UnlockStore


def pool() -> Pool:
    """The app's Pool (Redis, registry, RPC clients)."""
    return current_app.extensions["esp.pool"]


def settings() -> Settings:
    """The app's Settings."""
    return current_app.config["ESP_SETTINGS"]


def celery() -> Celery:
    """The Celery app the API publishes write tasks with (configured from the same Settings)."""
    return current_app.extensions["esp.celery"]


def task_store() -> TaskStore:
    """Task records in Redis."""
    return TaskStore(pool().redis, ttl=settings().result_expires)


def keystore() -> Keystore:
    """ESP's keystore folder."""
    s = settings()
    return Keystore(s.keystore_dir, work_factor=s.keystore_scrypt_n, gate=kdf_gate())


def kdf_gate() -> KdfGate:
    """This process's bound on password KDFs (creation, unlock)."""
    return current_app.extensions["esp.kdf_gate"]


def unlock_store() -> UnlockStore:
    """Unlocked keys, sealed under the server secret in Redis."""
    return UnlockStore(pool().redis, settings().secret_key)


def placement() -> Placement:
    """The balancer's placement for this process."""
    return current_app.extensions["esp.placement"]


def reader() -> ReadClient:
    """Reads through the balancer, failing over to another node when one does not answer."""
    return current_app.extensions["esp.reader"]


def key_store() -> ApiKeyStore:
    """API keys (and ESP_ADMIN_KEY as the bootstrap admin key)."""
    return ApiKeyStore(pool().redis, settings_admin_key=settings().admin_key)


def owners() -> Owners:
    """Which key owns each account; which publishers uploaded each file."""
    return Owners(pool().redis)


def treasury_address() -> str:
    """The treasury's address (derived once per key: this runs on every transfer request)."""
    return _address_of(settings().treasury_key)


@cache
def _address_of(private_key: str) -> str:
    return str(Account.from_key(private_key).address)
