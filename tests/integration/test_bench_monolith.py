"""The thesis's control (bench/thesis/monolith.py) under gunicorn against one real anvil: every route once, real effects."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from eth_account import Account

from bench.thesis.servers import MonolithServer, SingleNode
from nodepool.rpc import RpcClient, to_int
from settings import DEV_TREASURY_KEY

pytestmark = pytest.mark.slow

TREASURY = Account.from_key(DEV_TREASURY_KEY).address
FUNDING_WEI = 10**17
PASSWORD = "correct horse battery staple"
SINK = "0x000000000000000000000000000000000000dEaD"
UNKNOWN_HASH = "0x" + "ab" * 32
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SingleNode]:
    with SingleNode(tmp_path_factory.mktemp("mono-node"), block_time=0.5) as started:
        yield started


@pytest.fixture(scope="module")
def server(node: SingleNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonolithServer]:
    # Two worker processes: unlocks and nonces must hold across processes, not only threads.
    run_dir: Path = tmp_path_factory.mktemp("mono-run")
    with MonolithServer(node.url, run_dir, workers=2, threads=8, scrypt_n=4096,
                        env={"ESP_FUNDING_WEI": str(FUNDING_WEI)}) as started:
        yield started


@pytest.fixture(scope="module")
def rpc(node: SingleNode) -> Iterator[RpcClient]:
    client = RpcClient(node.url, timeout=5.0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def get(http: requests.Session, server: MonolithServer, path: str) -> requests.Response:
    return http.get(server.url + path, timeout=TIMEOUT)


def post(http: requests.Session, server: MonolithServer, path: str, body: object) -> requests.Response:
    return http.post(server.url + path, json=body, timeout=TIMEOUT)


def balance(rpc: RpcClient, address: str) -> int:
    return to_int(rpc.call("eth_getBalance", [address, "latest"]))


def test_reads_answer_from_the_node(server: MonolithServer, http: requests.Session, rpc: RpcClient) -> None:
    assert get(http, server, "/healthz").json() == {"ok": True}
    assert get(http, server, "/main-account").json() == {"address": TREASURY}
    accounts = get(http, server, "/node-accounts").json()["accounts"]
    assert [a.lower() for a in accounts] == [a.lower() for a in rpc.call("eth_accounts")]
    assert accounts[0] == TREASURY
    head = get(http, server, "/block-number").json()["block_number"]
    assert isinstance(head, int) and abs(head - to_int(rpc.call("eth_blockNumber"))) <= 1
    assert get(http, server, f"/balance/{TREASURY}").json() == {"wei": str(balance(rpc, TREASURY))}
    assert len(server.pids()) == 3  # the master and two workers


def test_account_lifecycle_and_transfer(server: MonolithServer, http: requests.Session, rpc: RpcClient) -> None:
    created = post(http, server, "/accounts", {"password": PASSWORD})
    assert created.status_code == 200, created.text
    address = created.json()["address"]
    # Answered once its funding is mined.
    assert balance(rpc, address) == FUNDING_WEI
    assert address in get(http, server, "/accounts").json()["accounts"]

    locked = post(http, server, "/transactions", {"from": address, "to": SINK, "value_wei": "1"})
    assert locked.status_code == 423, locked.text
    wrong = post(http, server, f"/accounts/{address}/unlock", {"password": "not it", "seconds": 60})
    assert wrong.status_code == 403, wrong.text
    unlocked = post(http, server, f"/accounts/{address}/unlock", {"password": PASSWORD, "seconds": 60})
    assert unlocked.json() == {"address": address, "unlocked": True}

    before = balance(rpc, SINK)
    sent = post(http, server, "/transactions", {"from": address, "to": SINK, "value_wei": "12345"})
    assert sent.status_code == 200, sent.text
    tx_hash = sent.json()["tx_hash"]
    assert balance(rpc, SINK) == before + 12345

    receipt = get(http, server, f"/transactions/{tx_hash}/receipt").json()
    assert receipt["status"] == 1 and receipt["blockNumber"] == sent.json()["block_number"]
    tx = get(http, server, f"/transactions/{tx_hash}").json()
    assert tx["from"] == address and tx["value"] == 12345 and tx["nonce"] == 0


def test_concurrent_treasury_transfers_take_distinct_nonces(server: MonolithServer, http: requests.Session,
                                                            rpc: RpcClient) -> None:
    before = balance(rpc, SINK)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: requests.post(server.url + "/transactions", timeout=TIMEOUT,
                                                        json={"from": TREASURY, "to": SINK, "value_wei": str(i + 1)}),
                                range(12)))
    assert [a.status_code for a in answers] == [200] * 12, [a.text for a in answers if a.status_code != 200]
    nonces = {get(http, server, f"/transactions/{a.json()['tx_hash']}").json()["nonce"] for a in answers}
    assert len(nonces) == 12
    assert balance(rpc, SINK) == before + sum(range(1, 13))


def test_deploy_puts_code_on_chain(server: MonolithServer, http: requests.Session, rpc: RpcClient) -> None:
    deployed = post(http, server, "/contracts", {"name": "PlatformToken"})
    assert deployed.status_code == 200, deployed.text
    body = deployed.json()
    assert len(rpc.call("eth_getCode", [body["contract_address"], "latest"])) > 2
    assert get(http, server, f"/transactions/{body['tx_hash']}/receipt").json()["status"] == 1


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", "/balance/0x1234", None, 422),
    ("GET", f"/transactions/{UNKNOWN_HASH}/receipt", None, 404),
    ("GET", f"/transactions/{UNKNOWN_HASH}", None, 404),
    ("GET", "/transactions/0xnothex", None, 422),
    ("GET", "/no-such-route", None, 404),
    ("POST", "/accounts", {"password": ""}, 422),
    ("POST", "/accounts", ["not", "an", "object"], 422),
    ("POST", f"/accounts/{SINK}/unlock", {"password": PASSWORD, "seconds": 60}, 404),
    ("POST", f"/accounts/{TREASURY}/unlock", {"password": PASSWORD, "seconds": 0}, 422),
    ("POST", "/transactions", {"from": TREASURY, "to": "nowhere", "value_wei": "1"}, 422),
    ("POST", "/transactions", {"from": TREASURY, "to": SINK, "value_wei": "-1"}, 422),
    ("POST", "/transactions", {"from": SINK, "to": SINK, "value_wei": "1"}, 404),
    ("POST", "/contracts", {"name": "NoSuchContract"}, 404),
    ("POST", "/contracts", {"name": "ProjectMarket"}, 422),
])
def test_bad_input_is_a_json_4xx(server: MonolithServer, http: requests.Session, method: str, path: str, body: object,
                                 status: int) -> None:
    answer = http.request(method, server.url + path, json=body, timeout=TIMEOUT)
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    assert "error" in answer.json()
