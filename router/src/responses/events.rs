//! The Responses API's stream events: one typed enum, encoded once.
//!
//! The driver builds them; they go to a live SSE stream as they are, and to
//! the store as bytes (without their sequence number, which the store keeps
//! beside them). Replay decodes stored bytes back into this enum. Nothing
//! else builds or reads API events.

use axum::response::sse::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::items::{Item, Part};
use super::logprobs::LogProb;
use crate::types::{ResponseObject, ResponseStatus};

/// One event of a response's stream (the `type` tag is the SSE event name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub enum ResponseStreamEvent {
    #[serde(rename = "response.created")]
    Created { response: Box<ResponseObject> },
    #[serde(rename = "response.queued")]
    Queued { response: Box<ResponseObject> },
    #[serde(rename = "response.in_progress")]
    InProgress { response: Box<ResponseObject> },
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded {
        output_index: u32,
        #[schema(value_type = Item)]
        item: Value,
    },
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        item_id: String,
        output_index: u32,
        content_index: u32,
        #[schema(value_type = Part)]
        part: Value,
    },
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        item_id: String,
        output_index: u32,
        content_index: u32,
        delta: String,
        /// The tokens behind `delta` (with `include` of
        /// `message.output_text.logprobs`; else empty).
        logprobs: Vec<LogProb>,
    },
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        item_id: String,
        output_index: u32,
        content_index: u32,
        text: String,
        #[serde(default)]
        logprobs: Vec<LogProb>,
    },
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        item_id: String,
        output_index: u32,
        content_index: u32,
        #[schema(value_type = Part)]
        part: Value,
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta {
        item_id: String,
        output_index: u32,
        delta: String,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        item_id: String,
        output_index: u32,
        arguments: String,
    },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        output_index: u32,
        #[schema(value_type = Item)]
        item: Value,
    },
    #[serde(rename = "response.completed")]
    Completed { response: Box<ResponseObject> },
    #[serde(rename = "response.incomplete")]
    Incomplete { response: Box<ResponseObject> },
    #[serde(rename = "response.failed")]
    Failed { response: Box<ResponseObject> },
    /// A failure, before `response.failed`.
    #[serde(rename = "error")]
    Error {
        code: String,
        message: String,
        param: Option<String>,
        error: ErrorDetail,
    },
}

/// The `error` object inside an [`ResponseStreamEvent::Error`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub kind: String,
    pub code: String,
    pub message: String,
    pub param: Option<String>,
}

impl ResponseStreamEvent {
    /// The event's `type`, also its SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Created { .. } => "response.created",
            Self::Queued { .. } => "response.queued",
            Self::InProgress { .. } => "response.in_progress",
            Self::OutputItemAdded { .. } => "response.output_item.added",
            Self::ContentPartAdded { .. } => "response.content_part.added",
            Self::OutputTextDelta { .. } => "response.output_text.delta",
            Self::OutputTextDone { .. } => "response.output_text.done",
            Self::ContentPartDone { .. } => "response.content_part.done",
            Self::FunctionCallArgumentsDelta { .. } => "response.function_call_arguments.delta",
            Self::FunctionCallArgumentsDone { .. } => "response.function_call_arguments.done",
            Self::OutputItemDone { .. } => "response.output_item.done",
            Self::Completed { .. } => "response.completed",
            Self::Incomplete { .. } => "response.incomplete",
            Self::Failed { .. } => "response.failed",
            Self::Error { .. } => "error",
        }
    }

    /// A server failure with `code` and `message`.
    pub fn error(code: &str, message: &str) -> Self {
        Self::Error {
            code: code.to_owned(),
            message: message.to_owned(),
            param: None,
            error: ErrorDetail {
                kind: "server_error".into(),
                code: code.to_owned(),
                message: message.to_owned(),
                param: None,
            },
        }
    }

    /// The terminal event announcing `response` in its final state.
    pub fn terminal(response: &ResponseObject) -> Self {
        let response = Box::new(response.clone());
        match response.status {
            ResponseStatus::Completed => Self::Completed { response },
            ResponseStatus::Incomplete => Self::Incomplete { response },
            _ => Self::Failed { response },
        }
    }

    /// The bytes the store keeps (no sequence number).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An event at its place in the stream: what clients receive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sequenced {
    #[serde(flatten)]
    pub event: ResponseStreamEvent,
    pub sequence_number: u64,
}

impl Sequenced {
    /// Decode a stored event.
    pub fn decode(seq: u64, bytes: &[u8]) -> serde_json::Result<Self> {
        Ok(Self {
            event: serde_json::from_slice(bytes)?,
            sequence_number: seq,
        })
    }

    /// The event as clients receive it: one JSON object (an SSE frame's
    /// data, a WebSocket text message).
    pub fn json(&self) -> String {
        // Plain data with string keys: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The SSE frame: `event: <type>` and the JSON.
    pub fn sse(&self) -> Event {
        Event::default().event(self.event.kind()).data(self.json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_is_the_serialized_type() {
        let events = [
            ResponseStreamEvent::OutputItemAdded {
                output_index: 0,
                item: Value::Null,
            },
            ResponseStreamEvent::OutputTextDelta {
                item_id: "m".into(),
                output_index: 0,
                content_index: 0,
                delta: "d".into(),
                logprobs: vec![],
            },
            ResponseStreamEvent::FunctionCallArgumentsDelta {
                item_id: "fc".into(),
                output_index: 1,
                delta: "{".into(),
            },
            ResponseStreamEvent::FunctionCallArgumentsDone {
                item_id: "fc".into(),
                output_index: 1,
                arguments: "{}".into(),
            },
            ResponseStreamEvent::error("server_error", "m"),
        ];
        for ev in events {
            let v: Value = serde_json::from_slice(&ev.encode()).unwrap();
            assert_eq!(v["type"], ev.kind());
        }
    }

    #[test]
    fn stored_bytes_decode_with_their_number() {
        let ev = ResponseStreamEvent::error("server_error", "boom");
        let s = Sequenced::decode(7, &ev.encode()).unwrap();
        assert_eq!(s.event, ev);
        let v: Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["sequence_number"], 7);
        assert_eq!(v["error"]["code"], "server_error");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any delta text (newlines, quotes, any Unicode) survives the
            /// store's bytes and the SSE frame's JSON unchanged.
            #[test]
            fn delta_events_round_trip(delta in any::<String>(), seq in any::<u64>()) {
                let ev = ResponseStreamEvent::OutputTextDelta {
                    item_id: "msg_1".into(),
                    output_index: 0,
                    content_index: 0,
                    delta,
                    logprobs: vec![],
                };
                let stored = Sequenced::decode(seq, &ev.encode()).unwrap();
                prop_assert_eq!(&stored.event, &ev);
                let data = serde_json::to_string(&stored).unwrap();
                prop_assert!(!data.contains('\n'), "one SSE data line");
                let back: Sequenced = serde_json::from_str(&data).unwrap();
                prop_assert_eq!(back, stored);
            }
        }
    }
}
