"""The operators' dashboard in a real browser: Debian's Chromium, driven by Playwright, against the stack ``make up`` runs.

The stack is ``scripts/up.sh`` (gunicorn, workers, beat with the monitor, Flower, 3 anvil nodes).
The page must show nothing without a key, refuse a wrong one, draw every node in the state
plane, and move when load is applied: the nodes' points, the request and transaction rates.
The screenshot lands in ESP_ARTIFACTS_DIR (default run/artifacts/), which CI keeps.

Needs /usr/bin/chromium (``apt-get install chromium``; .ci/run installs it): without it the
tests fail, they do not skip. Playwright's own browser download is never used.
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from settings import ROOT
from tests.conftest import DB_DASHBOARD
from tests.upstack import UpStack, get_json, stack_processes
from tests.waiting import wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# Tests may read the environment: where CI collects the run's artifacts (settings.py is the app's only reader).
ARTIFACTS = Path(os.environ.get("ESP_ARTIFACTS_DIR") or ROOT / "run" / "artifacts")
ADMIN_KEY = "dashboard-admin-key"
NODES = ["node-0", "node-1", "node-2"]
TREASURY = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # anvil's dev account 0, the devnet's treasury
TRANSFERS = 60


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpStack]:
    up = UpStack(tmp_path_factory.mktemp("dashboard"), DB_DASHBOARD, ESP_ADMIN_KEY=ADMIN_KEY)
    try:
        yield up
    finally:
        up.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the dashboard's tests need Debian's Chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1560, "height": 1000})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        page.close()
    assert not errors, f"the page's script failed: {errors}"


def call(stack: UpStack, method: str, path: str, body: Any = None, key: str | None = ADMIN_KEY) -> tuple[int, Any]:
    """One request to the running API: (status, JSON body)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(stack.base + path, method=method, headers=headers,  # noqa: S310 - loopback only
                                     data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback only
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def dashboard_data(stack: UpStack) -> dict[str, Any]:
    status, body = call(stack, "GET", "/api/v1/dashboard")
    assert status == 200, body
    return body


def positions(page: Page) -> dict[str, tuple[float, float]]:
    """Every node drawn in the plane: id -> its (memory, cpu)-plane coordinates as the page drew them."""
    drawn = page.eval_on_selector_all(
        "#plane g.node[data-x]", "gs => gs.map(g => [g.dataset.node, +g.dataset.x, +g.dataset.y])")
    return {node: (x, y) for node, x, y in drawn}


# -- the JSON behind the page ---------------------------------------------------------------------------


def test_dashboard_data_is_for_admins_only(stack: UpStack) -> None:
    assert call(stack, "GET", "/api/v1/dashboard", key=None)[0] == 401
    assert call(stack, "GET", "/api/v1/dashboard", key="esp_not_a_key")[0] == 401
    status, created = call(stack, "POST", "/api/v1/keys", {"name": "viewer", "role": "user"})
    assert status == 201, created
    status, refused = call(stack, "GET", "/api/v1/dashboard", key=created["key"])
    assert status == 403 and refused["field"] == "Authorization", refused
    status, refused = call(stack, "GET", "/api/v1/dashboard?since=yesterday")
    assert status == 400 and refused["field"] == "since", refused

    body = wait_for(lambda: (b := dashboard_data(stack))["series"] and b, 30, "the monitor's first snapshots", interval=0.5)
    assert [n["id"] for n in body["nodes"]] == NODES
    assert all(n["plane"] is not None for n in body["nodes"]), body["nodes"]
    assert body["queues"] == ["esp.control", "esp.deploy", "esp.accounts", "esp.calls"]
    assert body["flower_url"] == f"http://127.0.0.1:{stack.flower_port}"
    newest = body["series"][-1]
    assert set(newest["queues"]) == set(body["queues"]) and newest["requests"] is not None, newest
    since = call(stack, "GET", f"/api/v1/dashboard?since={newest['t']}")[1]["series"]
    assert all(p["t"] > newest["t"] for p in since), since


def test_page_and_uplot_are_served_without_a_key(stack: UpStack) -> None:
    for path, kind in (("/dashboard", "text/html"), ("/dashboard/assets/dashboard.js", "javascript"),
                       ("/dashboard/vendor/uPlot.iife.min.js", "javascript"), ("/dashboard/vendor/uPlot.min.css", "text/css")):
        with urllib.request.urlopen(stack.base + path, timeout=10) as response:  # noqa: S310 - loopback only
            assert response.status == 200 and kind in response.headers["Content-Type"], (path, response.headers["Content-Type"])
            assert ADMIN_KEY.encode() not in response.read()
    assert get_json(stack.base + "/dashboard/vendor/uPlot.esm.js")[0] == 404  # only the two files the page loads


# -- the page -------------------------------------------------------------------------------------------


def test_without_a_key_the_page_shows_no_pool_data(stack: UpStack, page: Page) -> None:
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/" in r.url else None)
    page.goto(stack.base + "/dashboard")
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#board")).to_be_hidden()
    page.wait_for_load_state("networkidle")
    assert page.locator("[data-node]").count() == 0
    assert "node-0" not in page.content()
    assert asked == [], f"the page asked the API without a key: {asked}"


def test_a_wrong_key_shows_an_error(stack: UpStack, page: Page) -> None:
    page.goto(stack.base + "/dashboard")
    page.fill("#key-input", "esp_wrong_key")
    page.click("#key-form button[type=submit]")
    error = page.locator("#key-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("not valid")
    expect(page.locator("#board")).to_be_hidden()
    assert page.locator("[data-node]").count() == 0
    assert page.evaluate("sessionStorage.getItem('esp.dashboard.key')") is None


def test_the_plane_shows_every_node_and_moves_under_load(stack: UpStack, page: Page) -> None:
    page.goto(stack.base + "/dashboard")
    page.fill("#key-input", ADMIN_KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#board")).to_be_visible()
    def every_node() -> dict[str, tuple[float, float]] | None:
        now = positions(page)
        return now if sorted(now) == NODES else None

    drawn = wait_for(every_node, 30,
                     lambda: f"every node in the plane; drawn: {positions(page)}", interval=0.2)
    expect(page.locator("#flower-link")).to_have_attribute("href", f"http://127.0.0.1:{stack.flower_port}")
    expect(page.locator("#chart-lbh canvas")).to_have_count(1)
    confirmed_before = dashboard_data(stack)["series"][-1]["confirmed"] or 0

    stop = threading.Event()

    def read_load() -> None:
        while not stop.is_set():
            call(stack, "GET", "/api/v1/chain/block-number")

    def rpc_load() -> None:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": [TREASURY, "latest"]}).encode()
        while not stop.is_set():
            request = urllib.request.Request(stack.rpc_url, data=body, headers={  # noqa: S310 - loopback only
                "Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_KEY}"})
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback only
                assert "result" in json.loads(answer.read())

    with ThreadPoolExecutor(6) as readers:
        loads = [readers.submit(read_load) for _ in range(3)] + [readers.submit(rpc_load)]
        try:
            # Plain accounts (0xda5b…): the lowest addresses are precompiles, some of which revert a bare transfer.
            transfers = [{"from": TREASURY, "to": f"0xda5b{i + 1:036x}", "value_wei": "1"} for i in range(TRANSFERS)]
            status, accepted = call(stack, "POST", "/api/v1/transactions/batch", {"transactions": transfers})
            assert status == 202, accepted

            def moved() -> bool:
                now = positions(page)
                return sorted(now) == NODES and now != drawn

            wait_for(moved, 30, lambda: f"a node to move in the plane: before {drawn}, now {positions(page)}", interval=0.2)
            wait_for(lambda: float(page.get_attribute("#rps-now", "data-value") or 0) > 0, 30,
                     lambda: f"the request rate to rise: {page.inner_text('#pool-status')}", interval=0.2)
            wait_for(lambda: float(page.get_attribute("#tps-now", "data-value") or 0) > 0, 90,
                     lambda: f"confirmed transactions per second to rise: {page.inner_text('#pool-status')}", interval=0.3)
        finally:
            stop.set()
        for load in loads:
            load.result()  # a load that failed says why here
    newest = dashboard_data(stack)["series"][-1]
    assert newest["rpc"] and newest["requests"], newest  # the gateway's calls and the API's requests were counted

    ids = [t["id"] for t in accepted["tasks"]]

    def records() -> list[dict[str, Any]]:
        status, found = call(stack, "POST", "/api/v1/tasks/lookup", {"ids": ids})
        assert status == 200, found
        return list(found["tasks"])

    def states() -> list[str]:
        return [t["state"] for t in records()]

    wait_for(lambda: all(s in ("confirmed", "failed") for s in states()), 120,
             lambda: f"every transfer of the batch to be final: {states()}", interval=0.5)
    confirmed = states().count("confirmed")
    assert confirmed == TRANSFERS, [t["error"] for t in records() if t["state"] != "confirmed"]
    wait_for(lambda: (dashboard_data(stack)["series"][-1]["confirmed"] or 0) >= confirmed_before + confirmed, 10,
             lambda: f"the confirmed total to count the batch: {confirmed_before} + {confirmed}, now "
                     f"{dashboard_data(stack)['series'][-1]['confirmed']}", interval=0.5)
    expect(page.locator("#tasks a.task-link").first).to_be_visible()
    page.locator("#tasks a.task-link").first.click()
    expect(page.locator("#task-detail")).to_contain_text('"state"')
    for node in NODES:
        expect(page.locator(f'#node-table tr[data-node-row="{node}"]')).to_have_count(1)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    def drawn_at() -> list[str | None]:
        return [page.get_attribute(f'#plane g[data-node="{node}"] circle.dot', "cx") for node in NODES]

    whole = drawn_at()
    page.click("#plane-zoom")  # idle nodes sit by the origin: zoomed, the same points spread out
    expect(page.locator("#plane-note")).to_contain_text("zoomed")
    assert drawn_at() != whole
    page.locator(".plane-card").screenshot(path=str(ARTIFACTS / "dashboard-plane-zoomed.png"))


def test_a_node_being_recycled_is_marked_in_zone_iii_and_its_events_listed(stack: UpStack, page: Page) -> None:
    page.goto(stack.base + "/dashboard")
    page.fill("#key-input", ADMIN_KEY)
    page.click("#key-form button[type=submit]")
    node = page.locator('#plane g[data-node="node-2"]')
    expect(node).to_have_attribute("data-status", "up", timeout=30_000)
    port = dashboard_data(stack)["nodes"][2]["url"].rsplit(":", 1)[1]
    anvils = [p for p in stack_processes(stack.run_dir) if p.name() == "anvil" and port in p.cmdline()]
    assert len(anvils) == 1, [p.cmdline() for p in anvils]
    anvils[0].kill()  # node-2 dies: down, zone III, then drained and restarted by the recycler

    def marked() -> bool:
        return node.get_attribute("data-status") in ("draining", "recycling") and node.locator("circle.busy-ring").count() == 1

    wait_for(marked, 60, lambda: f"node-2 to be drawn as draining or recycling; it is {node.get_attribute('data-status')}",
             interval=0.1)
    expect(node).to_have_class(re.compile(r"\bzone-III\b"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-recycling.png"), full_page=True)
    expect(page.locator("#events")).to_contain_text("recycle-draining", timeout=10_000)
    expect(node).to_have_attribute("data-status", "up", timeout=120_000)  # restarted, caught up, serving again
    expect(page.locator("#events")).to_contain_text("recycle-done")
    assert node.locator("circle.busy-ring").count() == 0
