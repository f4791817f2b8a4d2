"""WebSocket mode of the Responses API (`GET /v1/responses` upgraded) with
the `websockets` client against a real `spindle serve`: every event is
validated against the Open Responses schema, like the SSE tests do."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import STORIES
from router_support import GEN, Http, validate, validate_event, validate_response

TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1) + "/v1/responses"


def create(ws, **fields) -> None:
    ws.send(json.dumps({"type": "response.create", **GEN, **fields}))


def turn(ws) -> list[dict] | dict:
    """One response's events up to its terminal one, or one error envelope."""
    events: list[dict] = []
    while True:
        msg = json.loads(ws.recv(timeout=120))
        if msg["type"] == "error" and "status" in msg:
            assert not events, f"envelope inside a response: {msg}"
            validate("WebSocketErrorEvent", msg)
            return msg
        validate_event(msg)
        events.append(msg)
        if msg["type"] in TERMINAL:
            return events


def finished(ws) -> dict:
    """The final response of one turn, after checking its events."""
    events = turn(ws)
    assert isinstance(events, list), events
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    assert sum(e["type"] in TERMINAL for e in events) == 1
    resp = events[-1]["response"]
    validate_response(resp)
    return resp


def test_sequential_responses_on_one_socket(server_url, model):
    with connect(ws_url(server_url)) as ws:
        create(ws, model=model, input="Say hello.")
        create(ws, model=model, input="Say goodbye.")
        first = finished(ws)
        second = finished(ws)
    assert first["status"] in {"completed", "incomplete"}
    assert second["status"] in {"completed", "incomplete"}
    assert first["id"] != second["id"]
    assert first["output"][0]["content"][0]["text"]
    # Stored by default, as over HTTP.
    assert Http(server_url).get(f"/v1/responses/{second['id']}").status_code == 200


def test_store_false_chain_and_eviction(server_url, model):
    with connect(ws_url(server_url)) as ws:
        create(ws, model=model, input="My name is Ada.", store=False)
        first = finished(ws)
        # Not stored: only this connection can continue it.
        r = Http(server_url).post("/v1/responses", json={"model": model, "input": "x",
                                                           "previous_response_id": first["id"]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "previous_response_not_found"
        create(ws, model=model, input="What is my name?", store=False,
               previous_response_id=first["id"])
        second = finished(ws)
        assert second["previous_response_id"] == first["id"]
        assert second["usage"]["input_tokens"] > first["usage"]["input_tokens"]
        # A continuation that fails evicts what it continued from.
        create(ws, model=model, store=False, previous_response_id=second["id"], temperature=9)
        err = turn(ws)
        assert err["status"] == 400 and err["error"]["param"] == "temperature", err
        create(ws, model=model, input="Again.", store=False, previous_response_id=second["id"])
        err = turn(ws)
        assert err["error"]["code"] == "previous_response_not_found", err
        # Transport fields of HTTP are refused.
        for field, value in (("stream", True), ("background", True)):
            create(ws, model=model, **{field: value})
            err = turn(ws)
            assert err["status"] == 400 and err["error"]["param"] == field, err


def test_stored_chain_continues_after_reconnect(server_url, model):
    with connect(ws_url(server_url)) as ws:
        create(ws, model=model, input="Remember the word apple.")
        first = finished(ws)
    with connect(ws_url(server_url)) as ws:
        create(ws, model=model, input="Which word?", previous_response_id=first["id"])
        second = finished(ws)
    assert second["previous_response_id"] == first["id"]
    assert second["usage"]["input_tokens"] > first["usage"]["input_tokens"]


def test_upgrade_needs_the_api_key(procs, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("team-a:key-a\n")
    server = procs(["serve", "--port", "0", "--model", str(STORIES), "--threads", "1",
                    "--api-keys-file", str(keys)])
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(server.url), additional_headers=headers)
        assert refused.value.response.status_code == 401
        body = json.loads(refused.value.response.body)
        assert body["error"]["code"] == "invalid_api_key"
    with connect(ws_url(server.url), additional_headers={"Authorization": "Bearer key-a"}) as ws:
        create(ws, input="Once upon a time", max_output_tokens=4)
        assert finished(ws)["status"] in {"completed", "incomplete"}
