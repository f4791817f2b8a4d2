"""Log probabilities through the official openai SDK against a real `spindle serve`:
Responses (include + top_logprobs, streamed deltas), Chat Completions (whole and
streamed) and Completions, objects and events validated against the OpenAPI file."""

from __future__ import annotations

import math

import openai
import pytest

from router_support import GEN, sse_post, validate_event, validate_response, Http

INCLUDE = "message.output_text.logprobs"


def check_entry(lp: dict, k: int) -> None:
    assert lp["logprob"] <= 0
    assert bytes(lp["bytes"]).decode("utf-8", "replace") or lp["token"] is not None
    top = lp["top_logprobs"]
    assert len(top) == k
    values = [t["logprob"] for t in top]
    assert values == sorted(values, reverse=True)
    assert all(v <= 0 for v in values)
    assert sum(math.exp(v) for v in values) <= 1 + 1e-4
    if k:
        # Greedy: the chosen token is the most likely one.
        assert top[0]["token"] == lp["token"]
        assert abs(top[0]["logprob"] - lp["logprob"]) < 1e-6


def test_responses_include_logprobs(api, model, server_url):
    r = api.responses.create(model=model, input="Say hi.", include=[INCLUDE], top_logprobs=3, **GEN)
    raw = Http(server_url).request("GET", f"/v1/responses/{r.id}").json()
    validate_response(raw)
    part = raw["output"][0]["content"][0]
    assert part["logprobs"], part
    for lp in part["logprobs"]:
        check_entry(lp, 3)
    assert len(part["logprobs"]) == raw["usage"]["output_tokens"]
    # The SDK's typed object carries them too.
    assert r.output[0].content[0].logprobs[0].token == part["logprobs"][0]["token"]
    plain = api.responses.create(model=model, input="Say hi.", **GEN)
    assert plain.output[0].content[0].logprobs == []
    with pytest.raises(openai.BadRequestError) as e:
        api.responses.create(model=model, input="x", include=[INCLUDE], top_logprobs=21, **GEN)
    assert e.value.param == "top_logprobs"


def test_responses_stream_deltas_carry_logprobs(server_url, model):
    body = {"model": model, "input": "Hi!", "stream": True, "include": [INCLUDE], "top_logprobs": 2, **GEN}
    events = sse_post(server_url, "/v1/responses", body)
    for _, data in events[:-1]:
        validate_event(data)
    deltas = [d for _, d in events[:-1] if d["type"] == "response.output_text.delta"]
    entries = [lp for d in deltas for lp in d["logprobs"]]
    assert entries
    for lp in entries:
        check_entry(lp, 2)
    done = next(d for _, d in events[:-1] if d["type"] == "response.output_text.done")
    assert done["logprobs"] == entries
    final = events[-2][1]["response"]
    validate_response(final)
    assert final["output"][0]["content"][0]["logprobs"] == entries


def test_chat_completions_logprobs(api, model):
    messages = [{"role": "user", "content": "Say hi."}]
    r = api.chat.completions.create(
        model=model, messages=messages, logprobs=True, top_logprobs=4, max_tokens=12, temperature=0
    )
    content = r.choices[0].logprobs.content
    assert content and len(content) == r.usage.completion_tokens
    for lp in content:
        check_entry(lp.model_dump(), 4)
    stream = api.chat.completions.create(
        model=model, messages=messages, logprobs=True, top_logprobs=1, max_tokens=12, temperature=0, stream=True
    )
    streamed = [lp for c in stream if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.content]
    assert [lp.token for lp in streamed] == [lp.token for lp in content]
    plain = api.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model=model, messages=messages, top_logprobs=2, max_tokens=4)
    assert e.value.param == "top_logprobs"


def test_completions_logprobs(api, model):
    r = api.completions.create(model=model, prompt="Once upon a time", logprobs=3, max_tokens=10, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and 1 <= len(top) <= 3
        assert max(top.values()) >= value - 1e-6
    with pytest.raises(openai.BadRequestError) as e:
        api.completions.create(model=model, prompt="x", logprobs=1, echo=True, max_tokens=2)
    assert e.value.param == "echo"
