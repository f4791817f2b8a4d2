//! The worker's errors and their one mapping to HTTP: OpenAI's error body
//! with the right status (400 for caller mistakes, 503 + `Retry-After` when
//! overloaded or draining).

use crate::engine::SubmitError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use spindle_proto::openai::{ErrorBody, ErrorObject, InvalidParam};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("{0}")]
    Submit(#[from] SubmitError),
    #[error("{0}")]
    Embed(#[from] crate::embed::EmbedError),
    #[error("The model '{0}' does not exist or is not served by this worker")]
    UnknownModel(String),
    #[error("{0}")]
    Template(#[from] crate::template::TemplateError),
    #[error("generation failed: {0}")]
    Engine(String),
    #[error("request body too large")]
    PayloadTooLarge,
    /// The worker token is set and the request did not carry it.
    #[error("Missing or incorrect worker token (Authorization: Bearer <token>).")]
    Unauthorized,
}

impl WorkerError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code: None,
        }
    }

    fn parts(
        &self,
    ) -> (
        StatusCode,
        &'static str,
        Option<String>,
        Option<&'static str>,
    ) {
        use crate::embed::EmbedError;
        use SubmitError::*;
        match self {
            Self::InvalidRequest { param, code, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                param.clone(),
                *code,
            ),
            Self::Submit(QueueFull) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                Some("server_overloaded"),
            ),
            Self::Submit(Draining | Stopped) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                Some("server_unavailable"),
            ),
            Self::Submit(PromptTooLong { .. } | PromptTooLarge { .. } | NoRoom { .. }) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("messages".into()),
                Some("context_length_exceeded"),
            ),
            Self::Submit(EmptyPrompt) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                Some("empty_prompt"),
            ),
            Self::Embed(EmbedError::QueueFull) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                Some("server_overloaded"),
            ),
            Self::Embed(EmbedError::Stopped) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                Some("server_unavailable"),
            ),
            Self::Embed(EmbedError::Decode(_)) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                Some("server_error"),
            ),
            Self::UnknownModel(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model".into()),
                Some("model_not_found"),
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                None,
                Some("payload_too_large"),
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            Self::Engine(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                Some("server_error"),
            ),
            Self::Template(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("messages".into()),
                Some("invalid_chat"),
            ),
        }
    }
}

impl From<InvalidParam> for WorkerError {
    fn from(p: InvalidParam) -> Self {
        Self::InvalidRequest {
            message: p.message,
            param: p.param,
            code: p.code,
        }
    }
}

impl WorkerError {
    /// The OpenAI error object, as the HTTP API sends it (and the in-process
    /// generator of `spindle serve` passes on).
    pub fn error_object(&self) -> ErrorObject {
        let (_, kind, param, code) = self.parts();
        ErrorObject {
            message: self.to_string(),
            kind: kind.into(),
            param,
            code: code.map(str::to_owned),
        }
    }
}

impl IntoResponse for WorkerError {
    fn into_response(self) -> Response {
        let status = self.parts().0;
        let body = ErrorBody {
            error: self.error_object(),
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}
