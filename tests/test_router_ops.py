"""The router as operators run it: one router over two model pools (each
request lands on its own pool), probes that need no API key, and SIGTERM
draining (a stream in flight completes; what outlives `--drain-timeout` is
left `failed` in the store, never `in_progress`)."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import SMOLLM, STORIES
from router_support import wait_ready


def get(url: str, key: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def prompt_tokens(worker) -> int:
    with urllib.request.urlopen(f"{worker.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return int(sum(float(l.split()[-1]) for l in text.splitlines()
                   if l.startswith("spindle_worker_prompt_tokens_total")))


def test_one_router_two_pools(spindle):
    smol = spindle(["worker", "--port", "0", "--model", str(SMOLLM), "--threads", "1"])
    tiny = [spindle(["worker", "--port", "0", "--model", str(STORIES), "--threads", "1",
                     "--served-model-name", "stories260K,tiny"]) for _ in range(2)]
    router = spindle(["router", "--port", "0", "--workers", ",".join(w.url for w in [smol, *tiny]),
                      "--health-interval", "200ms"])
    wait_ready(router.url)
    status, models = get(f"{router.url}/v1/models")
    served = {m["id"]: m for m in models["data"]}
    assert status == 200 and set(served) == {"SmolLM2-135M-Instruct.Q4_1", "stories260K", "tiny"}
    assert served["stories260K"]["workers"] == 2 and served["SmolLM2-135M-Instruct.Q4_1"]["workers"] == 1
    assert all(m["owned_by"] == "spindle" for m in served.values())

    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60)
    before = [prompt_tokens(w) for w in [smol, *tiny]]
    for i in range(3):
        r = client.responses.create(model="tiny", input=f"Once upon a time {i}", max_output_tokens=4)
        assert r.model == "tiny" and r.status in ("completed", "incomplete")
    after_tiny = [prompt_tokens(w) for w in [smol, *tiny]]
    assert after_tiny[0] == before[0], "a stories260K request reached the SmolLM2 worker"
    assert sum(after_tiny[1:]) > sum(before[1:])
    c = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", max_tokens=4, temperature=0,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert c.model == "SmolLM2-135M-Instruct.Q4_1"
    after_smol = [prompt_tokens(w) for w in [smol, *tiny]]
    assert after_smol[0] > after_tiny[0] and after_smol[1:] == after_tiny[1:]

    # Two models served: the model must be named, and unknown names list the served ones.
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="", input="x", max_output_tokens=2)
    assert "stories260K" in str(e.value)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="gpt-9", input="x", max_output_tokens=2)
    assert "SmolLM2-135M-Instruct.Q4_1" in str(e.value) and "tiny" in str(e.value)


def test_probes_need_no_key_and_ready_tracks_workers(spindle, tmp_path):
    worker = spindle(["worker", "--port", "0", "--model", str(STORIES), "--threads", "1"])
    (tmp_path / "keys").write_text("ops:k1\n")
    router = spindle(["router", "--port", "0", "--workers", worker.url,
                      "--api-keys-file", str(tmp_path / "keys"),
                      "--health-interval", "200ms", "--eject-after", "1"])
    wait_ready(router.url)
    assert get(f"{router.url}/health") == (200, {"status": "ok"})
    assert get(f"{router.url}/v1/models")[0] == 401
    assert get(f"{router.url}/v1/models", key="k1")[0] == 200
    # One model served: it may be omitted.
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="k1", max_retries=0, timeout=60)
    assert client.responses.create(input="Once", max_output_tokens=2).model == "stories260K"
    worker.stop()
    deadline = time.time() + 10
    while get(f"{router.url}/ready")[0] == 200:
        assert time.time() < deadline, "/ready stayed 200 with its only worker dead"
        time.sleep(0.1)
    status, body = get(f"{router.url}/ready")
    assert status == 503 and "stories260K" in body["reason"]
    assert get(f"{router.url}/health")[0] == 200


def test_sigterm_drains_streams_and_leaves_nothing_in_progress(spindle, redis_server):
    _, port = redis_server
    worker = spindle(["worker", "--port", "0", "--model", str(SMOLLM), "--threads", "2"])
    common = ["--workers", worker.url, "--store", "redis", "--redis-url", f"redis://127.0.0.1:{port}",
              "--health-interval", "200ms"]
    router = spindle(["router", "--port", "0", *common, "--drain-timeout", "60s"])
    wait_ready(router.url)
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=120)

    # A stream in flight when SIGTERM arrives runs to its end; the process exits 0.
    stream = client.responses.create(model="SmolLM2-135M-Instruct.Q4_1", input="Tell me a long story.",
                                     max_output_tokens=120, temperature=0, stream=True)
    events = iter(stream)
    while next(events).type != "response.output_text.delta":
        pass
    router.signal(signal.SIGTERM)
    time.sleep(0.2)
    status, body = get(f"{router.url}/ready")
    assert (status, body.get("reason")) == (503, "draining")
    with pytest.raises(openai.APIStatusError) as e:
        client.responses.create(model="SmolLM2-135M-Instruct.Q4_1", input="late", max_output_tokens=2)
    assert e.value.status_code == 503
    kinds = [e.type for e in events]
    assert kinds[-1] in ("response.completed", "response.incomplete"), kinds[-5:]
    assert kinds.count("response.output_text.delta") > 10
    assert router.wait(timeout=30) == 0

    # A background generation that outlives the drain deadline ends `failed`
    # in the shared store; another replica reports it. The deadline is far
    # shorter than any generation: SmolLM2 answers this prompt in ~80 tokens
    # (0.7 s), which a 500 ms deadline sometimes let finish.
    short = spindle(["router", "--port", "0", *common, "--drain-timeout", "1ms"])
    wait_ready(short.url)
    c2 = openai.OpenAI(base_url=f"{short.url}/v1", api_key="unused", max_retries=0, timeout=60)
    bg = c2.responses.create(model="SmolLM2-135M-Instruct.Q4_1", input="Count to one thousand.",
                             max_output_tokens=2000, temperature=0, background=True)
    deadline = time.time() + 30
    while c2.responses.retrieve(bg.id).status == "queued":
        assert time.time() < deadline
        time.sleep(0.05)
    short.signal(signal.SIGTERM)
    assert short.wait(timeout=30) == 0
    other = spindle(["router", "--port", "0", *common])
    final = openai.OpenAI(base_url=f"{other.url}/v1", api_key="unused", max_retries=0).responses.retrieve(bg.id)
    assert final.status == "failed", final.status
    assert final.error is not None and final.error.code == "server_shutdown"
