"""One chat/completions protocol: the worker's endpoints and the router's
(through `spindle serve`) accept the same requests and reject the same ones
with the same status, `param` and `code`, because both parse, validate and
render with `spindle_proto::openai`.

Valid requests use `ignore_eos` so both must return exactly `max_tokens`
tokens: a dropped sampling field would show up as a shorter output.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MSG = [{"role": "user", "content": "Say something."}]

# (endpoint, body, expected status). Bodies are sent to both servers as they are.
CASES = [
    # valid, with every sampling field the engine honours
    (CHAT, {"messages": MSG, "max_tokens": 5, "ignore_eos": True, "top_k": 20, "min_p": 0.05,
            "repetition_penalty": 1.1, "seed": 7, "temperature": 0.7}, 200),
    (CHAT, {"messages": MSG, "max_completion_tokens": 4, "ignore_eos": True}, 200),
    # tool calls and tool messages render the same way on both sides
    (CHAT, {"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
    ], "max_tokens": 3, "ignore_eos": True}, 200),
    (CHAT, {"messages": MSG, "max_tokens": 2, "temperature": 0, "stop": ["a", "b", "c", "d"]}, 200),
    (COMPLETIONS, {"prompt": "Once upon a time", "ignore_eos": True}, 200),  # default max_tokens
    (COMPLETIONS, {"prompt": ["Once upon a time"], "max_tokens": 3, "ignore_eos": True}, 200),
    # invalid
    (CHAT, {"messages": []}, 400),
    (CHAT, {"messages": "hello"}, 400),
    (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400),
    (CHAT, {"messages": [{"role": "tool", "content": "x"}]}, 400),
    (CHAT, {"messages": MSG, "temperature": 9}, 400),
    (CHAT, {"messages": MSG, "top_p": 1.5}, 400),
    (CHAT, {"messages": MSG, "top_k": -1}, 400),
    (CHAT, {"messages": MSG, "min_p": 2}, 400),
    (CHAT, {"messages": MSG, "repetition_penalty": 0}, 400),
    (CHAT, {"messages": MSG, "max_tokens": 0}, 400),
    (CHAT, {"messages": MSG, "n": 2}, 400),
    (CHAT, {"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, 400),
    (CHAT, {"messages": MSG, "stop": "x" * 100_000}, 400),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": 2, "temperature": 0, "ignore_eos": True, "stop": ["y" * 512]}, 200),
    (COMPLETIONS, {"prompt": "hi", "stop": ["y" * 513]}, 400),
    (CHAT, {"messages": MSG, "model": "gpt-7"}, 404),
    (COMPLETIONS, {"prompt": ""}, 400),
    (COMPLETIONS, {"prompt": ["a", "b"]}, 400),
    (COMPLETIONS, {"prompt": 5}, 400),
    (COMPLETIONS, {}, 400),
]


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("path,body,status", CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_worker_and_router_agree(worker_url, server_url, path, body, status):
    results = {name: post(base + path, body) for name, base in
               (("worker", worker_url), ("router", server_url))}
    for name, (code, _) in results.items():
        assert code == status, f"{name}: {results[name]}"
    (_, w), (_, r) = results["worker"], results["router"]
    if status != 200:
        for key in ("type", "param", "code"):
            assert w["error"][key] == r["error"][key], f"{key}: worker {w} router {r}"
        return
    assert w["object"] == r["object"]
    assert w["usage"]["completion_tokens"] == r["usage"]["completion_tokens"]
    if body.get("ignore_eos"):
        want = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        assert r["usage"]["completion_tokens"] == want
        assert r["choices"][0]["finish_reason"] == "length"
