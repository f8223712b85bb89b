"""The Celery processes' own /metrics, found through the API's service discovery, and the dashboard's metrics.

A real stack (tests/stack.py: a private Redis, a 3-node devnet, a solo control worker, beat and
a prefork write worker of two children, each a real ``celery -A tasks.worker`` process): each
registers its exporter in Redis, the API lists them for Prometheus (admin only), and each
serves what its processes counted, once its tasks ran: the platform's deploy in the write
worker's children, the monitor and the other beat tasks in the control worker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

from nodes.process import free_port
from services.exporters import EXPORTERS_KEY, ROLE_BEAT, ROLE_CONTROL, ROLE_WORKER, Exporter, ExporterRegistry, http_sd
from settings import ROOT, Settings
from tasks.metrics_dir import shared_base, use_metrics_dir
from tasks.routing import TASK_CLASSES
from tests.conftest import DB_WORKER_METRICS, fresh_redis, stop_process
from tests.stack import LocalStack
from tests.waiting import wait_for

ADMIN_KEY = "worker-metrics-admin-key"
DASHBOARD = ROOT / "compose" / "grafana" / "esp-dashboard.json"
PROMETHEUS_YML = ROOT / "compose" / "prometheus" / "prometheus.yml"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(address: str) -> Samples:
    response = requests.get(f"http://{address}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


# -- the registry and the metrics folder (before the stack, which takes the same Redis DB) -----------


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = fresh_redis(DB_WORKER_METRICS)
    yield client
    client.close()


def test_an_exporter_without_heartbeat_lapses_after_its_ttl(r: redis.Redis) -> None:
    registry = ExporterRegistry(r)
    a, b = Exporter(ROLE_WORKER, "127.0.0.1:40001"), Exporter(ROLE_WORKER, "127.0.0.1:40002")
    registry.register(a, now=1000.0, ttl=30)
    registry.register(b, now=1000.0, ttl=30)
    registry.register(a, now=1020.0, ttl=30)  # a's heartbeat; b's stopped (killed)

    assert set(registry.live(now=1029.0)) == {a, b}
    assert registry.live(now=1031.0) == [a]
    assert r.zcard(EXPORTERS_KEY) == 1  # b's entry is gone, not merely hidden
    with pytest.raises(ValueError, match="role"):
        registry.register(Exporter("flower", "127.0.0.1:1"))


def test_http_sd_groups_targets_by_role() -> None:
    exporters = [Exporter(ROLE_WORKER, "10.0.0.2:9101"), Exporter(ROLE_BEAT, "127.0.0.1:9300"),
                 Exporter(ROLE_WORKER, "127.0.0.1:9100")]
    assert http_sd(exporters) == [
        {"targets": ["127.0.0.1:9300"], "labels": {"role": "beat"}},
        {"targets": ["10.0.0.2:9101", "127.0.0.1:9100"], "labels": {"role": "worker"}},
    ]
    assert http_sd([]) == []


def test_a_metrics_folder_no_process_holds_is_removed_and_a_held_one_kept(tmp_path: Path) -> None:
    script = ("import sys, time; from settings import Settings; from tasks.metrics_dir import shared_base, use_metrics_dir; "
              "print(use_metrics_dir(Settings.from_env({'ESP_RUN_DIR': sys.argv[1]})), flush=True); time.sleep(float(sys.argv[2]))")
    base = tmp_path / "prometheus-celery"
    stale = base / "4242-killed"
    stale.mkdir(parents=True)
    (stale / ".owner.lock").touch()
    (stale / "counter_4242.db").write_bytes(b"old")
    being_made, half_made = base / ".making-now", base / ".making-long-ago"  # hidden: not yet locked by their maker
    being_made.mkdir()
    half_made.mkdir()
    os.utime(half_made, (time.time() - 120, time.time() - 120))  # older than MAKING_GRACE: its maker was killed
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), "30"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        held = Path(holder.stdout.readline().strip())
        assert held.parent == base and not held.name.startswith(".") and not stale.exists()
        assert being_made.exists() and not half_made.exists()

        done = subprocess.run([sys.executable, "-c", script, str(tmp_path), "0"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30, check=True)

        assert held.exists()  # another process's, alive
        assert not Path(done.stdout.strip()).exists()  # the one that ended removed its own
    finally:
        holder.kill()
        holder.communicate()


SWEEP_WHILE_LOCKING = """
import fcntl, sys
from settings import Settings
from tasks import metrics_dir

real_flock, swept, calls = fcntl.flock, [], []

def flock_after_a_sweep(f, op):  # another process sweeps at the worst moment: just before this one locks
    calls.append(op)
    if len(calls) == 1:  # this process's own lock: the sweep's probes (flock too) go straight through
        base = metrics_dir.shared_base(settings)
        swept.extend(str(old) for old in base.iterdir() if old.is_dir() and metrics_dir._is_left_over(old))
        for old in swept:
            metrics_dir.shutil.rmtree(old, ignore_errors=True)
    return real_flock(f, op)

settings = Settings.from_env({"ESP_RUN_DIR": sys.argv[1]})
metrics_dir.fcntl.flock = flock_after_a_sweep
path = metrics_dir.use_metrics_dir(settings)
print(path.is_dir(), swept)
"""


def test_a_sweep_between_the_making_and_the_locking_of_a_folder_leaves_it(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SWEEP_WHILE_LOCKING, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True []", done.stdout


def test_a_folder_of_another_user_is_left_to_it() -> None:
    """In compose the control worker (root) and unprivileged workers share one run folder: a worker starting after
    the control worker must make its folder beside root's, and neither fail on nor remove the one it may not open."""
    if os.geteuid() != 0:
        pytest.fail("this test makes a folder only root may open: run it as root (CI does)")
    run_dir = Path(tempfile.mkdtemp(prefix="esp-metrics-users-"))  # pytest's own tmp folders are root's alone
    try:
        run_dir.chmod(0o755)
        base = shared_base(Settings.from_env({"ESP_RUN_DIR": str(run_dir)}))  # as a root process makes it first
        roots = base / "1-control"
        roots.mkdir(mode=0o700)
        (roots / ".owner.lock").touch()
        child = os.fork()
        if child == 0:  # an unprivileged process starting its metrics folder (pytest's code never runs past _exit)
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                made = use_metrics_dir(Settings.from_env({"ESP_RUN_DIR": str(run_dir)}))
                code = 0 if made.parent == base else 2
            except BaseException as exc:
                os.write(2, f"{exc!r}\n".encode())
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert roots.exists()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# -- a real stack ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack(tmp_path_factory.mktemp("worker-metrics"), DB_WORKER_METRICS, name="wmetrics", ESP_ADMIN_KEY=ADMIN_KEY)
    try:
        s.wait_platform()  # a deploy ran in a child of the write worker; the control worker ran beat's tasks
        yield s
    finally:
        s.close()


def targets(stack: LocalStack) -> dict[str, list[str]]:
    response = stack.client(admin=True).get("/api/v1/metrics/targets")
    assert response.status_code == 200, response.get_data(as_text=True)
    groups = response.get_json()
    for group in groups:
        assert set(group) == {"targets", "labels"} and set(group["labels"]) == {"role"}
    return {group["labels"]["role"]: group["targets"] for group in groups}


def by_role(stack: LocalStack) -> dict[str, str]:
    """The one exporter of each role (the stack runs one of each), once all three registered."""
    def all_three() -> dict[str, list[str]] | None:
        found = targets(stack)
        return found if set(found) == {ROLE_WORKER, ROLE_CONTROL, ROLE_BEAT} else None

    found = wait_for(all_three, 30, lambda: f"worker, control and beat to register their exporters: {targets(stack)}")
    assert all(len(addresses) == 1 for addresses in found.values()), found
    return {role: addresses[0] for role, addresses in found.items()}


def test_the_targets_are_for_admins_only(stack: LocalStack) -> None:
    assert stack.client(None).get("/api/v1/metrics/targets").status_code == 401
    assert stack.client().get("/api/v1/metrics/targets").status_code == 403  # a user's key


def test_worker_control_and_beat_each_register_a_loopback_exporter_on_a_port_of_its_own(stack: LocalStack) -> None:
    exporters = by_role(stack)

    ports = set()
    for address in exporters.values():
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1"  # ESP_WORKER_METRICS_HOST's default
        ports.add(int(port))
    assert len(ports) == 3 and 0 not in ports  # port 0 asked for a free one each
    for address in exporters.values():
        assert scrape(address)  # each answers with the text format


def test_the_write_worker_shows_what_its_children_ran_by_class(stack: LocalStack) -> None:
    samples = scrape(by_role(stack)[ROLE_WORKER])

    assert samples["esp_tasks_total", (("class", "deploy"), ("outcome", "succeeded"))] >= 1  # the platform's deploy
    assert samples["esp_task_duration_seconds_count", (("class", "deploy"),)] >= 1
    assert samples["esp_task_duration_seconds_sum", (("class", "deploy"),)] > 0
    # Each task that ran had waited, stamped by whoever sent it (here the control worker, ensuring the platform).
    assert samples["esp_task_queue_seconds_count", (("class", "deploy"),)] == samples["esp_task_duration_seconds_count", (("class", "deploy"),)]
    for cls in TASK_CLASSES:  # every class shown from the start, a control task never ran here
        assert ("esp_tasks_total", (("class", cls), ("outcome", "failed"))) in samples
        assert samples["esp_tasks_running", (("class", cls),)] == 0  # livesum over the children, none running now
    assert samples["esp_tasks_total", (("class", "control"), ("outcome", "succeeded"))] == 0
    assert samples["esp_nonce_conflicts_total", ()] >= 0  # declared by wallet.nonces, in the processes that send
    assert not [name for name, labels in samples for key, _ in labels if key in ("task_id", "address", "node_url")]


def test_the_control_worker_shows_its_tasks_and_the_monitors_samples(stack: LocalStack) -> None:
    address = by_role(stack)[ROLE_CONTROL]
    before = scrape(address)["esp_monitor_sample_seconds_count", ()]

    samples = wait_for(lambda: s if (s := scrape(address))["esp_monitor_sample_seconds_count", ()] > before else None, 15,
                       "the control worker to count another pool sample")

    assert samples["esp_tasks_total", (("class", "control"), ("outcome", "succeeded"))] > 0
    assert samples["esp_task_duration_seconds_count", (("class", "control"),)] > 0
    assert time.time() - samples["esp_monitor_last_sample_timestamp_seconds", ()] < 10
    assert samples["esp_monitor_sample_seconds_sum", ()] > 0
    assert ("esp_recycles_total", (("event", "started"),)) in samples


def test_a_prefork_child_that_was_killed_loses_its_live_gauge_but_not_its_counts(stack: LocalStack) -> None:
    address = by_role(stack)[ROLE_WORKER]
    folder = next((stack.tmp / "prometheus-celery").glob(f"{stack.writers[0].pid}-*"))  # named after its main process
    children = {int(m.group(1)) for f in folder.iterdir() if (m := re.match(r"gauge_livesum_(\d+)\.db$", f.name))}
    assert children, list(folder.iterdir())
    counted = scrape(address)["esp_tasks_total", (("class", "deploy"), ("outcome", "succeeded"))]
    dead = 2 ** 22 + 12345  # a pid no process has (above the default pid_max): as a child SIGKILLed long ago
    (folder / f"gauge_livesum_{dead}.db").write_bytes((folder / f"gauge_livesum_{min(children)}.db").read_bytes())

    samples = scrape(address)

    assert not (folder / f"gauge_livesum_{dead}.db").exists()  # dropped at the scrape
    assert samples["esp_tasks_total", (("class", "deploy"), ("outcome", "succeeded"))] == counted


# -- the Grafana dashboard's metrics exist -------------------------------------------------------


#: PromQL words that are not metric names.
_PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "by", "without", "on", "ignoring", "histogram_quantile",
    "time", "clamp_min", "clamp_max", "abs", "le", "or", "and", "unless", "bool", "topk", "bottomk", "offset", "vector",
    "label_replace", "delta", "deriv", "max_over_time", "min_over_time", "avg_over_time", "last_over_time", "group_left",
    "group_right", "scalar", "sort", "sort_desc", "round", "absent", "changes", "resets", "count_over_time",
}


#: Series Prometheus makes itself for every target (no exporter shows them).
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def dashboard_metrics() -> set[str]:
    """Every metric name the dashboard's PromQL expressions use (label values, matchers and durations taken out)."""
    dashboard = json.loads(DASHBOARD.read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r'"[^"]*"', "", target["expr"])  # label values
            expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
            expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
            expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # grouping labels
            names |= {word for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
                      if word not in _PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]?", word)}
    return names


def test_every_metric_the_dashboard_uses_is_exposed_by_the_running_stack(stack: LocalStack) -> None:
    rpc_url = stack.serve_rpc()
    answer = requests.post(rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []},
                           headers={"Authorization": f"Bearer {stack.user_key}"}, timeout=10)
    assert "result" in answer.json(), answer.text
    exporters = by_role(stack)

    exposed: set[str] = set()
    for address in exporters.values():  # real processes of their own: what they show, they declare
        exposed |= {name for name, _ in scrape(address)}
    # The API and the gateway run in this test's process, whose default registry holds every metric any module
    # imported here declares: only what the API reads from Redis (its collector), and samples the gateway counted
    # (labelled: they exist because a request was counted), say something about those two.
    api = parse(stack.client().get("/metrics").get_data(as_text=True))
    exposed |= {name for name, _ in api if name.startswith(("esp_node_", "esp_pool_", "esp_queue_", "esp_snapshot_",
                                                             "esp_receipts_"))}
    gateway = parse(requests.get(rpc_url.removesuffix("/rpc") + "/metrics", timeout=10).text)
    exposed |= {name for name, labels in gateway if name.startswith("esp_rpc_") and labels}

    used = dashboard_metrics() - PROMETHEUS_OWN
    assert len(used) >= 10, used  # the parse found the expressions
    assert used <= exposed, f"the dashboard uses metrics no exporter shows: {sorted(used - exposed)}"


# -- a real Prometheus, with compose/'s config, finds and scrapes the workers ----------------------


def prometheus_config(stack: LocalStack, api: str, rpc: str, key_file: Path) -> dict:
    """compose/prometheus/prometheus.yml with the test's ports (the API and gateway are on free ports here) and
    faster intervals; everything else (jobs, paths, the discovery route and how it is authorised) as shipped."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["esp-api"]["static_configs"][0]["targets"] = [api]
    jobs["esp-rpc"]["static_configs"][0]["targets"] = [rpc]
    (sd,) = jobs["esp-celery"]["http_sd_configs"]
    sd["url"] = sd["url"].replace("127.0.0.1:8000", api)
    sd["refresh_interval"] = "1s"
    sd["authorization"]["credentials_file"] = str(key_file)
    config["scrape_configs"] = [job for name, job in jobs.items() if name != "flower"]  # no Flower in this stack
    return config


def query(web: str, promql: str) -> list[dict] | None:
    """The result of an instant query; None while Prometheus does not answer yet (starting: no socket, or a 503)."""
    try:
        response = requests.get(f"http://{web}/api/v1/query", params={"query": promql}, timeout=5)
    except requests.ConnectionError:
        return None
    if response.status_code != 200:
        return None
    result: list[dict] = response.json()["data"]["result"]
    return result


def test_a_real_prometheus_with_the_shipped_config_discovers_and_scrapes_every_process(stack: LocalStack, tmp_path: Path) -> None:
    """... and then answers every query of the dashboard with data."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: install Debian's prometheus package (apt-get install prometheus; .ci/run does)")
    api_server = make_server("127.0.0.1", 0, stack.app, threaded=True)
    threading.Thread(target=api_server.serve_forever, daemon=True).start()
    rpc = stack.serve_rpc().removeprefix("http://").removesuffix("/rpc")
    key_file = tmp_path / "esp-admin.key"
    key_file.write_text(ADMIN_KEY)
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(stack, f"127.0.0.1:{api_server.server_port}", rpc, key_file)))
    web = f"127.0.0.1:{free_port()}"
    with open(tmp_path / "prometheus.log", "ab") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address={web}"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ups() -> dict[tuple[str, str], float] | None:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            answer = query(web, "up")
            if answer is None:
                return None
            found = {(r["metric"]["job"], r["metric"].get("role", "")): float(r["value"][1]) for r in answer}
            wanted = {("esp-api", ""), ("esp-rpc", ""), ("esp-celery", ROLE_WORKER), ("esp-celery", ROLE_CONTROL),
                      ("esp-celery", ROLE_BEAT)}
            return found if set(found) >= wanted and all(found[k] == 1 for k in wanted) else None

        def targets_now() -> str:
            try:
                return requests.get(f"http://{web}/api/v1/targets", timeout=5).text[-3000:]
            except requests.ConnectionError:
                return (tmp_path / "prometheus.log").read_text()[-3000:]

        wait_for(ups, 60, lambda: f"Prometheus to scrape the API, the gateway, a worker, the control worker and beat: {targets_now()}")

        def deploys() -> float | None:
            result = query(web, 'sum(esp_tasks_total{job="esp-celery", class="deploy", outcome="succeeded"})')
            return float(result[0]["value"][1]) if result else None

        assert wait_for(deploys, 30, "Prometheus to hold the write worker's count of deploys") >= 1

        # Every query of the dashboard parses (Prometheus answers 400 to one that does not) and has data.
        requests.post(f"http://{rpc}/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
                      headers={"Authorization": f"Bearer {stack.user_key}"}, timeout=10).raise_for_status()
        exprs = [t["expr"].replace("$node", ".*") for panel in json.loads(DASHBOARD.read_text())["panels"]
                 for t in panel.get("targets", [])]
        for expr in exprs:
            response = requests.get(f"http://{web}/api/v1/query", params={"query": expr}, timeout=5)
            assert response.status_code == 200, f"{expr}: {response.text}"

        wait_for(lambda: all(query(web, expr) for expr in exprs), 30,
                 lambda: "every dashboard query to return data; still empty: " + str([e for e in exprs if not query(web, e)]))
    finally:
        stop_process(proc)
        api_server.shutdown()


def test_a_second_worker_registers_a_port_of_its_own_and_a_stopped_one_leaves_the_list(stack: LocalStack) -> None:
    """As ``--scale worker=2`` on one host: two exporters, two ports; a worker stopped deregisters as it ends."""
    first = by_role(stack)[ROLE_WORKER]
    stack.start_writers(1)
    second = stack.writers[-1]

    workers = wait_for(lambda: w if len(w := targets(stack).get(ROLE_WORKER, [])) == 2 else None, 30,
                       lambda: f"the second worker to register: {targets(stack)}")
    assert first in workers and len({address.rsplit(":", 1)[1] for address in workers}) == 2
    for address in workers:
        assert ("esp_tasks_total", (("class", "deploy"), ("outcome", "succeeded"))) in scrape(address)

    stop_process(second)
    stack.writers.remove(second)

    wait_for(lambda: targets(stack).get(ROLE_WORKER) == [first], 10,  # well within the TTL: it deregistered
             lambda: f"the stopped worker to leave the list: {targets(stack)}")
