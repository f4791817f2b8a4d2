"""ARCHITECTURE.md's metrics table against live `/metrics` output, both ways:
every documented metric is exported with exactly its documented labels, and
every exported `spindle_*` metric is documented.

A router (memory store) in front of a stories260K worker and a dead worker
address (so ejection and circuit metrics exist) gets foreground, streaming,
background and failing requests first, so event-driven series exist too."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import defaultdict

import openai

from conftest import ROOT, STORIES


def documented() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, labels) from the table under '## Metrics'."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`(spindle_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if m:
            labels = {l.strip() for l in m.group(3).split(",") if l.strip()}
            out[m.group(1)] = (m.group(2), labels)
    return out


def exported(url: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (type, union of label names) from a Prometheus text page."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    types = {}
    labels: dict[str, set[str]] = defaultdict(set)
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+\S+$", line)
            assert m, f"unparseable metrics line: {line}"
            name = m.group(1)
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
                    name = name[: -len(suffix)]
            names = set(re.findall(r"(?:^|,)(\w+)=\"", m.group(3) or "")) - {"le"}
            labels[name] |= names
    return {n: (types.get(n, "untyped"), labels[n]) for n in labels if n.startswith("spindle_")}


def test_metrics_table_matches_live_output(spindle):
    worker = spindle(["worker", "--port", "0", "--model", str(STORIES), "--threads", "1"])
    router = spindle(["router", "--port", "0", "--workers", f"{worker.url},http://127.0.0.1:1",
                      "--health-interval", "200ms", "--eject-after", "1"])
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60)
    r = client.responses.create(model="stories260K", input="Once upon a time", max_output_tokens=8)
    client.responses.create(model="stories260K", input="And then", max_output_tokens=8, previous_response_id=r.id)
    for _ in client.responses.create(model="stories260K", input="Lily", max_output_tokens=8, stream=True):
        pass
    bg = client.responses.create(model="stories260K", input="Tom", max_output_tokens=8, background=True)
    deadline = time.time() + 30
    while client.responses.retrieve(bg.id).status in ("queued", "in_progress") and time.time() < deadline:
        time.sleep(0.1)
    try:
        client.responses.create(model="no-such-model", input="x")
    except openai.NotFoundError:
        pass

    docs = documented()
    assert len(docs) > 30, "the metrics table was not found in ARCHITECTURE.md"
    live = {**exported(worker.url), **exported(router.url)}
    undocumented = sorted(set(live) - set(docs))
    missing = sorted(set(docs) - set(live))
    assert not undocumented, f"exported but not in ARCHITECTURE.md: {undocumented}"
    assert not missing, f"documented but not exported: {missing}"
    for name, (kind, labels) in docs.items():
        assert live[name][0] == kind, f"{name}: documented {kind}, exported {live[name][0]}"
        assert live[name][1] == labels, f"{name}: documented labels {labels}, exported {live[name][1]}"
