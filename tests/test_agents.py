"""Agents on a real `spindle serve` with SmolLM2, through the official
openai SDK: structured outputs that always parse and validate, forced tool
calls whose arguments validate, the call → output → answer round trip,
streamed calls, and Chat Completions tool_calls."""

from __future__ import annotations

import json

import jsonschema
import pytest

from router_support import Http, sse_post, validate_event, validate_response

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}

SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            # Bounded strings: a 135M model at temperature 1 can ramble
            # inside an unbounded one until max_output_tokens.
            "name": {"type": "string", "maxLength": 32},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "email": {"type": "string", "maxLength": 32},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "order": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string", "maxLength": 16},
                                   "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
                    "required": ["sku", "qty"],
                    "additionalProperties": False,
                },
            },
            "status": {"enum": ["new", "paid", "shipped"]},
            "total": {"type": "number"},
        },
        "required": ["items", "status", "total"],
        "additionalProperties": False,
    },
}


def _stored(server_url: str, rid: str) -> dict:
    """The stored object as the server wrote it, validated against the schema."""
    r = Http(server_url).request("GET", f"/v1/responses/{rid}")
    assert r.status_code == 200, r.text
    validate_response(r.json())
    return r.json()


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_structured_outputs_always_validate(api, model, server_url, name):
    schema = SCHEMAS[name]
    for seed in range(4):
        r = api.responses.create(
            model=model,
            input=f"Make up a {name} as JSON.",
            text={"format": {"type": "json_schema", "name": name, "schema": schema, "strict": True}},
            temperature=1.0,
            max_output_tokens=200,
            extra_body={"seed": seed},
        )
        _stored(server_url, r.id)
        assert r.status == "completed", (seed, r.incomplete_details, r.output_text)
        jsonschema.validate(json.loads(r.output_text), schema)


def test_json_object_and_a_cut_output(api, model):
    r = api.responses.create(model=model, input="A JSON object about cats.",
                             text={"format": {"type": "json_object"}}, max_output_tokens=120,
                             temperature=0)
    assert r.status == "completed"
    assert isinstance(json.loads(r.output_text), dict)
    cut = api.responses.create(model=model, input="Make up a person.", max_output_tokens=3,
                               text={"format": {"type": "json_schema", "name": "p",
                                                "schema": SCHEMAS["person"]}})
    assert cut.status == "incomplete"
    assert cut.incomplete_details.reason == "max_output_tokens"


def test_required_call_round_trip(api, model, server_url):
    r = api.responses.create(model=model, input="What is the weather in Paris?",
                             tools=[WEATHER], tool_choice="required", temperature=0,
                             max_output_tokens=100)
    _stored(server_url, r.id)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and r.status == "completed", r.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    # The call's output goes back; the model answers in text.
    follow = api.responses.create(
        model=model, previous_response_id=r.id, tools=[WEATHER], temperature=0,
        max_output_tokens=40, tool_choice="none",
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"temp_c": 21, "sky": "sunny"})}],
    )
    assert follow.status in ("completed", "incomplete")
    assert follow.output[0].type == "message"
    items = api.responses.input_items.list(follow.id)
    assert items.data[0].type == "function_call_output"


def test_named_call_streams_its_arguments(api, model, server_url):
    events = sse_post(server_url, "/v1/responses", {
        "model": model, "input": "Weather in Oslo?", "tools": [WEATHER], "stream": True,
        "tool_choice": {"type": "function", "name": "get_weather"}, "temperature": 0,
        "max_output_tokens": 100})
    data = [d for _, d in events if d is not None]
    for d in data:
        validate_event(d)
    types = [d["type"] for d in data]
    assert "response.function_call_arguments.delta" in types
    done = next(d for d in data if d["type"] == "response.function_call_arguments.done")
    deltas = "".join(d["delta"] for d in data if d["type"] == "response.function_call_arguments.delta")
    assert deltas == done["arguments"]
    jsonschema.validate(json.loads(done["arguments"]), WEATHER["parameters"])
    assert data[-1]["type"] == "response.completed"
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    # The SDK's stream helper collects the same call.
    with api.responses.stream(model=model, input="Weather in Oslo?", tools=[WEATHER],
                              tool_choice={"type": "function", "name": "get_weather"},
                              temperature=0, max_output_tokens=100) as stream:
        final = stream.get_final_response()
    call = next(o for o in final.output if o.type == "function_call")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


def test_chat_completions_tool_calls(api, model):
    tools = [{"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}]
    r = api.chat.completions.create(model=model, messages=[{"role": "user", "content": "Weather in Rome?"}],
                                    tools=tools, tool_choice="required", temperature=0, max_tokens=100)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["parameters"])
    stream = api.chat.completions.create(model=model, messages=[{"role": "user", "content": "Weather in Rome?"}],
                                         tools=tools, tool_choice="required", temperature=0, max_tokens=100,
                                         stream=True)
    args, finish = "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            args += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    jsonschema.validate(json.loads(args), WEATHER["parameters"])
    # response_format on chat is enforced too.
    r = api.chat.completions.create(model=model, messages=[{"role": "user", "content": "A person, please."}],
                                    response_format={"type": "json_schema", "json_schema": {
                                        "name": "person", "schema": SCHEMAS["person"]}},
                                    temperature=0, max_tokens=200)
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMAS["person"])


def test_an_unsupported_schema_feature_is_named(api, model):
    import openai
    with pytest.raises(openai.BadRequestError) as e:
        api.responses.create(model=model, input="x", text={"format": {
            "type": "json_schema", "name": "x", "schema": {"type": "array", "uniqueItems": True}}})
    assert "uniqueItems" in str(e.value)
