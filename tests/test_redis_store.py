"""Two `spindle router --store redis` processes sharing one real redis-server
(started here on a free port, never 6379) in front of one worker: any replica
answers for any record; tenants are isolated; Redis down is a 503."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import urllib.error

import pytest

from conftest import STORIES, free_port

@pytest.fixture(scope="module")
def stories_worker(spindle) -> str:
    return spindle(["worker", "--port", "0", "--model", str(STORIES), "--threads", "1"]).url


@pytest.fixture(scope="module")
def replicas(spindle, stories_worker, redis_server):
    _, port = redis_server
    url = f"redis://127.0.0.1:{port}"
    # Keys never go in argv: a key file, one tenant per key.
    keys = tempfile.NamedTemporaryFile("w", suffix=".keys", delete=False)
    keys.write("tenant-a:key-a\ntenant-b:key-b\n")
    keys.close()
    common = ["router", "--port", "0", "--worker-url", stories_worker, "--store", "redis",
              "--redis-url", url, "--api-keys-file", keys.name]
    return spindle(common).url, spindle(common).url


def call(method: str, url: str, body: dict | None = None, key: str | None = "key-a"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def js(r):
    return r[0], json.loads(r[1]) if r[1].startswith("{") else r[1]


GEN = {"max_output_tokens": 8, "temperature": 0}


def test_any_replica_answers(replicas):
    a, b = replicas
    code, r1 = js(call("POST", f"{a}/v1/responses", {"input": "Once upon a time", **GEN}))
    assert code == 200, r1
    code, got = js(call("GET", f"{b}/v1/responses/{r1['id']}"))
    assert code == 200 and got["status"] == r1["status"] and got["output"] == r1["output"]
    code, r2 = js(call("POST", f"{b}/v1/responses",
                       {"input": "and then", "previous_response_id": r1["id"], **GEN}))
    assert code == 200, r2
    code, items = js(call("GET", f"{a}/v1/responses/{r2['id']}/input_items"))
    assert code == 200 and items["data"][0]["content"][0]["text"] == "and then"
    code, _ = js(call("DELETE", f"{b}/v1/responses/{r1['id']}"))
    assert code == 200
    assert call("GET", f"{a}/v1/responses/{r1['id']}")[0] == 404


def test_background_stream_on_other_replica(replicas):
    a, b = replicas
    code, bg = js(call("POST", f"{a}/v1/responses",
                       {"input": "Once upon a time", "background": True, **GEN}))
    assert code == 200 and bg["status"] == "queued"
    code, text = call("GET", f"{b}/v1/responses/{bg['id']}?stream=true&starting_after=0")
    assert code == 200
    events = [json.loads(l[6:]) for l in text.splitlines() if l.startswith("data: {")]
    assert events[0]["sequence_number"] == 1
    assert events[-1]["type"] in ("response.completed", "response.incomplete")


def test_tenants_and_auth(replicas):
    a, b = replicas
    assert call("GET", f"{a}/v1/models", key=None)[0] == 401
    code, body = js(call("GET", f"{a}/v1/models", key="wrong"))
    assert code == 401 and body["error"]["code"] == "invalid_api_key"
    code, r = js(call("POST", f"{a}/v1/responses", {"input": "Hi", **GEN}, key="key-a"))
    assert code == 200
    assert call("GET", f"{b}/v1/responses/{r['id']}", key="key-b")[0] == 404
    assert call("GET", f"{b}/v1/responses/{r['id']}", key="key-a")[0] == 200


def test_listing_spans_replicas_and_tenants(replicas):
    a, b = replicas
    mine = []
    for n, url in enumerate([a, b, a]):
        code, r = js(call("POST", f"{url}/v1/responses", {"input": f"list {n}", **GEN}))
        assert code == 200, r
        mine.append(r["id"])
    # Pages of two on alternating replicas, newest first.
    code, p1 = js(call("GET", f"{b}/v1/responses?limit=2"))
    assert code == 200 and p1["object"] == "list", p1
    assert [r["id"] for r in p1["data"]] == mine[:0:-1] and p1["has_more"]
    code, p2 = js(call("GET", f"{a}/v1/responses?limit=1&after={p1['last_id']}"))
    assert code == 200 and [r["id"] for r in p2["data"]] == mine[:1], p2
    # Deleted on one replica: gone from the other's listing.
    assert call("DELETE", f"{a}/v1/responses/{mine[1]}")[0] == 200
    code, p = js(call("GET", f"{b}/v1/responses?limit=2"))
    assert [r["id"] for r in p["data"]] == [mine[2], mine[0]], p
    # The other tenant sees none of them, and cannot page from them.
    code, other = js(call("GET", f"{b}/v1/responses?limit=100", key="key-b"))
    assert code == 200 and not {r["id"] for r in other["data"]} & set(mine)
    code, err = js(call("GET", f"{a}/v1/responses?after={mine[0]}", key="key-b"))
    assert code == 400 and err["error"]["param"] == "after"


def test_redis_down_is_503_and_store_false_works(replicas, redis_server):
    a, _ = replicas
    proc, _ = redis_server
    proc.kill()
    proc.wait()
    t = time.time()
    code, body = js(call("POST", f"{a}/v1/responses", {"input": "Hi", **GEN}))
    assert code == 503, body
    assert body["error"]["code"] == "service_unavailable"
    assert time.time() - t < 10
    code, body = js(call("POST", f"{a}/v1/responses", {"input": "Hi", "store": False, **GEN}))
    assert code == 200, body
