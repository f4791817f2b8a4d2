//! What a create request may ask for that Spindle cannot do, refused with a
//! 400 that names the field and the value, so a client never gets a
//! silently different answer (code `unsupported_value`, or
//! `prompt_not_found`).
//!
//! Refused: `include` values other than `reasoning.encrypted_content` and
//! `message.output_text.logprobs`, stored `prompt` templates (the server
//! keeps none), and `reasoning` that asks for effort or a summary (no
//! served model reasons). Tool types other than `function` are refused in
//! [`super::agents`].
//!
//! Accepted and documented: `include: ["reasoning.encrypted_content"]` (it
//! asks for the encrypted form of reasoning items, and no model here makes
//! any, so there is nothing to leave out; agent SDKs send it on every
//! `store: false` call), `include: ["message.output_text.logprobs"]` (log
//! probabilities of the output text, with `top_logprobs` alternatives;
//! see [`super::logprobs`]), and `reasoning: {"effort": "none"}` or `{}`.

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::types::CreateResponseRequest;

/// `include` values the Open Responses schema defines.
const REASONING_CONTENT: &str = "reasoning.encrypted_content";
const LOGPROBS: &str = "message.output_text.logprobs";

/// `reasoning` of a create request.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct ReasoningParam {
    /// `none` is the only effort a model without reasoning can honour.
    #[serde(default)]
    pub effort: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    /// The older name of `summary`.
    #[serde(default)]
    pub generate_summary: Option<String>,
}

/// `prompt` of a create request: a reference to a stored prompt template.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct PromptParam {
    pub id: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Value>,
}

/// Whether the response's output text carries log probabilities.
pub(super) fn wants_logprobs(req: &CreateResponseRequest) -> bool {
    req.include.iter().flatten().any(|v| v == LOGPROBS)
}

/// Refuses what `req` asks for that `model` cannot do (see the module docs).
pub(super) fn check(req: &CreateResponseRequest, model: &str) -> ApiResult<()> {
    for (i, value) in req.include.iter().flatten().enumerate() {
        let param = format!("include[{i}]");
        match value.as_str() {
            REASONING_CONTENT | LOGPROBS => {}
            other => {
                return Err(unsupported(
                    format!("'include' value '{other}' is not supported; this server accepts only '{REASONING_CONTENT}' and '{LOGPROBS}'"),
                    &param,
                ))
            }
        }
    }
    if let Some(prompt) = &req.prompt {
        return Err(ApiError::invalid_code(
            format!(
                "prompt '{}' not found: this server keeps no stored prompt templates; \
                 send the prompt as 'instructions' and 'input'",
                prompt.id
            ),
            Some("prompt.id"),
            "prompt_not_found",
        ));
    }
    if let Some(r) = &req.reasoning {
        if let Some(effort) = r.effort.as_deref().filter(|e| *e != "none") {
            return Err(unsupported(
                format!("'reasoning.effort' = '{effort}' is not supported: model '{model}' does not reason; leave 'reasoning' out or set effort 'none'"),
                "reasoning.effort",
            ));
        }
        for (param, summary) in [
            ("reasoning.summary", &r.summary),
            ("reasoning.generate_summary", &r.generate_summary),
        ] {
            if let Some(s) = summary {
                return Err(unsupported(
                    format!("'{param}' = '{s}' is not supported: model '{model}' does not reason, so there is nothing to summarize"),
                    param,
                ));
            }
        }
    }
    Ok(())
}

fn unsupported(message: String, param: &str) -> ApiError {
    ApiError::invalid_code(message, Some(param), "unsupported_value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: Value) -> CreateResponseRequest {
        serde_json::from_value(body).unwrap()
    }

    fn refused(body: Value) -> (String, String) {
        let e = check(&req(body), "m").unwrap_err();
        (e.param().unwrap_or("").to_owned(), e.to_string())
    }

    #[test]
    fn what_the_server_can_honour_passes() {
        for body in [
            serde_json::json!({}),
            serde_json::json!({"include": [REASONING_CONTENT], "top_logprobs": 0}),
            serde_json::json!({"include": [REASONING_CONTENT, LOGPROBS], "top_logprobs": 5}),
            serde_json::json!({"top_logprobs": 5}),
            serde_json::json!({"reasoning": {}}),
            serde_json::json!({"reasoning": {"effort": "none"}}),
            serde_json::json!({"reasoning": null, "prompt": null, "include": null}),
        ] {
            check(&req(body.clone()), "m").unwrap_or_else(|e| panic!("{body}: {e}"));
        }
        assert!(wants_logprobs(&req(
            serde_json::json!({"include": [LOGPROBS]})
        )));
        assert!(!wants_logprobs(&req(
            serde_json::json!({"top_logprobs": 3})
        )));
    }

    #[test]
    fn each_refusal_names_its_field_and_value() {
        let cases = [
            (
                serde_json::json!({"include": ["file_search_call.results"]}),
                "include[0]",
                "file_search_call.results",
            ),
            (
                serde_json::json!({"prompt": {"id": "pmpt_abc"}}),
                "prompt.id",
                "pmpt_abc",
            ),
            (
                serde_json::json!({"reasoning": {"effort": "high"}}),
                "reasoning.effort",
                "high",
            ),
            (
                serde_json::json!({"reasoning": {"summary": "auto"}}),
                "reasoning.summary",
                "auto",
            ),
        ];
        for (body, param, value) in cases {
            let (p, message) = refused(body.clone());
            assert_eq!(p, param, "{body}");
            assert!(message.contains(value), "{body}: {message}");
        }
    }
}
