//! How a response ends when the replica generating it vanished: the store's
//! reaper finds its lease expired and hands the stored object and its
//! logged stream events here. The output is rebuilt from the events, so the
//! text that followers already saw is kept in the record.

use std::collections::BTreeMap;

use serde_json::Value;

use super::events::{ResponseStreamEvent, Sequenced};
use super::items::output_message;
use super::logprobs::LogProb;
use super::output::function_call;
use crate::store::StoredEvent;
use crate::types::{
    now_secs, InputTokensDetails, OutputTokensDetails, ResponseErrorInfo, ResponseObject,
    ResponseStatus, ResponseUsage,
};

/// Why a response whose generating replica vanished ended.
pub const LOST_MESSAGE: &str = "generation lost: router replica stopped";

/// One output item as far as the log tells it.
#[derive(Default)]
struct Partial {
    /// As announced by `response.output_item.added`.
    added: Value,
    /// Its text, or its call's arguments, so far.
    text: String,
    /// Its text's log probabilities so far (when they were asked for).
    logprobs: Vec<LogProb>,
    /// The finished item, once `response.output_item.done` was logged.
    done: Option<Value>,
}

impl Partial {
    /// The unfinished item, `incomplete`, with what was streamed of it.
    fn incomplete(self) -> Value {
        let str_of = |k: &str| {
            self.added
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        if str_of("type") == "function_call" {
            function_call(
                str_of("id"),
                str_of("call_id"),
                str_of("name"),
                &self.text,
                "incomplete",
            )
        } else {
            output_message(
                str_of("id"),
                "incomplete",
                Some((&self.text, &self.logprobs)),
            )
        }
    }
}

/// Ends `response` as `failed` with [`LOST_MESSAGE`], announced by `error`
/// and `response.failed` (see [`crate::store::LostFn`]). Its output is what
/// `logged` streamed (unfinished items `incomplete`); usage counts one
/// output token per text delta (a delta holds at least one) and no input
/// tokens, which only the finished generation reports.
pub fn lost(
    mut response: ResponseObject,
    logged: &[StoredEvent],
) -> (ResponseObject, Vec<Vec<u8>>) {
    let mut items: BTreeMap<u32, Partial> = BTreeMap::new();
    let mut deltas = 0u32;
    for ev in logged {
        let Ok(Sequenced { event, .. }) = Sequenced::decode(ev.seq, &ev.bytes) else {
            continue;
        };
        match event {
            ResponseStreamEvent::OutputItemAdded { output_index, item } => {
                items.entry(output_index).or_default().added = item;
            }
            // A message's text or a call's arguments, as far as they came.
            ResponseStreamEvent::OutputTextDelta {
                output_index,
                delta,
                logprobs,
                ..
            } => {
                deltas = deltas.saturating_add(1);
                let item = items.entry(output_index).or_default();
                item.text.push_str(&delta);
                item.logprobs.extend(logprobs);
            }
            ResponseStreamEvent::FunctionCallArgumentsDelta {
                output_index,
                delta,
                ..
            } => {
                deltas = deltas.saturating_add(1);
                items.entry(output_index).or_default().text.push_str(&delta);
            }
            ResponseStreamEvent::OutputItemDone { output_index, item } => {
                items.entry(output_index).or_default().done = Some(item);
            }
            _ => {}
        }
    }
    if !items.is_empty() {
        response.output = items
            .into_values()
            .map(|mut p| p.done.take().unwrap_or_else(|| p.incomplete()))
            .collect();
        response.usage = Some(ResponseUsage {
            input_tokens: 0,
            input_tokens_details: InputTokensDetails { cached_tokens: 0 },
            output_tokens: deltas,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: 0,
            },
            total_tokens: deltas,
        });
    }
    let code = spindle_proto::FailureCode::ServerError.as_str();
    response.status = ResponseStatus::Failed;
    response.error = Some(ResponseErrorInfo {
        code: code.into(),
        message: LOST_MESSAGE.into(),
    });
    response.completed_at = Some(now_secs());
    let events = vec![
        ResponseStreamEvent::error(code, LOST_MESSAGE).encode(),
        ResponseStreamEvent::terminal(&response).encode(),
    ];
    (response, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::responses::items::output_text_part;

    fn stored(events: Vec<ResponseStreamEvent>) -> Vec<StoredEvent> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| StoredEvent {
                seq: i as u64,
                bytes: e.encode(),
            })
            .collect()
    }

    fn logprob(text: &str) -> LogProb {
        LogProb {
            token: text.into(),
            logprob: -0.5,
            bytes: text.as_bytes().to_vec(),
            top_logprobs: Vec::new(),
        }
    }

    /// A delta of one token, with its log probability.
    fn delta(text: &str) -> ResponseStreamEvent {
        ResponseStreamEvent::OutputTextDelta {
            item_id: "msg_1".into(),
            output_index: 0,
            content_index: 0,
            delta: text.into(),
            logprobs: vec![logprob(text)],
        }
    }

    fn in_progress() -> ResponseObject {
        serde_json::from_value(serde_json::json!({
            "id": "resp_1", "object": "response", "created_at": 1, "completed_at": null,
            "status": "in_progress", "error": null, "incomplete_details": null,
            "instructions": null, "model": "m", "output": [], "previous_response_id": null,
            "conversation": null, "tools": [], "tool_choice": "auto",
            "parallel_tool_calls": true, "temperature": 1.0, "top_p": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "top_logprobs": 0,
            "truncation": "disabled", "text": {"format": {"type": "text"}}, "reasoning": null,
            "max_output_tokens": null, "max_tool_calls": null, "store": true,
            "background": true, "service_tier": "default", "metadata": {},
            "safety_identifier": null, "user": null, "prompt_cache_key": null, "usage": null
        }))
        .expect("a response object")
    }

    #[test]
    fn the_output_is_rebuilt_from_the_logged_deltas() {
        let log = stored(vec![
            ResponseStreamEvent::OutputItemAdded {
                output_index: 0,
                item: output_message("msg_1", "in_progress", None),
            },
            ResponseStreamEvent::ContentPartAdded {
                item_id: "msg_1".into(),
                output_index: 0,
                content_index: 0,
                part: output_text_part("", &[]),
            },
            delta("Hello"),
            delta(", wor"),
            delta("ld"),
        ]);
        let (resp, events) = lost(in_progress(), &log);
        assert_eq!(resp.status, ResponseStatus::Failed);
        assert_eq!(
            resp.output,
            vec![output_message(
                "msg_1",
                "incomplete",
                Some((
                    "Hello, world",
                    &[logprob("Hello"), logprob(", wor"), logprob("ld")]
                ))
            )]
        );
        let usage = resp.usage.expect("usage from the log");
        assert_eq!((usage.output_tokens, usage.total_tokens), (3, 3));
        assert_eq!(events.len(), 2);
        let last: Value = serde_json::from_slice(&events[1]).unwrap();
        assert_eq!(last["type"], "response.failed");
        assert_eq!(
            last["response"]["output"][0]["content"][0]["text"],
            "Hello, world"
        );
    }

    #[test]
    fn nothing_logged_leaves_the_output_empty() {
        let (resp, _) = lost(in_progress(), &[]);
        assert!(resp.output.is_empty());
        assert_eq!(resp.usage, None);
        assert_eq!(resp.error.unwrap().message, LOST_MESSAGE);
    }
}
