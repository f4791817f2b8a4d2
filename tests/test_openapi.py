"""The generated OpenAPI document, `GET /openapi.json`, of a real `spindle serve`.

- It is served without an API key (like /health) and is a valid OpenAPI 3.1
  document (openapi-spec-validator).
- schemathesis fuzzes every operation it documents, in both modes (positive:
  inputs the document allows; negative: inputs it forbids). Passing means,
  for every request: no 5xx, every 4xx body in the OpenAI error shape, every
  2xx answer in a documented content type with a body (JSON, or each SSE
  event) valid against the document's schema for it; and the server still
  answers /health at the end.

Bodies are made cheap and useful the way test_fuzz.py does: a free-string
`model` becomes the served one, output lengths are capped at 16 tokens, and
`{id}` path parameters are often a real response or conversation id.
Bounded: EXAMPLES cases per operation (22 operations), derandomized so CI
sees the same cases each run; about 15 s on 2 idle cores (SPINDLE_OPENAPI_EXAMPLES=N
scales it; SPINDLE_FUZZ_VERBOSE=1 adds error params and messages to the tally
that test_server_survived prints with -s). Fuzzing against the
reference Responses schema is test_fuzz.py.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_spec
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from conftest import STORIES
from router_support import Http, assert_openai_error

EXAMPLES = int(os.environ.get("SPINDLE_OPENAPI_EXAMPLES", "40"))
REQUEST_TIMEOUT = 30
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
CAPS = ("max_output_tokens", "max_tokens", "max_completion_tokens")
STATS: dict[str, int] = {}  # "METHOD path status" -> count, printed by test_server_survived (-s)


@pytest.fixture(scope="module")
def served(spindle):
    """`spindle serve` on stories260K, its model name, one real response and
    conversation id, and an HTTP session."""
    proc = spindle(["serve", "--port", "0", "--model", str(STORIES), "--threads", "1"])
    http = Http(proc.url)
    model = http.get("/v1/models").json()["data"][0]["id"]
    rid = http.post("/v1/responses", json={"model": model, "input": "x", "max_output_tokens": 4}).json()["id"]
    cid = http.post("/v1/conversations", json={"items": [{"role": "user", "content": "x"}]}).json()["id"]
    session = requests.Session()
    yield proc, model, {"/v1/responses/": rid, "/v1/conversations/": cid}, session
    session.close()


@pytest.fixture(scope="module")
def document(served) -> dict:
    proc = served[0]
    r = requests.get(f"{proc.url}/openapi.json", timeout=10)  # no Authorization header
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1"), document["openapi"]
    validate_spec(document)
    ops = [(m.upper(), p) for p, item in document["paths"].items() for m in item]
    for route in [("POST", "/v1/responses"), ("GET", "/v1/conversations/{id}/items"),
                  ("POST", "/v1/chat/completions"), ("GET", "/health"), ("GET", "/openapi.json")]:
        assert route in ops, route


# Every operation the document must have (router/tests/api/openapi.rs holds
# the document to exactly these); each is fuzzed on its own.
OPERATIONS = [
    ("POST", "/v1/responses"), ("GET", "/v1/responses"), ("GET", "/v1/responses/{id}"), ("POST", "/v1/responses/{id}/cancel"),
    ("GET", "/v1/responses/{id}/input_items"), ("POST", "/v1/conversations"),
    ("GET", "/v1/conversations/{id}"), ("POST", "/v1/conversations/{id}"),
    ("GET", "/v1/conversations/{id}/items"), ("POST", "/v1/conversations/{id}/items"),
    ("GET", "/v1/conversations/{id}/items/{item_id}"), ("DELETE", "/v1/conversations/{id}/items/{item_id}"),
    ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"), ("GET", "/v1/models"),
    ("GET", "/v1/models/{id}"), ("GET", "/health"), ("GET", "/ready"), ("GET", "/openapi.json"),
    # Deletes last, so the operations above find the records alive.
    ("DELETE", "/v1/responses/{id}"), ("DELETE", "/v1/conversations/{id}"),
]


@pytest.fixture(scope="module")
def generated_schema(document):
    return schemathesis.openapi.from_dict(
        document,
        # Show requests as sent (the default hides fields named like secrets:
        # "max_output_tokens"); read whole SSE streams.
        config=SchemathesisConfig.from_dict({"output": {"sanitization": {"enabled": False}},
                                             "max-stream-events": 100_000}),
    )


def _shape(case, model: str, ids: dict[str, str], n: int) -> None:
    """Make a case cheap and useful (see the module docstring); `n` varies it
    deterministically so some ids stay fuzzed."""
    body = case.body
    if isinstance(body, dict):
        if isinstance(body.get("model"), str):
            body["model"] = model
        # Empty input is a 400 (tested elsewhere): mostly give some.
        fills = {"/v1/responses": ("input", "Once upon a time"), "/v1/completions": ("prompt", "Once"),
                 "/v1/chat/completions": ("messages", [{"role": "user", "content": "Lily"}]),
                 "/v1/embeddings": ("input", "Once upon a time")}
        key, fill = fills.get(case.path, (None, None))
        if key and body.get(key) in ("", [], None) and n % 4:
            body[key] = fill
        for cap in CAPS:
            v = body.get(cap)
            if isinstance(v, int) and not isinstance(v, bool) and v > 16:
                body[cap] = 16
        if not any(cap in body for cap in CAPS) and case.path in ("/v1/responses", "/v1/chat/completions",
                                                                   "/v1/completions"):
            body["max_output_tokens" if case.path == "/v1/responses" else "max_tokens"] = 16
    params = case.path_parameters or {}
    for prefix, real in ids.items():
        if case.path.startswith(prefix) and "id" in params and n % 3:
            params["id"] = real


def _strategy(op):
    """Positive cases, and negative ones where the operation has inputs to break."""
    positive = op.as_strategy(GenerationMode.POSITIVE)
    if not (op.body or op.path_parameters or op.query):
        return positive
    return st.one_of(positive, op.as_strategy(GenerationMode.NEGATIVE))


@pytest.mark.parametrize("method,path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_generated_document(method, path, generated_schema, served):
    proc, model, ids, session = served
    op = generated_schema[path][method]

    @given(case=_strategy(op))
    @settings(max_examples=EXAMPLES, deadline=timedelta(seconds=REQUEST_TIMEOUT), derandomize=True,
              database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    def fuzz(case):
        _shape(case, model, ids, len(case.as_curl_command()))
        resp = case.call(base_url=proc.url, session=session, timeout=REQUEST_TIMEOUT)
        case.validate_response(resp, checks=CHECKS)
        assert_openai_error(resp.status_code, resp.text, case.as_curl_command())
        key = f"{method} {path} {resp.status_code}"
        if resp.status_code >= 400 and os.environ.get("SPINDLE_FUZZ_VERBOSE"):
            key += " " + str(resp.json()["error"].get("param")) + " " + resp.json()["error"]["message"][:60]
        STATS[key] = STATS.get(key, 0) + 1

    fuzz()


def test_server_survived(served):
    proc = served[0]
    for k in sorted(STATS):
        print(f"{STATS[k]:5d}  {k}")
    assert proc.proc.poll() is None, "spindle serve exited during the fuzz run"
    r = Http(proc.url, timeout=10).get("/health")
    assert r.status_code == 200, r.text
