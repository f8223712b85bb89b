"""A node on another chain id given to ESP by mistake: refused at registration, naming the URL and both chain ids.

Two anvils, one on ESP_CHAIN_ID and one on another chain; ``python -m nodes`` and the preflight
``make up`` runs (``scripts.preflight``) both stop with one clear line, and nothing is registered.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodepool.registry import NodeRegistry
from nodes.process import ProcessBackend, free_port
from settings import ROOT
from tests.conftest import DB_APP, child_env, fresh_redis, make_settings, redis_url
from tests.reliability.report import FaultRecord, Report

OTHER_CHAIN = 4242


@pytest.fixture
def two_chains(tmp_path: Path, anvil_binary: Path) -> Iterator[tuple[str, str]]:
    ours = ProcessBackend(make_settings(tmp_path / "ours", ESP_BLOCK_TIME="0"))
    theirs = ProcessBackend(make_settings(tmp_path / "theirs", ESP_BLOCK_TIME="0", ESP_CHAIN_ID=str(OTHER_CHAIN)))
    try:
        yield ours.start("ours", role="leader").url, theirs.start("theirs", role="leader").url
    finally:
        ours.close()
        theirs.close()


def test_a_node_on_another_chain_is_refused_at_registration(tmp_path: Path, two_chains: tuple[str, str],
                                                             report: Report) -> None:
    good, wrong = two_chains
    redis_client = fresh_redis(DB_APP)
    env = child_env(ESP_REDIS_URL=redis_url(DB_APP), ESP_RUN_DIR=str(tmp_path / "run"), ESP_NODE_BACKEND="static",
                    ESP_NODE_URLS=f"{good},{wrong}", ESP_API_PORT=str(free_port()), ESP_RPC_PORT=str(free_port()),
                    ESP_FLOWER_PORT=str(free_port()))
    answers = {}
    t0 = time.monotonic()
    for module in ("nodes", "scripts.preflight"):
        done = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        answers[module] = (done.returncode, done.stderr.strip().splitlines())
    took = time.monotonic() - t0
    registered = NodeRegistry(redis_client).all()
    record = report.add(FaultRecord(
        fault=f"a node on chain {OTHER_CHAIN} listed with nodes of ESP_CHAIN_ID=31337 (ESP_NODE_URLS)",
        load="the node manager's start and make up's preflight", requests=2, client_errors=0,
        recover_s=None, notes=[f"{module} exited {code}: {lines[-1] if lines else ''}" for module, (code, lines) in answers.items()]
        + [f"both refused within {took:.1f} s; nodes registered: {len(registered)}"],
    ))
    for module, (code, lines) in answers.items():
        assert code != 0 and lines, (module, code, lines)
        last = lines[-1]
        assert wrong in last and f"chain id {OTHER_CHAIN}" in last and "ESP_CHAIN_ID=31337" in last, (module, last)
        assert good not in last, (module, last)
        assert "Traceback" not in "\n".join(lines), (module, lines)
    assert registered == []
    record.passed = True
