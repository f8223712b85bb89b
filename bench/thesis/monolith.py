"""The thesis's control: one Flask + web3.py app calling ONE node directly, synchronously.

No queue, no balancer, no Redis: every request does its work on the request thread and
answers when it is done. Per operation it does the same work as ESP, so that the
comparison measures the architecture and not a cheaper recipe:

- accounts live in encrypted keystores written by ESP's own ``wallet.keystore.Keystore``
  with the same scrypt cost (``ESP_KEYSTORE_SCRYPT_N``), one KDF per create and per unlock,
  bounded per process by ``wallet.kdf.KdfGate`` (``ESP_KDF_CONCURRENCY`` running, like ESP's
  API, but queueing instead of refusing: a monolith makes callers wait, it does not shed);
- an unlocked key is kept sealed (AES-256-GCM under a key derived from ``ESP_SECRET_KEY``)
  for ``seconds``, like ESP's unlock store; here in a file of the run folder instead of
  Redis, so that every gunicorn worker process sees it;
- transactions are signed locally (eth-account, coincurve), fees as ESP suggests them
  (2 x base fee + tip, one batched round trip), 21,000 gas for a transfer, eth_estimateGas
  with ESP's margin for a deploy;
- a per-sender nonce lock: a ``threading.Lock`` per address, plus an flock on a per-address
  file holding the next nonce, because gunicorn may run several worker processes. The
  nonce comes from ``eth_getTransactionCount(pending)`` at first use and is counted locally
  after that (resynced after a failed send);
- a write answers once its receipt is there (web3's ``wait_for_transaction_receipt``
  polls ``eth_getTransactionReceipt``); a new account answers once its funding from the
  treasury is mined, as ESP's account task is confirmed.

Configured by ESP's own ``Settings`` (read from ``ESP_`` variables by ``create_app()``):
``ESP_NODE_URLS`` (the one node; its first URL), ``ESP_RUN_DIR``, ``ESP_KEYSTORE_DIR``,
``ESP_KEYSTORE_SCRYPT_N``, ``ESP_KDF_CONCURRENCY``, ``ESP_FUNDING_WEI``, ``ESP_TREASURY_KEY``,
``ESP_SECRET_KEY``, ``ESP_RPC_TIMEOUT``, ``ESP_TX_DEADLINE``. ``bench.thesis.servers.MonolithServer``
runs it under gunicorn::

    ESP_NODE_BACKEND=static ESP_NODE_URLS=http://127.0.0.1:8545 \\
        .venv/bin/python -m gunicorn -k gthread -w 4 --threads 32 'bench.thesis.monolith:create_app()'
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import requests
from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexAddress, HexStr
from flask import Flask, Response, jsonify, request
from web3 import Web3
from web3.exceptions import TimeExhausted, TransactionNotFound, Web3Exception
from werkzeug.exceptions import HTTPException

from contracts import load_artifact
from contracts.abi import encode_deploy
from errors import Conflict, EspError, NotFound, ValidationError
from services.sending import GAS_MARGIN
from settings import Settings
from wallet.address import checksum
from wallet.errors import AccountLocked
from wallet.kdf import KdfGate
from wallet.keystore import Keystore, check_password
from wallet.signing import DEFAULT_PRIORITY_FEE
from wallet.unlock import check_seconds

log = logging.getLogger(__name__)

TRANSFER_GAS = 21_000
#: The contract the load generator deploys, and its constructor arguments.
DEPLOYABLE = {"PlatformToken": ["Bench", "BEN", 0]}
#: Seconds between two eth_getTransactionReceipt polls while a write waits to be mined.
RECEIPT_POLL = 0.1
#: KDFs allowed to wait for a slot per process: enough that a monolith queues instead of refusing.
KDF_QUEUE = 100_000
_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
_HKDF_SALT = b"esp/bench/monolith/unlock/v1"


class NodeFailed(EspError):
    """Raised when the node refuses or loses a transaction, or does not mine it in time (502/504)."""

    def __init__(self, message: str, *, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


# -- unlocked keys, shared by the worker processes ------------------------------------------


class SealedUnlocks:
    """Unlocked keys sealed under the server secret, one file per address with its expiry."""

    def __init__(self, directory: Path, secret_key: str) -> None:
        self.directory = directory
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        derived = HKDF(secret_key.encode(), 32, _HKDF_SALT, SHA256, context=b"unlocked-account-key")
        assert isinstance(derived, bytes)  # one key asked for, so one key back
        self._key: bytes = derived

    def _path(self, address: str) -> Path:
        return self.directory / address.lower()

    def put(self, address: str, key: bytes, seconds: int, *, now: float) -> None:
        """Let ``address`` sign with ``key`` until ``now + seconds``."""
        nonce = secrets.token_bytes(12)
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce)
        cipher.update(address.lower().encode())
        sealed, tag = cipher.encrypt_and_digest(key)
        body = json.dumps({"until": now + seconds, "blob": base64.b64encode(nonce + sealed + tag).decode()})
        tmp = self.directory / f".{address.lower()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
        os.replace(tmp, self._path(address))

    def signer(self, address: str, *, now: float) -> LocalAccount:
        """The account's signer while it is unlocked; AccountLocked otherwise."""
        try:
            entry = json.loads(self._path(address).read_text())
        except (OSError, ValueError):
            raise AccountLocked(address) from None
        if entry["until"] <= now:
            raise AccountLocked(address)
        raw = base64.b64decode(entry["blob"])
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=raw[:12])
        cipher.update(address.lower().encode())
        try:
            key = cipher.decrypt_and_verify(raw[12:-16], raw[-16:])
        except ValueError:
            raise AccountLocked(address, "must be unlocked again") from None
        account: LocalAccount = Account.from_key(key)
        return account


# -- nonces: a lock per sender, counted locally -----------------------------------------------


class NonceCounter:
    """Per-sender nonces: a thread lock and a file lock per address, the next nonce kept in that file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock_of(self, address: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(address, threading.Lock())

    @contextlib.contextmanager
    def hold(self, address: str, w3: Web3) -> Iterator[NonceSlot]:
        """Hold ``address``'s nonce for one send; the next nonce moves on only when the slot is used."""
        with self._lock_of(address):
            fd = os.open(self.directory / address.lower(), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                text = os.pread(fd, 32, 0).decode().strip()
                nonce = int(text) if text else w3.eth.get_transaction_count(ChecksumAddress(HexAddress(HexStr(checksum(address)))), "pending")
                slot = NonceSlot(nonce)
                try:
                    yield slot
                finally:
                    # A failed send leaves the nonce unknown: read it from the node at the next use.
                    os.ftruncate(fd, 0)
                    if slot.used:
                        os.pwrite(fd, str(nonce + 1).encode(), 0)
            finally:
                os.close(fd)  # releases the flock


@dataclass
class NonceSlot:
    nonce: int
    used: bool = False


# -- the work of each route -----------------------------------------------------------------


class Monolith:
    """The app's state: the node, the keystore, unlocked keys, nonces, the treasury."""

    def __init__(self, settings: Settings) -> None:
        if not settings.node_urls:
            raise ValidationError("ESP_NODE_URLS", "the monolith needs its node's URL")
        self.settings = settings
        self.w3 = Web3(Web3.HTTPProvider(settings.node_urls[0], request_kwargs={"timeout": settings.rpc_timeout},
                                         exception_retry_configuration=None))
        self.gate = KdfGate(settings.kdf_concurrency, KDF_QUEUE)
        self.keystore = Keystore(settings.keystore_dir, work_factor=settings.keystore_scrypt_n, gate=self.gate)
        self.unlocks = SealedUnlocks(settings.run_dir / "monolith" / "unlocked", settings.secret_key)
        self.nonces = NonceCounter(settings.run_dir / "monolith" / "nonces")
        self.treasury: LocalAccount = Account.from_key(settings.treasury_key)
        self._chain_id: int | None = None

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def fees(self) -> dict[str, int]:
        """ESP's suggestion: maxFee = 2 x base fee + tip, from one batched round trip."""
        with self.w3.batch_requests() as batch:
            batch.add(self.w3.eth.get_block("latest"))
            batch.add(self.w3.eth.max_priority_fee)
            block, tip = cast(list[Any], batch.execute())
        priority = int(tip) if tip is not None else DEFAULT_PRIORITY_FEE
        return {"maxFeePerGas": 2 * int(block["baseFeePerGas"]) + priority, "maxPriorityFeePerGas": priority}

    def send(self, sender: LocalAccount, fields: dict[str, Any]) -> dict[str, Any]:
        """Sign ``fields`` with ``sender``'s next nonce, send it, and return its receipt once mined."""
        fields = {"chainId": self.chain_id, **fields, **self.fees()}
        with self.nonces.hold(sender.address, self.w3) as slot:
            signed = sender.sign_transaction({**fields, "nonce": slot.nonce})
            try:
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except (Web3Exception, ValueError) as exc:
                raise NodeFailed(f"the node refused the transaction: {exc}") from None
            slot.used = True
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.settings.tx_deadline,
                                                               poll_latency=RECEIPT_POLL)
        except TimeExhausted:
            raise NodeFailed(f"{tx_hash.to_0x_hex()} not mined within {self.settings.tx_deadline:.0f} s",
                             status=504) from None
        if receipt["status"] != 1:
            raise NodeFailed(f"{tx_hash.to_0x_hex()} reverted in block {receipt['blockNumber']}")
        return dict(receipt)

    def signer(self, address: str) -> LocalAccount:
        """The treasury, or an unlocked account of the keystore."""
        if address == self.treasury.address:
            return self.treasury
        if not self.keystore.has(address):
            raise NotFound(f"no account {address} in the keystore", field="from")
        return self.unlocks.signer(address, now=time.time())

    def create_account(self, password: str) -> str:
        """A new keystore account, funded by the treasury; returns once the funding is mined."""
        address = self.keystore.create(password)
        self.send(self.treasury, {"to": address, "value": self.settings.funding_wei, "gas": TRANSFER_GAS})
        return address

    def unlock(self, address: str, password: str, seconds: int) -> None:
        """Check the password (the KDF) and keep the key, sealed, for ``seconds``."""
        key = self.keystore.decrypt(address, password)
        self.unlocks.put(address, key, seconds, now=time.time())

    def transfer(self, sender: str, to: str, value_wei: int) -> dict[str, Any]:
        """Send ``value_wei`` from ``sender`` to ``to``; the receipt once mined."""
        return self.send(self.signer(sender), {"to": to, "value": value_wei, "gas": TRANSFER_GAS})

    def deploy(self, name: str) -> dict[str, Any]:
        """Deploy contract ``name`` from the treasury; the receipt once mined."""
        artifact = load_artifact(name)
        if name not in DEPLOYABLE:
            raise ValidationError("name", f"the monolith deploys only {', '.join(DEPLOYABLE)}")
        data = encode_deploy(artifact["abi"], artifact["bytecode"], DEPLOYABLE[name])
        estimate = self.w3.eth.estimate_gas({"from": self.treasury.address, "data": HexStr(data)})
        gas = min(int(estimate * GAS_MARGIN), self.settings.block_gas_limit)
        return self.send(self.treasury, {"data": data, "gas": gas, "value": 0})


# -- the HTTP edge --------------------------------------------------------------------------


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    return body


def _tx_hash(value: str) -> str:
    if not _HASH.match(value):
        raise ValidationError("hash", "must be 0x followed by 64 hex digits")
    return value


def _wei(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValidationError("value_wei", "must be a whole number of wei (a decimal string or an integer)")
    try:
        wei = int(value)
    except ValueError:
        raise ValidationError("value_wei", "must be a whole number of wei (a decimal string)") from None
    if wei < 0:
        raise ValidationError("value_wei", "must not be negative")
    return wei


def _json(value: Any) -> Response:
    """web3's AttributeDicts and HexBytes as plain JSON."""
    return Response(Web3.to_json(value), mimetype="application/json")


def _status_of(exc: EspError) -> int:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    return 500


def create_app(settings: Settings | None = None) -> Flask:
    """The monolith's Flask app (settings from the ``ESP_`` environment when not given)."""
    settings = settings or Settings.from_env()
    mono = Monolith(settings)
    app = Flask(__name__)
    app.extensions["monolith"] = mono

    @app.errorhandler(EspError)
    def domain_error(exc: EspError) -> tuple[Response, int]:
        status = _status_of(exc)
        if status >= 500:
            log.warning("%s: %s", type(exc).__name__, exc)
        return jsonify(error=type(exc).__name__, detail=str(exc), field=getattr(exc, "field", None)), status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return jsonify(error=exc.name, detail=exc.description), exc.code or 500

    @app.errorhandler(requests.RequestException)
    def node_unreachable(exc: requests.RequestException) -> tuple[Response, int]:
        log.warning("node unreachable: %s", exc)
        return jsonify(error="NodeUnreachable", detail="the node did not answer"), 502

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error")
        return jsonify(error="InternalError", detail="unexpected error"), 500

    @app.get("/healthz")
    def healthz() -> Response:
        """Liveness: the process answers."""
        return jsonify(ok=True)

    @app.get("/balance/<address>")
    def balance(address: str) -> Response:
        """An account's balance in wei."""
        return jsonify(wei=str(mono.w3.eth.get_balance(ChecksumAddress(HexAddress(HexStr(checksum(address)))))))

    @app.get("/main-account")
    def main_account() -> Response:
        """The treasury's address."""
        return jsonify(address=mono.treasury.address)

    @app.get("/node-accounts")
    def node_accounts() -> Response:
        """The node's own accounts (eth_accounts)."""
        return jsonify(accounts=list(mono.w3.eth.accounts))

    @app.get("/block-number")
    def block_number() -> Response:
        """The node's head."""
        return jsonify(block_number=int(mono.w3.eth.block_number))

    @app.post("/accounts")
    def create_account() -> Response:
        """A new keystore account, answered when its funding is mined."""
        password = check_password(_body().get("password"))
        return jsonify(address=mono.create_account(password))

    @app.get("/accounts")
    def list_accounts() -> Response:
        """Every address of the keystore."""
        return jsonify(accounts=mono.keystore.list())

    @app.post("/accounts/<address>/unlock")
    def unlock(address: str) -> Response:
        """Decrypt the keystore (the KDF) and keep the key for ``seconds``."""
        body = _body()
        address = checksum(address)
        password = check_password(body.get("password"))
        mono.unlock(address, password, check_seconds(body.get("seconds")))
        return jsonify(address=address, unlocked=True)

    @app.post("/transactions")
    def send_transaction() -> Response:
        """A transfer, answered once mined."""
        body = _body()
        sender, to = checksum(body.get("from"), "from"), checksum(body.get("to"), "to")
        receipt = mono.transfer(sender, to, _wei(body.get("value_wei")))
        return jsonify(tx_hash=receipt["transactionHash"].to_0x_hex(), block_number=int(receipt["blockNumber"]))

    @app.get("/transactions/<tx_hash>/receipt")
    def receipt(tx_hash: str) -> Response:
        """A transaction's receipt; 404 while it has none."""
        try:
            return _json(mono.w3.eth.get_transaction_receipt(_tx_hash(tx_hash)))  # type: ignore[arg-type]
        except TransactionNotFound:
            raise NotFound(f"no receipt for {tx_hash}", field="hash") from None

    @app.get("/transactions/<tx_hash>")
    def transaction(tx_hash: str) -> Response:
        """A transaction; 404 when the node does not know it."""
        try:
            return _json(mono.w3.eth.get_transaction(_tx_hash(tx_hash)))  # type: ignore[arg-type]
        except TransactionNotFound:
            raise NotFound(f"no transaction {tx_hash}", field="hash") from None

    @app.post("/contracts")
    def deploy() -> Response:
        """Deploy a contract from the treasury, answered once mined."""
        name = _body().get("name")
        if not isinstance(name, str):
            raise ValidationError("name", "must be a contract name")
        receipt = mono.deploy(name)
        return jsonify(contract_address=receipt["contractAddress"], tx_hash=receipt["transactionHash"].to_0x_hex())

    return app
