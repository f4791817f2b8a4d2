"""docker-compose.yml without Docker: it is valid against the Compose
Specification schema (vendored in tests/schemas/), every Spindle command in it
is accepted by the real binary (`spindle --check ...`), its healthcheck works
against a real worker, and what it mounts exists and fits together
(Prometheus scrapes workers at the addresses the routers use; Grafana loads the
chart's dashboard)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import BIN, STORIES

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
SPINDLE = {name: s for name, s in SERVICES.items() if s.get("image") == "spindle:local"}


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each bind mount (short syntax, source starting with ./)."""
    out = []
    for v in service.get("volumes", []):
        src, dst = v.split(":")[:2]
        if src.startswith("./"):
            out.append((src, dst))
    return out


def test_compose_file_matches_the_compose_spec_schema():
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_services_fit_together():
    # One build, reused by name: every Spindle role runs the same image.
    built = [n for n, s in SERVICES.items() if "build" in s]
    assert built == ["model-init"], built
    assert {"model-init", "router-1", "router-2", "worker-1", "worker-2", "worker-3"} <= set(SPINDLE)
    for name, s in SERVICES.items():
        for dep in s.get("depends_on", {}):
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
    for name, s in SPINDLE.items():
        if s["command"][0] == "worker":
            assert s["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
            assert "models:/models" in s["volumes"] and s["environment"]["SPINDLE_CACHE_DIR"] == "/models"
        if s["command"][0] == "router":
            assert "--redis-url" not in s["command"], "pass the Redis URL by env (it can hold a password)"
            assert s["environment"]["SPINDLE_REDIS_URL"].startswith("redis://redis:")
    published = [p.split(":")[0] for s in SERVICES.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), f"host port published twice: {published}"
    assert "--appendonly" in SERVICES["redis"]["command"] and "redis-data:/data" in SERVICES["redis"]["volumes"]


def test_mounted_files_exist_and_are_the_ones_prometheus_and_grafana_expect():
    for name, s in SERVICES.items():
        for src, _ in mounts(s):
            assert (ROOT / src).is_file(), f"{name} mounts {src}, which is not a file in the repo"
    prom = dict((dst, src) for src, dst in mounts(SERVICES["prometheus"]))
    config = yaml.safe_load((ROOT / prom["/etc/prometheus/prometheus.yml"]).read_text())
    # The rule glob picks up the mounted alert rules.
    rule_dirs = {os.path.dirname(g) for g in config["rule_files"]}
    assert any(os.path.dirname(dst) in rule_dirs and src.endswith("alerts.yaml") for dst, src in prom.items())

    # Workers are scraped at exactly the host:port the routers route to, so
    # the worker's `instance` label equals the router's `worker` label.
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]] for j in config["scrape_configs"]}
    for name, s in SPINDLE.items():
        cmd = s["command"]
        if cmd[0] == "router":
            routed = [u.removeprefix("http://") for u in cmd[cmd.index("--workers") + 1].split(",")]
            assert sorted(routed) == sorted(jobs["spindle-worker"]), (routed, jobs["spindle-worker"])
    ports = {n: s["command"][s["command"].index("--port") + 1] for n, s in SPINDLE.items() if "--port" in s["command"]}
    # Routers are scraped on their --metrics-port (with API keys, /metrics on
    # the API port would need a key).
    metrics_ports = {n: s["command"][s["command"].index("--metrics-port") + 1]
                     for n, s in SPINDLE.items() if "--metrics-port" in s["command"]}
    assert sorted(jobs["spindle-router"]) == sorted(f"{n}:{p}" for n, p in metrics_ports.items() if n.startswith("router"))
    assert {n for n in SPINDLE if n.startswith("router")} <= set(metrics_ports)
    assert "redis-exporter:9121" in jobs["redis"]

    graf = dict((dst, src) for src, dst in mounts(SERVICES["grafana"]))
    providers = yaml.safe_load((ROOT / graf["/etc/grafana/provisioning/dashboards/spindle.yaml"]).read_text())
    paths = {p["options"]["path"] for p in providers["providers"]}
    dash = [dst for dst, src in graf.items() if src == "./charts/spindle/files/dashboard.json"]
    assert dash and os.path.dirname(dash[0]) in paths, (dash, paths)
    ds = yaml.safe_load((ROOT / graf["/etc/grafana/provisioning/datasources/spindle.yaml"]).read_text())
    assert [d["type"] for d in ds["datasources"]] == ["prometheus"]
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


@pytest.mark.parametrize("name", sorted(SPINDLE))
def test_spindle_commands_use_real_flags(name):
    """`spindle --check <command>` parses and validates the service's flags
    (with its environment, e.g. SPINDLE_REDIS_URL) and loads nothing."""
    s = SPINDLE[name]
    assert BIN.exists(), f"{BIN} is missing: build the release binary first (scripts/test does)"
    env = {**os.environ, **{k: str(v) for k, v in s.get("environment", {}).items()}}
    r = subprocess.run([str(BIN), "--check", *s["command"]], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "ok" in r.stdout, f"{name}: {s['command']}\n{r.stdout}{r.stderr}"


def test_check_rejects_a_bad_flag():
    # Otherwise the test above would prove nothing.
    r = subprocess.run([str(BIN), "--check", "router", "--no-such-flag"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stdout + r.stderr


def healthcheck(service: str, port: int) -> list[str]:
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"], test
    script = re.sub(r"/dev/tcp/127\.0\.0\.1/\d+", f"/dev/tcp/127.0.0.1/{port}", test[3])
    return ["bash", "-c", script]


def test_worker_healthcheck_needs_a_ready_worker(spindle):
    """The curl-less healthcheck (bash /dev/tcp) passes against a real ready
    worker and fails where nothing listens."""
    w = spindle(["worker", "--host", "127.0.0.1", "--port", "0", "--model", str(STORIES), "--threads", "1"])
    port = int(w.url.rsplit(":", 1)[1].rstrip("/"))
    ok = subprocess.run(healthcheck("worker-1", port), capture_output=True, text=True, timeout=10)
    assert ok.returncode == 0, ok.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    bad = subprocess.run(healthcheck("worker-1", dead), capture_output=True, text=True, timeout=10)
    assert bad.returncode != 0


def test_compose_prometheus_config_passes_promtool():
    import shutil

    exe = shutil.which("promtool")
    assert exe, "promtool is missing: run scripts/setup (it installs Debian's prometheus package)"
    r = subprocess.run([exe, "check", "config", str(ROOT / "deploy" / "compose" / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
