"""Any one process of the stack crashing is restarted, not the whole stack stopped (issue 14).

The stack runs as ``make up`` runs it: ``scripts/up.sh``, supervisord over the Procfile. One at a
time, the main process of each program is SIGKILLed (and one gunicorn API worker, which gunicorn's
own arbiter replaces) while two readers, a REST one and a JSON-RPC one, each ask for the block
number every 50 ms, and a treasury transfer is sent at the moment of the kill. Each fault must end
with the program running again under a new pid and nothing of the killed process left running
(its children end by themselves), every other program under its old pid, /readyz
counting all 3 nodes, the gateway answering and the transfer confirmed. The figures (time to
recover, what the readers saw) go to the fault report before anything is asserted.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psutil
import pytest

from tests.conftest import DB_SUPERVISION
from tests.reliability.report import FaultRecord, Report
from tests.upstack import UpStack
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

#: Seconds between two requests of a reader.
READ_INTERVAL = 0.05
#: Seconds a reader's request may take before it counts as an error.
READ_TIMEOUT = 5.0
#: Seconds a fault may take to recover: the program restarted, the stack serving, the transfer confirmed.
RECOVER_TIMEOUT = 120.0
#: Seconds the stack may take to be whole again before the next fault (all programs RUNNING, 3 nodes answering).
SETTLE_TIMEOUT = 90.0
ADMIN_KEY = "supervision-admin-key"
DEAD = "0x000000000000000000000000000000000000dEaD"
LOAD = ("2 readers, each every 50 ms: REST GET /api/v1/chain/block-number and JSON-RPC eth_blockNumber; "
        "1 treasury transfer sent at the kill")


@dataclass(frozen=True)
class Victim:
    """A process to SIGKILL, and what its death may cost the readers (None: recorded, not bounded)."""

    id: str
    program: str  #: the supervisord program it belongs to
    fault: str
    rest_allowed: int | None = 0
    rpc_allowed: int | None = 0
    worker: bool = False  #: one of the program's gunicorn workers (replaced by its arbiter), not its main process


VICTIMS = [
    Victim("write-worker", "worker", "the write worker (celery prefork, main process) SIGKILLed"),
    Victim("control-worker", "control", "the control worker (celery solo) SIGKILLed"),
    Victim("beat", "beat", "celery beat SIGKILLed"),
    # The whole pool dies with its manager: reads fail until the new manager's devnet answers.
    Victim("node-manager", "nodes", "the node manager (python -m nodes) SIGKILLed, its 3 anvils dying with it",
           rest_allowed=None, rpc_allowed=None),
    Victim("api-worker", "api", "one gunicorn API worker process SIGKILLed", rest_allowed=1, worker=True),
    # Until the new master listens, nothing accepts the REST reader's connections.
    Victim("api-master", "api", "the API's gunicorn master SIGKILLed", rest_allowed=None),
    Victim("rpc-gateway", "rpc", "the JSON-RPC gateway's gunicorn master SIGKILLed", rpc_allowed=None),
]


def _allowed(victim: Victim) -> str:
    def one(name: str, n: int | None) -> str:
        return f"{name}: {'any, while it restarts' if n is None else n}"
    return f"{one('REST', victim.rest_allowed)}; {one('JSON-RPC', victim.rpc_allowed)}"


# -- clients ----------------------------------------------------------------------------------


def _request(url: str, body: dict | None, key: str, timeout: float) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


@dataclass
class Reader:
    """A thread asking one question every READ_INTERVAL; every answer kept as (start, ok, what went wrong)."""

    name: str
    ask: Callable[[], str | None]  #: None when the answer is right, else what was wrong
    results: list[tuple[float, bool, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                problem = self.ask()
            except (OSError, ValueError) as exc:  # refused, reset, timed out, not JSON
                problem = f"{type(exc).__name__}: {exc}"
            self.results.append((start, problem is None, problem or ""))
            self._stop.wait(max(0.0, READ_INTERVAL - (time.monotonic() - start)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(READ_TIMEOUT + 5)

    def window(self, start: float, end: float) -> tuple[int, list[str]]:
        """Requests started in [start, end]: how many, and the problems of those that failed."""
        inside = [r for r in self.results if start <= r[0] <= end]
        return len(inside), [r[2] for r in inside if not r[1]]


def rest_reader(stack: UpStack) -> Reader:
    def ask() -> str | None:
        status, body = _request(stack.base + "/api/v1/chain/block-number", None, ADMIN_KEY, READ_TIMEOUT)
        return None if status == 200 else f"{status} {body.get('title', body)}"
    return Reader("rest-reader", ask)


def rpc_call(stack: UpStack, method: str, params: list | None = None, timeout: float = READ_TIMEOUT) -> tuple[int, dict]:
    return _request(stack.rpc_url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}, ADMIN_KEY, timeout)


def rpc_reader(stack: UpStack) -> Reader:
    def ask() -> str | None:
        status, body = rpc_call(stack, "eth_blockNumber")
        return None if status == 200 and "result" in body else f"{status} {body.get('error', body)}"
    return Reader("rpc-reader", ask)


# -- the stack --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[UpStack]:
    up = UpStack(tmp_path_factory.mktemp("supervision"), DB_SUPERVISION, ESP_ADMIN_KEY=ADMIN_KEY,
                 ESP_KEYSTORE_SCRYPT_N="4096")
    try:
        yield up
    finally:
        up.close()


def whole(stack: UpStack) -> bool:
    """Every program RUNNING and /readyz counting every node."""
    return all(info["statename"] == "RUNNING" for info in stack.programs().values()) and stack.is_ready()


def serves(stack: UpStack) -> bool:
    """/readyz counts every node and the JSON-RPC gateway answers eth_blockNumber."""
    if not stack.is_ready():
        return False
    try:
        status, body = rpc_call(stack, "eth_blockNumber", timeout=2)
    except OSError:
        return False
    return status == 200 and "result" in body


def gunicorn_workers(pid: int) -> set[int]:
    """The live gunicorn worker processes of the master ``pid`` (not its output's sed, nor a worker not yet reaped)."""
    found = set()
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "gunicorn" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.Error:
            continue  # gone meanwhile
    return found


class Transfer:
    """A treasury transfer sent at the kill, from a thread of its own: resent (one Idempotency-Key) until accepted,
    then followed until it is final."""

    def __init__(self, stack: UpStack, key: str) -> None:
        self.stack = stack
        self.key = key
        self.task_id: str | None = None
        self.state = "not accepted"
        self.final_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="transfer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.is_set() and not self._step():
            self._stop.wait(0.1)

    def _step(self) -> bool:
        """One look (or one more try to send); True once the transfer is final."""
        try:
            if self.task_id is None:
                status, body = _request(self.stack.base + "/api/v1/accounts", None, ADMIN_KEY, 5)
                if status != 200:
                    return False
                status, body = self._send(body["treasury"])
                if status != 202:
                    self.state = f"refused: {status} {body.get('title', body)}"
                    return False
                self.task_id = body["id"]
            status, body = _request(self.stack.base + f"/api/v1/tasks/{self.task_id}?wait=2", None, ADMIN_KEY, 6)
        except (OSError, ValueError):
            return False  # the API restarting: try again
        if status == 200:
            self.state = body["state"]
            if self.state in ("confirmed", "failed"):
                self.final_at = time.monotonic()
        return self.final_at is not None

    def _send(self, treasury: str) -> tuple[int, dict]:
        body = json.dumps({"from": treasury, "to": DEAD, "value_wei": "1"}).encode()
        headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json", "Idempotency-Key": self.key}
        request = urllib.request.Request(self.stack.base + "/api/v1/transactions", data=body, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


# -- the faults -------------------------------------------------------------------------------


@pytest.mark.parametrize("victim", VICTIMS, ids=[v.id for v in VICTIMS])
def test_a_killed_process_is_restarted_and_the_rest_keeps_running(stack: UpStack, report: Report, victim: Victim) -> None:
    wait_for(lambda: whole(stack), SETTLE_TIMEOUT, lambda: "the stack to be whole before the fault:\n"
             f"{stack.programs()}\n{stack.log_tail()}", interval=0.3)
    before = stack.pids()
    program_pid = before[victim.program]
    workers_before = gunicorn_workers(program_pid) if victim.worker else set()
    target = min(workers_before) if victim.worker else program_pid
    head_before = _head(stack)
    readers = [rest_reader(stack), rpc_reader(stack)]
    transfer = Transfer(stack, f"supervision-{victim.id}-{time.time_ns()}")
    time.sleep(1.0)  # the readers settle into their pace

    killed_at = time.monotonic()
    os.kill(target, signal.SIGKILL)
    transfer.start()
    restarted_at: float | None = None
    recovered_at: float | None = None
    after: dict[str, int] = {}
    try:
        deadline = killed_at + RECOVER_TIMEOUT
        while time.monotonic() < deadline:
            if restarted_at is None:
                after = stack.pids()
                if victim.worker:
                    workers = gunicorn_workers(program_pid) if psutil.pid_exists(program_pid) else set()
                    if len(workers) == len(workers_before) and target not in workers:
                        restarted_at = time.monotonic()
                elif after.get(victim.program, program_pid) != program_pid:
                    restarted_at = time.monotonic()
            # Served by the restarted program itself: what was left of the killed one (its children: celery's pool,
            # gunicorn's workers still holding the port) has ended by itself.
            elif transfer.final_at is not None and not stack.orphans() and serves(stack):
                recovered_at = time.monotonic()
                break
            time.sleep(0.05)
        after = stack.pids()
    finally:
        end = recovered_at or time.monotonic()
        transfer.stop()
        for reader in readers:
            reader.stop()
    orphans = stack.orphans()
    (rest_n, rest_errors), (rpc_n, rpc_errors) = (r.window(killed_at, end) for r in readers)
    rest_ok = victim.rest_allowed is None or len(rest_errors) <= victim.rest_allowed
    rpc_ok = victim.rpc_allowed is None or len(rpc_errors) <= victim.rpc_allowed
    # Programs that must keep their pid: all but the victim's (all of them when gunicorn replaces one of its workers).
    kept = [p for p in before if victim.worker or p != victim.program]
    others_changed = {p: (before[p], after.get(p)) for p in kept if after.get(p) != before[p]}
    confirmed = transfer.state == "confirmed"

    def seconds(t: float | None) -> str:
        return "never" if t is None else f"{t - killed_at:.1f} s"

    record = report.add(FaultRecord(
        fault=victim.fault, load=LOAD, requests=rest_n + rpc_n, client_errors=len(rest_errors) + len(rpc_errors),
        errors_allowed=_allowed(victim), accepted=int(transfer.task_id is not None), mined_once=int(confirmed),
        lost=int(transfer.task_id is not None and not confirmed),
        recover_s=None if recovered_at is None else round(recovered_at - killed_at, 1),
        notes=[
            f"{'gunicorn replaced the worker' if victim.worker else 'supervisord restarted it'} after "
            f"{seconds(restarted_at)}; serving, nothing of the killed process left and the transfer {transfer.state} after "
            f"{seconds(recovered_at)}",
            f"REST reader: {rest_n} requests, {len(rest_errors)} errors{_sample(rest_errors)}; "
            f"JSON-RPC reader: {rpc_n} requests, {len(rpc_errors)} errors{_sample(rpc_errors)}",
        ] + ([f"children of the killed process still running: {orphans}"] if orphans else [])
          + ([f"other programs restarted: {others_changed}"] if others_changed else [])
          + ([f"the chain: block {head_before} before the kill, block {_head(stack)} after"] if victim.program == "nodes" else []),
    ))

    assert restarted_at is not None, f"{victim.program} was not restarted: {stack.programs()}\n{stack.log_tail()}"
    assert recovered_at is not None, (f"the stack did not serve again within {RECOVER_TIMEOUT:g} s (transfer: {transfer.state}; "
                                      f"left of the killed process: {orphans})\n{stack.log_tail()}")
    assert not others_changed, f"other programs were restarted too: {others_changed}"
    assert confirmed, transfer.state
    assert rest_ok, f"REST reader: {len(rest_errors)} errors, at most {victim.rest_allowed} allowed: {rest_errors[:5]}"
    assert rpc_ok, f"JSON-RPC reader: {len(rpc_errors)} errors, at most {victim.rpc_allowed} allowed: {rpc_errors[:5]}"
    # The restarted program counts as started (supervisord's startsecs) and nothing else has moved meanwhile.
    wait_for(lambda: whole(stack), SETTLE_TIMEOUT, lambda: f"the stack to be whole again: {stack.programs()}", interval=0.3)
    now = stack.pids()
    assert {p: now.get(p) for p in kept} == {p: before[p] for p in kept}
    record.passed = True


def _sample(errors: list[str]) -> str:
    """The distinct problems among ``errors``, a few of them."""
    distinct = sorted({e[:120] for e in errors})
    return f" ({'; '.join(distinct[:3])}{' …' if len(distinct) > 3 else ''})" if distinct else ""


def _head(stack: UpStack) -> int | None:
    """The pool's block number through the REST API (None when it does not answer)."""
    try:
        status, body = _request(stack.base + "/api/v1/chain/block-number", None, ADMIN_KEY, READ_TIMEOUT)
    except OSError:
        return None
    return int(body["block_number"]) if status == 200 and "block_number" in body else None
