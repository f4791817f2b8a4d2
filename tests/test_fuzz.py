"""Bounded fuzzing of the public Responses API with schemathesis.

What is fuzzed: one `spindle serve` with stories260K (tiny, so generation is
cheap) gets requests that schemathesis generates from the reference schema
../shared/reference/open-responses-openapi.json, in both of its modes
(positive: bodies the schema allows; negative: bodies it forbids):

- `POST /v1/responses` (`createResponse`): every field of CreateResponseBody.
  Where the schema makes `model` a free string it is set to the served
  model (otherwise nearly every case would be a 404 model_not_found), a
  valid `max_output_tokens` is pinned to the schema's minimum (16) so each
  generation is fast, and `stream` is forced off (SSE is not one JSON body);
  test_fuzz_create_stream sends the same bodies with `stream: true` and
  checks the event stream instead. `background: true` is kept. A
  `previous_response_id` is sometimes swapped for an id the run created, so
  chains are fuzzed too, not only unknown ids.
- The operations Spindle serves on a response that the reference schema
  does not describe (it only has `POST /responses` and
  `POST /responses/compact`) are added here from responses-api.md, with
  their 200 bodies built from the schema's own components:
  `GET /v1/responses/{id}` (`include`, `starting_after`; not `stream`),
  `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel` and
  `GET /v1/responses/{id}/input_items` (`after`, `limit`, `order`,
  `include`). The id is often one the run created.

Not fuzzed: `POST /v1/responses/compact` (each valid request is a
summarising pass of up to 512 tokens: too slow for this budget;
tests/test_compact.py checks it against the schema), the WebSocket
transport (not implemented),
`/v1/conversations` (not in the reference schema), and the form-encoded
request body the schema also lists (Spindle accepts only
`application/json` and answers 415, by design).

Passing means, for every generated request: no 5xx (requests are sent one
at a time, so overload 503s are not expected and not allowed), every 4xx
body is the OpenAI error shape {"error": {"message": str, "type": str,
"param": str|null, "code": str|null}}, every 2xx body validates against the
schema's response schema (schemathesis's response_schema_conformance and
content_type_conformance checks), and the server still answers /health at
the end. Bounded: 1000 create bodies, 250 streamed ones and 333 requests
per stored-response operation, each with a 30 s deadline, derandomized so
CI sees the same cases each run; about 50 s on 2 idle cores, 3 min when
they are busy (SPINDLE_FUZZ_EXAMPLES=N scales the counts, and
SPINDLE_FUZZ_RANDOM=1 draws new cases, to explore more locally).

Below the fuzzer, each bug it found is a plain regression test with its
minimal request.
"""

from __future__ import annotations

import copy
import json
import os
from datetime import timedelta

import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from conftest import STORIES
from router_support import (SCHEMA_PATH, Http, assert_error_body, assert_openai_error, parse_sse, validate,
                            validate_event)

# Examples per operation (schemathesis mixes positive and negative cases in them).
CREATE_EXAMPLES = int(os.environ.get("SPINDLE_FUZZ_EXAMPLES", "1000"))
STORED_EXAMPLES = max(1, CREATE_EXAMPLES // 3)
RANDOM = bool(os.environ.get("SPINDLE_FUZZ_RANDOM"))  # new cases each run instead of the fixed ones
REQUEST_TIMEOUT = 30  # seconds for one request (a 16-token generation takes milliseconds)


def _schema_doc() -> dict:
    doc = copy.deepcopy(json.loads(SCHEMA_PATH.read_text()))
    paths = doc["paths"]
    create = paths["/responses"]["post"]
    # JSON only: Spindle answers 415 to form bodies, by design (README).
    create["requestBody"]["content"] = {"application/json": create["requestBody"]["content"]["application/json"]}
    # SSE is not one JSON body: the 200 of this run is the JSON object only.
    create["responses"]["200"]["content"] = {
        "application/json": create["responses"]["200"]["content"]["application/json"]
    }
    paths.pop("/responses/compact")  # a generation per request: tests/test_compact.py
    for p in paths.values():
        p.pop("x-openresponses-websocket", None)

    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    json_200 = lambda schema: {"200": {"description": "Success", "content": {"application/json": {"schema": schema}}}}  # noqa: E731
    rid = {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}
    include = {"name": "include", "in": "query", "required": False,
               "schema": {"type": "array", "items": ref("IncludeEnum")}, "style": "form", "explode": True}
    # From responses-api.md: the operations on a stored response.
    paths["/responses/{response_id}"] = {
        "get": {
            "operationId": "getResponse",
            "parameters": [rid, include,
                           {"name": "starting_after", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 0}}],
            "responses": json_200(ref("ResponseResource")),
        },
        "delete": {
            "operationId": "deleteResponse",
            "parameters": [rid],
            "responses": json_200({
                "type": "object",
                "required": ["id", "object", "deleted"],
                "properties": {"id": {"type": "string"}, "object": {"const": "response.deleted"},
                               "deleted": {"const": True}},
            }),
        },
    }
    paths["/responses/{response_id}/cancel"] = {
        "post": {"operationId": "cancelResponse", "parameters": [rid],
                 "responses": json_200(ref("ResponseResource"))},
    }
    paths["/responses/{response_id}/input_items"] = {
        "get": {
            "operationId": "listInputItems",
            "parameters": [
                rid, include,
                {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                {"name": "order", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["asc", "desc"]}},
            ],
            "responses": json_200({
                "type": "object",
                "required": ["object", "data", "first_id", "last_id", "has_more"],
                "properties": {
                    "object": {"const": "list"},
                    "data": {"type": "array", "items": ref("ItemField")},
                    "first_id": {"type": ["string", "null"]},
                    "last_id": {"type": ["string", "null"]},
                    "has_more": {"type": "boolean"},
                },
            }),
        },
    }
    _map_discriminators(doc)
    return doc


def _map_discriminators(doc: dict) -> None:
    """Give every `discriminator` its explicit `mapping`.

    The reference schema names no mapping, so by OpenAPI's rule the implicit
    values are the component names ("FunctionTool"), while each member's
    `type` property says the wire value ("function"). schemathesis follows
    the rule and would flag every correct `"type": "function"` tool; the
    mapping written here is the one the members' own `type` enums state.
    """
    comps = doc["components"]["schemas"]

    def walk(node):
        if isinstance(node, dict):
            disc = node.get("discriminator")
            if isinstance(disc, dict) and "mapping" not in disc:
                mapping = {}
                for member in node.get("oneOf", node.get("anyOf", [])):
                    ref = member.get("$ref", "")
                    prop = comps.get(ref.rsplit("/", 1)[-1], {}).get("properties", {}).get(disc["propertyName"], {})
                    values = prop.get("enum") or ([prop["const"]] if "const" in prop else [])
                    for v in values:
                        mapping.setdefault(v, ref)
                if mapping:
                    disc["mapping"] = mapping
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)


schema = schemathesis.openapi.from_dict(
    _schema_doc(),
    # Show requests as sent: the default hides any field named like a secret ("max_output_tokens").
    # Read whole SSE streams: schemathesis stops reading one after 20 events by default.
    config=SchemathesisConfig.from_dict({"output": {"sanitization": {"enabled": False}}, "max-stream-events": 100_000}),
)

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]

# Ids of responses this run created: fuzzed ids are swapped for one of these
# now and then, so the operations on real records get exercised.
CREATED: list[str] = []
ITEM_IDS: list[str] = []  # input item ids seen, for input_items' `after`
STATS: dict[str, int] = {}  # "METHOD path status [code param]" -> count


@pytest.fixture(scope="module")
def served(spindle):
    proc = spindle(["serve", "--port", "0", "--model", str(STORIES), "--threads", "1"])
    model = Http(proc.url).get("/v1/models").json()["data"][0]["id"]
    session = requests.Session()
    yield proc, model, session
    session.close()


RANGES = [("temperature", 0, 2), ("top_p", 0, 1), ("presence_penalty", -2, 2), ("frequency_penalty", -2, 2)]


def _shape(case, model: str, data, stream: bool = False) -> None:
    """Make a generated create body useful and cheap (see the docstring)."""
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = model
    # Spindle requires a non-empty input (400 otherwise, tested elsewhere): mostly give one.
    if body.get("input") in (None, "", []) and data.draw(st.integers(0, 4), label="fill input") > 0:
        body["input"] = data.draw(st.sampled_from(["Once upon a time", "Lily", "x"]), label="input")
    # Sampling values far out of range are a 400 (tested elsewhere): mostly pull them in.
    for name, lo, hi in RANGES:
        v = body.get(name)
        if (isinstance(v, (int, float)) and not isinstance(v, bool) and not lo <= v <= hi
                and data.draw(st.integers(0, 3), label=f"clamp {name}") > 0):
            body[name] = data.draw(st.floats(lo, hi), label=name)
    mot = body.get("max_output_tokens", None)
    if mot is None or (isinstance(mot, int) and not isinstance(mot, bool) and mot >= 16):
        body["max_output_tokens"] = 16
    if stream and ("stream" not in body or isinstance(body["stream"], bool)):
        body["stream"] = True
    elif not stream and body.get("stream") is True:
        body["stream"] = False
    if isinstance(body.get("previous_response_id"), str) and CREATED and data.draw(st.booleans(), label="real prev"):
        body["previous_response_id"] = data.draw(st.sampled_from(CREATED), label="prev id")


def _check(case, resp, checks=None) -> None:
    _count(case, resp)
    case.validate_response(resp, checks=checks or CHECKS)
    _error_shape(case, resp)


def _count(case, resp) -> None:
    """Tally outcomes for the summary test_server_survived prints (`-s`);
    SPINDLE_FUZZ_VERBOSE=1 adds each error's message."""
    key = f"{case.method} {case.path} {resp.status_code}"
    if resp.status_code >= 400:
        try:
            err = resp.json()["error"]
            key += f" code={err.get('code')} param={err.get('param')}"
            if os.environ.get("SPINDLE_FUZZ_VERBOSE"):
                key += f" {str(err.get('message'))[:90]}"
        except Exception:
            pass
    STATS[key] = STATS.get(key, 0) + 1


def _error_shape(case, resp) -> None:
    assert_openai_error(resp.status_code, resp.text, case.as_curl_command())


_COMMON = dict(
    deadline=timedelta(seconds=REQUEST_TIMEOUT),
    derandomize=not RANDOM,
    database=None,
    phases=[Phase.generate, Phase.shrink],  # not explicit: schema examples cannot mix with given()
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
CREATE_SETTINGS = settings(max_examples=CREATE_EXAMPLES, **_COMMON)
STORED_SETTINGS = settings(max_examples=STORED_EXAMPLES, **_COMMON)


@schema.include(method="POST", path_regex=r"^/responses$").parametrize()
@schema.given(data=st.data())
@CREATE_SETTINGS
def test_fuzz_create(case, data, served):
    proc, model, session = served
    _shape(case, model, data)
    resp = case.call(base_url=f"{proc.url}/v1", session=session, timeout=REQUEST_TIMEOUT)
    _check(case, resp)
    if resp.status_code == 200 and len(CREATED) < 64:
        CREATED.append(resp.json()["id"])


STREAM_SETTINGS = settings(max_examples=max(1, CREATE_EXAMPLES // 4), **_COMMON)
TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


@schema.include(method="POST", path_regex=r"^/responses$").parametrize()
@schema.given(data=st.data())
@STREAM_SETTINGS
def test_fuzz_create_stream(case, data, served):
    """The same bodies with `stream: true`: a 4xx is one OpenAI error body; a
    200 is an SSE stream whose every event validates against its schema, with
    sequence numbers 0, 1, 2, ..., `response.created` first and exactly one
    terminal event, as the last event before an optional `[DONE]`."""
    proc, model, session = served
    _shape(case, model, data, stream=True)
    resp = case.call(base_url=f"{proc.url}/v1", session=session, timeout=REQUEST_TIMEOUT)
    if resp.status_code != 200 or not isinstance(case.body, dict) or case.body.get("stream") is not True:
        _check(case, resp, checks=[not_a_server_error])
        return
    _count(case, resp)
    curl = case.as_curl_command()
    ctype = (resp.headers.get("content-type") or [""])[0]  # schemathesis's Response: header -> list of values
    assert ctype.startswith("text/event-stream"), f"{resp.headers}\n{curl}"
    frames = parse_sse(resp.text)
    if frames and frames[-1][1] is None:
        frames.pop()  # [DONE]
    assert frames, f"empty stream\n{curl}"
    for i, (name, event) in enumerate(frames):
        assert event is not None, f"[DONE] before the end: {resp.text[-2000:]}\n{curl}"
        assert name == event.get("type"), f"event name {name!r} != type in {event}\n{curl}"
        assert event.get("sequence_number") == i, f"event {i}: {event}\n{curl}"
        validate_event(event)
    assert frames[0][0] == "response.created", f"{frames[0]}\n{curl}"
    assert frames[-1][0] in TERMINAL, (
        f"last event {frames[-1][0]}: ...{resp.text[-600:]!r}\n{curl}\nserver log: {''.join(proc.log[-10:])}")
    assert sum(name in TERMINAL for name, _ in frames) == 1, f"{[n for n, _ in frames]}\n{curl}"


def _stored(case, data, served) -> None:
    proc, _, session = served
    if CREATED and data.draw(st.integers(0, 3), label="real id") > 0:
        case.path_parameters["response_id"] = data.draw(st.sampled_from(CREATED), label="id")
    if isinstance(case.query, dict) and "after" in case.query and ITEM_IDS and data.draw(st.booleans(), label="real after"):
        case.query["after"] = data.draw(st.sampled_from(ITEM_IDS), label="after")
    resp = case.call(base_url=f"{proc.url}/v1", session=session, timeout=REQUEST_TIMEOUT)
    _check(case, resp)
    if resp.status_code == 200 and case.path.endswith("/input_items") and len(ITEM_IDS) < 64:
        ITEM_IDS.extend(i["id"] for i in resp.json()["data"][:2] if isinstance(i.get("id"), str))


# One test per operation, in this order, so DELETE comes last and the others
# see live records.
@schema.include(method="GET", path_regex=r"^/responses/\{response_id\}$").parametrize()
@schema.given(data=st.data())
@STORED_SETTINGS
def test_fuzz_get(case, data, served):
    _stored(case, data, served)


@schema.include(method="GET", path_regex=r"/input_items$").parametrize()
@schema.given(data=st.data())
@STORED_SETTINGS
def test_fuzz_input_items(case, data, served):
    _stored(case, data, served)


@schema.include(method="POST", path_regex=r"/cancel$").parametrize()
@schema.given(data=st.data())
@STORED_SETTINGS
def test_fuzz_cancel(case, data, served):
    _stored(case, data, served)


@schema.include(method="DELETE").parametrize()
@schema.given(data=st.data())
@STORED_SETTINGS
def test_fuzz_delete(case, data, served):
    _stored(case, data, served)


# ------------------------------------------------- regressions the fuzzer found
#
# Each is the minimal request reduced from a fuzz failure.


def _input_items_valid(http: Http, rid: str) -> None:
    r = http.get(f"/v1/responses/{rid}/input_items")
    assert r.status_code == 200, r.text
    for item in r.json()["data"]:
        validate("ItemField", item)


def test_function_call_output_untyped_part_is_rejected(served):
    """A `function_call_output` whose `output` list holds a part without a
    `type` (`{}`, or not even an object: `1`) breaks CreateResponseBody
    (FunctionCallOutputItemParam: each part is input_text / input_image /
    input_file / input_video, discriminated by `type`). Spindle answers 200,
    stores the part verbatim and echoes it from input_items, where it breaks
    ItemField. A message's content parts get the 400 this should be."""
    proc, model, _ = served
    http = Http(proc.url)
    for part in ({}, 1):
        body = {"model": model, "max_output_tokens": 16,
                "input": [{"type": "function_call_output", "call_id": "c", "output": [part]}]}
        err = assert_error_body(http.post("/v1/responses", json=body), 400)
        assert (err["param"] or "").startswith("input[0].output"), err


def test_function_call_output_part_round_trips_in_schema(served):
    """A valid `function_call_output` part with a null optional field
    (InputFileContentParam allows `"filename": null`) is accepted and echoed
    back verbatim by input_items, where InputFileContent's `filename` must
    be a string: the listed item breaks ItemField. Either refuse the part
    like a message's input_file part on this text-only model (400), or list
    it without the nulls."""
    proc, model, _ = served
    http = Http(proc.url)
    body = {"model": model, "max_output_tokens": 16,
            "input": [{"type": "function_call_output", "call_id": "c",
                       "output": [{"type": "input_file", "filename": None}]}]}
    r = http.post("/v1/responses", json=body)
    if r.status_code != 200:
        assert_error_body(r, 400)
        return
    _input_items_valid(http, r.json()["id"])


def test_stream_with_unicode_line_separators_parses(served):
    """Found by the stream fuzzer, a test-side bug: instructions holding
    U+2028 (or U+2029, U+0085) are echoed unescaped in `response.created`,
    which is valid JSON and valid SSE (lines end only at CR/LF), and the
    openai SDK reads it; parse_sse used str.splitlines(), which cut the data
    line there. Pins the spec's line splitting in the helper."""
    proc, model, _ = served
    for sep in ("\u2028", "\u2029", "\x85"):
        r = Http(proc.url).post("/v1/responses", json={"model": model, "input": "x", "max_output_tokens": 16,
                                                        "stream": True, "instructions": f"a{sep}b"})
        assert r.status_code == 200, r.text
        events = [e for _, e in parse_sse(r.text) if e is not None]
        assert events[0]["response"]["instructions"] == f"a{sep}b"
        assert events[-1]["type"] in TERMINAL


def test_server_survived(served):
    proc, _, _ = served
    for k in sorted(STATS):
        print(f"{STATS[k]:5d}  {k}")
    assert proc.proc.poll() is None, "spindle serve exited during the fuzz run"
    r = Http(proc.url, timeout=10).get("/health")
    assert r.status_code == 200, r.text
