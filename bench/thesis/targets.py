"""The systems under test, one ``Target`` each, with the same operation vocabulary (workloads.OPERATIONS).

``EspTarget`` drives ESP's REST API (``/api/v1``, a user's API key; deploys with
the admin key, as only an admin may deploy): a write is complete when its task is
confirmed (POST, then ``GET /api/v1/tasks/<id>?wait=60`` until final), and its
202 latency is reported apart. ``MonolithTarget`` drives the control's routes
(bench/thesis/servers.py), which answer a write once it is mined.

Each target has a ``setup`` phase, outside the measured window: it creates a few
funded accounts, unlocks them, and sends a few transactions whose hashes the
receipt/by-hash reads use; then it performs every operation once, so that a
broken route stops the benchmark before it measures anything.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from bench.thesis import workloads as w
from bench.thesis.loadgen import Done, OpError

PASSWORD = "thesis bench account password"
UNLOCK_SECONDS = 3600
TASK_WAIT_S = 60
OP_DEADLINE_S = 300.0  # how long one operation may keep retrying a 503 or waiting on its task
FINAL_STATES = ("confirmed", "failed")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call(client: httpx.AsyncClient, method: str, path: str, *, key: str | None = None, body: Any = None,
               ok: tuple[int, ...] = (200,), deadline: float | None = None) -> tuple[int, Any]:
    """One request; a 503 with Retry-After (a full KDF pool) is retried until ``deadline``; other statuses raise."""
    deadline = deadline if deadline is not None else time.monotonic() + OP_DEADLINE_S
    headers = bearer(key) if key else {}
    while True:
        response = await client.request(method, path, json=body, headers=headers)
        retry_after = response.headers.get("Retry-After")
        if response.status_code == 503 and retry_after and time.monotonic() + float(retry_after) < deadline:
            await asyncio.sleep(float(retry_after))
            continue
        if response.status_code not in ok:
            raise OpError(f"http_{response.status_code}", response.text[:200])
        return response.status_code, response.json()


class Accounts:
    """The accounts and transaction hashes a setup phase left for the measured operations to use."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.tx_hashes: list[str] = []

    def account(self, index: int) -> str:
        return self.addresses[index % len(self.addresses)]

    def pair(self, index: int) -> tuple[str, str]:
        """A sender and a receiver, both set-up accounts, spread so that senders take turns."""
        n = len(self.addresses)
        return self.addresses[index % n], self.addresses[(index + 1) % n]

    def tx_hash(self, index: int) -> str:
        return self.tx_hashes[index % len(self.tx_hashes)]


class EspTarget:
    """ESP's REST API with a user key (and the admin key where only an admin may act)."""

    name = "esp"

    def __init__(self, base_url: str, key: str, admin_key: str) -> None:
        self.base_url = base_url
        self.key = key
        self.admin_key = admin_key
        self.setup_state = Accounts()

    async def _task(self, client: httpx.AsyncClient, path: str, body: Any, key: str) -> tuple[float, dict[str, Any]]:
        """Submit a write and wait for its task to be final: (seconds to the 202, the confirmed record)."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + OP_DEADLINE_S
        _, task = await call(client, "POST", path, key=key, body=body, ok=(202,), deadline=deadline)
        accepted = time.perf_counter() - t0
        while task["state"] not in FINAL_STATES:
            if time.monotonic() > deadline:
                raise OpError("task_timeout", task["id"])
            _, task = await call(client, "GET", f"/api/v1/tasks/{task['id']}?wait={TASK_WAIT_S}", key=key, deadline=deadline)
        if task["state"] != "confirmed":
            raise OpError("task_failed", str((task.get("error") or {}).get("type", task.get("error")))[:120])
        return accepted, task

    async def perform(self, client: httpx.AsyncClient, op: str, index: int) -> Done:
        """One operation of the vocabulary, complete when its effect is available to the client."""
        s = self.setup_state
        if op == w.BALANCE:
            _, body = await call(client, "GET", f"/api/v1/accounts/{s.account(index)}/balance", key=self.key)
            return Done(node=body.get("node"))
        if op == w.MAIN_ACCOUNT:
            _, body = await call(client, "GET", "/api/v1/accounts", key=self.admin_key)
            if not body.get("treasury"):
                raise OpError("bad_answer", "no treasury in the admin listing")
            return Done()
        if op == w.CLIENT_ACCOUNTS:
            _, body = await call(client, "GET", "/admin/list", key=self.key)
            if body.get("status") != 200:
                raise OpError("thesis_status", str(body.get("message"))[:120])
            return Done()
        if op == w.BLOCK_NUMBER:
            _, body = await call(client, "GET", "/api/v1/chain/block-number", key=self.key)
            return Done(node=body.get("node"))
        if op == w.CREATE_ACCOUNT:
            accepted, task = await self._task(client, "/api/v1/accounts", {"password": PASSWORD}, self.key)
            return Done(accepted, task.get("node"))
        if op == w.LIST_ACCOUNTS:
            await call(client, "GET", "/api/v1/accounts", key=self.key)
            return Done()
        if op == w.UNLOCK_ACCOUNT:
            await call(client, "POST", f"/api/v1/accounts/{s.account(index)}/unlock", key=self.key,
                       body={"password": PASSWORD, "seconds": UNLOCK_SECONDS})
            return Done()
        if op == w.SEND_TRANSACTION:
            sender, receiver = s.pair(index)
            accepted, task = await self._task(client, "/api/v1/transactions",
                                              {"from": sender, "to": receiver, "value_wei": 1}, self.key)
            return Done(accepted, task.get("node"))
        if op == w.TX_RECEIPT:
            _, body = await call(client, "GET", f"/api/v1/chain/transactions/{s.tx_hash(index)}/receipt", key=self.key)
            return Done(node=body.get("node"))
        if op == w.TX_BY_HASH:
            _, body = await call(client, "GET", f"/api/v1/chain/transactions/{s.tx_hash(index)}", key=self.key)
            return Done(node=body.get("node"))
        if op == w.DEPLOY_CONTRACT:
            accepted, task = await self._task(client, "/api/v1/contracts", {"name": "PlatformToken"}, self.admin_key)
            return Done(accepted, task.get("node"))
        raise ValueError(f"unknown operation {op}")

    async def setup(self, client: httpx.AsyncClient, *, accounts: int, transactions: int) -> None:
        """Funded, unlocked accounts owned by the user key, and confirmed transactions to read back."""
        created = await asyncio.gather(*(self._task(client, "/api/v1/accounts", {"password": PASSWORD}, self.key)
                                         for _ in range(accounts)))
        self.setup_state.addresses = [task["result"]["address"] for _, task in created]
        for address in self.setup_state.addresses:
            await call(client, "POST", f"/api/v1/accounts/{address}/unlock", key=self.key,
                       body={"password": PASSWORD, "seconds": UNLOCK_SECONDS})
        sent = await asyncio.gather(*(self._task(client, "/api/v1/transactions", dict(zip(
            ("from", "to"), self.setup_state.pair(i), strict=True), value_wei=1), self.key) for i in range(transactions)))
        self.setup_state.tx_hashes = [task["result"]["tx_hash"] for _, task in sent]
        await smoke(self, client)


class MonolithTarget:
    """The control: a Flask + web3.py app on one node, answering every operation synchronously."""

    name = "control"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.setup_state = Accounts()

    async def perform(self, client: httpx.AsyncClient, op: str, index: int) -> Done:
        """One operation of the vocabulary; the monolith answers a write once it is mined."""
        s = self.setup_state
        if op == w.BALANCE:
            _, body = await call(client, "GET", f"/balance/{s.account(index)}")
            if "wei" not in body:
                raise OpError("bad_answer", "no wei")
        elif op == w.MAIN_ACCOUNT:
            await call(client, "GET", "/main-account")
        elif op == w.CLIENT_ACCOUNTS:
            await call(client, "GET", "/node-accounts")
        elif op == w.BLOCK_NUMBER:
            await call(client, "GET", "/block-number")
        elif op == w.CREATE_ACCOUNT:
            await call(client, "POST", "/accounts", body={"password": PASSWORD}, ok=(200, 201))
        elif op == w.LIST_ACCOUNTS:
            await call(client, "GET", "/accounts")
        elif op == w.UNLOCK_ACCOUNT:
            await call(client, "POST", f"/accounts/{s.account(index)}/unlock",
                       body={"password": PASSWORD, "seconds": UNLOCK_SECONDS})
        elif op == w.SEND_TRANSACTION:
            sender, receiver = s.pair(index)
            await call(client, "POST", "/transactions", body={"from": sender, "to": receiver, "value_wei": 1}, ok=(200, 201))
        elif op == w.TX_RECEIPT:
            await call(client, "GET", f"/transactions/{s.tx_hash(index)}/receipt")
        elif op == w.TX_BY_HASH:
            await call(client, "GET", f"/transactions/{s.tx_hash(index)}")
        elif op == w.DEPLOY_CONTRACT:
            await call(client, "POST", "/contracts", body={"name": "PlatformToken"}, ok=(200, 201))
        else:
            raise ValueError(f"unknown operation {op}")
        return Done()

    async def setup(self, client: httpx.AsyncClient, *, accounts: int, transactions: int) -> None:
        """Funded, unlocked accounts and mined transactions to read back, as for ESP."""
        created = await asyncio.gather(*(call(client, "POST", "/accounts", body={"password": PASSWORD}, ok=(200, 201))
                                         for _ in range(accounts)))
        self.setup_state.addresses = [body["address"] for _, body in created]
        for address in self.setup_state.addresses:
            await call(client, "POST", f"/accounts/{address}/unlock", body={"password": PASSWORD, "seconds": UNLOCK_SECONDS})
        sent = await asyncio.gather(*(call(client, "POST", "/transactions", body=dict(zip(
            ("from", "to"), self.setup_state.pair(i), strict=True), value_wei=1), ok=(200, 201)) for i in range(transactions)))
        self.setup_state.tx_hashes = [body["tx_hash"] for _, body in sent]
        await smoke(self, client)


async def smoke(target: EspTarget | MonolithTarget, client: httpx.AsyncClient) -> None:
    """Every operation once, in order; the first failure stops the benchmark with its kind and detail."""
    for index, op in enumerate(w.OPERATIONS):
        try:
            await target.perform(client, op, index)
        except OpError as exc:
            raise RuntimeError(f"{target.name}: {op} fails before the run: {exc}") from exc
