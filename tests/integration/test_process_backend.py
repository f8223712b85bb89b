"""The process backend against real anvil processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import psutil
import pytest
from eth_account import Account

from errors import ConfigError, NodeStartError
from nodepool.rpc import RpcClient, to_int
from nodepool.spec import ROLE_LEADER
from nodes.anvil import find_anvil
from nodes.process import ProcessBackend, free_port
from settings import DEV_TREASURY_KEY, ROOT
from tests.conftest import make_settings


def test_start_answers_and_reports_state(process_backend):
    spec = process_backend.start("node-0", role=ROLE_LEADER)
    client = RpcClient(spec.url)
    assert to_int(client.call("eth_chainId")) == 31337
    stats = process_backend.stats(spec)
    assert stats.alive
    assert 5 * 1024 * 1024 < stats.memory_bytes < stats.memory_limit_bytes
    assert 0 < stats.memory < 1
    assert psutil.Process(spec.pid).name() == "anvil"


def test_cpu_rises_under_real_load(process_backend):
    spec = process_backend.start("node-0", role=ROLE_LEADER)
    client = RpcClient(spec.url)
    process_backend.stats(spec)  # prime the CPU counter
    time.sleep(0.5)  # the idle window measured: no load for half a second
    idle = process_backend.stats(spec).cpu
    acct = Account.from_key(DEV_TREASURY_KEY)
    deadline = time.monotonic() + 2.0
    nonce = 0
    while time.monotonic() < deadline and nonce < 3000:  # bounded in count and time
        batch = [
            acct.sign_transaction({"chainId": 31337, "nonce": nonce + i, "to": acct.address, "value": 1, "gas": 21000,
                                   "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9}).raw_transaction.to_0x_hex()
            for i in range(50)
        ]
        client.batch([("eth_sendRawTransaction", [raw]) for raw in batch])
        nonce += 50
    busy = process_backend.stats(spec).cpu
    assert busy > idle
    assert busy > 0.05


def test_stop_and_restart(process_backend):
    spec = process_backend.start("node-0", role=ROLE_LEADER)
    client = RpcClient(spec.url)
    client.call("evm_mine")
    assert to_int(client.call("eth_blockNumber")) == 1
    new = process_backend.restart(spec)
    assert (new.port, new.url, new.generation) == (spec.port, spec.url, 1)
    assert new.pid != spec.pid and not psutil.pid_exists(spec.pid)
    assert to_int(RpcClient(new.url).call("eth_blockNumber")) == 0  # anvil keeps state in memory
    process_backend.stop(new)
    assert not process_backend.stats(new).alive


def test_port_in_use_is_a_clear_error(process_backend):
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(NodeStartError, match=f"port {port} .* in use"):
            process_backend.start("node-0", role=ROLE_LEADER, port=port)


def test_missing_anvil_is_a_clear_error(tmp_path):
    settings = make_settings(tmp_path, ESP_ANVIL_BIN=str(tmp_path / "no-anvil"))
    with pytest.raises(ConfigError, match="ESP_ANVIL_BIN"):
        find_anvil(settings)
    with pytest.raises(ConfigError):
        ProcessBackend(settings)


def test_nodes_die_with_their_owner(tmp_path, anvil_binary):
    """A node's parent dying (even by SIGKILL) takes the node down: no orphan anvils."""
    code = (
        "from nodes.process import ProcessBackend; from settings import Settings; import sys, time;"
        f"b = ProcessBackend(Settings.from_env({{'ESP_RUN_DIR': {str(tmp_path)!r}}}));"
        "s = b.start('node-0', role='leader'); print(s.pid, flush=True); time.sleep(60)"
    )
    with subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE) as owner:
        assert owner.stdout is not None
        node = psutil.Process(int(owner.stdout.readline()))
        assert node.name() == "anvil"
        owner.kill()
    # The node is a grandchild of this test: it is gone once the kernel has killed it.
    gone, _ = psutil.wait_procs([node], timeout=5)
    assert gone, "the node outlived the process that started it"
