"""Long `previous_response_id` chains against a real model with a small
context (`--ctx-size 1024`), in both store backends.

- `truncation: "auto"` keeps a chain going past the model's context: every
  turn succeeds, its prompt fits, and because the window is sticky most
  turns still find their prefix in the worker's cache.
- `truncation: "disabled"` (the default) refuses the turn that cannot fit
  with 400 `context_length_exceeded`, and the turns before it succeed.
- The store writes each turn once: in Redis, a turn adds about the same
  number of bytes at turn 5 as at turn 25.
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


def turn(api, prev, i, truncation):
    return api.responses.create(
        model=api.models.list().data[0].id,
        input=f"Turn {i}. {FILLER}",
        previous_response_id=prev,
        truncation=truncation,
        max_output_tokens=4,
        temperature=0,
    )


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run([REDIS_CLI, "-p", str(port), *args], check=True,
                          capture_output=True, text=True).stdout


def chain_bytes(port: int, response_id: str) -> int:
    """Bytes Redis holds for the chain of `response_id` (its hash tag)."""
    tag = response_id.split("_", 1)[1][:12]
    keys = redis_cli(port, "--scan", "--pattern", f"*{{{tag}}}*").split()
    return sum(int(redis_cli(port, "MEMORY", "USAGE", k, "SAMPLES", "0") or 0) for k in keys)


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
