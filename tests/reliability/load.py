"""The load a fault is measured under, and what clients saw of it.

``Load`` runs, against a ``tests.stack.LocalStack`` and its JSON-RPC gateway, until stopped (or its
deadline): REST readers and JSON-RPC readers in threads, REST transfers from an ESP-held account and
raw transactions signed by the client (``eth_sendRawTransaction`` on ``/rpc``) at a fixed pace. Every
request is counted with its outcome. ``settle`` waits for every accepted write and then reads the chain
itself: each accepted transaction must be there exactly once, and no other transaction of its sender.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount

from nodepool.registry import NodeRegistry
from nodepool.rpc import RpcClient, to_int
from tests.stack import LocalStack
from tests.waiting import wait_for

Account.enable_unaudited_hdwallet_features()
MNEMONIC = "test test test test test test test test test test test junk"
PASSWORD = "the fault suite's sender 42"
RECIPIENT = "0x000000000000000000000000000000000000dEaD"


def raw_sender(index: int) -> LocalAccount:
    """A dev account funded in the devnet's genesis (anvil funds indices 0..9; ESP's treasury is 0), signing on the client's side."""
    return Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


def new_esp_account(stack: LocalStack) -> str:
    """An account in ESP's keystore, created (and funded) by the write path and unlocked for an hour."""
    client = stack.client()
    response = client.post("/api/v1/accounts", json={"password": PASSWORD})
    assert response.status_code == 202, response.get_json()
    done = task_when_final(stack, response.get_json()["id"], timeout=120)
    assert done["state"] == "confirmed", done
    address: str = done["result"]["address"]
    unlocked = client.post(f"/api/v1/accounts/{address}/unlock", json={"password": PASSWORD, "seconds": 3600})
    assert unlocked.status_code == 200, unlocked.get_json()
    return address


def task_when_final(stack: LocalStack, task_id: str, timeout: float) -> dict[str, Any]:
    """The task record once confirmed or failed (or as it is at ``timeout``)."""
    client = stack.client()
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/api/v1/tasks/{task_id}?wait=5").get_json()
        if body["state"] in ("confirmed", "failed") or time.monotonic() > deadline:
            return body


@dataclass
class Outcome:
    """What the clients saw, and what the chain holds."""

    reads: int = 0
    read_errors: list[str] = field(default_factory=list)
    writes: int = 0
    write_errors: list[str] = field(default_factory=list)
    accepted: int = 0
    mined_once: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    max_read_s: float = 0.0

    @property
    def requests(self) -> int:
        return self.reads + self.writes

    @property
    def client_errors(self) -> int:
        return len(self.read_errors) + len(self.write_errors)

    def load_text(self, load: Load) -> str:
        return (f"{load.readers} REST + {load.readers} JSON-RPC readers, a REST transfer and a raw transaction"
                f" every {load.pace} s ({self.reads} reads, {self.writes} writes)")


class Load:
    """Reads and writes against ``stack`` and its gateway ``rpc_url`` until ``stop()``; bounded by ``max_seconds``."""

    def __init__(self, stack: LocalStack, rpc_url: str, *, esp_sender: str, raw: LocalAccount, readers: int = 2,
                 pace: float = 0.25, max_seconds: float = 240) -> None:
        self.stack, self.rpc_url, self.esp_sender, self.raw = stack, rpc_url, esp_sender, raw
        self.readers, self.pace = readers, pace
        self.deadline = time.monotonic() + max_seconds
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.reads: list[tuple[float, float, str | None]] = []  # (sent at, seconds, error or None)
        self.writes: list[tuple[float, str | None]] = []
        self.tasks: list[str] = []  # REST transfers accepted (202), by task id
        self.raw_sent: dict[int, str] = {}  # raw transactions accepted, by nonce
        leader = NodeRegistry(stack.redis).leader()
        assert leader is not None
        node = RpcClient(leader.url)
        self.first_block = to_int(node.call("eth_blockNumber"))
        self.raw_first_nonce = to_int(node.call("eth_getTransactionCount", [raw.address, "pending"]))
        self.esp_first_nonce = to_int(node.call("eth_getTransactionCount", [esp_sender, "pending"]))
        node.close()
        self.threads = [threading.Thread(target=self._rest_reads, name=f"rest-reads-{i}") for i in range(readers)]
        self.threads += [threading.Thread(target=self._rpc_reads, args=(i,), name=f"rpc-reads-{i}") for i in range(readers)]
        self.threads += [threading.Thread(target=self._writes, name="writes")]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> bool:
        return not self.stopping.is_set() and time.monotonic() < self.deadline

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    # -- the clients ------------------------------------------------------------------------------

    def _read(self, started: float, error: str | None) -> None:
        with self.lock:
            self.reads.append((started, time.monotonic() - started, error))

    def _rest_reads(self) -> None:
        client = self.stack.client()
        paths = ["/api/v1/chain/block-number", f"/api/v1/accounts/{self.raw.address}/balance", "/api/v1/chain/gas-price"]
        n = 0
        while self.running():
            started = time.monotonic()
            try:
                response = client.get(paths[n % len(paths)])
                error = None if response.status_code == 200 else f"{paths[n % len(paths)]}: {response.status_code} {response.get_json()}"
            except Exception as exc:  # every failure is what a client saw
                error = f"{paths[n % len(paths)]}: {exc!r}"
            self._read(started, error)
            n += 1
            self.stopping.wait(0.02)

    def _rpc_reads(self, i: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.stack.user_key}"
        calls: list[tuple[str, list[Any]]] = [
            ("eth_blockNumber", []), ("eth_getBalance", [self.raw.address, "latest"]),
            ("eth_getBlockByNumber", ["latest", False]), ("eth_getTransactionCount", [self.esp_sender, "latest"])]
        n = i
        while self.running():
            method, params = calls[n % len(calls)]
            started = time.monotonic()
            try:
                response = session.post(self.rpc_url, json={"jsonrpc": "2.0", "id": n, "method": method, "params": params},
                                        timeout=30)
                body = response.json()
                error = None if response.status_code == 200 and body.get("result") is not None else f"{method}: {body}"
            except Exception as exc:  # every failure is what a client saw
                error = f"{method}: {exc!r}"
            self._read(started, error)
            n += 1
            self.stopping.wait(0.02)
        session.close()

    def _writes(self) -> None:
        client = self.stack.client()
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.stack.user_key}"
        nonce = self.raw_first_nonce
        while self.running():
            self._write(partial(self._transfer, client))
            if self._write(partial(self._send_raw, session, nonce)):
                nonce += 1
            self.stopping.wait(self.pace)
        session.close()

    def _write(self, attempt: Callable[[], str | None]) -> bool:
        """Make one write, count it with its error (None: accepted); whether it was accepted."""
        started = time.monotonic()
        try:
            error = attempt()
        except Exception as exc:  # every failure is what a client saw
            error = repr(exc)
        with self.lock:
            self.writes.append((started, error))
        return error is None

    def _transfer(self, client: Any) -> str | None:
        response = client.post("/api/v1/transactions", json={"from": self.esp_sender, "to": RECIPIENT, "value_wei": 1})
        if response.status_code != 202:
            return f"transfer: {response.status_code} {response.get_json()}"
        self.tasks.append(response.get_json()["id"])
        return None

    def _send_raw(self, session: requests.Session, nonce: int) -> str | None:
        fields: dict[str, Any] = {"to": RECIPIENT, "value": 1, "gas": 21000, "maxFeePerGas": 10**10,
                                  "maxPriorityFeePerGas": 10**9, "nonce": nonce, "chainId": 31337}
        signed = self.raw.sign_transaction(fields)
        body = session.post(self.rpc_url, json={"jsonrpc": "2.0", "id": nonce, "method": "eth_sendRawTransaction",
                                                "params": [signed.raw_transaction.to_0x_hex()]}, timeout=30).json()
        if body.get("result") != signed.hash.to_0x_hex():
            return f"eth_sendRawTransaction: {body}"
        self.raw_sent[nonce] = body["result"]
        return None

    # -- what happened ----------------------------------------------------------------------------

    def reads_between(self, start: float, end: float) -> list[tuple[float, float, str | None]]:
        with self.lock:
            return [r for r in self.reads if start <= r[0] < end]

    def settle(self, timeout: float = 180) -> Outcome:
        """Wait for every accepted write to be final, then check the chain: each once, nothing else of its sender."""
        records = [task_when_final(self.stack, t, timeout) for t in self.tasks]
        expected: dict[str, tuple[str, int]] = {}  # hash -> (sender, nonce) of every accepted write
        lost = []
        for record in records:
            if record["state"] == "confirmed":
                expected[record["result"]["tx_hash"].lower()] = (self.esp_sender.lower(), record["result"]["nonce"])
            else:
                lost.append(f"task {record['id']}: {record['state']} {record.get('error')}")
        for nonce, tx_hash in self.raw_sent.items():
            expected[tx_hash.lower()] = (self.raw.address.lower(), nonce)
        leader = NodeRegistry(self.stack.redis).leader()
        assert leader is not None
        node = RpcClient(leader.url, timeout=10)
        try:
            if self.raw_sent:
                last = max(self.raw_sent)
                # Nonces are mined in order: the last one's receipt means every one before is in a block. One that
                # never came is counted below, by hash, as "not in the chain".
                with contextlib.suppress(AssertionError):
                    wait_for(partial(node.call, "eth_getTransactionReceipt", [self.raw_sent[last]]), timeout,
                             f"the receipt of the last raw transaction (nonce {last})", interval=0.25)
            head = to_int(node.call("eth_blockNumber"))
            senders = {self.esp_sender.lower(), self.raw.address.lower()}
            seen: Counter[str] = Counter()
            strangers = []
            for number in range(self.first_block + 1, head + 1):
                block = node.call("eth_getBlockByNumber", [hex(number), True])
                for tx in block["transactions"]:
                    if tx["from"].lower() not in senders:
                        continue
                    ours = tx["from"].lower() == self.raw.address.lower()
                    first = self.raw_first_nonce if ours else self.esp_first_nonce
                    if to_int(tx["nonce"]) < first:
                        continue
                    seen[tx["hash"].lower()] += 1
                    if tx["hash"].lower() not in expected:
                        strangers.append(f"{tx['hash']} (nonce {to_int(tx['nonce'])}): sent but never accepted")
        finally:
            node.close()
        out = Outcome()
        with self.lock:
            out.reads, out.writes = len(self.reads), len(self.writes)
            out.read_errors = [e for _, _, e in self.reads if e]
            out.write_errors = [e for _, e in self.writes if e]
            out.max_read_s = max((s for _, s, _ in self.reads), default=0.0)
        out.accepted = len(self.tasks) + len(self.raw_sent)
        out.mined_once = sum(1 for h in expected if seen[h] == 1)
        out.lost = lost + [f"{h}: not in the chain" for h in expected if seen[h] == 0]
        out.duplicated = [f"{h}: {n} times" for h, n in seen.items() if n > 1] + strangers
        return out
