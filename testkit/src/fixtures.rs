//! The one complete response object fixture (every key the API always
//! serializes) and a stored record around it, for store tests, schema tests
//! and the store benchmark.

use serde_json::{json, Value};
use spindle_router::store::ResponseRecord;
use spindle_router::types::{ResponseObject, ResponseStatus};

/// An in-progress response object as JSON. The router's own unit tests build
/// from this (their `ResponseObject` is a different crate instance).
pub fn response_json(id: &str) -> Value {
    json!({
        "id": id, "object": "response", "created_at": 1, "completed_at": null,
        "status": "in_progress", "error": null, "incomplete_details": null,
        "instructions": null, "model": "m", "output": [], "previous_response_id": null,
        "conversation": null, "tools": [], "tool_choice": "auto", "parallel_tool_calls": true,
        "temperature": 0.7, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "top_logprobs": 0, "truncation": "disabled", "text": {"format": {"type": "text"}},
        "reasoning": null, "max_output_tokens": null, "max_tool_calls": null, "store": true,
        "background": true, "service_tier": "default", "metadata": {},
        "safety_identifier": null, "user": null, "prompt_cache_key": null, "usage": null
    })
}

/// [`response_json`] typed, with `status`.
pub fn response(id: &str, status: ResponseStatus) -> ResponseObject {
    // A constant document: failing to parse it is a bug in this file or in
    // `ResponseObject`, which every store test then reports at once.
    let mut r: ResponseObject =
        serde_json::from_value(response_json(id)).expect("fixture matches ResponseObject");
    r.status = status;
    r
}

/// A stored in-progress response owned by `owner`, with one user message.
pub fn record(id: &str, owner: &str) -> ResponseRecord {
    ResponseRecord {
        response: response(id, ResponseStatus::InProgress),
        input_items: vec![json!({"id": "msg_1", "type": "message", "role": "user",
                                  "content": [{"type": "input_text", "text": "hi"}]})],
        context: vec![],
        chain_root: id.into(),
        owner: owner.into(),
        routing_key: String::new(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixture_parses_and_round_trips() {
        let r = super::response("resp_1", spindle_router::types::ResponseStatus::Completed);
        let back = serde_json::to_value(&r).expect("serializes");
        let mut want = super::response_json("resp_1");
        want["status"] = "completed".into();
        assert_eq!(back, want, "every field survives a round trip");
    }
}
