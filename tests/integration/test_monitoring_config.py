"""compose/'s Prometheus configuration and Grafana dashboard, checked by the tools that read them.

- ``promtool check config`` (Debian's ``prometheus`` package) takes compose/prometheus/prometheus.yml,
  whose targets are the API's and the gateway's loopback ports and the API's service discovery route.
- The dashboard type-checks, with TypeScript, as Grafana's own ``Dashboard`` type (npm's
  ``@grafana/schema``): an unknown field, a misspelt enum value or a missing required one fails.
  (Grafana itself is not packaged by Debian; the metrics the dashboard uses are checked against
  a running stack in test_worker_metrics.)
- The provisioning files point at that dashboard and datasource.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app import create_app
from settings import ROOT, Settings
from tests.conftest import make_settings

PROMETHEUS_YML = ROOT / "compose" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "compose" / "grafana"
DASHBOARD = GRAFANA / "esp-dashboard.json"
TSC = ROOT / "node_modules" / "typescript" / "bin" / "tsc"
GRAFANA_SCHEMA = ROOT / "node_modules" / "@grafana" / "schema" / "package.json"

#: ``Dashboard`` as its JSON is written: a string enum's member as its value ("absolute", not ThresholdsMode.Absolute).
TYPE_CHECK = """import type {{ Dashboard }} from "@grafana/schema";
type Wire<T> = T extends string ? `${{T}}` : T extends Array<infer U> ? Array<Wire<U>>
  : T extends object ? {{ [K in keyof T]: Wire<T[K]> }} : T;
export const dashboard = {json} satisfies Wire<Dashboard>;
"""
TSCONFIG = {"compilerOptions": {"strict": True, "noEmit": True, "module": "nodenext", "moduleResolution": "nodenext",
                                "target": "es2022", "skipLibCheck": True, "types": []}, "files": ["dashboard.ts"]}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (apt-get install prometheus; .ci/run does)")
    return found


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), "check", "config", str(path)], check=False, capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_scrape_config() -> None:
    result = check_config(PROMETHEUS_YML)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_refuses_a_broken_copy(tmp_path: Path) -> None:
    """promtool really reads the file: the same config with one field misspelt fails."""
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS_YML.read_text().replace("http_sd_configs:", "http_sd_config:", 1))
    result = check_config(broken)
    assert result.returncode != 0 and "http_sd_config" in result.stdout + result.stderr


def test_the_scrape_config_targets_the_apis_and_gateways_loopback_ports_and_the_discovery_route(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    defaults = Settings.from_env({})
    assert jobs["esp-api"]["static_configs"][0]["targets"] == [f"127.0.0.1:{defaults.api_port}"]
    assert jobs["esp-rpc"]["static_configs"][0]["targets"] == [f"127.0.0.1:{defaults.rpc_port}"]
    assert jobs["flower"]["static_configs"][0]["targets"] == [f"127.0.0.1:{defaults.flower_port}"]
    (sd,) = jobs["esp-celery"]["http_sd_configs"]
    assert sd["url"] == f"http://127.0.0.1:{defaults.api_port}/api/v1/metrics/targets"
    assert set(sd["authorization"]) == {"type", "credentials_file"}  # the key in a file, never inline nor in the URL
    routes = {rule.rule for rule in create_app(make_settings(tmp_path)).url_map.iter_rules()}
    assert "/api/v1/metrics/targets" in routes and "/metrics" in routes


def type_check(dashboard_json: str, folder: Path) -> subprocess.CompletedProcess[str]:
    for needed, what in ((TSC, "typescript"), (GRAFANA_SCHEMA, "@grafana/schema")):
        if not needed.exists():
            pytest.fail(f"{what} is missing from node_modules: run `npm ci` (package.json's devDependencies)")
    (folder / "dashboard.ts").write_text(TYPE_CHECK.format(json=dashboard_json.strip()))
    (folder / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    (folder / "node_modules").symlink_to(ROOT / "node_modules")
    return subprocess.run(["node", str(TSC), "-p", str(folder / "tsconfig.json")], check=False, capture_output=True,
                          text=True, timeout=120, cwd=folder)


def test_the_dashboard_is_a_grafana_dashboard_by_grafanas_own_types(tmp_path: Path) -> None:
    result = type_check(DASHBOARD.read_text(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("change", "error"), [
    (lambda d: d.update(titel="ESP"), "'\"titel\"' does not exist"),  # an unknown field
    (lambda d: d.pop("schemaVersion"), "schemaVersion"),  # a required one missing
    (lambda d: d["panels"][1]["fieldConfig"]["defaults"]["thresholds"].update(mode="absolut"), "absolut"),  # a bad enum value
])
def test_the_type_check_refuses_a_broken_dashboard(tmp_path: Path, change, error: str) -> None:  # type: ignore[no-untyped-def]
    dashboard = json.loads(DASHBOARD.read_text())
    change(dashboard)
    result = type_check(json.dumps(dashboard, indent=2), tmp_path)
    assert result.returncode != 0 and error in result.stdout, result.stdout + result.stderr


def test_the_dashboard_has_the_panels_operators_look_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in ("esp_pool_lbh", "esp_node_distance", "esp_node_state", "esp_node_zone", "esp_queue_length",
                   "esp_task_duration_seconds_bucket", "esp_task_queue_seconds_bucket", "esp_tasks_total", "esp_recycles_total", "esp_nonce_conflicts_total",
                   "esp_fee_bumps_total", "esp_rpc_requests_total", "esp_rpc_latency_seconds_bucket"):
        assert metric in exprs, metric
    assert "histogram_quantile" in exprs
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_the_provisioning_files_name_the_dashboard_and_the_datasource() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "esp-prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://127.0.0.1:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "esp.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and Path(provider["options"]["path"]).name == DASHBOARD.name
