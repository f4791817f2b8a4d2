"""Helpers for the router tests: an SDK client, raw SSE reading, and validation
against the Open Responses schema (../shared/reference/open-responses-openapi.json)."""

from __future__ import annotations

import json
import os
import re
import time
from functools import lru_cache
from pathlib import Path

import http.client
from urllib.parse import urlsplit
import jsonschema
from openai import OpenAI

SCHEMA_PATH = Path(
    os.environ.get(
        "SPINDLE_OPENRESPONSES_SCHEMA",
        Path(__file__).resolve().parents[2] / "shared" / "reference" / "open-responses-openapi.json",
    )
)

# Small and greedy: the real model is slow on CPU.
GEN = {"max_output_tokens": 16, "temperature": 0}


def client(server_url: str) -> OpenAI:
    return OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=120)


def model_name(server_url: str) -> str:
    return client(server_url).models.list().data[0].id


@lru_cache(maxsize=1)
def _doc() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@lru_cache(maxsize=None)
def _validator(schema_name: str) -> jsonschema.Draft202012Validator:
    doc = _doc()
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(root)


def validate(schema_name: str, instance: dict) -> None:
    errors = sorted(_validator(schema_name).iter_errors(instance), key=str)
    assert not errors, f"{schema_name}: {[e.message for e in errors]} in {json.dumps(instance)[:2000]}"


def validate_response(obj: dict) -> None:
    validate("ResponseResource", obj)


def event_schema_name(event_type: str) -> str:
    for name, schema in _doc()["components"]["schemas"].items():
        if name.endswith("StreamingEvent"):
            enum = schema.get("properties", {}).get("type", {}).get("enum", [])
            if enum and enum[0] == event_type:
                return name
    raise AssertionError(f"no schema for event type {event_type}")


def validate_event(event: dict) -> None:
    validate(event_schema_name(event["type"]), event)


def parse_sse(text: str) -> list[tuple[str | None, dict | None]]:
    """Frames as (event name, JSON data or None for [DONE])."""
    out = []
    for frame in text.split("\n\n"):
        name, data = None, []
        # SSE lines end only at \r\n, \r or \n; str.splitlines() would also cut
        # at U+2028, U+2029 and U+0085, which JSON carries unescaped.
        for line in re.split(r"\r\n|\r|\n", frame):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        if not data:
            continue
        assert len(data) == 1, f"one data line per event: {frame!r}"
        out.append((name, None if data[0] == "[DONE]" else json.loads(data[0])))
    return out


class Resp:
    """A finished plain HTTP response (stdlib only, no extra client library)."""

    def __init__(self, status_code: int, headers: dict, text: str):
        self.status_code = status_code
        self.headers = headers
        self.text = text

    def json(self):
        return json.loads(self.text)


class Http:
    """Minimal HTTP client for raw checks: `Http(url).post(path, json=...)`."""

    def __init__(self, base_url: str, timeout: float = 120):
        self.base = urlsplit(base_url)
        self.timeout = timeout

    def request(self, method: str, path: str, json_body=None, content: bytes | None = None, headers=None) -> Resp:
        conn = http.client.HTTPConnection(self.base.hostname, self.base.port, timeout=self.timeout)
        hdrs = dict(headers or {})
        body = content
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("content-type", "application/json")
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            text = r.read().decode("utf-8")
            return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, text)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json=None, **kw):
        return self.request("POST", path, json_body=json, **kw)

    def put(self, path, json=None, **kw):
        return self.request("PUT", path, json_body=json, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


def sse_post(server_url: str, path: str, body: dict) -> list[tuple[str | None, dict | None]]:
    r = Http(server_url).post(path, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return parse_sse(r.text)


def sse_get(server_url: str, path: str) -> list[tuple[str | None, dict | None]]:
    r = Http(server_url).get(path)
    assert r.status_code == 200, r.text
    return parse_sse(r.text)


def assert_error_body(resp: Resp, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, body
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] is None or isinstance(err["code"], str)
    if param is not None:
        assert err["param"] == param, body
    if code is not None:
        assert err["code"] == code, body
    return err


def assert_openai_error(status: int, text: str, context: str = "") -> None:
    """A 4xx body is the OpenAI error shape {"error": {"message": str, "type": str,
    "param": str|null, "code": str|null}}; a 5xx fails (the fuzz runs' pass rule)."""
    assert status < 500, f"{status} {text[:500]}\n{context}"
    if status < 400:
        return
    try:
        body = json.loads(text)
    except ValueError:
        raise AssertionError(f"{status} body is not JSON: {text[:500]}\n{context}")
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict) and set(err) >= {"message", "type", "param", "code"}, (
        f"{status} not the OpenAI error shape: {text[:500]}\n{context}")
    assert isinstance(err["message"], str) and err["message"], text
    assert isinstance(err["type"], str) and err["type"], text
    assert err["param"] is None or isinstance(err["param"], str), text
    assert err["code"] is None or isinstance(err["code"], str), text


def wait_ready(url: str, timeout: float = 30) -> None:
    """Wait until `url`/ready answers 200 (a router: every model has a ready worker)."""
    deadline = time.time() + timeout
    while True:
        try:
            r = Http(url, timeout=5).get("/ready")
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text}"
        except OSError as e:
            last = repr(e)
        assert time.time() < deadline, f"{url} never became ready: {last}"
        time.sleep(0.1)
