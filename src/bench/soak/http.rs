//! One HTTP call as the soak clients make it, and how a failed one is
//! classified: an HTTP error with its status and OpenAI `code` (clean when
//! the body is the OpenAI error shape), or a transport failure (connect,
//! timeout, a body cut mid-way). The label is the key of the errors table.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::wire::ErrorBody;

/// Why a call failed.
#[derive(Debug, Clone, Serialize)]
pub enum CallErr {
    Http {
        status: u16,
        /// `code`, else `type`, of the OpenAI error body.
        code: Option<String>,
        /// The body was `{"error": {...}}`.
        clean: bool,
        body: String,
    },
    Transport {
        kind: &'static str,
        detail: String,
    },
}

impl CallErr {
    pub fn timeout(detail: &str) -> Self {
        Self::Transport {
            kind: "timeout",
            detail: detail.into(),
        }
    }

    pub fn from_reqwest(e: &reqwest::Error) -> Self {
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else if e.is_body() || e.is_decode() {
            "body"
        } else {
            "request"
        };
        Self::Transport {
            kind,
            detail: format!("{e:#}"),
        }
    }

    /// `HTTP 503 service_unavailable`, `connect`, `timeout`, …
    pub fn label(&self) -> String {
        match self {
            Self::Http { status, code, .. } => {
                format!("HTTP {status} {}", code.as_deref().unwrap_or("-"))
            }
            Self::Transport { kind, .. } => (*kind).to_owned(),
        }
    }

    pub fn clean(&self) -> bool {
        match self {
            Self::Http { clean, .. } => *clean,
            // A 2xx body that is not the object asked for is not clean either.
            Self::Transport { kind, .. } => *kind != "bad_json",
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::Transport { .. } => None,
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Self::Http { body, .. } => body.chars().take(300).collect(),
            Self::Transport { detail, .. } => detail.chars().take(300).collect(),
        }
    }
}

/// Sends; a non-2xx answer becomes [`CallErr::Http`] with its body read.
pub async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, CallErr> {
    let resp = req.send().await.map_err(|e| CallErr::from_reqwest(&e))?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| CallErr::from_reqwest(&e))?;
    let parsed = serde_json::from_str::<ErrorBody>(&body).ok();
    Err(CallErr::Http {
        status,
        clean: parsed
            .as_ref()
            .is_some_and(|b| !b.error.message.is_empty() && !b.error.kind.is_empty()),
        code: parsed.map(|b| b.error.code.unwrap_or(b.error.kind)),
        body,
    })
}

/// Sends and decodes a 2xx JSON answer.
pub async fn json<T: DeserializeOwned>(req: reqwest::RequestBuilder) -> Result<T, CallErr> {
    let resp = send(req).await?;
    let bytes = resp.bytes().await.map_err(|e| CallErr::from_reqwest(&e))?;
    serde_json::from_slice(&bytes).map_err(|e| CallErr::Transport {
        kind: "bad_json",
        detail: format!(
            "{e}: {}",
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(200)
                .collect::<String>()
        ),
    })
}
