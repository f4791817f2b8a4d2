"""Log probabilities through the official openai SDK against a real `spindle serve`:
Responses (include + top_logprobs, streamed deltas), Chat Completions (whole and
streamed) and Completions, objects and events validated against the OpenAPI file."""

from __future__ import annotations

import math

import openai
import pytest

from conftest import SMOLLM
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
        api.completions.create(model=model, prompt="x", max_tokens=0)
    assert e.value.param == "max_tokens"


def test_completions_echo_scores_the_prompt(api, model):
    """What scoring harnesses send (echo, logprobs, nothing or one token
    generated): the prompt's tokens come first, the first with null, and a
    text's tokens score as they did when they were generated."""
    prompt = "Once upon a time"
    gen = api.completions.create(model=model, prompt=prompt, logprobs=2, max_tokens=8, temperature=0)
    text, glp = gen.choices[0].text, gen.choices[0].logprobs
    r = api.completions.create(model=model, prompt=prompt + text, logprobs=2, echo=True, max_tokens=0)
    c = r.choices[0]
    assert c.text == prompt + text
    assert c.finish_reason == "length"
    assert r.usage.completion_tokens == 0
    lp = c.logprobs
    n = r.usage.prompt_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert "".join(lp.tokens) == prompt + text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(n)]
    for value, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert value <= 0 and len(top) <= 2 and max(top.values()) >= value - 1e-6
    # The generated tokens, scored as part of the prompt: same tokens, same
    # values (prefill and decode kernels differ in the last digits).
    k = len(glp.tokens)
    assert lp.tokens[-k:] == glp.tokens
    for scored, generated in zip(lp.token_logprobs[-k:], glp.token_logprobs):
        assert abs(scored - generated) < 0.05, (lp.token_logprobs[-k:], glp.token_logprobs)

    # Streamed: the prompt and its scores lead, then the generated tokens,
    # text_offset counting on from the prompt.
    chunks = list(api.completions.create(
        model=model, prompt=prompt, logprobs=1, echo=True, max_tokens=4, temperature=0, stream=True))
    first = chunks[0].choices[0]
    assert first.text == prompt and first.logprobs.token_logprobs[0] is None
    streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    offsets = [o for ch in chunks if ch.choices and ch.choices[0].logprobs for o in ch.choices[0].logprobs.text_offset]
    assert offsets == sorted(offsets) and offsets[len(first.logprobs.tokens)] == len(prompt)
    whole = api.completions.create(model=model, prompt=prompt, logprobs=1, echo=True, max_tokens=4, temperature=0)
    assert streamed == whole.choices[0].text

    # Echo alone prepends the prompt, and generates what it would have.
    plain = api.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0)
    echoed = api.completions.create(model=model, prompt=prompt, echo=True, max_tokens=4, temperature=0)
    assert echoed.choices[0].text == prompt + plain.choices[0].text
    assert echoed.choices[0].logprobs is None


def vocab_ids(words: list[str]) -> list[int]:
    """SmolLM2's token ids of these vocabulary entries (byte-level BPE: a
    leading space is spelled `Ġ`), read from the GGUF itself."""
    from gguf import GGUFReader

    field = GGUFReader(str(SMOLLM)).fields["tokenizer.ggml.tokens"]
    index = {bytes(field.parts[i]).decode("utf-8", "replace"): n for n, i in enumerate(field.data)}
    return [index[w] for w in words]


def test_completions_take_token_ids_and_echo_their_text(api, model):
    """Harnesses send token ids (lm-eval's default): same scores as the text."""
    ids = vocab_ids(["Once", "Ġupon", "Ġa", "Ġtime", ","])
    text = "Once upon a time,"
    by_ids = api.completions.create(model=model, prompt=[ids], echo=True, logprobs=1, max_tokens=0)
    by_text = api.completions.create(model=model, prompt=text, echo=True, logprobs=1, max_tokens=0)
    assert by_ids.choices[0].text == text
    assert by_ids.usage.prompt_tokens == len(ids)
    a, b = by_ids.choices[0].logprobs, by_text.choices[0].logprobs
    assert a.tokens == b.tokens and a.text_offset == b.text_offset
    assert a.token_logprobs[0] is None
    for x, y in zip(a.token_logprobs[1:], b.token_logprobs[1:]):
        assert abs(x - y) < 1e-3
    # Echo alone: the text of the ids, then what greedy decoding adds.
    plain = api.completions.create(model=model, prompt=ids, max_tokens=4, temperature=0)
    echoed = api.completions.create(model=model, prompt=ids, echo=True, max_tokens=4, temperature=0)
    assert echoed.choices[0].text == text + plain.choices[0].text
    assert echoed.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as e:
        api.completions.create(model=model, prompt=[[1], [2]], max_tokens=1)
    assert e.value.param == "prompt"
