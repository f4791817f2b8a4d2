"""The Grafana dashboard (charts/spindle/files/dashboard.json) against a real
Prometheus scraping a real cluster: redis-server, two `spindle worker`s
(stories260K), one `spindle router --store redis`. After some varied traffic,
every panel query (variables set to "All") must return at least one series,
so a renamed or missing metric fails here rather than showing an empty panel.
The alert rules are loaded into the same Prometheus and must evaluate cleanly.

Needs `prometheus` (Debian package, scripts/setup) and redis-server; missing
tools are failures, not skips."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import openai
import pytest
import yaml

from conftest import STORIES

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = json.loads((ROOT / "charts" / "spindle" / "files" / "dashboard.json").read_text())
ALERTS = ROOT / "charts" / "spindle" / "files" / "alerts.yaml"

# The metric names the binary exports (the interface contract). Every metric
# the dashboard or the alerts use must be one of these.
ROUTER_METRICS = {
    "spindle_router_requests_total", "spindle_router_request_duration_seconds", "spindle_router_ttft_seconds",
    "spindle_router_itl_seconds", "spindle_router_e2e_seconds", "spindle_router_input_tokens_total",
    "spindle_router_output_tokens_total", "spindle_router_cached_tokens_total",
    "spindle_router_routing_decisions_total", "spindle_router_worker_up", "spindle_router_worker_circuit_state",
    "spindle_router_model_ready_workers", "spindle_router_ejections_total", "spindle_router_inflight_streams",
    "spindle_router_background_responses", "spindle_router_store_duration_seconds",
    "spindle_router_store_errors_total", "spindle_router_draining",
}
WORKER_METRICS = {
    "spindle_worker_requests_total", "spindle_worker_waiting", "spindle_worker_running",
    "spindle_worker_max_waiting", "spindle_worker_max_seqs", "spindle_worker_batch_tokens",
    "spindle_worker_step_seconds", "spindle_worker_prefill_tokens_total", "spindle_worker_decode_tokens_total",
    "spindle_worker_kv_usage_ratio", "spindle_worker_prefix_cache_hit_tokens_total",
    "spindle_worker_prefix_cache_query_tokens_total", "spindle_worker_prefix_cache_evictions_total",
    "spindle_worker_rejections_total", "spindle_worker_cancellations_total", "spindle_worker_ttft_seconds",
}
HISTOGRAMS = {"spindle_router_request_duration_seconds", "spindle_router_ttft_seconds", "spindle_router_itl_seconds",
              "spindle_router_e2e_seconds", "spindle_router_store_duration_seconds", "spindle_worker_batch_tokens",
              "spindle_worker_step_seconds", "spindle_worker_ttft_seconds"}
KNOWN = (ROUTER_METRICS | WORKER_METRICS) | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}

# What Grafana would put in for the variables with "All" selected.
SUBSTITUTIONS = {
    "${datasource}": "", "$datasource": "",
    "${model:regex}": ".*", "${model}": ".*", "$model": ".*",
    "${worker:regex}": ".*", "${worker}": ".*", "$worker": ".*",
    "$__rate_interval": "15s", "$__interval": "15s", "$__range": "1m",
}
PROMETHEUS = shutil.which("prometheus")
REDIS = shutil.which("redis-server")


def all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(all_panels(p.get("panels", [])))  # collapsed rows keep theirs inside
    return out


PANELS = [p for p in all_panels(DASHBOARD["panels"]) if p["type"] != "row"]


def substitute(expr: str) -> str:
    for k in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(k, SUBSTITUTIONS[k])
    return expr


def queries() -> list[tuple[str, str]]:
    """(label, expr) for every panel target, variables substituted."""
    return [(f"panel {p['title']!r} target {t['refId']}", substitute(t["expr"])) for p in PANELS for t in p["targets"]]


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(spindle_[a-z_]+)\b", expr))


# ------------------------------------------------------------ static checks
def test_dashboard_variables():
    v = {t["name"]: t for t in DASHBOARD["templating"]["list"]}
    assert list(v) == ["datasource", "model", "worker"]
    assert v["datasource"]["type"] == "datasource" and v["datasource"]["query"] == "prometheus"
    for name in ("model", "worker"):
        assert v[name]["type"] == "query" and v[name]["multi"] and v[name]["includeAll"], name
        assert v[name]["allValue"] == ".*", name
        assert v[name]["datasource"]["uid"] == "${datasource}", name
        assert v[name]["query"].startswith("label_values(spindle_router_"), name


def test_dashboard_layout_and_datasources():
    assert DASHBOARD["uid"] and DASHBOARD["title"] and DASHBOARD["schemaVersion"] >= 36
    ids = [p["id"] for p in all_panels(DASHBOARD["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels(DASHBOARD["panels"]):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert len(rows) >= 6, rows
    for p in PANELS:
        # A provisioned dashboard must not hard-code a datasource uid.
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_queries_use_only_exported_metrics_and_known_variables():
    for label, expr in queries():
        assert "$" not in expr.replace('"$1"', ""), f"{label}: unsubstituted variable in {expr}"
        unknown = metric_names(expr) - KNOWN
        assert not unknown, f"{label}: {unknown} are not exported metrics"
    for r in alert_rules():
        unknown = metric_names(r["expr"]) - KNOWN
        assert not unknown, f"alert {r['alert']}: {unknown} are not exported metrics"
    used = set().union(*(metric_names(e) for _, e in queries()))
    used = {re.sub(r"_(bucket|sum|count)$", "", m) if re.sub(r"_(bucket|sum|count)$", "", m) in HISTOGRAMS else m
            for m in used}
    # The router's view and the workers' view are both on the dashboard.
    assert used & ROUTER_METRICS and used & WORKER_METRICS


# ------------------------------------------------------------ Prometheus
def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in (6379, 9090):
            return port


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def get_json(url: str, timeout: float = 10) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # Prometheus answers bad queries with 400 + JSON
        return json.loads(e.read())


class Prometheus:
    """A real `prometheus` on a free port with a generated config."""

    def __init__(self, tmp: Path, jobs: dict[str, list[str]]):
        assert PROMETHEUS, "prometheus is missing: run scripts/setup (it installs Debian's prometheus package)"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": j, "static_configs": [{"targets": t}]} for j, t in jobs.items()],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(tmp / "prometheus.log", "w+")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"prometheus did not start:\n{self.log.read()}")
            time.sleep(0.1)

    def query(self, expr: str) -> dict:
        return get_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))

    def series(self, expr: str) -> list[dict]:
        r = self.query(expr)
        assert r["status"] == "success", f"{expr}: {r.get('error')}"
        return r["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def test_every_query_and_alert_parses(tmp_path):
    """Syntax only (no targets): Prometheus accepts every panel query and alert
    expression. Runs without the spindle binary."""
    prom = Prometheus(tmp_path, {})
    try:
        bad = []
        for label, expr in queries() + [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]:
            r = prom.query(expr)
            if r["status"] != "success":
                bad.append(f"{label}: {r.get('error')}\n    {expr}")
        assert not bad, "queries Prometheus rejects:\n" + "\n".join(bad)
        rules = get_json(f"{prom.url}/api/v1/rules")["data"]["groups"]
        assert sum(len(g["rules"]) for g in rules) == len(alert_rules()), "Prometheus did not load every alert rule"
    finally:
        prom.stop()


# ------------------------------------------------------------ real cluster
def host_port(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


@pytest.fixture(scope="module")
def redis_url():
    assert REDIS, "redis-server is missing: run scripts/setup"
    port = free_port()
    d = tempfile.mkdtemp(prefix="spindle-redis-dash-")
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    yield f"redis://127.0.0.1:{port}"
    proc.kill()
    proc.wait()
    shutil.rmtree(d, ignore_errors=True)


def drive_traffic(router: str, model: str, seconds: float) -> None:
    """Everything the panels show: errors and a background response first
    (their series then span the whole window), then plain, streaming and
    chained responses and chat completions from two threads, so queues and
    batches have company."""
    client = openai.OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi", max_output_tokens=4)
    req = urllib.request.Request(f"{router}/v1/responses", data=b"{not json", method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400
    # A background response (stored, polled): the background-responses gauge.
    bg = client.responses.create(model=model, input="Once upon a time", max_output_tokens=8, background=True)
    for _ in range(100):
        if client.responses.retrieve(bg.id).status not in ("queued", "in_progress"):
            break
        time.sleep(0.1)

    errors: list[BaseException] = []
    deadline = time.time() + seconds

    def loop(tag: int) -> None:
        try:
            i = 0
            while time.time() < deadline:
                i += 1
                prev = None
                for turn in range(3):  # a chain: later turns hit the owner's prefix cache
                    r = client.responses.create(model=model, input=f"Once upon a time {tag}-{i}-{turn}",
                                                max_output_tokens=8, temperature=0, previous_response_id=prev)
                    prev = r.id
                with client.responses.stream(model=model, input=f"Lily and Tom {tag}-{i}",
                                             max_output_tokens=12, temperature=0) as s:
                    for _ in s:
                        pass
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Hi {tag} {i}"}],
                                               max_tokens=6, temperature=0)
                for _ in client.chat.completions.create(model=model, stream=True, max_tokens=6, temperature=0,
                                                        messages=[{"role": "user", "content": f"Sam {tag} {i}"}]):
                    pass
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"traffic failed: {errors[0]!r}"


@pytest.fixture(scope="module")
def scraped_cluster(spindle, redis_url, tmp_path_factory):
    """(prometheus, router url, worker host:ports) after ~15 s of traffic."""
    workers = [spindle(["worker", "--host", "127.0.0.1", "--port", "0", "--model", str(STORIES), "--threads", "1"])
               for _ in range(2)]
    router = spindle(["router", "--host", "127.0.0.1", "--port", "0", "--workers", ",".join(w.url for w in workers),
                      "--store", "redis", "--redis-url", redis_url, "--health-interval", "200ms"])
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{router.url}/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert time.time() < deadline, f"router never became ready:\n{''.join(router.log)}"
        time.sleep(0.1)
    model = get_json(f"{router.url}/v1/models")["data"][0]["id"]

    # Workers are scraped at the same host:port the router routes to, as in
    # docker-compose and Kubernetes, so `instance` (worker) == `worker` (router).
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), {
        "spindle-router": [host_port(router.url)],
        "spindle-worker": [host_port(w.url) for w in workers],
    })
    try:
        drive_traffic(router.url, model, seconds=15)
        time.sleep(3)  # a few more scrapes, so every counter has 2+ samples in the window
        yield prom, router.url, [host_port(w.url) for w in workers]
    finally:
        prom.stop()
        for p in (router, *workers):  # free the CPU for the rest of the session
            p.stop()


def test_every_panel_query_returns_series(scraped_cluster):
    prom, _, _ = scraped_cluster
    down = [t for t in get_json(f"{prom.url}/api/v1/targets")["data"]["activeTargets"] if t["health"] != "up"]
    assert not down, f"targets not scraped: {[(t['scrapeUrl'], t['lastError']) for t in down]}"
    empty = []
    for label, expr in queries():
        if not prom.series(expr):
            missing = sorted(m for m in metric_names(expr) if not prom.series(f"count({m})"))
            why = f"metrics absent from /metrics: {missing}" if missing else "metrics exist but no series match"
            empty.append(f"{label}: {why}\n    {expr}")
    assert not empty, "panels with no data against a real cluster:\n" + "\n".join(empty)


def test_worker_variable_joins_router_and_worker_views(scraped_cluster):
    """The `worker` variable filters router metrics by `worker` and worker
    metrics by `instance`: both must name the same host:port values."""
    prom, _, workers = scraped_cluster
    routed = {s["metric"]["worker"] for s in prom.series("spindle_router_worker_up")}
    scraped = {s["metric"]["instance"] for s in prom.series("spindle_worker_waiting")}
    assert routed == scraped == set(workers), (routed, scraped, workers)
    values = get_json(f"{prom.url}/api/v1/label/model/values?"
                      + urllib.parse.urlencode({"match[]": "spindle_router_model_ready_workers"}))["data"]
    assert values, "the `model` variable would have no values"


def test_alert_rules_evaluate_and_stay_quiet_on_a_healthy_cluster(scraped_cluster):
    prom, _, _ = scraped_cluster
    groups = get_json(f"{prom.url}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(alert_rules())
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken, f"alert rules failing to evaluate: {broken}"
    for r in alert_rules():
        assert prom.series(r["expr"]) == [], f"{r['alert']} would fire on a healthy cluster"


def panel_series(prom: Prometheus, title: str, ref: str = "A") -> list[dict]:
    [p] = [p for p in PANELS if p["title"] == title]
    [t] = [t for t in p["targets"] if t["refId"] == ref]
    return prom.series(substitute(t["expr"]))


def test_panels_show_the_traffic(scraped_cluster):
    """Not just any series: the panels reflect what drive_traffic did."""
    prom, _, _ = scraped_cluster
    statuses = {s["metric"]["status"] for s in panel_series(prom, "Errors by status code")}
    assert {"400", "404"} <= statuses, statuses
    [rate] = panel_series(prom, "Request rate")
    assert float(rate["value"][1]) > 0
    # Chains continue on their owner, whose prefix cache then hits.
    [hit] = panel_series(prom, "Cluster prefix-cache hit ratio")
    assert 0 < float(hit["value"][1]) <= 1, hit
    reasons = {s["metric"]["reason"] for s in panel_series(prom, "Routing decisions by reason")}
    assert "owner" in reasons, reasons
    for q in panel_series(prom, "Time to first token", "C"):  # p99: a real latency, not NaN
        assert 0 < float(q["value"][1]) < 60, q
