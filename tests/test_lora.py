"""LoRA adapters end to end: `spindle serve --lora NAME=PATH` with SmolLM2
and a generated adapter (tests/lora_adapter.py), used through the openai
SDK by model id `base:adapter` and by the `lora` extension field on
Chat Completions, Completions and Responses."""

from __future__ import annotations

import openai
import pytest

from conftest import SMOLLM, Proc
from lora_adapter import layer_lora

PROMPT = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora") / "tuned.gguf"
    # Random but seeded, on the last layer's FFN output, large enough to
    # change greedy text.
    layer_lora(str(SMOLLM), str(path), "blk.29.ffn_down.weight", rank=4, std=0.2, seed=7, alpha=0.0)
    return path


@pytest.fixture(scope="module")
def other_adapter(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora") / "other.gguf"
    layer_lora(str(SMOLLM), str(path), "blk.28.ffn_down.weight", rank=4, std=0.2, seed=11, alpha=0.0)
    return path


@pytest.fixture(scope="module")
def served(spindle, adapter, other_adapter):
    p = spindle(["serve", "--port", "0", "--model", str(SMOLLM), "--threads", "2",
                 "--lora", f"tuned={adapter}", "--lora", f"other={other_adapter}"])
    client = openai.OpenAI(base_url=f"{p.url}/v1", api_key="unused", max_retries=0, timeout=120)
    base = client.models.list().data[0].id
    return client, base


def chat(client, model, **extra):
    r = client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=16, temperature=0, extra_body=extra or None
    )
    return r.choices[0].message.content


def test_models_lists_each_adapter(served):
    client, base = served
    ids = [m.id for m in client.models.list().data]
    assert base in ids and f"{base}:tuned" in ids, ids


def test_model_id_and_lora_field_select_the_adapter(served):
    client, base = served
    plain = chat(client, base)
    by_id = chat(client, f"{base}:tuned")
    by_field = chat(client, base, lora=[{"name": "tuned", "scale": 1.0}])
    assert by_id != plain, "the adapter did not change the output"
    assert by_field == by_id
    # Scale 0 is exactly the base model.
    assert chat(client, base, lora=[{"name": "tuned", "scale": 0}]) == plain
    assert chat(client, base) == plain


def test_several_adapters_combine(served):
    client, base = served
    one = chat(client, base, lora=[{"name": "tuned"}])
    other = chat(client, base, lora=[{"name": "other"}])
    both = chat(client, base, lora=[{"name": "tuned"}, {"name": "other"}])
    assert both not in (one, other, chat(client, base)), "the second adapter had no effect"
    # One set in any order, and a model id's adapter joins the list.
    assert chat(client, base, lora=[{"name": "other"}, {"name": "tuned"}]) == both
    assert chat(client, f"{base}:tuned", lora=[{"name": "other"}]) == both


def test_completions_and_responses_take_the_field(served):
    client, base = served
    prompt = "The colors of the rainbow are"
    plain = client.completions.create(model=base, prompt=prompt, max_tokens=12, temperature=0).choices[0].text
    tuned = client.completions.create(
        model=base, prompt=prompt, max_tokens=12, temperature=0, extra_body={"lora": [{"name": "tuned"}]}
    ).choices[0].text
    assert tuned != plain
    by_id = client.completions.create(model=f"{base}:tuned", prompt=prompt, max_tokens=12, temperature=0)
    assert by_id.choices[0].text == tuned

    want = chat(client, base, lora=[{"name": "tuned", "scale": 1.0}])
    r = client.responses.create(
        model=base, input=PROMPT[0]["content"], max_output_tokens=16, temperature=0,
        extra_body={"lora": [{"name": "tuned", "scale": 1.0}]}, store=False,
    )
    assert r.output_text == want
    r = client.responses.create(
        model=f"{base}:tuned", input=PROMPT[0]["content"], max_output_tokens=16, temperature=0, store=False
    )
    assert r.output_text == want


@pytest.mark.parametrize(
    "lora,param",
    [
        ([{"name": "nope"}], "lora[0].name"),
        ([{"name": "tuned", "scale": 11}], "lora[0].scale"),
        ([{"name": ""}], "lora[0].name"),
    ],
)
def test_bad_selections_are_400_naming_the_entry(served, lora, param):
    client, base = served
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, base, lora=lora)
    assert e.value.body["param"] == param, e.value.body
    if lora[0]["name"] == "nope":
        assert "nope" in e.value.body["message"]


def test_a_bad_adapter_stops_startup(tmp_path):
    missing = tmp_path / "missing.gguf"
    with pytest.raises(RuntimeError) as e:
        Proc(["worker", "--port", "0", "--model", str(SMOLLM), "--lora", f"gone={missing}"], timeout=60)
    assert "gone" in str(e.value) and "missing.gguf" in str(e.value)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(RuntimeError) as e:
        Proc(["worker", "--port", "0", "--model", str(SMOLLM), "--lora", f"junk={junk}"], timeout=60)
    assert "junk" in str(e.value) and "does not fit the model" in str(e.value)
