//! The [`Generator`] abstraction over token generation (and embeddings) and
//! [`HttpWorker`], the implementation that calls a worker's
//! `POST /v1/generate` and reads NDJSON (its embeddings call is in
//! `embed_call`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use spindle_proto::openai::{
    EmbeddingRequest, EmbeddingResponse, ErrorBody, ErrorObject, ModelCard,
};
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
    /// Embed the inputs of `req` (its model resolved): the whole response,
    /// its vectors in either encoding (the API layer converts them to the
    /// one asked for).
    fn embed(
        &self,
        req: EmbeddingRequest,
    ) -> BoxFuture<'static, Result<EmbeddingResponse, GenerateError>>;
    /// Models served, for `GET /v1/models` and request validation.
    fn models(&self) -> Vec<ModelCard>;
    /// Whether every served model can take requests now; `Err` says what is
    /// missing (`GET /ready` answers 503 with it).
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// How long a worker may keep a stream waiting before it counts as hung:
/// until the response headers (`first_byte`), and between two lines
/// (`token_gap`; a live worker writes a keep-alive line every
/// [`spindle_proto::STREAM_KEEPALIVE`]). Each is the configured floor or
/// [`Deadlines::STEP_FACTOR`] times the worker's slowest recent step,
/// whichever is longer, so a worker with slow steps is not cut off.
#[derive(Debug)]
pub struct Deadlines {
    first_byte_floor: Duration,
    token_gap_floor: Duration,
    first_byte_ms: AtomicU64,
    token_gap_ms: AtomicU64,
}

impl Deadlines {
    /// How many of the slowest recent step a deadline covers at least.
    pub const STEP_FACTOR: f64 = 4.0;

    pub fn new(first_byte: Duration, token_gap: Duration) -> Self {
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        Self {
            first_byte_floor: first_byte,
            token_gap_floor: token_gap,
            first_byte_ms: AtomicU64::new(ms(first_byte)),
            token_gap_ms: AtomicU64::new(ms(token_gap)),
        }
    }

    /// Follow the worker's slowest recent step (from its `/load`).
    pub fn adapt(&self, step_seconds_max: f64) {
        let scaled = if step_seconds_max.is_finite() && step_seconds_max > 0.0 {
            Duration::from_secs_f64((step_seconds_max * Self::STEP_FACTOR).min(3600.0))
        } else {
            Duration::ZERO
        };
        let ms = |floor: Duration| floor.max(scaled).as_millis() as u64;
        self.first_byte_ms
            .store(ms(self.first_byte_floor), Ordering::Relaxed);
        self.token_gap_ms
            .store(ms(self.token_gap_floor), Ordering::Relaxed);
    }

    pub fn first_byte(&self) -> Duration {
        Duration::from_millis(self.first_byte_ms.load(Ordering::Relaxed))
    }

    pub fn token_gap(&self) -> Duration {
        Duration::from_millis(self.token_gap_ms.load(Ordering::Relaxed))
    }
}

impl Default for Deadlines {
    /// 10 s to the headers, 5 s between lines.
    fn default() -> Self {
        Self::new(Duration::from_secs(10), Duration::from_secs(5))
    }
}

/// The secret routers send to workers (`--worker-token-file` /
/// `SPINDLE_WORKER_TOKEN`); never printed.
#[derive(Clone, Default)]
pub struct WorkerToken(pub Option<Arc<str>>);

impl std::fmt::Debug for WorkerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(redacted)"
        } else {
            "None"
        })
    }
}

/// A [`Generator`] backed by one worker over HTTP.
#[derive(Clone)]
pub struct HttpWorker {
    pub(crate) base_url: String,
    pub(crate) client: reqwest::Client,
    deadlines: Arc<Deadlines>,
    /// Sent as `Authorization: Bearer` on generate, cancel and embeddings.
    pub(crate) token: Option<Arc<str>>,
}

impl std::fmt::Debug for HttpWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpWorker")
            .field("base_url", &self.base_url)
            .field("deadlines", &self.deadlines)
            .field("token", &self.token.as_ref().map(|_| "redacted"))
            .finish()
    }
}

impl HttpWorker {
    /// A worker at `base_url` (e.g. `http://127.0.0.1:8081`), with the
    /// default [`Deadlines`].
    pub fn new(base_url: impl Into<String>) -> Self {
        Self::with_deadlines(base_url, Deadlines::default())
    }

    /// A worker at `base_url` whose streams must keep to `deadlines`.
    pub fn with_deadlines(base_url: impl Into<String>, deadlines: Deadlines) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            client,
            deadlines: Arc::new(deadlines),
            token: None,
        }
    }

    /// The same worker with its own token (`None`: send none).
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(Arc::from);
        self
    }

    /// This worker's stream deadlines (the prober adapts them).
    pub fn deadlines(&self) -> &Deadlines {
        &self.deadlines
    }
}

/// Longest NDJSON line read from a worker (an event is a few hundred bytes
/// at most); a longer one fails the request instead of filling memory.
const MAX_LINE_BYTES: usize = 1 << 20;

/// Most of a worker's error body that is read.
pub(crate) const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// The start of `resp`'s body, at most `cap` bytes, as text.
pub(crate) async fn body_prefix(mut resp: reqwest::Response, cap: usize) -> String {
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
    token: Option<Arc<str>>,
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
            let token = self.token.take();
            rt.spawn(async move {
                let mut cancel = client.post(url).timeout(Duration::from_secs(5));
                if let Some(t) = token {
                    cancel = cancel.bearer_auth(t);
                }
                let _ = cancel.send().await;
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

/// What a worker's non-2xx answer means: its 400 is the caller's, 429 and
/// 503 say retry (elsewhere), anything else is a broken worker.
pub(crate) async fn refusal(resp: reqwest::Response) -> GenerateError {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let body = body_prefix(resp, MAX_ERROR_BODY_BYTES).await;
    let error = parse_error_body(&body);
    match status.as_u16() {
        400 | 422 => GenerateError::BadRequest(error),
        429 | 503 => GenerateError::Unavailable {
            message: error.message,
            retry_after,
        },
        _ => GenerateError::Upstream(format!("worker returned {status}: {}", error.message)),
    }
}

/// Reads a worker's NDJSON stream into events: each line once, lines
/// capped at [`MAX_LINE_BYTES`], silence capped by the token-gap deadline;
/// every way the stream can break ends in one error event.
struct LineReader {
    bytes: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
    guard: CancelOnDrop,
    deadlines: Arc<Deadlines>,
    finished: bool,
}

impl LineReader {
    /// Ends the stream with `code`.
    fn fail(&mut self, code: FailureCode, message: String) -> Option<GenerateEvent> {
        self.finished = true;
        Some(GenerateEvent::Error { code, message })
    }

    async fn next_event(&mut self) -> Option<GenerateEvent> {
        if self.finished {
            return None;
        }
        loop {
            // Each byte is looked at once, however the line is chunked.
            let newline = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
            self.scanned = newline.map_or(self.buf.len(), |p| self.scanned + p);
            // The line so far (up to its newline, or all that came).
            if self.scanned > MAX_LINE_BYTES {
                self.buf = Vec::new();
                return self.fail(
                    FailureCode::BadWorkerResponse,
                    format!("worker sent a line longer than {MAX_LINE_BYTES} bytes"),
                );
            }
            if newline.is_some() {
                let line: Vec<u8> = self.buf.drain(..=self.scanned).collect();
                self.scanned = 0;
                let line = line.trim_ascii();
                if line.is_empty() {
                    // A keep-alive.
                    continue;
                }
                let ev = serde_json::from_slice::<GenerateEvent>(line).unwrap_or_else(|e| {
                    GenerateEvent::Error {
                        code: FailureCode::BadWorkerResponse,
                        message: format!("unreadable line from worker: {e}"),
                    }
                });
                if ev.is_last() {
                    self.finished = true;
                    self.guard.disarm();
                }
                return Some(ev);
            }
            let gap = self.deadlines.token_gap();
            match tokio::time::timeout(gap, self.bytes.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Some(Err(e))) => {
                    return self.fail(
                        FailureCode::WorkerStreamError,
                        format!("worker stream broke: {e}"),
                    )
                }
                Ok(None) => {
                    if !self.buf.trim_ascii().is_empty() {
                        self.buf.push(b'\n');
                        continue;
                    }
                    self.guard.disarm();
                    return self.fail(
                        FailureCode::WorkerStreamError,
                        "worker stream ended before completion".into(),
                    );
                }
                Err(_) => {
                    return self.fail(
                        FailureCode::WorkerTimeout,
                        format!("worker sent nothing for {}s", gap.as_secs_f64()),
                    )
                }
            }
        }
    }
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
        let deadlines = self.deadlines.clone();
        let token = self.token.clone();
        Box::pin(async move {
            let first_byte = deadlines.first_byte();
            let mut post = client.post(&url).json(&req);
            if let Some(t) = &token {
                post = post.bearer_auth(t);
            }
            let resp = tokio::time::timeout(first_byte, post.send())
                .await
                .map_err(|_| {
                    GenerateError::Connect(format!(
                        "no answer within {}s",
                        first_byte.as_secs_f64()
                    ))
                })?
                .map_err(|e| GenerateError::Connect(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(refusal(resp).await);
            }
            let guard = CancelOnDrop {
                url: Some(cancel_url),
                client,
                token,
            };
            let reader = LineReader {
                bytes: resp.bytes_stream().boxed(),
                buf: Vec::new(),
                scanned: 0,
                guard,
                deadlines,
                finished: false,
            };
            let stream = futures::stream::unfold(reader, |mut r| async move {
                let ev = r.next_event().await?;
                Some((ev, r))
            });
            Ok(stream.boxed())
        })
    }

    fn embed(
        &self,
        req: EmbeddingRequest,
    ) -> BoxFuture<'static, Result<EmbeddingResponse, GenerateError>> {
        Box::pin(crate::embed_call::post(self.clone(), req))
    }

    /// One worker's models are learned by the cluster's probes, not here.
    fn models(&self) -> Vec<ModelCard> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_slow_steps_but_never_drop_below_their_floors() {
        let d = Deadlines::new(Duration::from_secs(10), Duration::from_secs(5));
        d.adapt(0.05);
        assert_eq!(d.first_byte(), Duration::from_secs(10));
        assert_eq!(d.token_gap(), Duration::from_secs(5));
        // A worker whose steps take 3 s gets 4 × 3 s.
        d.adapt(3.0);
        assert_eq!(d.first_byte(), Duration::from_secs(12));
        assert_eq!(d.token_gap(), Duration::from_secs(12));
        d.adapt(f64::NAN);
        assert_eq!(d.token_gap(), Duration::from_secs(5));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use spindle_proto::{FinishReason, Timings, Usage};

        fn reader(chunks: Vec<Vec<u8>>) -> LineReader {
            let bytes =
                futures::stream::iter(chunks.into_iter().map(|c| Ok(bytes::Bytes::from(c))));
            LineReader {
                bytes: bytes.boxed(),
                buf: Vec::new(),
                scanned: 0,
                guard: CancelOnDrop {
                    url: None,
                    client: reqwest::Client::new(),
                    token: None,
                },
                deadlines: Arc::new(Deadlines::default()),
                finished: false,
            }
        }

        fn read_all(chunks: Vec<Vec<u8>>) -> Vec<GenerateEvent> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut r = reader(chunks);
                let mut out = Vec::new();
                while let Some(ev) = r.next_event().await {
                    out.push(ev);
                }
                out
            })
        }

        /// `body` cut at `cuts` (positions taken modulo its length).
        fn split(body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            at.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for a in at.into_iter().chain([body.len()]) {
                chunks.push(body[last..a].to_vec());
                last = a;
            }
            chunks
        }

        proptest! {
            /// However the stream is chunked, with keep-alive lines anywhere,
            /// the same events come out, ending with the `done`.
            #[test]
            fn any_chunking_gives_the_same_events(
                texts in prop::collection::vec(".{0,12}", 0..20),
                keepalives in prop::collection::vec(any::<bool>(), 20),
                cuts in prop::collection::vec(any::<usize>(), 0..30),
            ) {
                let mut events: Vec<GenerateEvent> = texts
                    .iter()
                    .enumerate()
                    .map(|(i, t)| GenerateEvent::delta(t.clone(), vec![i as i32]))
                    .collect();
                events.push(GenerateEvent::Done {
                    finish_reason: FinishReason::Stop,
                    usage: Usage::default(),
                    timings: Timings::default(),
                });
                let mut body = Vec::new();
                for (i, e) in events.iter().enumerate() {
                    if keepalives.get(i).copied().unwrap_or(false) {
                        body.push(b'\n');
                    }
                    body.extend(serde_json::to_vec(e).unwrap());
                    body.push(b'\n');
                }
                prop_assert_eq!(read_all(split(&body, &cuts)), events);
            }

            /// Any bytes end in exactly one last event (`done` or an error),
            /// nothing after it, and never a panic.
            #[test]
            fn any_bytes_end_in_one_last_event(
                body in prop::collection::vec(any::<u8>(), 0..400),
                cuts in prop::collection::vec(any::<usize>(), 0..10),
            ) {
                let events = read_all(split(&body, &cuts));
                let last = events.iter().filter(|e| !matches!(e, GenerateEvent::Delta { .. })).count();
                prop_assert_eq!(last, 1);
                let is_last = !matches!(events.last(), Some(GenerateEvent::Delta { .. }));
                prop_assert!(is_last);
            }
        }
    }
}
