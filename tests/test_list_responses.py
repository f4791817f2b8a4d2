"""`GET /v1/responses` through the official openai SDK (3.54 has no
`responses.list()`, so its generic cursor paginator, `get_api_list` with
`SyncCursorPage`, which follows `has_more` and the last item's id as
`after`) against a real `spindle serve`; every listed object is validated
against the schema's response object."""

from __future__ import annotations

import itertools

import openai
import pytest
from openai.pagination import SyncCursorPage
from openai.types.responses import Response

from router_support import GEN, Http, assert_error_body, validate_response


def listing(api: openai.OpenAI, **params) -> SyncCursorPage[Response]:
    return api.get_api_list("/responses", model=Response, page=SyncCursorPage[Response],
                            options={"params": params})


def test_lists_stored_responses_newest_first_in_pages(api, model, server_url):
    mine = [api.responses.create(model=model, input=f"Count to {n}.", **GEN).id for n in range(3)]
    unstored = api.responses.create(model=model, input="Not kept.", store=False, **GEN).id
    deleted = api.responses.create(model=model, input="Deleted.", **GEN).id
    api.responses.delete(deleted)

    # The SDK pages with limit=2 and follows has_more/after by itself.
    first = listing(api, limit=2)
    assert [r.id for r in first.data] == mine[::-1][:2] and first.has_more
    # Iterating crosses pages; the two newer ones (never stored, deleted) would come first.
    listed = [r.id for r in itertools.islice(listing(api, limit=2), 5)]
    assert listed[:3] == mine[::-1]
    assert unstored not in listed and deleted not in listed
    assert len(listed) == len(set(listed))

    asc = listing(api, order="asc", after=mine[0], limit=1)
    assert [r.id for r in asc.data] == [mine[1]] and asc.has_more

    got = api.responses.retrieve(mine[2])
    assert listing(api, limit=1).data[0] == got

    # The raw page: the list shape, each object valid against the schema.
    page = Http(server_url).get("/v1/responses?limit=3").json()
    assert page["object"] == "list"
    assert [r["id"] for r in page["data"]] == mine[::-1]
    assert page["first_id"] == mine[2] and page["last_id"] == mine[0]
    for r in page["data"]:
        validate_response(r)


@pytest.mark.parametrize("query, param", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"),
    ("order=sideways", "order"), ("after=resp_0123456789abcdef0123456789abcdef", "after"),
])
def test_bad_list_parameters_are_400_naming_them(server_url, api, query, param):
    assert_error_body(Http(server_url).get(f"/v1/responses?{query}"), 400, param=param)
    key, value = query.split("=")
    with pytest.raises(openai.BadRequestError) as e:
        listing(api, **{key: value})
    assert e.value.body["param"] == param
