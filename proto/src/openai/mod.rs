//! OpenAI Chat Completions, (legacy) Completions and Embeddings: one protocol for the
//! worker (standing alone) and the router.
//!
//! - [`parse_body`] reads a JSON body, errors naming the offending field,
//!   after [`shape`] refused duplicate keys and deep nesting;
//! - [`request`] holds the request types, whose `to_generate` validates
//!   sampling and renders messages (tool calls included) into a
//!   [`crate::GenerateRequest`] in one place;
//! - [`tools`] validates `tools`, `tool_choice` and `response_format` into
//!   the worker's output spec and holds the `tool_calls` answer types;
//! - [`embeddings`] holds `POST /v1/embeddings`: its request, validation
//!   and response (float or base64 vectors);
//! - [`logprobs`] holds both endpoints' log probability objects;
//! - [`response`] holds the response and stream chunk types, and
//!   [`completer`] the [`Completer`], which turns generation events into
//!   them (with `echo`, the prompt and its scores first).
//!
//! Both servers call the same functions, so they accept the same inputs and
//! answer the same errors (a test holds them to it).

pub mod completer;
pub mod embeddings;
pub mod logprobs;
pub mod request;
pub mod response;
mod sampling;
pub mod shape;
pub mod tools;

pub use completer::{Completer, Echo, Endpoint, GenerationFailed};
pub use embeddings::{EmbeddingRequest, EmbeddingResponse, EncodingFormat};
pub use request::{validate_lora, ChatCompletionRequest, CompletionRequest, RequestMessage};
pub use response::{
    finish_reason, ChatCompletion, ChatCompletionChunk, Completion, CompletionUsage, ErrorBody,
    ErrorObject, ModelCard, ModelList, StreamItem, TextCompletion, TextCompletionChunk,
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
    let err = match serde_path_to_error::deserialize(&mut de) {
        Ok(value) => {
            de.end().map_err(|e| syntax(&e))?;
            return Ok(value);
        }
        Err(err) => err,
    };
    if err.inner().is_syntax() || err.inner().is_eof() {
        return Err(syntax(err.inner()));
    }
    // JSON Schema counts 16.0 as an integer, so clients (and fuzzers
    // working from the schema) may send one where a count is expected:
    // retry once with whole-number floats made integers.
    let retried = whole_floats_as_integers(bytes).map(serde_path_to_error::deserialize::<_, T>);
    match retried {
        Some(Ok(value)) => Ok(value),
        Some(Err(again)) => Err(type_error(&again)),
        None => Err(type_error(&err)),
    }
}

/// The 400 for a body that is JSON but not of the expected shape, naming
/// the field's path.
fn type_error<E: std::fmt::Display>(err: &serde_path_to_error::Error<E>) -> InvalidParam {
    let path = err.path().to_string();
    let inner = err.inner();
    let param = (path != ".").then_some(path);
    InvalidParam {
        message: match &param {
            Some(p) => format!("Invalid value for '{p}': {inner}"),
            None => format!("Invalid request body: {inner}"),
        },
        param,
        code: Some("invalid_type"),
    }
}

/// The body with every whole-number float that fits an `i64` exactly
/// (below 2^53) made an integer; `None` when it has none (or is not JSON).
fn whole_floats_as_integers(bytes: &[u8]) -> Option<serde_json::Value> {
    use serde_json::Value;
    fn walk(v: &mut Value) -> bool {
        match v {
            Value::Number(n) if n.is_f64() => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                    *v = Value::from(f as i64);
                    true
                }
                _ => false,
            },
            // Every value is walked (no short cut): all of them change.
            Value::Array(a) => a.iter_mut().map(walk).filter(|&changed| changed).count() > 0,
            Value::Object(o) => o.values_mut().map(walk).filter(|&changed| changed).count() > 0,
            _ => false,
        }
    }
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    walk(&mut v).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_number_floats_count_as_integers() {
        let r: CompletionRequest =
            parse_body(br#"{"prompt":"x","max_tokens":16.0,"temperature":1.0}"#).unwrap();
        assert_eq!(r.sampling.max_tokens, Some(16));
        // Only whole numbers: the error is the usual one.
        let e =
            parse_body::<CompletionRequest>(br#"{"prompt":"x","max_tokens":16.5}"#).unwrap_err();
        assert_eq!(e.code, Some("invalid_type"));
        assert!(e.message.contains("16.5"), "{}", e.message);
        let e = parse_body::<CompletionRequest>(br#"{"prompt":7.0}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
    }
}
