//! The [`Generator`] abstraction over token generation and [`HttpWorker`], the
//! implementation that calls a worker's `POST /v1/generate` and reads NDJSON.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use spindle_proto::openai::{ErrorBody, ErrorObject, ModelCard};
use spindle_proto::{FailureCode, GenerateEvent, GenerateRequest};

use crate::error::ApiError;

/// Why a generation could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GenerateError {
    /// The worker rejected the request; its error (message, param, code) is
    /// passed to the client as a 400.
    #[error("{}", .0.message)]
    BadRequest(ErrorObject),
    /// The worker is overloaded or draining; retry after `retry_after` seconds.
    #[error("{message}")]
    Unavailable { message: String, retry_after: u64 },
    /// The worker could not be reached.
    #[error("worker unreachable: {0}")]
    Connect(String),
    /// The worker answered with something unusable.
    #[error("worker error: {0}")]
    Upstream(String),
}

impl GenerateError {
    /// The `error.code` of a background response that could not start.
    pub fn code(&self) -> &str {
        match self {
            Self::BadRequest(e) => e.code.as_deref().unwrap_or("invalid_request"),
            Self::Unavailable { .. } => "service_unavailable",
            Self::Connect(_) => "worker_unreachable",
            Self::Upstream(_) => "server_error",
        }
    }
}

impl From<GenerateError> for ApiError {
    fn from(e: GenerateError) -> Self {
        match e {
            GenerateError::BadRequest(e) => ApiError::InvalidRequest {
                message: e.message,
                param: e.param,
                code: e.code,
            },
            GenerateError::Unavailable {
                message,
                retry_after,
            } => ApiError::Unavailable {
                message,
                retry_after,
            },
            GenerateError::Connect(m) => ApiError::Unavailable {
                message: format!("no worker is reachable: {m}"),
                retry_after: 1,
            },
            GenerateError::Upstream(m) => ApiError::BadGateway(m),
        }
    }
}

/// Something that turns a [`GenerateRequest`] into a stream of events.
pub trait Generator: Send + Sync + 'static {
    /// Start generation; returns a stream of events (`Delta`…, then `Done` or `Error`).
    /// Dropping the stream must cancel the generation.
    fn generate(
        &self,
        req: GenerateRequest,
    ) -> BoxFuture<'static, Result<BoxStream<'static, GenerateEvent>, GenerateError>>;
    /// Models served, for `GET /v1/models` and request validation.
    fn models(&self) -> Vec<ModelCard>;
    /// Whether every served model can take requests now; `Err` says what is
    /// missing (`GET /ready` answers 503 with it).
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A [`Generator`] backed by one worker over HTTP.
#[derive(Clone, Debug)]
pub struct HttpWorker {
    base_url: String,
    client: reqwest::Client,
}

impl HttpWorker {
    /// A worker at `base_url` (e.g. `http://127.0.0.1:8081`).
    pub fn new(base_url: impl Into<String>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            client,
        }
    }
}

/// Longest silence tolerated from a worker stream before it counts as failed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest NDJSON line read from a worker (an event is a few hundred bytes
/// at most); a longer one fails the request instead of filling memory.
const MAX_LINE_BYTES: usize = 1 << 20;

/// Most of a worker's error body that is read.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// The start of `resp`'s body, at most `cap` bytes, as text.
async fn body_prefix(mut resp: reqwest::Response, cap: usize) -> String {
    let mut body = Vec::new();
    while body.len() < cap {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(cap);
    String::from_utf8_lossy(&body).into_owned()
}

/// Tells the worker to cancel `request_id` when dropped before [`CancelOnDrop::disarm`].
struct CancelOnDrop {
    url: Option<String>,
    client: reqwest::Client,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.url = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let (Some(url), Ok(rt)) = (self.url.take(), tokio::runtime::Handle::try_current()) {
            let client = self.client.clone();
            rt.spawn(async move {
                let _ = client
                    .post(url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
            });
        }
    }
}

/// The worker's OpenAI error body, or the start of whatever it sent instead.
fn parse_error_body(body: &str) -> ErrorObject {
    serde_json::from_str::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| ErrorObject {
            message: body.chars().take(500).collect(),
            kind: "invalid_request_error".into(),
            param: None,
            code: None,
        })
}

impl Generator for HttpWorker {
    fn generate(
        &self,
        mut req: GenerateRequest,
    ) -> BoxFuture<'static, Result<BoxStream<'static, GenerateEvent>, GenerateError>> {
        let request_id = req
            .request_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().simple().to_string())
            .clone();
        let url = format!("{}/v1/generate", self.base_url);
        let cancel_url = format!("{}/v1/generate/{}/cancel", self.base_url, request_id);
        let client = self.client.clone();
        Box::pin(async move {
            let resp = client
                .post(&url)
                .json(&req)
                .send()
                .await
                .map_err(|e| GenerateError::Connect(e.to_string()))?;
            let status = resp.status();
            if !status.is_success() {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                let body = body_prefix(resp, MAX_ERROR_BODY_BYTES).await;
                let error = parse_error_body(&body);
                return Err(match status.as_u16() {
                    400 | 422 => GenerateError::BadRequest(error),
                    429 | 503 => GenerateError::Unavailable {
                        message: error.message,
                        retry_after,
                    },
                    _ => GenerateError::Upstream(format!(
                        "worker returned {status}: {}",
                        error.message
                    )),
                });
            }
            let guard = CancelOnDrop {
                url: Some(cancel_url),
                client,
            };
            let bytes = resp.bytes_stream();
            let stream =
                futures::stream::unfold(
                    (bytes, Vec::<u8>::new(), 0usize, guard, false),
                    |(mut bytes, mut buf, mut scanned, mut guard, finished)| async move {
                        if finished {
                            return None;
                        }
                        loop {
                            // Each byte is looked at once, however the line is chunked.
                            let newline = buf[scanned..].iter().position(|&b| b == b'\n');
                            scanned = newline.map_or(buf.len(), |p| scanned + p);
                            if newline.is_none() && buf.len() > MAX_LINE_BYTES {
                                let ev = GenerateEvent::Error {
                                    code: FailureCode::BadWorkerResponse,
                                    message: format!(
                                        "worker sent a line longer than {MAX_LINE_BYTES} bytes"
                                    ),
                                };
                                return Some((ev, (bytes, Vec::new(), 0, guard, true)));
                            }
                            if let Some(pos) = newline.map(|_| scanned) {
                                scanned = 0;
                                let line: Vec<u8> = buf.drain(..=pos).collect();
                                let line = line.trim_ascii();
                                if line.is_empty() {
                                    continue;
                                }
                                let ev = serde_json::from_slice::<GenerateEvent>(line)
                                    .unwrap_or_else(|e| GenerateEvent::Error {
                                        code: FailureCode::BadWorkerResponse,
                                        message: format!("unreadable line from worker: {e}"),
                                    });
                                let last = !matches!(ev, GenerateEvent::Delta { .. });
                                if last {
                                    guard.disarm();
                                }
                                return Some((ev, (bytes, buf, scanned, guard, last)));
                            }
                            match tokio::time::timeout(IDLE_TIMEOUT, bytes.next()).await {
                                Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
                                Ok(Some(Err(e))) => {
                                    let ev = GenerateEvent::Error {
                                        code: FailureCode::WorkerStreamError,
                                        message: format!("worker stream broke: {e}"),
                                    };
                                    return Some((ev, (bytes, buf, scanned, guard, true)));
                                }
                                Ok(None) => {
                                    if !buf.trim_ascii().is_empty() {
                                        buf.push(b'\n');
                                        continue;
                                    }
                                    let ev = GenerateEvent::Error {
                                        code: FailureCode::WorkerStreamError,
                                        message: "worker stream ended before completion".into(),
                                    };
                                    guard.disarm();
                                    return Some((ev, (bytes, buf, scanned, guard, true)));
                                }
                                Err(_) => {
                                    let ev = GenerateEvent::Error {
                                        code: FailureCode::WorkerTimeout,
                                        message: "worker sent nothing for too long".into(),
                                    };
                                    return Some((ev, (bytes, buf, scanned, guard, true)));
                                }
                            }
                        }
                    },
                );
            Ok(stream.boxed())
        })
    }

    /// One worker's models are learned by the cluster's probes, not here.
    fn models(&self) -> Vec<ModelCard> {
        Vec::new()
    }
}
