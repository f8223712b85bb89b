"""The KDF gate: at most N KDFs at once, at most M waiting, the next refused at once (threads; no Redis, no node)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from errors import ConfigError
from tests.waiting import wait_for
from wallet.errors import KdfBusy, WrongPassword
from wallet.kdf import KDF_NICE, KdfGate
from wallet.keystore import Keystore

FAST_N = 2**4


def test_running_and_waiting_are_bounded_and_the_next_is_refused_at_once() -> None:
    gate = KdfGate(running=2, waiting=3)
    release = threading.Event()
    lock = threading.Lock()
    running = peak = 0

    def kdf() -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(10)
        with lock:
            running -= 1
        return threading.get_native_id()

    with ThreadPoolExecutor(max_workers=5) as requests:
        futures = [requests.submit(gate.run, kdf) for _ in range(5)]
        wait_for(lambda: gate.in_flight == 5 and running == 2, 10, "2 KDFs running and 3 waiting", interval=0.005)
        assert gate.is_full
        t0 = time.monotonic()
        with pytest.raises(KdfBusy) as refused:
            gate.run(kdf)
        assert time.monotonic() - t0 < 0.5  # refused at once, not after a wait
        assert refused.value.status == 503 and refused.value.retry_after == 1
        release.set()
        ran_on = {f.result(timeout=10) for f in futures}
    assert peak == 2
    assert len(ran_on) <= 2 and threading.get_native_id() not in ran_on  # on the gate's own threads
    assert gate.in_flight == 0 and not gate.is_full
    gate.close()


def test_the_pool_threads_run_at_a_lower_priority() -> None:
    gate = KdfGate(running=1, waiting=0)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    theirs = gate.run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert theirs == min(mine + KDF_NICE, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the caller keeps its own
    gate.close()


def test_a_failing_kdf_frees_its_place_and_its_error_reaches_the_caller() -> None:
    gate = KdfGate(running=1, waiting=0)

    def fails() -> None:
        raise ValueError("the KDF failed")

    with pytest.raises(ValueError, match="the KDF failed"):
        gate.run(fails)
    assert gate.run(lambda: 42) == 42
    gate.close()


@pytest.mark.parametrize(("running", "waiting"), [(0, 1), (1, -1)])
def test_bounds_must_make_sense(running: int, waiting: int) -> None:
    with pytest.raises(ConfigError):
        KdfGate(running, waiting)


def test_keystore_creation_and_decryption_go_through_the_gate(tmp_path: Path) -> None:
    gate = KdfGate(running=1, waiting=0)
    store = Keystore(tmp_path / "ks", work_factor=FAST_N, gate=gate)
    address = store.create("right password")
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as other:
        holder = other.submit(gate.run, release.wait, 10)  # the process's only place is taken
        wait_for(lambda: gate.is_full, 10, "the gate to be full", interval=0.005)
        with pytest.raises(KdfBusy):
            store.decrypt(address, "right password")
        with pytest.raises(KdfBusy):
            store.create("another password")
        release.set()
        holder.result(timeout=10)
    with pytest.raises(WrongPassword):  # the pool re-raises the KDF's own error: still a wrong password
        store.decrypt(address, "wrong password")
    assert len(store.decrypt(address, "right password")) == 32
    assert store.list() == [address]  # the refused creation left no file
    gate.close()
