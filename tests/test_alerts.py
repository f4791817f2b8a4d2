"""The Prometheus alert rules (charts/spindle/files/alerts.yaml): promtool
accepts them and their unit tests in tests/prometheus/ pass, and every alert
has a test. promtool comes from Debian's `prometheus` package (scripts/setup
installs it); a missing promtool is a failure, not a skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "charts" / "spindle" / "files" / "alerts.yaml"
UNIT_TESTS = sorted((ROOT / "tests" / "prometheus").glob("*.yaml"))


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: run scripts/setup (it installs Debian's prometheus package)"
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def alerts() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_rules_pass_promtool_check():
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr


def test_rule_unit_tests_pass():
    assert UNIT_TESTS, "no promtool unit tests in tests/prometheus/"
    r = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_severity_annotations_and_unit_tests():
    tested: dict[str, set[bool]] = {}
    for f in UNIT_TESTS:
        for case in yaml.safe_load(f.read_text()).get("tests", []):
            for t in case.get("alert_rule_test", []):
                tested.setdefault(t["alertname"], set()).add(bool(t.get("exp_alerts")))
    for a in alerts():
        name = a["alert"]
        assert a.get("labels", {}).get("severity") in ("critical", "warning", "info"), name
        assert a.get("annotations", {}).get("summary") and a["annotations"].get("description"), name
        assert a.get("for"), f"{name} has no `for:`: it would page on a single scrape"
        assert tested.get(name) == {True, False}, f"{name} needs a firing and a not-firing promtool test"


def test_rules_are_plain_yaml_for_the_chart():
    # The chart embeds this file with .Files.Get (not templated); Helm-style
    # actions other than Prometheus' own `{{ $labels.x }}` / `{{ $value }}` /
    # `{{ printf ... }}` would be a sign someone meant Helm templating here.
    import re

    for expr in re.findall(r"\{\{(.*?)\}\}", RULES.read_text()):
        assert re.match(r"\s*(\$labels\.|\$value|printf )", expr), f"unexpected template {{{{{expr}}}}}"
