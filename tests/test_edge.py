"""The HTTP edge of `spindle serve`, with real processes: every refusal in
the OpenAI error shape (unknown method, URI and headers too large, not
JSON, wrong Host, duplicate keys, deep nesting), request ids, idle and
excess connections closed so a normal request is always answered, and
activity counters kept off the public port."""

from __future__ import annotations

import socket
import time

import pytest

from conftest import STORIES
from router_support import Http, assert_error_body


@pytest.fixture(scope="module")
def http(server_url):
    return Http(server_url)


def test_method_not_allowed_is_an_invalid_request(http):
    err = assert_error_body(http.put("/v1/responses"), 405, code="method_not_allowed")
    assert err["type"] == "invalid_request_error"
    err = assert_error_body(http.get("/v1/nothing-here"), 404, code="unknown_url")
    assert err["type"] == "invalid_request_error"


def test_a_post_must_be_json(http, model):
    body = b'{"model": "%s", "input": "hi"}' % model.encode()
    for ctype in ["text/plain", "application/x-www-form-urlencoded", None]:
        headers = {"content-type": ctype} if ctype else {}
        r = http.post("/v1/responses", content=body, headers=headers)
        assert_error_body(r, 415, code="unsupported_media_type")
    r = http.post("/v1/responses", content=b"{}", headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 400  # JSON accepted: now the body is judged


def test_a_foreign_host_is_refused_on_loopback_without_keys(http):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1."""
    r = http.get("/v1/models", headers={"host": "evil.example:8080"})
    assert_error_body(r, 421, code="invalid_host")
    assert http.get("/v1/models", headers={"host": "localhost"}).status_code == 200


def test_duplicate_keys_and_deep_nesting_are_refused(http, model):
    dup = b'{"model": "%s", "input": [{"role": "user", "role": "system", "content": "hi"}]}' % model.encode()
    r = http.post("/v1/responses", content=dup, headers={"content-type": "application/json"})
    assert_error_body(r, 400, param="input[0].role", code="duplicate_key")
    deep = b'{"model": "m", "metadata": ' + b"[" * 40 + b"]" * 40 + b"}"
    r = http.post("/v1/responses", content=deep, headers={"content-type": "application/json"})
    assert_error_body(r, 400, code="too_deep")


def test_oversized_uri_and_headers_get_shaped_errors(http):
    assert_error_body(http.get("/v1/models?x=" + "a" * 10_000), 414, code="uri_too_long")
    many = {f"x-h{i}": "v" for i in range(150)}
    assert_error_body(http.get("/v1/models", headers=many), 431, code="headers_too_large")
    big = {"x-big": "v" * 40_000}
    assert_error_body(http.get("/v1/models", headers=big), 431, code="headers_too_large")


def test_request_ids_are_echoed_or_made(http):
    r = http.get("/v1/models", headers={"x-request-id": "client-chose-this"})
    assert r.headers["x-request-id"] == "client-chose-this"
    made = http.get("/v1/models").headers["x-request-id"]
    assert made.startswith("req_")
    assert http.get("/v1/models").headers["x-request-id"] != made


def _idle(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    return socks


def test_idle_and_excess_connections_never_block_a_request(spindle):
    s = spindle(["serve", "--port", "0", "--model", str(STORIES), "--threads", "1",
                 "--max-connections", "50", "--header-timeout", "2s"])
    port = int(s.url.rsplit(":", 1)[1])
    held = _idle(port, 80)
    try:
        # Over the cap: one 503 in the OpenAI shape, then closed.
        refused = held[-1]
        refused.settimeout(5)
        answer = refused.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 503") and "too_many_connections" in answer, answer
        # The idle ones are closed by the header timeout...
        first = held[0]
        first.settimeout(5)
        started = time.time()
        assert first.recv(1) == b""
        assert time.time() - started < 4
        # ...so a normal request is answered.
        time.sleep(0.5)
        assert Http(s.url, timeout=10).get("/health").status_code == 200
        assert Http(s.url, timeout=10).get("/v1/models").status_code == 200
    finally:
        for sock in held:
            sock.close()
        s.stop()


def test_metrics_can_move_to_their_own_port(spindle):
    s = spindle(["serve", "--port", "0", "--model", str(STORIES), "--threads", "1", "--metrics-port", "0"])
    metrics_url = next(line.split(" on ")[1].strip() for line in s.log if "spindle metrics on" in line)
    api = Http(s.url, timeout=10)
    assert api.get("/metrics").status_code == 404
    assert api.get("/load").status_code == 404
    ops = Http(metrics_url, timeout=10)
    r = ops.get("/metrics")
    assert r.status_code == 200 and "spindle_router_requests_total" in r.text
    assert ops.get("/load").status_code == 200
    s.stop()


def test_too_many_items_in_one_request(http, model):
    items = [{"role": "user", "content": "x"}] * 2049
    r = http.post("/v1/responses", json={"model": model, "input": items})
    assert_error_body(r, 400, param="input", code="too_many_items")
    r = http.post("/v1/conversations", json={"items": items})
    assert_error_body(r, 400, param="items", code="too_many_items")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024


def test_the_memory_store_is_bounded_in_bytes(spindle):
    """The issue's case: chained background turns of 50 KB each. The store
    keeps at most --store-max-bytes (the gauge says so), the oldest records
    go first, the newest stay, and the process does not grow with the chain."""
    cap = 1 << 20
    s = spindle(["serve", "--port", "0", "--model", str(STORIES), "--threads", "1",
                 "--store-max-bytes", str(cap)])
    api = Http(s.url, timeout=30)
    model = api.get("/v1/models").json()["data"][0]["id"]
    ids, prev, rss = [], None, []
    for turn in range(60):
        body = {"model": model, "input": f"turn {turn} " + "word " * 10_000,
                "background": True, "max_output_tokens": 4, "truncation": "auto"}
        if prev:
            body["previous_response_id"] = prev
        r = api.post("/v1/responses", json=body).json()
        assert "status" in r, r
        while r["status"] in ("queued", "in_progress"):
            time.sleep(0.02)
            r = api.get(f"/v1/responses/{r['id']}").json()
        # stories260K's 512-token context cannot hold 50 KB: each turn fails,
        # and its record (with the input) is stored all the same.
        assert r["status"] in ("completed", "failed"), r
        ids.append(r["id"])
        prev = r["id"]
        rss.append(_rss_mb(s.proc.pid))
    metrics = api.get("/metrics").text
    held = float(next(line.split()[1] for line in metrics.splitlines()
                      if line.startswith("spindle_router_store_bytes ")))
    assert 0 < held <= cap
    assert "spindle_router_store_evictions_total" in metrics
    assert api.get(f"/v1/responses/{ids[0]}").status_code == 404
    assert api.get(f"/v1/responses/{ids[-1]}").status_code == 200
    # Flat over the second half (60 × 50 KB uncapped would be ~6 MB more).
    assert rss[-1] - rss[29] < 4, rss
    s.stop()
