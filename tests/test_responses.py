"""The Responses API through the official openai SDK against a real `spindle serve`."""

from __future__ import annotations

import time

import openai
import pytest

from router_support import (
    Http,
    GEN,
    sse_get,
    sse_post,
    validate_event,
    validate_response,
)

TERMINAL = {"completed", "incomplete", "failed", "cancelled"}


def raw_json(server_url: str, method: str, path: str, body: dict | None = None) -> dict:
    r = Http(server_url).request(method, path, json_body=body)
    assert r.status_code == 200, r.text
    return r.json()


def check_usage(usage):
    assert usage is not None
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_create_with_string_input(api, model, server_url):
    r = api.responses.create(model=model, input="Say hello.", **GEN)
    assert r.id.startswith("resp_")
    assert r.object == "response"
    assert r.status in {"completed", "incomplete"}
    assert r.output_text
    check_usage(r.usage)
    assert r.usage.output_tokens <= 16
    raw = raw_json(server_url, "GET", f"/v1/responses/{r.id}")
    validate_response(raw)
    assert raw["output"][0]["content"][0]["text"] == r.output_text


def test_create_with_messages_and_instructions(api, model):
    r = api.responses.create(
        model=model,
        instructions="You are terse.",
        input=[
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": [{"type": "input_text", "text": "What is 2+2?"}]},
        ],
        metadata={"case": "messages"},
        user="tester",
        **GEN,
    )
    assert r.status in {"completed", "incomplete"}
    assert r.instructions == "You are terse."
    assert r.metadata == {"case": "messages"}
    assert r.output_text


def test_length_limit_is_incomplete(api, model):
    r = api.responses.create(model=model, input="Count from one to one hundred in words.", max_output_tokens=3, temperature=0)
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3


def test_stream_helper_final_response(api, model):
    deltas = []
    # Room to finish: the helper's get_final_response() needs response.completed.
    question = "Answer with one word. What color is the sky?"
    with api.responses.stream(model=model, input=question, max_output_tokens=200, temperature=0) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert final.status == "completed"
    assert "".join(deltas) == final.output_text
    check_usage(final.usage)


def test_create_stream_event_order(api, model):
    events = list(api.responses.create(model=model, input="Name a fruit.", stream=True, max_output_tokens=16, temperature=0))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert types[-1] in {"response.completed", "response.incomplete"}
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.output == []
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text
    assert events[-4].text == text


def test_raw_stream_matches_schema(server_url, model):
    events = sse_post(server_url, "/v1/responses", {"model": model, "input": "Hi!", "stream": True, **GEN})
    assert events[-1] == (None, None), "ends with data: [DONE]"
    for name, data in events[:-1]:
        assert name == data["type"]
        validate_event(data)
    validate_response(events[-2][1]["response"])
    rid = events[0][1]["response"]["id"]
    stored = raw_json(server_url, "GET", f"/v1/responses/{rid}")
    deltas = "".join(d["delta"] for _, d in events[:-1] if d["type"] == "response.output_text.delta")
    assert stored["output"][0]["content"][0]["text"] == deltas


def test_chain_uses_history_and_prefix_cache(api, model):
    first = api.responses.create(
        model=model,
        instructions="Be brief.",
        input="My name is Ada. Please remember my name and greet me.",
        **GEN,
    )
    second = api.responses.create(model=model, previous_response_id=first.id, input="What is my name?", **GEN)
    assert second.previous_response_id == first.id
    assert second.instructions is None, "instructions are not inherited"
    # The second prompt holds the whole first turn, most of it already in the KV cache.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens - 8
    assert second.usage.input_tokens_details.cached_tokens > 0
    third = api.responses.create(model=model, previous_response_id=second.id, input="Thanks.", **GEN)
    assert third.usage.input_tokens > second.usage.input_tokens


def test_store_false_is_not_found(api, model):
    r = api.responses.create(model=model, input="Hi", store=False, **GEN)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError) as e:
        api.responses.create(model=model, input="again", previous_response_id=r.id, **GEN)
    assert e.value.code == "previous_response_not_found"
    assert e.value.param == "previous_response_id"


def test_delete(api, model, server_url):
    r = api.responses.create(model=model, input="Hi", **GEN)
    raw = raw_json(server_url, "DELETE", f"/v1/responses/{r.id}")
    assert raw == {"id": r.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        api.responses.delete(r.id)


def test_input_items_pagination(api, model):
    r = api.responses.create(
        model=model,
        input=[{"role": "user", "content": f"note {i}"} for i in range(3)],
        **GEN,
    )
    page = api.responses.input_items.list(r.id, limit=2)
    assert [i.content[0].text for i in page.data] == ["note 2", "note 1"]
    assert page.has_more is True
    assert page.first_id == page.data[0].id and page.last_id == page.data[1].id
    rest = api.responses.input_items.list(r.id, limit=2, after=page.last_id)
    assert [i.content[0].text for i in rest.data] == ["note 0"]
    assert rest.has_more is False
    asc = api.responses.input_items.list(r.id, order="asc")
    assert [i.content[0].text for i in asc.data] == ["note 0", "note 1", "note 2"]
    everything = [i.content[0].text for i in api.responses.input_items.list(r.id, limit=1)]  # auto-pagination
    assert everything == ["note 2", "note 1", "note 0"]


def poll(api, rid, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = api.responses.retrieve(rid)
        if r.status in TERMINAL:
            return r
        time.sleep(0.1)
    raise AssertionError(f"{rid} never finished")


def test_background_poll_and_stream_resume(api, model, server_url):
    r = api.responses.create(model=model, input="Tell me about the sea.", background=True, **GEN)
    assert r.background is True
    assert r.status in {"queued", "in_progress"}
    done = poll(api, r.id)
    assert done.status in {"completed", "incomplete"}
    assert done.output_text
    events = sse_get(server_url, f"/v1/responses/{r.id}?stream=true")
    assert events[-1] == (None, None)
    seqs = [d["sequence_number"] for _, d in events[:-1]]
    assert seqs == list(range(len(seqs)))
    for _, d in events[:-1]:
        validate_event(d)
    assert events[-2][1]["type"] in {"response.completed", "response.incomplete"}
    resumed = sse_get(server_url, f"/v1/responses/{r.id}?stream=true&starting_after=2")
    assert [d["sequence_number"] for _, d in resumed[:-1]] == seqs[3:]
    text = "".join(d["delta"] for _, d in events[:-1] if d["type"] == "response.output_text.delta")
    assert text == done.output_text


def test_background_stream_create_and_sdk_resume(api, model):
    events = list(api.responses.create(model=model, input="Hello there.", background=True, stream=True, **GEN))
    assert events[0].type == "response.created"
    assert events[-1].type in {"response.completed", "response.incomplete"}
    rid = events[0].response.id
    resumed = list(api.responses.retrieve(rid, stream=True, starting_after=1))
    assert [e.sequence_number for e in resumed] == [e.sequence_number for e in events[2:]]


def test_background_cancel(api, model):
    r = api.responses.create(
        model=model, input="Write a very long story about dragons.", background=True, max_output_tokens=2000, temperature=0
    )
    cancelled = api.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    time.sleep(0.5)
    assert api.responses.retrieve(r.id).status == "cancelled"


def test_cancel_non_background_is_400(api, model):
    r = api.responses.create(model=model, input="Hi", **GEN)
    with pytest.raises(openai.BadRequestError):
        api.responses.cancel(r.id)


def test_conversations(api, model, server_url):
    conv = api.conversations.create(items=[{"type": "message", "role": "user", "content": "My favourite number is 7."}], metadata={"t": "1"})
    assert conv.id.startswith("conv_")
    got = api.conversations.retrieve(conv.id)
    assert got.metadata == {"t": "1"}
    r = api.responses.create(model=model, conversation=conv.id, input="What is my favourite number?", **GEN)
    assert r.status in {"completed", "incomplete"}
    items = api.conversations.items.list(conv.id, order="asc")
    roles = [i.role for i in items.data]
    assert roles == ["user", "user", "assistant"]
    added = api.conversations.items.create(conv.id, items=[{"type": "message", "role": "user", "content": "Extra."}])
    item_id = added.data[0].id
    assert api.conversations.items.retrieve(item_id, conversation_id=conv.id).id == item_id
    api.conversations.items.delete(item_id, conversation_id=conv.id)
    with pytest.raises(openai.NotFoundError):
        api.conversations.items.retrieve(item_id, conversation_id=conv.id)
    second = api.responses.create(model=model, conversation=conv.id, input="And again?", **GEN)
    assert second.usage.input_tokens > r.usage.input_tokens
    with pytest.raises(openai.BadRequestError):
        api.responses.create(model=model, conversation=conv.id, previous_response_id=r.id, input="x", **GEN)
    deleted = api.conversations.delete(conv.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        api.conversations.retrieve(conv.id)


def test_default_cap_phase_and_refusals_by_name(api, model, server_url):
    # Background answers at once, so the default cap is seen without
    # generating up to it.
    r = api.responses.create(model=model, input="Count to ten.", background=True)
    assert r.max_output_tokens == 1024, "the server's default cap is reported"
    api.responses.cancel(r.id)
    r = api.responses.create(model=model, input="Say hi.", **GEN)
    raw = raw_json(server_url, "GET", f"/v1/responses/{r.id}")
    validate_response(raw)
    assert raw["output"][0]["phase"] == "final_answer"
    refused = [
        ({"include": ["file_search_call.results"]}, "include[0]", "file_search_call.results"),
        ({"tools": [{"type": "web_search_preview"}]}, "tools[0].type", "web_search_preview"),
        ({"prompt": {"id": "pmpt_missing"}}, "prompt.id", "pmpt_missing"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort", "high"),
    ]
    for kwargs, param, value in refused:
        with pytest.raises(openai.BadRequestError) as e:
            api.responses.create(model=model, input="x", **kwargs, **GEN)
        assert e.value.param == param, kwargs
        assert value in e.value.message, kwargs
    ok = api.responses.create(
        model=model, input="Say hi.", include=["reasoning.encrypted_content"], store=False, **GEN
    )
    assert ok.status in TERMINAL
