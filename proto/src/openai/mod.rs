//! OpenAI Chat Completions and (legacy) Completions: one protocol for the
//! worker (standing alone) and the router.
//!
//! - [`parse_body`] reads a JSON body, errors naming the offending field,
//!   after [`shape`] refused duplicate keys and deep nesting;
//! - [`request`] holds the request types, whose `to_generate` validates
//!   sampling and renders messages (tool calls included) into a
//!   [`crate::GenerateRequest`] in one place;
//! - [`response`] holds the response and stream chunk types and
//!   [`response::Completer`], which turns generation events into them.
//!
//! Both servers call the same functions, so they accept the same inputs and
//! answer the same errors (a test holds them to it).

pub mod request;
pub mod response;
mod sampling;
pub mod shape;

pub use request::{ChatCompletionRequest, CompletionRequest, RequestMessage};
pub use response::{
    finish_reason, ChatCompletion, ChatCompletionChunk, Completer, Completion, CompletionUsage,
    Endpoint, ErrorBody, ErrorObject, GenerationFailed, ModelCard, ModelList, StreamItem,
    TextCompletion, TextCompletionChunk,
};
pub use sampling::{SamplingFields, Stop};

/// A request that failed validation: the parameter (a path such as
/// `messages[2].content[0].type`, when known), the message, and a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidParam {
    pub param: Option<String>,
    pub message: String,
    pub code: Option<&'static str>,
}

pub(crate) fn invalid(param: impl Into<String>, message: impl Into<String>) -> InvalidParam {
    InvalidParam {
        param: Some(param.into()),
        message: message.into(),
        code: None,
    }
}

/// Parses a JSON request body into `T`: syntax errors and type errors both
/// become [`InvalidParam`]s, type errors naming the field's path.
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, InvalidParam> {
    let syntax = |e: &dyn std::fmt::Display| InvalidParam {
        param: None,
        message: format!("We could not parse the JSON body of your request: {e}"),
        code: None,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(InvalidParam {
            param: None,
            message: "the request body is empty; send a JSON object".into(),
            code: None,
        });
    }
    match shape::check(bytes) {
        Err(e @ shape::ShapeError::TooDeep) => {
            return Err(InvalidParam {
                param: None,
                message: format!("Invalid request body: {e}."),
                code: Some("too_deep"),
            })
        }
        Err(shape::ShapeError::DuplicateKey { key, path }) => {
            let at = path
                .strip_prefix('$')
                .unwrap_or(&path)
                .trim_start_matches('.');
            let param = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            return Err(InvalidParam {
                message: format!("Invalid request body: the key '{key}' appears twice in one object ('{param}')."),
                param: Some(param),
                code: Some("duplicate_key"),
            });
        }
        // Syntax errors: the parser below says where.
        Err(shape::ShapeError::Syntax) | Ok(()) => {}
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(syntax(&inner));
            }
            let param = (path != ".").then_some(path);
            return Err(InvalidParam {
                message: match &param {
                    Some(p) => format!("Invalid value for '{p}': {inner}"),
                    None => format!("Invalid request body: {inner}"),
                },
                param,
                code: Some("invalid_type"),
            });
        }
    };
    de.end().map_err(|e| syntax(&e))?;
    Ok(value)
}
