"""Accessors for what create_app() put on the app, and the services a request works with.

The services (``services.*``) are built for the request's caller (``g.caller``, set by
``app.auth``) and its Idempotency-Key; views call them and render what they return.
"""

from __future__ import annotations

from functools import cache

from celery import Celery
from eth_account import Account
from flask import current_app, g, request

from access.keys import ApiKeyStore, Caller
from access.owners import Owners
from access.policy import require_caller
from nodepool.failover import ReadClient
from nodepool.placement import Placement
from nodepool.pool import Pool
from services.accounts import Accounts
from services.files import FileStore
from services.market import Market
from services.records import TaskStore
from services.submit import Submitter
from services.views import PlatformViews
from settings import Settings
from tasks.writes import enqueue_many_on, enqueue_on
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


# -- the services of this request ------------------------------------------------------------------


def caller() -> Caller:
    """The request's caller; Unauthorized (401) when it carries no key."""
    return require_caller(g.get("caller"))


def submitter() -> Submitter:
    """Writes of this request's caller, with its Idempotency-Key, enqueued through the app's Celery tasks."""
    return Submitter(task_store(), pool().redis, enqueue_on(celery(), pool().redis), settings().secret_key, caller(),
                     request.headers.get("Idempotency-Key"), enqueue_many_on(celery(), pool().redis))


def accounts() -> Accounts:
    """ESP's accounts as this request's caller may use them."""
    return Accounts(caller(), keystore(), unlock_store(), owners(), submitter(), treasury_address(), settings().funding_wei)


def views() -> PlatformViews:
    """The platform's addresses and contract views (no key needed: public chain data)."""
    return PlatformViews(reader(), pool().redis)


def files() -> FileStore:
    """The project files' folder."""
    s = settings()
    return FileStore(s.files_dir, max_mb=s.max_file_mb)


def market() -> Market:
    """The platform as this request's caller may use it."""
    return Market(accounts(), views(), files(), settings())
