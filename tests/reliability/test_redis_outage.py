"""Redis SIGKILLed under write load and restarted on its port with its append-only file: ESP comes back by itself.

The stack (node manager, control worker, beat, a write worker; the API through Flask's test client;
the JSON-RPC gateway) runs on a Redis server of this test's own, persistent as ``make up`` starts one
(``appendonly yes``, ``appendfsync everysec``). While it is down the API answers 503 with Retry-After
and a problem body, quickly; once it is back every process serves again without being restarted, and
every transfer the API accepted (202) is mined exactly once: checked on chain, transfer by transfer
(each carries a value of its own), not from ESP's records.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from bench.redis_server import PrivateRedis
from errors import NodeError
from nodepool.registry import NodeControl
from nodepool.rpc import RpcClient, to_int
from tests.reliability.load import new_esp_account
from tests.reliability.report import FaultRecord, Report
from tests.stack import LocalStack, wait_task

SINK = "0x000000000000000000000000000000000000dEaD"
#: The load: SENDERS threads, each one transfer every PACE seconds, for at most DURATION seconds or COUNT transfers.
SENDERS = 2
PACE = 0.1
DURATION = 30.0
COUNT = 400
#: When Redis is killed (seconds into the load) and for how long it stays down.
KILL_AT = 6.0
DOWN_FOR = 5.0
#: A generous liveness bound on an answer while Redis is down ("within a few seconds").
ANSWER_BOUND = 5.0
#: A generous liveness bound on accepted-to-confirmed for any transfer, the outage included.
SETTLE_BOUND = 45.0
DB = 1


@dataclass
class Attempt:
    """One POST /api/v1/transactions and how it was answered."""

    value: int
    sender: str
    started: float
    elapsed: float
    status: int  # 0: no answer (an exception in the client)
    retry_after: str | None
    problem: bool
    task_id: str | None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A persistent Redis of this test's own: it may be killed and restarted on its port with its data."""
    with PrivateRedis(persistent=True, folder=tmp_path_factory.mktemp("redis-data")) as redis_server:
        yield redis_server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, anvil_binary: Path, server: PrivateRedis) -> Iterator[LocalStack]:
    s = LocalStack(tmp_path_factory.mktemp("redis-outage"), DB, name="redisoutage", writers=1, redis_server=server,
                   ESP_ADMIN_KEY="test-admin-key", ESP_DEPLOY_PLATFORM="0")
    yield s
    s.close()


def test_redis_killed_under_writes_esp_comes_back_and_loses_nothing(stack: LocalStack, server: PrivateRedis,
                                                                    report: Report) -> None:
    senders = [new_esp_account(stack) for _ in range(SENDERS)]
    gateway = stack.serve_rpc()
    leader = stack.rpc()
    first_block = to_int(leader.call("eth_blockNumber"))
    attempts: list[Attempt] = []
    probes: list[tuple[float, float, int, dict]] = []  # started, elapsed, HTTP status (0: no answer), body
    lock = threading.Lock()
    stop = threading.Event()
    begin = time.monotonic()
    values = iter(range(1, COUNT + 1))  # each transfer's value in wei: which request it was, on chain

    def load(sender: str) -> None:
        client = stack.client()
        while not stop.is_set() and time.monotonic() - begin < DURATION:
            with lock:
                value = next(values, None)
            if value is None:
                return
            started = time.monotonic()
            try:
                response = client.post("/api/v1/transactions", json={"from": sender, "to": SINK, "value_wei": value})
                body = response.get_json(silent=True) or {}
                attempt = Attempt(value, sender, started - begin, time.monotonic() - started, response.status_code,
                                  response.headers.get("Retry-After"), response.mimetype == "application/problem+json"
                                  and body.get("status") == response.status_code, body.get("id") if response.status_code == 202 else None)
            except Exception:  # a request that raised is what a client saw: counted as unanswered
                attempt = Attempt(value, sender, started - begin, time.monotonic() - started, 0, None, False, None)
            with lock:
                attempts.append(attempt)
            stop.wait(PACE)  # the load's pace

    def probe_rpc() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {stack.user_key}"
        while not stop.is_set() and time.monotonic() - begin < DURATION:
            started = time.monotonic()
            try:
                response = session.post(gateway, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}, timeout=30)
                status, body = response.status_code, response.json()
            except (requests.RequestException, ValueError) as exc:
                status, body = 0, {"exception": repr(exc)}
            probes.append((started - begin, time.monotonic() - started, status, body))
            stop.wait(0.25)
        session.close()

    threads = [threading.Thread(target=load, args=(sender,)) for sender in senders] + [threading.Thread(target=probe_rpc)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(KILL_AT)  # writes flow before the fault
        server.kill()
        down_at = time.monotonic() - begin
        time.sleep(DOWN_FOR)  # the outage's length
        server.start()
        up_at = time.monotonic() - begin
    finally:
        for thread in threads:
            thread.join(DURATION + 60)
        stop.set()

    # How each request was answered. A request may find Redis gone from the moment it is killed until the API's
    # client has reconnected after the restart (Redis answers a moment before ``server.start()`` returns): a 503 is
    # allowed in that window with a second's slack either side, and only with Retry-After and a problem body.
    def is_refusal(a: Attempt) -> bool:
        return a.status == 503 and a.retry_after is not None and a.problem and a.elapsed <= ANSWER_BOUND

    window = [a for a in attempts if down_at <= a.started < up_at]
    refused = [a for a in attempts if is_refusal(a) and down_at - 1 <= a.started < up_at + 1]
    errors = [a for a in attempts if a.status != 202 and a not in refused]
    accepted = [a for a in attempts if a.status == 202]
    after = sorted(a.started + a.elapsed for a in accepted if a.started >= up_at)
    rpc_window = [p for p in probes if down_at <= p[0] < up_at]
    rpc_refused = [p for p in probes if p[2] == 503 and p[3].get("error", {}).get("code") == -32002 and p[1] <= ANSWER_BOUND
                   and down_at - 1 <= p[0] < up_at + 1]
    rpc_errors = [p for p in probes if not (p[2] == 200 and "result" in p[3]) and p not in rpc_refused]
    processes = {" ".join(str(a) for a in proc.args[5:8]): proc.poll() for proc in stack.others + stack.writers}

    # After the outage: a new write is mined, through processes nobody restarted, and the node manager takes a command.
    client = stack.client()
    fresh_value = COUNT + 1
    sent_at = time.monotonic()
    fresh = client.post("/api/v1/transactions", json={"from": senders[0], "to": SINK, "value_wei": fresh_value})
    fresh_done = wait_task(client, fresh.get_json()["id"], timeout=90) if fresh.status_code == 202 else {"state": fresh.status_code}
    fresh_mined_s = time.monotonic() - sent_at
    commands = redis.Redis.from_url(server.url(DB))
    try:
        follower = stack.specs[-1].id
        NodeControl(commands).restart(follower, timeout=60)
        manager_serves = True
    except NodeError:
        manager_serves = False
    finally:
        commands.close()

    # Every accepted write, on chain: each value once (lost = 0, duplicated = 0), whatever ESP's records say.
    records = {a.value: wait_task(client, a.task_id, timeout=120) for a in accepted if a.task_id}
    finals = {value: r["state"] for value, r in records.items()}
    slowest = max((r["updated_at"] - r["created_at"] for r in records.values()), default=0.0)
    on_chain = mined_values(leader, first_block, set(senders))
    lost = [a.value for a in accepted if on_chain[a.value] == 0]
    duplicated = [v for v, n in on_chain.items() if n > 1]
    # A request Redis died under may have been carried out before its 503 (its record and outbox entry written, the
    # reply lost): the 503 says to resend a write with its Idempotency-Key. Counted, not a failure.
    refused_mined = [a for a in attempts if a.status != 202 and on_chain[a.value] > 0]
    record = report.add(FaultRecord(
        fault=f"Redis SIGKILLed under writes, restarted on its port after {DOWN_FOR:.0f} s (AOF, appendfsync everysec)",
        load=f"{SENDERS} REST senders, 1 transfer each every {PACE} s; /rpc eth_blockNumber every 0.25 s",
        requests=len(attempts) + len(probes),
        client_errors=len(errors) + len(rpc_errors),
        errors_allowed=f"503 + Retry-After while Redis is down ({len(refused)} REST, {len(rpc_refused)} /rpc)",
        accepted=len(accepted), mined_once=sum(1 for a in accepted if on_chain[a.value] == 1), lost=len(lost),
        duplicated=len(duplicated), recover_s=round(after[0] - up_at, 2) if after else None,
        notes=[f"down {down_at:.1f}-{up_at:.1f} s into the load: {len(window)} REST requests in the window, answered"
               f" {dict(Counter(a.status for a in window))}, slowest {max((a.elapsed for a in window), default=0):.2f} s;"
               f" /rpc {len(rpc_window)} requests, answered {dict(Counter(p[2] for p in rpc_window))}",
               f"REST answers over the run: {dict(Counter(a.status for a in attempts))}; accepted tasks' final states"
               f" {dict(Counter(finals.values()))}; the slowest was final {slowest:.1f} s after it was accepted",
               f"a write sent after the load was {fresh_done['state']} {fresh_mined_s:.1f} s after it was sent; the node manager"
               f" {'restarted' if manager_serves else 'did NOT restart'} {stack.specs[-1].id} on command; processes"
               f" (None: running) {processes}",
               f"refused (503) but carried out all the same (Redis died under the request; resent with its"
               f" Idempotency-Key it is not done twice): {len(refused_mined)}, sent at"
               f" {', '.join(f'{a.started:.2f} s' for a in refused_mined) or '-'}"],
    ))
    assert window and refused, "no request found Redis down: the fault was not observed"
    assert not errors, errors  # every request in the window was refused properly (or found Redis back already)
    assert rpc_window and not rpc_errors, rpc_errors
    assert all(code is None for code in processes.values()), processes
    assert stack._serve.is_alive() and manager_serves, "the node manager stopped serving"
    assert fresh_done["state"] == "confirmed" and on_chain[fresh_value] == 1, fresh_done
    assert not lost and not duplicated, (lost, duplicated)
    assert set(finals.values()) == {"confirmed"}, Counter(finals.values())
    # A liveness bound, generous: writes held up by the outage go on when Redis is back, not after a lock times out.
    assert slowest < SETTLE_BOUND, f"an accepted transfer took {slowest:.1f} s to be confirmed"
    record.passed = True


def mined_values(rpc: RpcClient, first_block: int, senders: set[str]) -> Counter[int]:
    """How many times each value was transferred by ``senders`` in the blocks from ``first_block`` to the head."""
    wanted = {s.lower() for s in senders}
    found: Counter[int] = Counter()
    head = to_int(rpc.call("eth_blockNumber"))
    for number in range(first_block, head + 1):
        block = rpc.call("eth_getBlockByNumber", [hex(number), True])
        for tx in block["transactions"]:
            if tx["from"].lower() in wanted:
                found[to_int(tx["value"])] += 1
    return found
