"""Long `previous_response_id` chains against a real model with a small
context (`--ctx-size 1024`), in both store backends.

- `truncation: "auto"` keeps a chain going past the model's context: every
  turn succeeds, its prompt fits, and because the window is sticky most
  turns still find their prefix in the worker's cache.
- `truncation: "disabled"` (the default) refuses the turn that cannot fit
  with 400 `context_length_exceeded`, and the turns before it succeed.
- The store writes each turn once: in Redis, a turn adds about the same
  number of bytes at turn 5 as at turn 25.
- A conversation (`conversation=`) behaves the same way: a response reads
  only the newest items that fit, so a long conversation keeps going with
  `"auto"`, is refused with `"disabled"`, and costs Redis the same per turn.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from openai import BadRequestError

from conftest import SMOLLM
from router_support import client

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
CTX = 1024
# ~110 tokens of text per turn: the context overflows after a few turns.
FILLER = "The river ran past the mill and the old stone bridge. " * 8


@pytest.fixture(scope="module", params=["memory", "redis"])
def chain_server(request, spindle):
    args = ["serve", "--port", "0", "--model", str(SMOLLM), "--threads", "2",
            "--ctx-size", str(CTX)]
    redis_port = None
    if request.param == "redis":
        _, redis_port = request.getfixturevalue("redis_server")
        args += ["--store", "redis", "--redis-url", f"redis://127.0.0.1:{redis_port}"]
    return spindle(args).url, redis_port


def turn(api, prev, i, truncation, **context):
    """One long turn: after `prev` (a response id), or in `context` (`conversation=`)."""
    if prev is not None:
        context["previous_response_id"] = prev
    return api.responses.create(
        model=api.models.list().data[0].id,
        input=f"Turn {i}. {FILLER}",
        truncation=truncation,
        max_output_tokens=4,
        temperature=0,
        **context,
    )


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run([REDIS_CLI, "-p", str(port), *args], check=True,
                          capture_output=True, text=True).stdout


def chain_bytes(port: int, response_id: str) -> int:
    """Bytes Redis holds for the chain of `response_id` (its hash tag)."""
    tag = response_id.split("_", 1)[1][:12]
    keys = redis_cli(port, "--scan", "--pattern", f"*{{{tag}}}*").split()
    return sum(int(redis_cli(port, "MEMORY", "USAGE", k, "SAMPLES", "0").strip() or 0) for k in keys)


def test_auto_truncation_keeps_a_long_chain_going(chain_server):
    url, redis_url = chain_server
    api = client(url)
    prev, cached, added = None, [], {}
    for i in range(25):
        before = chain_bytes(redis_url, prev) if redis_url and prev else 0
        r = turn(api, prev, i, "auto")
        assert r.status in ("completed", "incomplete"), r
        assert r.usage.input_tokens < CTX
        cached.append(r.usage.input_tokens_details.cached_tokens)
        if redis_url and prev:
            added[i] = chain_bytes(redis_url, r.id) - before
        prev = r.id
    # The chain went well past the context, yet the cache kept working.
    hits = sum(1 for c in cached[1:] if c > 0)
    assert hits >= len(cached[1:]) * 2 // 3, cached
    if redis_url:
        # Constant store cost per turn (it used to grow with the chain).
        assert added[24] < added[5] * 1.3, added


def test_disabled_truncation_refuses_what_cannot_fit(chain_server):
    url, _ = chain_server
    api = client(url)
    prev = None
    for i in range(40):
        try:
            r = turn(api, prev, i, "disabled")
        except BadRequestError as e:
            assert e.code == "context_length_exceeded", e
            assert i >= 3, "the first turns fit"
            return
        prev = r.id
    pytest.fail("a chain of 40 long turns fit a 1024-token context")


def store_bytes(port: int) -> int:
    """Bytes of every key in this Redis (the module's tests run one at a time)."""
    keys = redis_cli(port, "--scan").split()
    return sum(int(redis_cli(port, "MEMORY", "USAGE", k, "SAMPLES", "0").strip() or 0) for k in keys)


def test_a_long_conversation_costs_the_same_per_turn(chain_server):
    url, redis_port = chain_server
    api = client(url)
    conv = api.conversations.create()
    added, cached = {}, []
    for i in range(24):
        before = store_bytes(redis_port) if redis_port else 0
        r = turn(api, None, i, "auto", conversation=conv.id)
        assert r.status in ("completed", "incomplete"), r
        assert r.usage.input_tokens < CTX
        cached.append(r.usage.input_tokens_details.cached_tokens)
        if redis_port:
            added[i] = store_bytes(redis_port) - before
    # Every turn went into the conversation, though the window holds a few.
    items = api.conversations.items.list(conv.id, limit=100).data
    assert sum(1 for it in items if getattr(it, "role", None) == "user") == 24
    # The window's start is sticky: most turns still hit the prefix cache.
    hits = sum(1 for c in cached[1:] if c > 0)
    assert hits >= len(cached[1:]) // 2, cached
    if redis_port:
        early = sum(added[i] for i in range(6, 14)) / 8
        late = sum(added[i] for i in range(16, 24)) / 8
        assert late < early * 1.3, added


def test_a_conversation_too_long_for_disabled_truncation_is_refused(chain_server):
    url, _ = chain_server
    api = client(url)
    conv = api.conversations.create()
    for i in range(40):
        try:
            turn(api, None, i, "disabled", conversation=conv.id)
        except BadRequestError as e:
            assert e.code == "context_length_exceeded", e
            assert i >= 3, "the first turns fit"
            return
    pytest.fail("a conversation of 40 long turns fit a 1024-token context")
