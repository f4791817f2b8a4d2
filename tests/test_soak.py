"""`spindle bench soak` as a test: its own Redis (AOF), 3 workers on
stories260K and 2 routers under 32 clients for 60 s with the default faults
(a worker SIGKILLed, one SIGTERMed, one SIGSTOPped, Redis SIGKILLed, a router
SIGKILLed; each restarted). The bench audits every request against the
stream protocol and the store and exits non-zero when the audit fails.

It needs the bench build, which the shipped binary is not: scripts/test
builds `--features bench` and keeps it as target/release/spindle-bench."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from conftest import ROOT, STORIES

BENCH_BIN = Path(os.environ.get("SPINDLE_BENCH_BIN", ROOT / "target" / "release" / "spindle-bench"))
KINDS = {"stream", "plain", "follow_up", "background", "background_stream", "cancel",
         "disconnect", "conversation"}


def test_soak_with_faults_passes_its_audit(tmp_path):
    assert BENCH_BIN.exists(), (
        f"{BENCH_BIN} is missing: scripts/test builds it "
        "(cargo build --release --features bench, then copies target/release/spindle there)")
    assert STORIES.exists(), f"{STORIES} is missing"
    out = tmp_path / "soak.json"
    # Its own session: on a timeout the whole group (bench and children) goes.
    proc = subprocess.Popen(
        [str(BENCH_BIN), "bench", "soak", "--duration", "60s", "--faults", "default",
         "--model", str(STORIES), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"soak did not finish in 300 s:\n{stdout}\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"soak failed (rc {proc.returncode}):\n{stdout}\n{stderr[-4000:]}"

    doc = json.loads(out.read_text())
    assert doc["scenario"] == "soak"
    r = doc["results"]
    assert r["passed"] is True and r["audit"]["violations"] == 0, stdout
    # Every fault happened and its target came back.
    assert [f["action"] for f in r["faults"]] == [
        "kill-worker", "term-worker", "stop-worker", "kill-redis", "kill-router"]
    assert all(f["recovered"] is not None and f["error"] is None for f in r["faults"]), r["faults"]
    # Every behaviour ran, and most calls finished despite the faults.
    assert set(r["requests"]) == KINDS, r["requests"]
    totals = r["requests_total"]
    finished = totals.get("completed", 0) + totals.get("incomplete", 0)
    assert totals["total"] >= 500 and finished >= totals["total"] // 2, totals
    assert r["audit"]["checked_ids"] >= finished
    assert r["ttft_ms"]["n"] > 0 and r["ttft_ms"]["p50"] > 0
    # Memory was sampled for every process: redis, 3 workers, 2 routers.
    assert len(r["rss"]) == 6, r["rss"].keys()
