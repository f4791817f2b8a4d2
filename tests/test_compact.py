"""`POST /v1/responses/compact` on a real `spindle serve` with SmolLM2,
through the official SDK's `client.responses.compact`: the answer validates
against the Open Responses `CompactResource`, its usage is the summarising
pass's, a new chain continues from the compacted window, and an edited
compaction item or a request without `model` is a 400 naming the field."""

from __future__ import annotations

import openai
import pytest

from router_support import GEN, Http, assert_error_body, validate, validate_response


@pytest.fixture(scope="module")
def compacted(api, model):
    first = api.responses.create(model=model, input="My name is Ada and I like green tea.", **GEN)
    second = api.responses.create(
        model=model, input="What should I drink this morning?", previous_response_id=first.id, **GEN
    )
    raw = api.responses.with_raw_response.compact(
        model=model, previous_response_id=second.id, input="And in the evening?"
    )
    assert raw.http_response.status_code == 200
    return raw.http_response.json(), raw.parse()


def test_compaction_validates_and_keeps_the_latest_user_turn(compacted):
    body, parsed = compacted
    validate("CompactResource", body)
    assert body["object"] == "response.compaction"
    assert parsed.object == "response.compaction" and parsed.id == body["id"]
    kinds = [item["type"] for item in body["output"]]
    assert kinds == ["compaction", "message"], body
    cmp, latest = body["output"]
    assert cmp["id"].startswith("cmp_") and len(cmp["encrypted_content"]) > 40
    assert "Ada" not in cmp["encrypted_content"]
    assert latest["role"] == "user"
    assert latest["content"] == [{"type": "input_text", "text": "And in the evening?"}]
    usage = body["usage"]
    assert usage["input_tokens"] > 20, usage
    assert usage["output_tokens"] > 0, usage
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_a_new_chain_continues_from_the_window(api, model, compacted):
    body, _ = compacted
    raw = api.responses.with_raw_response.create(model=model, input=body["output"], **GEN)
    validate_response(raw.http_response.json())
    follow = raw.parse()
    # 16 output tokens may cut the answer: what matters is that it ran.
    assert follow.status in ("completed", "incomplete"), follow.status
    if follow.status == "incomplete":
        assert follow.incomplete_details.reason == "max_output_tokens"
    assert follow.output_text
    # The summary took a few prompt tokens more than the item's id would.
    assert follow.usage.input_tokens > 20
    items = api.responses.input_items.list(follow.id, order="asc").data
    stored = items[0].model_dump(mode="json", exclude_none=True)
    assert stored == body["output"][0], stored
    # And the chain goes on from there as usual.
    more = api.responses.create(model=model, input="Thanks!", previous_response_id=follow.id, **GEN)
    assert more.status in ("completed", "incomplete") and more.output_text


def test_an_edited_item_is_refused(api, model, compacted):
    body, _ = compacted
    cmp = dict(body["output"][0])
    token = cmp["encrypted_content"]
    mid = len(token) // 2
    cmp["encrypted_content"] = token[:mid] + ("A" if token[mid] != "A" else "B") + token[mid + 1:]
    with pytest.raises(openai.BadRequestError) as e:
        api.responses.create(model=model, input=[cmp, {"role": "user", "content": "Hi"}], **GEN)
    err = e.value.body
    assert err["code"] == "invalid_encrypted_content", err
    assert err["param"] == "input[0].encrypted_content", err


def test_model_is_required(server_url):
    r = Http(server_url).post("/v1/responses/compact", json={"input": "Hi"})
    assert_error_body(r, 400, param="model")
    r = Http(server_url).get("/v1/responses/compact")
    err = assert_error_body(r, 405, code="method_not_allowed")
    assert err["type"] == "invalid_request_error"
