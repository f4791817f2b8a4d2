//! The WebSocket mode's own messages: what a client sends (one typed enum)
//! and the error envelope the server sends, mapped once from [`ApiError`].
//! Everything else the server sends is a stream event, exactly as over SSE.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::types::CreateResponseRequest;

/// One client message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum ClientMessage {
    /// Start a response (queued behind the one in flight).
    #[serde(rename = "response.create")]
    Create(Box<CreateMessage>),
    /// Any other `type`.
    #[serde(other)]
    Unknown,
}

/// `response.create`: the usual create body, plus the HTTP transport field
/// the body type does not know (`stream_options`), kept to refuse it.
#[derive(Debug, Deserialize)]
pub struct CreateMessage {
    #[serde(default, deserialize_with = "present")]
    stream_options: Option<Value>,
    #[serde(flatten)]
    pub request: CreateResponseRequest,
}

/// `Some` whenever the key is there, even as `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl CreateMessage {
    /// Refuses the HTTP transport fields: the socket itself streams, and a
    /// turn lives only as long as the connection waits for it.
    pub fn check_transport(&self) -> Result<(), ApiError> {
        let given = [
            ("stream", self.request.stream.is_some()),
            ("stream_options", self.stream_options.is_some()),
            ("background", self.request.background.is_some()),
        ];
        match given.into_iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(ApiError::invalid(
                format!(
                    "'{name}' is not allowed in WebSocket mode: every response streams its \
                     events over the socket"
                ),
                Some(name),
            )),
            None => Ok(()),
        }
    }
}

/// `{"type":"error","status":…,"error":{"type","code","message","param"}}`.
#[derive(Debug, Serialize)]
pub struct ErrorEnvelope {
    #[serde(rename = "type")]
    kind: &'static str,
    status: u16,
    error: EnvelopeError,
}

#[derive(Debug, Serialize)]
struct EnvelopeError {
    #[serde(rename = "type")]
    kind: &'static str,
    /// Always a string: the error's code, else its type.
    code: String,
    message: String,
    param: Option<String>,
}

impl From<&ApiError> for ErrorEnvelope {
    fn from(e: &ApiError) -> Self {
        Self {
            kind: "error",
            status: e.status().as_u16(),
            error: EnvelopeError {
                kind: e.kind(),
                code: e.code().unwrap_or(e.kind()).to_owned(),
                message: e.to_string(),
                param: e.param().map(str::to_owned),
            },
        }
    }
}

impl ErrorEnvelope {
    /// The text of one WebSocket message.
    pub fn json(&self) -> String {
        // Plain data with string keys: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_json;

    #[test]
    fn create_carries_the_body_and_refuses_transport_fields() {
        let m: ClientMessage =
            parse_json(br#"{"type":"response.create","input":"hi","store":false}"#).unwrap();
        let ClientMessage::Create(c) = m else {
            panic!("not a create")
        };
        assert_eq!(c.request.store, Some(false));
        assert!(c.check_transport().is_ok());
        for (body, param) in [
            (r#"{"type":"response.create","stream":true}"#, "stream"),
            (
                r#"{"type":"response.create","stream_options":null}"#,
                "stream_options",
            ),
            (
                r#"{"type":"response.create","background":false}"#,
                "background",
            ),
        ] {
            let ClientMessage::Create(c) = parse_json(body.as_bytes()).unwrap() else {
                panic!("not a create")
            };
            let e = c.check_transport().unwrap_err();
            assert_eq!(e.param(), Some(param));
        }
    }

    #[test]
    fn unknown_types_parse_and_errors_map_once() {
        let m: ClientMessage = parse_json(br#"{"type":"response.cancel"}"#).unwrap();
        assert!(matches!(m, ClientMessage::Unknown));
        let e = ApiError::invalid("bad", Some("temperature"));
        let v: Value = serde_json::from_str(&ErrorEnvelope::from(&e).json()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["status"], 400);
        assert_eq!(v["error"]["code"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "temperature");
        assert_eq!(v["error"]["message"], "bad");
    }
}
