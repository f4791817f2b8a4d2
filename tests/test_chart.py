"""The Helm chart charts/spindle, rendered offline with the real Helm library.

For every variant in VARIANTS (values layered on the chart's defaults):
- `helm lint --strict` finds no warning or error;
- the output matches tests/chart/golden/<variant>.yaml (SPINDLE_UPDATE_GOLDEN=1
  rewrites the files; the failure shows a unified diff);
- every core object validates, strict (unknown fields rejected), against the
  Kubernetes OpenAPI schemas of the chart's minimum version, 1.31 and the
  newest kubernetes-validate ships; the CRD objects (ServiceMonitor,
  PodMonitor, PrometheusRule, ScaledObject), which it has no schemas for,
  against the small schemas in CRD_SCHEMAS, written from their CRDs;
- every container running the spindle image is started as the real binary
  with the same args and env plus `--check`, which must print ok.

Helm comes from PyPI's helm-python-sdk (Helm 4's Go SDK in a shared library),
so no helm binary or cluster is needed.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from chart_crd_schemas import CRD_SCHEMAS
from conftest import BIN, ROOT

CHART = ROOT / "charts" / "spindle"
GOLDEN = ROOT / "tests" / "chart" / "golden"
RELEASE = "spindle"
NAMESPACE = "spindle-test"
UPDATE = os.environ.get("SPINDLE_UPDATE_GOLDEN") == "1"

# Golden renders must be deterministic: every variant that gets a generated
# Redis password fixes it here instead (test_default_redis_password covers
# the generated one).
FIXED_REDIS = {"redis": {"auth": {"password": "golden-redis-password"}}}
SMOLLM2 = {"name": "smollm2", "replicas": 2, "servedModelName": "smollm2"}
STORIES = {
    "name": "stories",
    "replicas": 1,
    "model": "hf:ggml-org/models/tinyllamas/stories260K.gguf",
    "servedModelName": "stories260K",
    "maxSeqs": 8,
}


def _example(name: str) -> dict:
    return yaml.safe_load((CHART / "examples" / f"{name}.yaml").read_text())


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


VARIANTS: dict[str, dict] = {
    "default": FIXED_REDIS,
    "gpu": _deep_merge(FIXED_REDIS, {
        "workers": {"pools": [{
            "name": "llama8b",
            "model": "hf:bartowski/Meta-Llama-3.1-8B-Instruct-GGUF/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf",
            "servedModelName": "llama-3.1-8b-instruct",
            "gpu": {"enabled": True, "count": 2, "layers": 40},
            "runtimeClassName": "nvidia",
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "24Gi"}},
            "modelSource": {"type": "pvc", "pvc": {"size": "20Gi", "storageClassName": "fast-ssd"}},
        }]},
    }),
    "external-redis-url": {
        "redis": {
            "mode": "external",
            "external": {"url": "rediss://redis.example.internal:6380/2"},
            "auth": {"existingSecret": "my-redis", "existingSecretKey": "password"},
        },
    },
    "external-redis-cluster": {
        "redis": {
            "mode": "external",
            "external": {"clusterSeeds": ["redis-0.redis:6379", "redis-1.redis:6379", "redis-2.redis:6379"]},
            "auth": {"password": "cluster-password"},
        },
    },
    "external-redis-url-secret": {
        "redis": {"mode": "external", "external": {"urlSecret": {"name": "redis-url", "key": "url"}}},
    },
    "monitoring": _deep_merge(FIXED_REDIS, {
        "monitoring": {
            "enabled": True,
            "prometheusAnnotations": True,
            "serviceMonitor": {"labels": {"release": "kube-prometheus-stack"}},
            "podMonitor": {"labels": {"release": "kube-prometheus-stack"}},
            "dashboard": {"namespace": "grafana", "annotations": {"grafana_folder": "Spindle"}},
        },
    }),
    "two-pools": _deep_merge(FIXED_REDIS, {
        "workers": {"pools": [
            {**SMOLLM2, "modelSource": {"type": "pvc", "pvc": {"existingClaim": "models", "readOnly": True}}},
            {**STORIES, "modelSource": {"type": "hostPath", "hostPath": {"path": "/srv/models"}}},
        ]},
    }),
    "keda": _deep_merge(FIXED_REDIS, {
        "workers": {"pools": [{**SMOLLM2, "keda": {"enabled": True, "minReplicas": 1, "maxReplicas": 6}}]},
        "keda": {"serverAddress": "http://prometheus.monitoring.svc:9090", "authenticationRef": "prometheus-auth"},
    }),
    "network-policy": _deep_merge(FIXED_REDIS, {
        "networkPolicy": {
            "enabled": True,
            "routerFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        },
    }),
    "auth": _deep_merge(FIXED_REDIS, {
        "auth": {"enabled": True, "apiKeys": ["sk-team-a", "sk-team-b"]},
        "router": {"compactionKeySecret": {"name": "spindle-compaction"}},
    }),
    "router-hpa": _deep_merge(FIXED_REDIS, {
        "router": {
            "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
            "pdb": {"minAvailable": 1},
            "policy": "least-load",
            "dnsInterval": "5s",
            "healthInterval": "2s",
            "service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8"]},
        },
    }),
    # The CPU example has the bundled Redis generate its password.
    "example-cpu": _deep_merge(_example("values-cpu"), FIXED_REDIS),
    "example-gpu": _example("values-gpu"),
}

# The two files the dashboards/alerts owner edits: the golden files show a
# marker in their place (so editing them does not churn every golden file);
# test_monitoring_files_embedded checks they are embedded verbatim.
MASKED_FILES = {
    "files/dashboard.json": (4, "<files/dashboard.json, embedded verbatim>"),
    "files/alerts.yaml": (2, "<files/alerts.yaml, embedded verbatim>"),
}


def _indent(text: str, n: int) -> str:
    """Sprig's indent: every line, empty ones included, gets n spaces."""
    pad = " " * n
    return pad + text.replace("\n", "\n" + pad)


@lru_cache(maxsize=None)
def _render_cached(values_json: str) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE)


def render(values: dict) -> dict[str, str]:
    return _render_cached(json.dumps(values, sort_keys=True))


def documents(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object in a render (NOTES.txt left out)."""
    docs = []
    for path in sorted(rendered):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(rendered[path]) if d]
    return docs


def golden_text(rendered: dict[str, str]) -> str:
    """The render as one YAML stream, like `helm template`, NOTES.txt as comments."""
    out = []
    for path in sorted(rendered):
        if not path.endswith(".yaml"):
            continue
        for doc in re.split(r"(?m)^---\s*$", rendered[path]):
            if yaml.safe_load(doc) is None:
                continue
            out.append(f"---\n# Source: {path}\n{doc.strip(chr(10))}\n")
    text = "".join(out)
    for name, (indent, marker) in MASKED_FILES.items():
        content = (CHART / name).read_text().strip()
        text = text.replace(_indent(content, indent), _indent(marker, indent))
    notes = rendered.get(f"{CHART.name}/templates/NOTES.txt", "")
    text += "---\n# Source: templates/NOTES.txt\n" + "".join(
        f"# {line}".rstrip() + "\n" for line in notes.strip("\n").splitlines()
    )
    return text


# --- lint, golden --------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_strict(variant):
    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [
        {"error": e} for e in report["errors"]
    ]
    assert not problems, json.dumps(problems, indent=2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_golden(variant):
    actual = golden_text(render(VARIANTS[variant]))
    path = GOLDEN / f"{variant}.yaml"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"{path} is missing: run with SPINDLE_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True),
            f"golden/{variant}.yaml", "rendered", n=3,
        ))
        pytest.fail(
            f"render of variant {variant!r} differs from its golden file "
            f"(SPINDLE_UPDATE_GOLDEN=1 accepts it):\n{diff}",
            pytrace=False,
        )


def test_no_stale_golden_files():
    extra = {p.stem for p in GOLDEN.glob("*.yaml")} - set(VARIANTS)
    assert not extra, f"golden files without a variant: {sorted(extra)}"


# --- Kubernetes schemas ----------------------------------------------------


def _k8s_versions() -> list[str]:
    """The chart's minimum (Chart.yaml kubeVersion), 1.31, and the newest shipped."""
    kube = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    minimum = re.search(r">=\s*v?(\d+\.\d+)", kube).group(1)
    latest = kubernetes_validate.utils.latest_version()
    return sorted({f"{minimum}.0", "1.31.0", latest}, key=lambda v: tuple(map(int, v.split(".")[:2])))


def validate_object(doc: dict, version: str) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        jsonschema.Draft7Validator(CRD_SCHEMAS[key]).validate(doc)
    else:
        # SchemaNotFoundError for a kind without a schema is a failure too:
        # nothing is skipped silently.
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_objects_validate(variant):
    failures = []
    for doc in documents(render(VARIANTS[variant])):
        for version in _k8s_versions():
            try:
                validate_object(doc, version)
            except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
                path = ".".join(str(p) for p in e.absolute_path)
                failures.append(f"{doc['kind']}/{doc['metadata']['name']} (k8s {version}): {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {e.message} and no CRD_SCHEMAS entry")
    assert not failures, "\n".join(failures)


def test_validators_reject_unknown_fields():
    """The validation above is not vacuous: a misspelt field fails, core and CRD alike."""
    docs = documents(render(VARIANTS["keda"])) + documents(render(VARIANTS["monitoring"]))
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "ScaledObject", "ServiceMonitor", "PrometheusRule"} <= kinds
    for doc in docs:
        if doc["kind"] in ("Deployment", "ScaledObject", "ServiceMonitor", "PrometheusRule"):
            bad = json.loads(json.dumps(doc))
            bad["spec"]["replicaz"] = 1
            with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
                validate_object(bad, "1.31.0")


# --- what the chart must produce ---------------------------------------------


def _by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _container(workload: dict, name: str) -> dict:
    spec = workload["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_default_redis_password():
    """With no password set, one is generated (32 alphanumerics); all else is the golden default."""
    plain = render({})
    secret = next(d for d in documents(plain) if d["kind"] == "Secret" and d["metadata"]["name"] == "spindle-redis")
    encoded = secret["data"]["redis-password"]
    password = base64.b64decode(encoded).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password), password
    fixed = base64.b64encode(b"golden-redis-password").decode()
    notes = f"{CHART.name}/templates/NOTES.txt"
    assert "password was generated" in plain[notes]
    assert {k: v for k, v in render(FIXED_REDIS).items() if k != notes} == {
        k: v.replace(encoded, fixed) for k, v in plain.items() if k != notes}


def test_router_wiring():
    docs = documents(render(VARIANTS["two-pools"]))
    router = _by_kind(docs, "Deployment")[0]
    pod = router["spec"]["template"]["spec"]
    c = _container(router, "router")
    args = c["args"]
    assert args[0] == "router"
    assert (f"--workers-dns=spindle-worker-smollm2.{NAMESPACE}.svc.cluster.local:8081,"
            f"spindle-worker-stories.{NAMESPACE}.svc.cluster.local:8081") in args
    assert "--store=redis" in args
    # No secret in args; the Redis URL takes the password by env expansion.
    env = _env(c)
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "spindle-redis", "key": "redis-password"}
    assert env["SPINDLE_REDIS_URL"]["value"] == f"redis://:$(REDIS_PASSWORD)@spindle-redis.{NAMESPACE}.svc.cluster.local:6379"
    assert not any("golden-redis-password" in json.dumps(x) for x in (args, env["SPINDLE_REDIS_URL"]))
    # Probes, drain and grace period.
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = int(next(a for a in args if a.startswith("--drain-timeout=")).split("=")[1].rstrip("s"))
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    svc = next(d for d in _by_kind(docs, "Service") if d["metadata"]["name"] == "spindle")
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
        # /metrics off the API port (with API keys it would need one there).
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
    ]
    assert _by_kind(docs, "PodDisruptionBudget")


def test_worker_pools():
    docs = documents(render(VARIANTS["two-pools"]))
    sts = {d["metadata"]["name"]: d for d in _by_kind(docs, "StatefulSet")}
    assert set(sts) == {"spindle-worker-smollm2", "spindle-worker-stories", "spindle-redis"}
    for name in ("spindle-worker-smollm2", "spindle-worker-stories"):
        svc = next(d for d in _by_kind(docs, "Service") if d["metadata"]["name"] == name)
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is False
        assert sts[name]["spec"]["serviceName"] == name
        w = _container(sts[name], "worker")
        assert w["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert w["livenessProbe"]["httpGet"]["path"] == "/health"
        startup = w["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model load needs a long startup budget"
        pod = sts[name]["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > 30 + 5
    stories = _container(sts["spindle-worker-stories"], "worker")
    assert "--model=hf:ggml-org/models/tinyllamas/stories260K.gguf" in stories["args"]
    assert "--served-model-name=stories260K" in stories["args"]
    vols = {v["name"]: v for v in sts["spindle-worker-stories"]["spec"]["template"]["spec"]["volumes"]}
    assert vols["models"]["hostPath"]["path"] == "/srv/models"
    vols = {v["name"]: v for v in sts["spindle-worker-smollm2"]["spec"]["template"]["spec"]["volumes"]}
    assert vols["models"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_download_init_container():
    docs = documents(render(VARIANTS["example-gpu"]))
    sts = next(d for d in _by_kind(docs, "StatefulSet") if "worker" in d["metadata"]["name"])
    init = _container(sts, "download")
    assert init["args"][0] == "download"
    assert any(a.startswith("--model=hf:") for a in init["args"])
    env = _env(init)
    assert env["SPINDLE_CACHE_DIR"]["value"] == "/models"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN"}
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "models"


def test_gpu_pool():
    docs = documents(render(VARIANTS["gpu"]))
    sts = next(d for d in _by_kind(docs, "StatefulSet") if "worker" in d["metadata"]["name"])
    w = _container(sts, "worker")
    assert w["image"] == "spindle:0.1.0-cuda"
    assert w["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "--gpu-layers=40" in w["args"]
    assert sts["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"
    # The CPU image everywhere else.
    router = _by_kind(docs, "Deployment")[0]
    assert _container(router, "router")["image"] == "spindle:0.1.0"


def test_external_redis_urls():
    cluster = _env(_container(_by_kind(documents(render(VARIANTS["external-redis-cluster"])), "Deployment")[0], "router"))
    assert cluster["SPINDLE_REDIS_URL"]["value"] == ",".join(
        f"redis://:$(REDIS_PASSWORD)@redis-{i}.redis:6379" for i in range(3))
    url = _env(_container(_by_kind(documents(render(VARIANTS["external-redis-url"])), "Deployment")[0], "router"))
    assert url["SPINDLE_REDIS_URL"]["value"] == "rediss://:$(REDIS_PASSWORD)@redis.example.internal:6380/2"
    assert url["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "password"}
    docs = documents(render(VARIANTS["external-redis-url-secret"]))
    env = _env(_container(_by_kind(docs, "Deployment")[0], "router"))
    assert env["SPINDLE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis-url", "key": "url"}
    assert "REDIS_PASSWORD" not in env
    for variant in ("external-redis-url", "external-redis-cluster", "external-redis-url-secret"):
        names = {(d["kind"], d["metadata"]["name"]) for d in documents(render(VARIANTS[variant]))}
        assert ("StatefulSet", "spindle-redis") not in names


def test_bundled_redis():
    docs = documents(render(VARIANTS["default"]))
    redis = next(d for d in _by_kind(docs, "StatefulSet") if d["metadata"]["name"] == "spindle-redis")
    c = _container(redis, "redis")
    assert c["image"].startswith("redis:7")
    assert c["args"][c["args"].index("--appendonly") + 1] == "yes"
    assert c["args"][c["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert _env(c)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "spindle-redis"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_auth():
    docs = documents(render(VARIANTS["auth"]))
    secret = next(d for d in _by_kind(docs, "Secret") if d["metadata"]["name"] == "spindle-api-keys")
    assert base64.b64decode(secret["data"]["api-keys"]).decode() == "sk-team-a,sk-team-b"
    router = _by_kind(docs, "Deployment")[0]
    c = _container(router, "router")
    assert _env(c)["SPINDLE_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "spindle-api-keys", "key": "api-keys"}
    assert not any("sk-team" in a for a in c["args"])
    test_pod = next(d for d in _by_kind(docs, "Pod"))
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "SPINDLE_API_KEYS" in _env(test_pod["spec"]["containers"][0])
    script = test_pod["spec"]["containers"][0]["command"][-1]
    assert "/ready" in script and "/v1/responses" in script and r'\"max_output_tokens\": 1' in script


def test_keda():
    docs = documents(render(VARIANTS["keda"]))
    so = _by_kind(docs, "ScaledObject")[0]
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "spindle-worker-smollm2"}
    trigger = so["spec"]["triggers"][0]
    assert trigger["metadata"]["query"] == 'sum(spindle_worker_waiting{model="smollm2"})'
    assert trigger["metadata"]["serverAddress"] == "http://prometheus.monitoring.svc:9090"
    # KEDA owns the replica count.
    sts = next(d for d in _by_kind(docs, "StatefulSet") if d["metadata"]["name"] == "spindle-worker-smollm2")
    assert "replicas" not in sts["spec"]


def test_network_policy():
    docs = documents(render(VARIANTS["network-policy"]))
    pols = {d["metadata"]["name"]: d["spec"] for d in _by_kind(docs, "NetworkPolicy")}
    router_sel = {"app.kubernetes.io/name": "spindle", "app.kubernetes.io/instance": RELEASE,
                  "app.kubernetes.io/component": "router"}
    for name in ("spindle-worker", "spindle-redis"):
        peers = pols[name]["ingress"][0]["from"]
        assert {"podSelector": {"matchLabels": router_sel}} in peers
    assert pols["spindle-worker"]["ingress"][0]["from"][1]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}
    assert len(pols["spindle-redis"]["ingress"][0]["from"]) == 1


def test_monitoring_files_embedded():
    """dashboard.json and alerts.yaml reach the cluster unchanged."""
    docs = documents(render(VARIANTS["monitoring"]))
    cm = next(d for d in _by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "spindle-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "grafana"
    assert json.loads(cm["data"]["spindle.json"]) == json.loads((CHART / "files/dashboard.json").read_text())
    rule = _by_kind(docs, "PrometheusRule")[0]
    assert rule["spec"] == yaml.safe_load((CHART / "files/alerts.yaml").read_text())
    assert {d["kind"] for d in docs} >= {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    # Verbatim, as the golden files' markers say.
    text = "".join(render(VARIANTS["monitoring"]).values())
    for name, (indent, _) in MASKED_FILES.items():
        assert _indent((CHART / name).read_text().strip(), indent) in text, name


def test_notes():
    notes = render(VARIANTS["auth"])[f"{CHART.name}/templates/NOTES.txt"]
    assert f"port-forward svc/spindle 8080:8080" in notes
    assert "/v1/models" in notes and 'base_url="http://127.0.0.1:8080/v1"' in notes
    assert "Authorization: Bearer" in notes


# --- values.schema.json ------------------------------------------------------


@pytest.mark.parametrize("bad, where", [
    ({"workers": {"pools": [{"replicas": 1}]}}, "missing property 'name'"),
    ({"router": {"replicas": "two"}}, "/router/replicas"),
    ({"workers": {"pools": [{"name": "a", "replicas": "two"}]}}, "/workers/pools/0/replicas"),
    ({"workers": {"pools": [{"name": "Bad_Name"}]}}, "/workers/pools/0/name"),
    ({"workers": {"pools": [{"name": "a", "model": "hf:owner/repo"}]}}, "/workers/pools/0/model"),
    ({"workers": {"pools": [{"name": "a", "modelSource": {"type": "s3"}}]}}, "/workers/pools/0/modelSource/type"),
    ({"redis": {"mode": "sentinel"}}, "/redis/mode"),
    ({"redis": {"mode": "external"}}, "/redis"),
    ({"auth": {"enabled": True}}, "/auth"),
    ({"router": {"replica": 2}}, "additional properties 'replica'"),
])
def test_schema_rejects(bad, where):
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as err:
            chart.validate_schema(bad)
        assert where in str(err.value)
        # `helm install`/`template` validate the same way before rendering.
        with pytest.raises(helm.HelmValuesError):
            chart.render(bad, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_schema_accepts_variants(variant):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(VARIANTS[variant])


@pytest.mark.parametrize("values, message", [
    ({"workers": {"pools": [{"name": "a"}, {"name": "a"}]}}, "two pools are named"),
    ({"workers": {"pools": [{"name": "a", "keda": {"enabled": True}}]}}, "servedModelName"),
    ({"router": {"terminationGracePeriodSeconds": 20}}, "terminationGracePeriodSeconds"),
    ({"redis": {"mode": "external", "external": {"url": "redis://u:p@h:6379"}, "auth": {"password": "x"}}},
     "carries credentials"),
    ({"redis": {"mode": "external", "external": {"url": "redis://h:6379"}}}, "needs redis.auth.password"),
])
def test_template_checks(values, message):
    """Mistakes the schema cannot see fail the render with a readable message."""
    with pytest.raises(helm.HelmError) as err:
        render(values)
    assert message in str(err.value)


# --- the args and env are valid for the real binary --------------------------

# What the image sets (Dockerfile ENV).
IMAGE_ENV = {"SPINDLE_HOST": "0.0.0.0", "SPINDLE_CACHE_DIR": "/models"}
# Secret-backed env vars whose value the binary parses get a well-formed dummy.
SECRET_DUMMIES = {"SPINDLE_REDIS_URL": "rediss://:dummy-password@redis.example.internal:6380/0"}
REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def k8s_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined vars are replaced, $$ is a
    literal $, and a reference to an undefined var is left as it is."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return REF.sub(sub, text)


def container_env(pod: dict, container: dict, services: list[dict]) -> dict[str, str]:
    """The env a container starts with: image ENV, Service links unless the
    pod disables them, then its own env in order (each value expanded with
    the vars before it). Secret values are dummies (URL-safe)."""
    env = dict(IMAGE_ENV)
    if pod.get("enableServiceLinks", True):
        for svc in services:
            prefix = svc["metadata"]["name"].upper().replace("-", "_")
            port = svc["spec"]["ports"][0]["port"]
            env[f"{prefix}_SERVICE_HOST"] = "10.0.0.1"
            env[f"{prefix}_SERVICE_PORT"] = str(port)
            env[f"{prefix}_PORT"] = f"tcp://10.0.0.1:{port}"
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = k8s_expand(e["value"], env)
        elif "secretKeyRef" in e.get("valueFrom", {}):
            key = e["valueFrom"]["secretKeyRef"]["key"]
            env[e["name"]] = SECRET_DUMMIES.get(e["name"], "dummy-" + re.sub(r"[^A-Za-z0-9]", "", key))
        else:
            env[e["name"]] = "dummy"
    return env


def spindle_containers(docs: list[dict]):
    """(label, args, env) of every container that runs the spindle image."""
    services = _by_kind(docs, "Service")
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            pod = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            pod = doc["spec"]
        else:
            continue
        for c in pod.get("initContainers", []) + pod["containers"]:
            if not c["image"].split(":")[0].endswith("spindle"):
                continue
            assert "command" not in c, "spindle containers rely on the image's ENTRYPOINT"
            env = container_env(pod, c, services)
            args = [k8s_expand(a, env) for a in c["args"]]
            yield f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}", args, env


def run_check(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: the args check needs the release binary (scripts/test builds it)")
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run([str(BIN), *args, "--check"], env=clean, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_args_accepted_by_binary(variant):
    checked, failures = 0, []
    for label, args, env in spindle_containers(documents(render(VARIANTS[variant]))):
        r = run_check(args, env)
        checked += 1
        if r.returncode != 0 or "ok" not in r.stdout:
            failures.append(f"{label}: spindle {' '.join(args)} --check -> exit {r.returncode}\n"
                            f"{r.stdout}{r.stderr}")
    assert checked >= 2, "expected at least the router and one worker"
    assert not failures, "\n".join(failures)


def test_check_rejects_bad_args():
    """--check really parses: a bad value fails, so the test above is not vacuous."""
    r = run_check(["router", "--port", "not-a-port", "--store", "redis"], {"SPINDLE_REDIS_URL": "redis://h:6379"})
    assert r.returncode == 2, r.stdout + r.stderr
    r = run_check(["worker", "--max-seqs", "many"], {})
    assert r.returncode == 2, r.stdout + r.stderr
