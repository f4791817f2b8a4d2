"""Chat Completions, Completions and Models through the official SDK."""

from __future__ import annotations

import pytest




def test_models_list(api, model):
    ids = [m.id for m in api.models.list().data]
    assert model in ids
    assert api.models.retrieve(model).id == model


def test_chat_completion(api, model):
    r = api.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
        max_tokens=16,
        temperature=0,
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in {"stop", "length"}
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_chat_completion_stream_with_usage(api, model):
    chunks = list(
        api.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Count to three."}],
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0


def test_chat_stream_matches_plain(api, model):
    msgs = [{"role": "user", "content": "Name a planet."}]
    plain = api.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0)
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in api.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0, stream=True)
        if c.choices
    )
    assert streamed == plain.choices[0].message.content


def test_completions(api, model):
    r = api.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert r.choices[0].text
    assert r.usage.completion_tokens <= 8
    text = "".join(c.choices[0].text for c in api.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True) if c.choices)
    assert text == r.choices[0].text
