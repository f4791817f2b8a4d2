//! The one API error type and its mapping to the OpenAI error body
//! `{"error":{"message","type","param","code"}}` (code: string or null).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use spindle_proto::openai::{ErrorBody, ErrorObject};

/// Every error the public API can return.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or asks for something unsupported (400).
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<String>,
    },
    /// The referenced object does not exist (404).
    #[error("{message}")]
    NotFound {
        message: String,
        param: Option<String>,
        code: Option<String>,
    },
    /// The requested model is not served (404, `invalid_request_error`,
    /// `model_not_found`, as OpenAI answers).
    #[error("{0}")]
    UnknownModel(String),
    /// Missing or wrong API key (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The body is larger than the configured limit (413).
    #[error("the request body is larger than the maximum allowed size")]
    PayloadTooLarge,
    /// Refused at the HTTP level, before any handler: unknown URL (404),
    /// method (405), URI too long (414), not JSON (415), wrong `Host` (421),
    /// headers too large (431).
    #[error("{message}")]
    Http { status: StatusCode, message: String },
    /// The tenant is over its concurrency or rate limit (429, with
    /// Retry-After; `type` "requests" and code `rate_limit_exceeded`, as
    /// OpenAI answers).
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    /// No worker can take the request now (503, with Retry-After).
    #[error("{message}")]
    Unavailable { message: String, retry_after: u64 },
    /// The worker answered with something the router cannot use (502).
    #[error("{0}")]
    BadGateway(String),
    /// A router bug or store failure (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// 400 `invalid_request_error` naming `param`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code: None,
        }
    }

    /// 400 for a required parameter the request left out.
    pub fn missing(param: &str) -> Self {
        Self::invalid(format!("missing required parameter '{param}'"), Some(param))
    }

    /// 400 with a machine-readable `code`.
    pub fn invalid_code(message: impl Into<String>, param: Option<&str>, code: &str) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code: Some(code.to_owned()),
        }
    }

    /// 400 `conversation_too_large`: adding to a conversation would take
    /// its items to `bytes`, past `--max-conversation-bytes` (`cap`).
    pub fn conversation_too_large(bytes: u64, cap: u64, param: &str) -> Self {
        Self::invalid_code(
            format!(
                "the conversation would hold {bytes} bytes of items, more than the \
                 {cap} allowed; start a new conversation"
            ),
            Some(param),
            "conversation_too_large",
        )
    }

    /// 413 `request_too_large` for a body within the HTTP limit whose
    /// stored part is not.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::Http {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: message.into(),
        }
    }

    /// 404 `not_found_error`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } | Self::UnknownModel(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Http { status, .. } => *status,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. }
            | Self::UnknownModel(_)
            | Self::PayloadTooLarge
            | Self::Unauthorized(_)
            | Self::Http { .. } => "invalid_request_error",
            Self::NotFound { .. } => "not_found_error",
            Self::RateLimited { .. } => "requests",
            Self::Unavailable { .. } | Self::BadGateway(_) | Self::Internal(_) => "server_error",
        }
    }

    /// OpenAI error `param`.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } | Self::NotFound { param, .. } => param.as_deref(),
            Self::UnknownModel(_) => Some("model"),
            _ => None,
        }
    }

    /// OpenAI error `code` (always a string when present).
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { code, .. } | Self::NotFound { code, .. } => code.as_deref(),
            Self::UnknownModel(_) => Some("model_not_found"),
            Self::PayloadTooLarge => Some("request_too_large"),
            Self::Unauthorized(_) => Some("invalid_api_key"),
            Self::RateLimited { .. } => Some("rate_limit_exceeded"),
            Self::Http { status, .. } => match *status {
                StatusCode::NOT_FOUND => Some("unknown_url"),
                StatusCode::METHOD_NOT_ALLOWED => Some("method_not_allowed"),
                StatusCode::URI_TOO_LONG => Some("uri_too_long"),
                StatusCode::PAYLOAD_TOO_LARGE => Some("request_too_large"),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => Some("unsupported_media_type"),
                StatusCode::MISDIRECTED_REQUEST => Some("invalid_host"),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Some("headers_too_large"),
                _ => None,
            },
            Self::Unavailable { .. } => Some("service_unavailable"),
            Self::BadGateway(_) => Some("bad_gateway"),
            Self::Internal(_) => Some("internal_error"),
        }
    }

    /// The `{"error":{...}}` body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.object(),
        }
    }

    /// The inner error object `{"message","type","param","code"}`.
    pub fn object(&self) -> ErrorObject {
        ErrorObject {
            message: self.to_string(),
            kind: self.kind().into(),
            param: self.param().map(str::to_owned),
            code: self.code().map(str::to_owned),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Internal(_) | Self::BadGateway(_)) {
            tracing::error!(error = %self, "request failed");
        }
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if let Self::Unavailable { retry_after, .. } | Self::RateLimited { retry_after, .. } = &self
        {
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// A request the protocol's validation refused (400, naming the parameter).
impl From<spindle_proto::openai::InvalidParam> for ApiError {
    fn from(p: spindle_proto::openai::InvalidParam) -> Self {
        ApiError::InvalidRequest {
            message: p.message,
            param: p.param,
            code: p.code.map(str::to_owned),
        }
    }
}
