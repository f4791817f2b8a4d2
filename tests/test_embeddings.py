"""`POST /v1/embeddings` end to end with the official openai SDK, on
SmolLM2-135M (mean pooling): `spindle serve`, a standalone worker, and a
`spindle router` in front of a worker (the worker hop is base64).

`client.embeddings.create` without `encoding_format` asks for base64 and
decodes it itself; with `encoding_format="float"` it reads JSON floats. Both
must give the same unit vectors."""

from __future__ import annotations

import base64
import math
import struct

import openai
import pytest
import requests

from conftest import SMOLLM
from router_support import client, wait_ready

TEXTS = [
    "The cat sat on the mat.",
    "Quarterly revenue grew by eight percent compared with last year.",
    "How do I reset my password?",
]


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def close(a, b, tol=2e-3) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < tol


def test_both_encodings_give_the_same_unit_vectors(api, model):
    floats = api.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    assert floats.object == "list" and floats.model == model
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert all(d.object == "embedding" for d in floats.data)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > len(TEXTS)
    dims = len(floats.data[0].embedding)
    assert dims == 576, dims
    for d in floats.data:
        assert abs(math.sqrt(sum(x * x for x in d.embedding)) - 1.0) < 1e-4
    # The SDK's default: base64 on the wire, decoded by the SDK.
    b64 = api.embeddings.create(model=model, input=TEXTS)
    for f, b in zip(floats.data, b64.data):
        assert close(list(b.embedding), f.embedding, 1e-6)
    assert b64.usage.prompt_tokens == floats.usage.prompt_tokens


def test_base64_is_little_endian_f32(server_url, model):
    r = requests.post(f"{server_url}/v1/embeddings", timeout=60,
                      json={"model": model, "input": TEXTS[0], "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    values = struct.unpack(f"<{len(raw) // 4}f", raw)
    f = requests.post(f"{server_url}/v1/embeddings", timeout=60,
                      json={"model": model, "input": TEXTS[0]}).json()
    assert close(values, f["data"][0]["embedding"], 1e-6)


def test_same_input_same_vector_alone_or_in_a_batch(api, model):
    alone = [api.embeddings.create(model=model, input=t, encoding_format="float").data[0].embedding
             for t in TEXTS]
    again = api.embeddings.create(model=model, input=TEXTS[1], encoding_format="float").data[0].embedding
    assert close(again, alone[1], 1e-6)
    batch = api.embeddings.create(model=model, input=TEXTS[::-1], encoding_format="float").data
    for d, a in zip(batch, alone[::-1]):
        assert cosine(d.embedding, a) > 0.9999


def test_paraphrases_are_closer_than_unrelated_text(api, model):
    v = [d.embedding for d in api.embeddings.create(
        model=model, encoding_format="float",
        input=["How do I reset my password?", "How can I change my password?",
               "The mitochondria is the powerhouse of the cell."]).data]
    assert cosine(v[0], v[1]) > cosine(v[0], v[2]) + 0.1, (cosine(v[0], v[1]), cosine(v[0], v[2]))


def test_token_ids_are_embedded(api, model):
    one = api.embeddings.create(model=model, input=[504, 2365, 2145], encoding_format="float")
    assert one.usage.prompt_tokens == 3
    two = api.embeddings.create(model=model, input=[[504, 2365, 2145], [28]], encoding_format="float")
    assert two.usage.prompt_tokens == 4
    assert close(two.data[0].embedding, one.data[0].embedding)


@pytest.mark.parametrize("body,param", [
    ({"input": "x"}, "model"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["a", ""]}, "input[1]"),
    ({"input": ["a", 1]}, "input"),
    ({"input": [[1], [10 ** 6]]}, "input[1]"),
    ({"input": "a", "dimensions": 64}, "dimensions"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "word " * 5000}, "input"),
    ({"input": ["x"] * 2049}, "input"),
])
def test_bad_requests_are_400_naming_the_param(server_url, model, body, param):
    body = {"model": model, **body} if param != "model" else body
    r = requests.post(f"{server_url}/v1/embeddings", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    if param == "dimensions":
        assert "576" in err["message"], err


def test_sdk_raises_bad_request(api, model):
    with pytest.raises(openai.BadRequestError) as e:
        api.embeddings.create(model=model, input="a", dimensions=8)
    assert e.value.body["param"] == "dimensions"


def test_standalone_worker_and_router_answer_the_same(worker_url, procs):
    worker = client(worker_url)
    name = worker.models.list().data[0].id
    direct = worker.embeddings.create(model=name, input=TEXTS, encoding_format="float")
    router = procs(["router", "--port", "0", "--workers", worker_url])
    wait_ready(router.url)
    via = client(router.url)
    for fmt in ("float", None):
        kwargs = {"encoding_format": fmt} if fmt else {}
        routed = via.embeddings.create(model=name, input=TEXTS, **kwargs)
        assert routed.usage.prompt_tokens == direct.usage.prompt_tokens
        for r, d in zip(routed.data, direct.data):
            assert close(list(r.embedding), d.embedding, 1e-6)
    metrics = requests.get(f"{worker_url}/metrics", timeout=10).text
    inputs = [line for line in metrics.splitlines()
              if line.startswith("spindle_worker_embedding_inputs_total")]
    assert inputs and float(inputs[0].rsplit(" ", 1)[1]) >= 3 * len(TEXTS), inputs
    assert SMOLLM.exists()
