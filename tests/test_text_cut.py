"""A generation cut by `max_output_tokens` inside a multi-byte character
never sends part of it: no U+FFFD in the deltas or the final text, and the
deltas add up to the final text, on the Responses API and chat completions.

SmolLM2 writes an emoji or a CJK character as several byte-level tokens, so
scanning `max_output_tokens` over a short range ends some generations in
the middle of one; the test checks that it did (a token that added no text).
"""

from __future__ import annotations

import pytest

from router_support import client

PROMPT = "Reply with only emoji, no words: 😀🎉🔥🌟🍕🚀 and then 你好世界。"


@pytest.fixture(scope="module")
def api(server_url):
    return client(server_url)


def streamed(api, model, n):
    deltas, final, usage = [], None, None
    for e in api.responses.create(model=model, input=PROMPT, stream=True, temperature=0,
                                  max_output_tokens=n):
        if e.type == "response.output_text.delta":
            deltas.append(e.delta)
        elif e.type == "response.output_text.done":
            final = e.text
        elif e.type in ("response.completed", "response.incomplete"):
            usage = e.response.usage
            stored = e.response.output[0].content[0].text
    assert final is not None
    assert stored == final
    return "".join(deltas), final, usage.output_tokens


def test_no_partial_character_at_a_cut(api, model):
    texts, cut_inside = {}, 0
    for n in range(1, 13):
        joined, final, produced = streamed(api, model, n)
        assert "\ufffd" not in joined and "\ufffd" not in final, (n, final)
        assert joined == final, n
        texts[n] = (final, produced)
        # Greedy: a longer cut extends the shorter one's text.
        if n > 1:
            assert final.startswith(texts[n - 1][0]), (n, texts)
            if produced == n and texts[n - 1][1] == n - 1 and final == texts[n - 1][0]:
                cut_inside += 1
    assert any(ord(c) > 0x7F for t, _ in texts.values() for c in t), texts
    assert cut_inside > 0, f"no cut fell inside a character: {texts}"


@pytest.mark.parametrize("stream", [False, True])
def test_chat_completions_cut_inside_a_character(api, model, stream):
    for n in range(1, 9):
        kwargs = dict(model=model, messages=[{"role": "user", "content": PROMPT}],
                      max_tokens=n, temperature=0)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in
                           api.chat.completions.create(stream=True, **kwargs) if c.choices)
        else:
            text = api.chat.completions.create(**kwargs).choices[0].message.content
        assert "\ufffd" not in text, (n, text)
