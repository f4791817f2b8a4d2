"""`spindle router --workers A,B` over real worker processes (stories260K):
conversations stick to one worker, and a dead worker does not fail requests."""

from __future__ import annotations

import json
import urllib.request

import openai

from conftest import STORIES


def load(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/load", timeout=10) as r:
        return json.loads(r.read())


def served(workers) -> list[int]:
    """Prompt tokens each worker has admitted so far (from its metrics)."""
    out = []
    for w in workers:
        with urllib.request.urlopen(f"{w.url}/metrics", timeout=10) as r:
            text = r.read().decode()
        total = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("spindle_worker_prompt_tokens_total"))
        out.append(int(total))
    return out


def test_router_sticks_chains_and_survives_a_dead_worker(spindle):
    workers = [spindle(["worker", "--port", "0", "--model", str(STORIES), "--threads", "1"]) for _ in range(2)]
    router = spindle(["router", "--port", "0", "--workers", ",".join(w.url for w in workers),
                      "--health-interval", "200ms"])
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60)

    # A chain of turns: after the first, every turn reuses cached prefix tokens,
    # which only happens when it lands on the worker that served the previous one.
    prev = None
    for turn in range(4):
        r = client.responses.create(model="stories260K", input=f"Once upon a time {turn}", max_output_tokens=8,
                                    temperature=0, previous_response_id=prev)
        assert r.status in ("completed", "incomplete")
        if turn > 0:
            assert r.usage.input_tokens_details.cached_tokens > 0, f"turn {turn} missed the cache"
        prev = r.id
    used = served(workers)
    assert sorted(used)[0] == 0, f"one chain should use one worker, saw {used}"

    # Kill the worker that owns the chain: the next turn is retried on the other.
    owner = workers[used.index(max(used))]
    owner.stop()
    r = client.responses.create(model="stories260K", input="And then?", max_output_tokens=8, temperature=0,
                                previous_response_id=prev)
    assert r.status in ("completed", "incomplete") and r.output_text
    # Fresh requests keep working too.
    for i in range(4):
        c = client.chat.completions.create(model="stories260K", messages=[{"role": "user", "content": f"Tom {i}"}],
                                           max_tokens=5, temperature=0)
        assert c.choices[0].message.content is not None
