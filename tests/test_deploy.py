"""The deployment: the compose file, Prometheus' scrape config and alert rules, the Grafana
dashboard, and a non-editable install that serves the pages and finds its configs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml
from service_helpers import TOKEN, serve, serve_process, tiny_settings, wait_until

from streamguard.config import load_settings
from streamguard.service import create_app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamguard.json"
METRIC_NAME = re.compile(r"\bstreamguard_[a-z0-9_]+")
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def with_defaults(text: str) -> str:
    """Compose's `${VAR:-default}` interpolation with every variable unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def exported_names(exposition: str) -> set[str]:
    """Every series name in a Prometheus text exposition (samples and HELP/TYPE lines)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_dashboard_and_the_alert_rules_use_only_series_a_live_service_exports(checkpoint, clip):
    queries = dashboard_queries() + [rule["expr"] for rule in alert_rules()]
    used = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert {"streamguard_chunks_dropped_total", "streamguard_store_up"} <= used

    settings = tiny_settings(checkpoint, allow_file_sources=True)
    with serve(create_app(settings)) as service:
        created = service.http.post(
            "/v1/streams", json={"source": "file", "path": str(clip("deploy.mp4", 4.0))}
        )
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        # per-stream series appear once the stream has processed a chunk
        wait_until(lambda: service.stream(stream_id)["stats"]["chunks_processed"] >= 1, "a chunk processed")
        exported = exported_names(service.http.get("/metrics").text)

    missing = {
        name for name in used if name not in exported and HISTOGRAM_SERIES.sub("", name) not in exported
    }
    assert not missing, f"the dashboard or the alert rules query series no worker exports: {sorted(missing)}"


def test_alert_rules_page_for_shed_chunks_a_worker_down_and_redis_down():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) == {"StreamGuardShedRateHigh", "StreamGuardWorkerDown", "StreamGuardRedisDown"}
    shed = rules["StreamGuardShedRateHigh"]
    assert 'reason="shed"' in shed["expr"] and "> 0.05" in shed["expr"] and shed["for"] == "5m"
    assert 'up{job="streamguard"} == 0' in rules["StreamGuardWorkerDown"]["expr"]
    assert "streamguard_store_up == 0" in rules["StreamGuardRedisDown"]["expr"]


def compose_workers(compose: dict) -> dict[str, dict]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image") == "streamguard:local"
    }


def test_the_compose_workers_run_the_cluster_config_against_its_redis():
    compose = yaml.safe_load(COMPOSE.read_text())
    workers = compose_workers(compose)
    assert len(workers) == 2
    for worker in workers.values():
        assert worker["command"][-2:] == ["--config", "cluster"]
        assert worker["environment"]["STREAMGUARD_CLUSTER__REDIS_URL"] == "redis://redis:6379/0"
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    settings = load_settings("cluster")
    assert settings.cluster.redis_url == "redis://redis:6379/0" and settings.service.host == "0.0.0.0"


def test_prometheus_scrapes_every_worker_with_the_token_compose_mounts():
    compose = yaml.safe_load(COMPOSE.read_text())
    prometheus = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == "streamguard"  # the alert rules and the dashboard select this job

    workers = {
        name for name, service in compose["services"].items() if service.get("image") == "streamguard:local"
    }
    targets = {target for group in job["static_configs"] for target in group["targets"]}
    assert targets == {f"{name}:8000" for name in workers} and len(workers) >= 2

    mounted = {config["target"]: config["source"] for config in compose["services"]["prometheus"]["configs"]}
    scrape_token = with_defaults(
        compose["configs"][mounted[job["authorization"]["credentials_file"]]]["content"]
    )
    # an admin's: a user token's /metrics leaves out the streams it did not open
    tokens = json.loads(
        with_defaults(compose["services"]["worker-1"]["environment"]["STREAMGUARD_SERVICE__TOKENS"])
    )
    assert {"token": scrape_token, "name": "prometheus", "role": "admin"} in tokens
    binds = {
        volume.split(":")[1]
        for volume in compose["services"]["prometheus"]["volumes"]
        if volume.startswith("./")
    }
    assert set(prometheus["rule_files"]) <= binds


def test_every_file_the_compose_file_mounts_is_in_the_repository():
    compose = yaml.safe_load(COMPOSE.read_text())
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"


def test_the_compose_file_is_valid():
    """`docker compose config` where Docker Compose exists, else the compose-spec JSON schema."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        command = [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"]
    else:
        checker = shutil.which("check-jsonschema")
        if checker is None:
            pytest.skip("neither Docker Compose nor check-jsonschema is installed")
        command = [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_installed_wheel_serves_the_pages_and_finds_its_configs(tmp_path, checkpoint):
    """A non-editable install (as the compose image makes) carries the web client and the configs."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    # the dependencies (torch, transformers, ...) come from this interpreter's site-packages;
    # the venv's own site-packages, which holds the wheel, comes first
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    (wheel,) = wheels.glob("streamguard-*.whl")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--ignore-installed",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing may be found through the cwd
    elsewhere.mkdir()
    installed = subprocess.run(
        [str(python), "-c", "import streamguard; print(streamguard.__file__)"],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(env_dir) in installed

    env = {
        "PYTHONPATH": "",  # the installed wheel, never a checkout on the path
        "STREAMGUARD_MODEL__PATH": str(checkpoint),
        "STREAMGUARD_SERVICE__TOKENS": json.dumps([TOKEN]),
    }
    with serve_process(
        tmp_path, ["--config", "tiny"], env, command=[str(env_dir / "bin" / "streamguard")]
    ) as served:
        index = served.service.http.get("/")
        assert index.status_code == 200 and "<video" in index.text
        dashboard = served.service.http.get("/dashboard")
        assert dashboard.status_code == 200 and "dashboard" in dashboard.text.lower()
