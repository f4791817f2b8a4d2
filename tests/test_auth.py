"""API keys, the worker token and per-tenant limits against real processes:
a key file (reloaded on SIGHUP), a worker that refuses calls without its
token while a router that has it works, and one tenant's flood refused
with 429 + Retry-After while another tenant's request still succeeds."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import SMOLLM, STORIES
from router_support import wait_ready


def call(url: str, body: dict | None = None, key: str | None = None, timeout: float = 120):
    """(status, headers, JSON body) of a GET (no body) or POST."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            headers = {k.lower(): v for k, v in r.headers.items()}
            return r.status, headers, (json.loads(raw) if raw.strip().startswith(b"{") else raw)
    except urllib.error.HTTPError as e:
        headers = {k.lower(): v for k, v in e.headers.items()}
        return e.code, headers, json.loads(e.read() or b"{}")


CHAT = {"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 4}


def test_worker_token_is_required_and_the_router_sends_it(procs, tmp_path):
    token = tmp_path / "worker-token"
    token.write_text("w-secret-123\n")
    worker = procs(["worker", "--port", "0", "--model", str(STORIES), "--threads", "1",
                    "--worker-token-file", str(token)])
    status, _, body = call(f"{worker.url}/v1/chat/completions", CHAT)
    assert status == 401 and body["error"]["code"] == "invalid_api_key", body
    assert call(f"{worker.url}/v1/chat/completions", CHAT, key="wrong")[0] == 401
    assert call(f"{worker.url}/v1/chat/completions", CHAT, key="w-secret-123")[0] == 200
    for open_path in ("/health", "/ready", "/load", "/metrics", "/v1/models"):
        assert call(f"{worker.url}{open_path}")[0] == 200, open_path
    # A router with the token generates through the worker; one without cannot.
    router = procs(["router", "--port", "0", "--workers", worker.url,
                    "--worker-token-file", str(token)])
    wait_ready(router.url)
    status, _, body = call(f"{router.url}/v1/chat/completions", CHAT)
    assert status == 200 and body["choices"][0]["message"]["content"] is not None, body
    status, _, body = call(f"{router.url}/v1/responses", {"input": "Once", "max_output_tokens": 4})
    assert status == 200 and body["status"] in ("completed", "incomplete"), body
    tokenless = procs(["router", "--port", "0", "--workers", worker.url])
    wait_ready(tokenless.url)  # probes need no token
    status, _, body = call(f"{tokenless.url}/v1/chat/completions", CHAT)
    assert status >= 400, body


def test_key_file_is_reloaded_on_sighup(procs, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# tenants\nteam-a:key-a\n")
    server = procs(["serve", "--port", "0", "--model", str(STORIES), "--threads", "1",
                    "--api-keys-file", str(keys)])
    assert call(f"{server.url}/v1/models")[0] == 401
    assert call(f"{server.url}/v1/models", key="key-a")[0] == 200
    keys.write_text("team-a:key-a2\n")
    server.signal(signal.SIGHUP)
    deadline = time.time() + 10
    while call(f"{server.url}/v1/models", key="key-a2")[0] != 200:
        assert time.time() < deadline, "SIGHUP did not reload the key file"
        time.sleep(0.1)
    assert call(f"{server.url}/v1/models", key="key-a")[0] == 401
    # A broken file keeps the keys in force, and the process lives on.
    keys.write_text("not a key line\n")
    server.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert server.proc.poll() is None
    assert call(f"{server.url}/v1/models", key="key-a2")[0] == 200


def test_one_tenants_flood_does_not_starve_another(procs, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("flood:key-flood\nquiet:key-quiet\n")
    server = procs(["serve", "--port", "0", "--model", str(SMOLLM), "--threads", "2",
                    "--api-keys-file", str(keys), "--tenant-max-concurrent", "2"])
    long = {"messages": [{"role": "user", "content": "Write a long story about a dragon."}],
            "max_tokens": 200, "stream": True, "ignore_eos": True}
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def flood():
        status, headers, _ = call(f"{server.url}/v1/chat/completions", long, key="key-flood")
        with lock:
            results.append((status, headers))

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for t in threads:
        t.start()
    # While the flood's admitted streams run, the other tenant is served.
    time.sleep(0.5)
    status, _, body = call(f"{server.url}/v1/chat/completions", CHAT, key="key-quiet")
    assert status == 200, body
    for t in threads:
        t.join(timeout=300)
    statuses = sorted(s for s, _ in results)
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1, statuses
    assert set(statuses) <= {200, 429}, statuses
    for s, headers in results:
        if s == 429:
            assert int(headers["retry-after"]) >= 1
    status, _, body = call(f"{server.url}/v1/chat/completions", long | {"stream": False, "max_tokens": 2},
                           key="key-flood")
    assert status == 200, body
    # With keys set, /metrics needs one too (or --metrics-port).
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server.url}/metrics", timeout=10)
    assert e.value.code == 401
    scrape = urllib.request.Request(f"{server.url}/metrics", headers={"authorization": "Bearer key-quiet"})
    metrics = urllib.request.urlopen(scrape, timeout=10).read().decode()
    line = next(l for l in metrics.splitlines()
                if l.startswith('spindle_router_rate_limited_total{reason="concurrency"}'))
    assert float(line.split()[-1]) >= 1
