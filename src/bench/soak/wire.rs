//! What the soak clients read off the wire, typed: the response object (only
//! the fields the audit uses), stream events, the OpenAI error body, and the
//! SSE framing. Kept separate from the router's own types on purpose: the
//! audit must not trust the server's definitions of what it checks.

use serde::{Deserialize, Serialize};

/// A response's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    InProgress,
    Completed,
    Incomplete,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::InProgress)
    }

    /// Completed and incomplete responses carry their whole output text.
    pub fn has_full_text(self) -> bool {
        matches!(self, Self::Completed | Self::Incomplete)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Incomplete => "incomplete",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The response object, as far as the audit reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponseObj {
    pub id: String,
    pub status: Status,
    #[serde(default)]
    pub output: Vec<OutputItem>,
    #[serde(default)]
    pub error: Option<ResponseError>,
}

/// `error` of a failed response.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponseError {
    pub code: String,
    pub message: String,
}

/// One output item; only messages carry text.
#[derive(Debug, Clone, Deserialize)]
pub struct OutputItem {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub content: Vec<ContentPart>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl ResponseObj {
    /// The concatenated `output_text` of every message item.
    pub fn output_text(&self) -> String {
        self.output
            .iter()
            .filter(|i| i.kind == "message")
            .flat_map(|i| &i.content)
            .filter(|p| p.kind == "output_text")
            .filter_map(|p| p.text.as_deref())
            .collect()
    }
}

/// `{"error": {...}}`: the only error shape a client may see.
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Deserialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
}

/// `POST /v1/conversations`' answer.
#[derive(Debug, Deserialize)]
pub struct ConversationObj {
    pub id: String,
}

/// `GET /v1/models`.
#[derive(Debug, Deserialize)]
pub struct ModelList {
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Deserialize)]
pub struct ModelCard {
    pub id: String,
}

/// One Responses stream event with its sequence number.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    pub sequence_number: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// The events the audit looks at; every other type is `Other`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename = "response.created")]
    Created { response: ResponseObj },
    #[serde(rename = "response.output_text.delta")]
    Delta { delta: String },
    #[serde(rename = "response.completed")]
    Completed { response: ResponseObj },
    #[serde(rename = "response.incomplete")]
    Incomplete { response: ResponseObj },
    #[serde(rename = "response.failed")]
    Failed { response: ResponseObj },
    #[serde(rename = "error")]
    Error {
        #[serde(default)]
        code: Option<String>,
        message: String,
    },
    #[serde(other)]
    Other,
}

impl Event {
    /// The response a terminal event carries.
    pub fn terminal(&self) -> Option<&ResponseObj> {
        match self {
            Self::Completed { response }
            | Self::Incomplete { response }
            | Self::Failed { response } => Some(response),
            _ => None,
        }
    }
}

/// One SSE frame's payload.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A parsed event.
    Event(Box<Envelope>),
    /// `data: [DONE]`.
    Done,
    /// A `data:` payload that is not a known event (kept for the audit).
    Garbage(String),
}

/// Splits a byte stream into SSE frames (blank-line separated; comments and
/// `event:` lines ignored, `data:` lines joined).
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the frames they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let raw: Vec<u8> = self.buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&raw);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let data = data.join("\n");
            out.push(if data == "[DONE]" {
                Frame::Done
            } else {
                match serde_json::from_str::<Envelope>(&data) {
                    Ok(e) => Frame::Event(Box::new(e)),
                    Err(_) => Frame::Garbage(data.chars().take(200).collect()),
                }
            });
        }
        out
    }

    /// Bytes after the last complete frame.
    pub fn leftover(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_across_chunks() {
        let mut p = SseParser::default();
        let a = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\
                 \"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"output\":[]}}\n\n: keep-alive\n\n";
        let b =
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\
                 \"sequence_number\":1,\"item_id\":\"m\",\"delta\":\"hi\"}\n\ndata: [DO";
        let mut frames = p.push(a.as_bytes());
        frames.extend(p.push(b.as_bytes()));
        frames.extend(p.push(b"NE]\n\n"));
        assert_eq!(frames.len(), 3);
        assert!(
            matches!(&frames[0], Frame::Event(e) if matches!(&e.event, Event::Created { response } if response.id == "resp_1"))
        );
        assert!(
            matches!(&frames[1], Frame::Event(e) if e.sequence_number == 1 && matches!(&e.event, Event::Delta { delta } if delta == "hi"))
        );
        assert!(matches!(frames[2], Frame::Done));
        assert_eq!(p.leftover(), 0);
    }

    #[test]
    fn unknown_events_are_other_and_text_is_read_from_messages() {
        let e: Envelope = serde_json::from_str(
            r#"{"type":"response.content_part.added","sequence_number":3,"part":{}}"#,
        )
        .unwrap();
        assert!(matches!(e.event, Event::Other));
        let r: ResponseObj = serde_json::from_str(
            r#"{"id":"resp_2","status":"completed","output":[{"type":"message","content":
               [{"type":"output_text","text":"ab"},{"type":"output_text","text":"c"}]}]}"#,
        )
        .unwrap();
        assert_eq!(r.output_text(), "abc");
        assert!(r.status.has_full_text());
    }
}
