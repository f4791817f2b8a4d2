"""`truncation: "auto"` fits the prompt in tokens, not just bytes.

stories260K's tokenizer gives about one token per 2-3 bytes, under the
router's byte estimate, so a chain's byte window outgrows a 512-token
context in tokens: the worker, told `auto`, drops the oldest messages until
the prompt plus `max_output_tokens` fits. Every turn completes and
`usage.input_tokens` (the tokens fed) stays within the context; the same
chain under `"disabled"` is refused with 400 `context_length_exceeded`.
"""

from __future__ import annotations

import pytest
from openai import BadRequestError

from conftest import STORIES
from fault_support import metric_sum
from router_support import client

CTX = 512
OUT = 32
# ~150 tokens a turn with stories260K's 512-token vocabulary.
FILLER = ("Lily and her dog went to the big park and played with a red ball "
          "near the tall tree. ") * 4


@pytest.fixture(scope="module")
def served(spindle):
    return spindle(["serve", "--port", "0", "--model", str(STORIES), "--threads", "2",
                    "--ctx-size", str(CTX)]).url


@pytest.fixture(scope="module")
def api(served):
    return client(served)


def turn(api, prev, i, truncation, **extra):
    return api.responses.create(
        model=api.models.list().data[0].id,
        input=f"Turn {i}. {FILLER}",
        previous_response_id=prev,
        truncation=truncation,
        temperature=0,
        **extra,
    )


def test_auto_keeps_a_chain_well_past_the_context_going(api):
    prev, inputs = None, []
    for i in range(15):
        r = turn(api, prev, i, "auto", max_output_tokens=OUT)
        assert r.status in ("completed", "incomplete"), r
        assert r.usage.input_tokens + OUT <= CTX, (i, r.usage)
        inputs.append(r.usage.input_tokens)
        prev = r.id
    # The chain held ~15 x 150 tokens: far more than was fed at the end.
    assert inputs[-1] < 15 * 100, inputs
    assert max(inputs) > CTX // 2, inputs


def test_auto_cuts_a_long_input_and_counts_what_it_dropped(api, served):
    """Input items of one request (no chain for the router to window): the
    worker drops the oldest, and its metrics count the cut and the loss."""
    requests_before = metric_sum(served, "spindle_worker_truncated_requests_total")
    messages_before = metric_sum(served, "spindle_worker_truncated_messages_total")
    items = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i}. {FILLER}"}
             for i in range(9)]
    r = api.responses.create(model=api.models.list().data[0].id, input=items, truncation="auto",
                             max_output_tokens=OUT, temperature=0)
    assert r.status in ("completed", "incomplete"), r
    assert r.usage.input_tokens + OUT <= CTX, r.usage
    cut = metric_sum(served, "spindle_worker_truncated_requests_total") - requests_before
    lost = metric_sum(served, "spindle_worker_truncated_messages_total") - messages_before
    assert cut == 1 and lost >= 4, (cut, lost)


def test_auto_without_max_output_tokens_keeps_a_quarter_for_the_output(api):
    prev = None
    for i in range(8):
        r = turn(api, prev, i, "auto")
        assert r.status in ("completed", "incomplete"), r
        assert r.usage.input_tokens <= CTX - CTX // 4, (i, r.usage)
        prev = r.id


def test_disabled_refuses_the_turn_that_does_not_fit(api):
    prev = None
    for i in range(15):
        try:
            r = turn(api, prev, i, "disabled", max_output_tokens=OUT)
        except BadRequestError as e:
            assert e.status_code == 400
            assert e.code == "context_length_exceeded", e
            assert i >= 1, "the first turn fits"
            return
        prev = r.id
    pytest.fail("a chain of 15 long turns fit a 512-token context")
