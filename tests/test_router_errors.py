"""Every client mistake gets an OpenAI-shaped error (never a 500, never plain text)."""

from __future__ import annotations

import openai
import pytest

from router_support import GEN, Http, assert_error_body


@pytest.fixture(scope="module")
def http(server_url):
    return Http(server_url)


def test_malformed_json(http):
    r = http.post("/v1/responses", content=b"{not json", headers={"content-type": "application/json"})
    assert_error_body(r, 400)


def test_empty_body(http):
    r = http.post("/v1/responses", content=b"", headers={"content-type": "application/json"})
    assert_error_body(r, 400)


def test_wrong_typed_field(http, model):
    r = http.post("/v1/responses", json={"model": model, "input": "x", "temperature": "hot"})
    assert_error_body(r, 400, param="temperature")


@pytest.mark.parametrize("body_input", [None, "", []])
def test_empty_input(http, model, body_input):
    body = {"model": model}
    if body_input is not None:
        body["input"] = body_input
    assert_error_body(http.post("/v1/responses", json=body), 400, param="input")


def test_unknown_model(api):
    with pytest.raises(openai.NotFoundError) as e:
        api.responses.create(model="no-such-model", input="x", **GEN)
    assert e.value.code == "model_not_found"


def test_unknown_previous_response(api, model):
    with pytest.raises(openai.BadRequestError) as e:
        api.responses.create(model=model, input="x", previous_response_id="resp_doesnotexist", **GEN)
    assert e.value.code == "previous_response_not_found"
    assert e.value.param == "previous_response_id"


def test_deleted_previous_response(api, model):
    r = api.responses.create(model=model, input="hi", **GEN)
    api.responses.delete(r.id)
    with pytest.raises(openai.BadRequestError) as e:
        api.responses.create(model=model, input="x", previous_response_id=r.id, **GEN)
    assert e.value.code == "previous_response_not_found"


def test_unknown_ids_are_404(api, http):
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve("resp_nope")
    assert_error_body(http.delete("/v1/responses/resp_nope"), 404)
    assert_error_body(http.post("/v1/responses/resp_nope/cancel"), 404)
    assert_error_body(http.get("/v1/responses/resp_nope/input_items"), 404)
    assert_error_body(http.get("/v1/conversations/conv_nope"), 404)


def test_background_without_store(api, model):
    with pytest.raises(openai.BadRequestError) as e:
        api.responses.create(model=model, input="x", background=True, store=False, **GEN)
    assert e.value.param == "background"


def test_structured_output_errors_name_their_param(http, model):
    no_name = {"type": "json_schema", "schema": {"type": "object"}}
    r = http.post("/v1/responses", json={"model": model, "input": "x", "text": {"format": no_name}})
    assert_error_body(r, 400, param="text.format.name")
    unsupported = {"type": "json_schema", "name": "x", "schema": {"type": "number", "multipleOf": 3}}
    r = http.post("/v1/responses", json={"model": model, "input": "x", "text": {"format": unsupported}})
    err = assert_error_body(r, 400, param="text.format.schema", code="unsupported_schema")
    assert "multipleOf" in err["message"]


def test_conversation_with_previous_id(http, model):
    r = http.post(
        "/v1/responses",
        json={"model": model, "input": "x", "conversation": "conv_a", "previous_response_id": "resp_b"},
    )
    assert_error_body(r, 400)


def test_oversize_body(http, model):
    r = http.post("/v1/responses", json={"model": model, "input": "x" * (9 * 1024 * 1024)})
    assert_error_body(r, 413)


def test_bad_ranges(http, model):
    assert_error_body(http.post("/v1/responses", json={"model": model, "input": "x", "temperature": 5}), 400, param="temperature")
    assert_error_body(http.post("/v1/responses", json={"model": model, "input": "x", "max_output_tokens": 0}), 400)
    assert_error_body(http.get("/v1/responses/resp_x/input_items?limit=1000"), 400, param="limit")


def test_unknown_route_and_method(http):
    assert_error_body(http.get("/v1/does-not-exist"), 404)
    assert_error_body(http.put("/v1/responses"), 405)


def test_chat_errors(http, model):
    assert_error_body(http.post("/v1/chat/completions", json={"model": model, "messages": []}), 400, param="messages")
    assert_error_body(http.post("/v1/chat/completions", json={"model": model}), 400)
    assert_error_body(
        http.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        404,
        param="model",
    )
