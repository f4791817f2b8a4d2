//! The soak clients: each loops until the deadline, picking one behaviour
//! per iteration by fixed weights ([`MIX`]) and spreading requests over the
//! routers. Every response-creating call becomes a [`Record`] of what the
//! client saw (id, terminal status, text, TTFT); every failed HTTP call an
//! [`ClientError`] (polls and cancels included). The audit judges both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::audit::Violation;
use super::http::{self, CallErr};
use super::stream::{check_stream, read_stream};
use super::wire::{ConversationObj, ResponseObj, Status};
use crate::bench::cluster::Rng;

/// What a client did: one row of the report each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A new chain, streamed.
    Stream,
    /// A new chain, one JSON answer.
    Plain,
    /// `previous_response_id` on this client's last finished response
    /// (half of them through the other router; streamed or not, alternately).
    FollowUp,
    /// `background: true`, polled with `GET /v1/responses/{id}` until terminal.
    Background,
    /// `background: true, stream: true`: the stream replays stored events.
    BackgroundStream,
    /// A background response cancelled after 0–300 ms, then polled.
    Cancel,
    /// A stream the client drops after 1–3 text deltas.
    Disconnect,
    /// A turn in a conversation (`POST /v1/conversations`, then two turns,
    /// the second through the other router).
    Conversation,
}

/// The fixed mix, in percent of iterations. Follow-ups fall back to a new
/// stream while a client has no finished response to follow.
pub const MIX: [(Kind, u64); 8] = [
    (Kind::Stream, 20),
    (Kind::Plain, 15),
    (Kind::FollowUp, 20),
    (Kind::Background, 5),
    (Kind::BackgroundStream, 5),
    (Kind::Cancel, 5),
    (Kind::Disconnect, 10),
    (Kind::Conversation, 20),
];

/// Chains are cut after this many turns (keeps prompts short).
const MAX_CHAIN: u32 = 4;
/// Poll interval of background responses.
const POLL: Duration = Duration::from_millis(250);

const PROMPTS: &[&str] = &[
    "Once upon a time",
    "The little dog ran",
    "Lily had a red ball",
    "One day, Tom went to the park",
    "The sun was hot and",
    "A bird sat on a tree",
    "Mom said to Ben",
    "There was a big box",
];

/// What the client saw of one response-creating call.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub kind: Kind,
    pub streamed: bool,
    pub router: usize,
    /// Seconds since the run began.
    pub start: f64,
    pub end: f64,
    pub id: Option<String>,
    /// The terminal status the client saw; `None` when it saw none.
    pub seen: Option<Status>,
    /// The output text the client saw (deltas, or the object's text).
    pub text: String,
    pub ttft_ms: Option<f64>,
    /// The client dropped the stream on purpose.
    pub dropped: bool,
    /// The label of the error that ended the call, if one did.
    pub error: Option<String>,
    /// What `POST …/cancel` answered (cancel kind).
    pub cancel_answer: Option<Status>,
    /// Stream-protocol violations found while reading.
    pub violations: Vec<Violation>,
}

/// One failed HTTP call.
#[derive(Debug, Clone, Serialize)]
pub struct ClientError {
    pub at: f64,
    pub step: &'static str,
    pub kind: String,
    /// An OpenAI error body (HTTP errors) or a plain transport failure.
    pub clean: bool,
    pub detail: String,
}

/// What every client shares.
pub struct Shared {
    pub http: reqwest::Client,
    pub routers: Vec<String>,
    pub model: String,
    pub t0: Instant,
    pub deadline: Instant,
    /// Longest a call (or a background response's polling) may take.
    pub timeout: Duration,
    pub records: Mutex<Vec<Record>>,
    pub errors: Mutex<Vec<ClientError>>,
    pub done: AtomicU64,
    pub failed_calls: AtomicU64,
    pub in_flight: AtomicU64,
}

impl Shared {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn push(&self, r: Record) {
        self.done.fetch_add(1, Ordering::Relaxed);
        lock(&self.records).push(r);
    }

    fn error(&self, step: &'static str, e: &CallErr) {
        self.failed_calls.fetch_add(1, Ordering::Relaxed);
        lock(&self.errors).push(ClientError {
            at: self.now(),
            step,
            kind: e.label(),
            clean: e.clean(),
            detail: e.detail(),
        });
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One client's state.
struct Client {
    sh: Arc<Shared>,
    rng: Rng,
    /// The last finished response of this client's chain: (id, router, turns).
    prev: Option<(String, usize, u32)>,
}

/// Runs one client until the deadline.
pub async fn run_client(sh: Arc<Shared>, seed: u64) {
    let mut c = Client {
        sh,
        rng: Rng(seed),
        prev: None,
    };
    while Instant::now() < c.sh.deadline {
        let kind = c.pick();
        c.sh.in_flight.fetch_add(1, Ordering::Relaxed);
        c.step(kind).await;
        c.sh.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Client {
    fn pick(&mut self) -> Kind {
        let total: u64 = MIX.iter().map(|(_, w)| w).sum();
        let mut x = self.rng.next() % total;
        for (k, w) in MIX {
            if x < w {
                return k;
            }
            x -= w;
        }
        Kind::Stream
    }

    fn router(&mut self) -> usize {
        (self.rng.next() % self.sh.routers.len() as u64) as usize
    }

    fn coin(&mut self) -> bool {
        self.rng.next() & 1 == 0
    }

    fn body(&mut self) -> Value {
        json!({
            "model": self.sh.model,
            "input": self.rng.pick(PROMPTS),
            "max_output_tokens": 16 + self.rng.next() % 33,
        })
    }

    fn record(&self, kind: Kind, streamed: bool, router: usize, start: f64) -> Record {
        Record {
            kind,
            streamed,
            router,
            start,
            end: start,
            id: None,
            seen: None,
            text: String::new(),
            ttft_ms: None,
            dropped: false,
            error: None,
            cancel_answer: None,
            violations: Vec::new(),
        }
    }

    async fn step(&mut self, kind: Kind) {
        match kind {
            Kind::Stream => {
                let (r, b) = (self.router(), self.body());
                self.stream(Kind::Stream, r, b, None).await;
            }
            Kind::Plain => {
                let (r, b) = (self.router(), self.body());
                self.plain(Kind::Plain, r, b).await;
            }
            Kind::FollowUp => self.follow_up().await,
            Kind::Background | Kind::Cancel => {
                let (r, b) = (self.router(), self.body());
                self.background(kind, r, b).await;
            }
            Kind::BackgroundStream => {
                let (r, mut b) = (self.router(), self.body());
                b["background"] = json!(true);
                self.stream(Kind::BackgroundStream, r, b, None).await;
            }
            Kind::Disconnect => {
                let (r, b) = (self.router(), self.body());
                let after = 1 + self.rng.next() % 3;
                self.stream(Kind::Disconnect, r, b, Some(after)).await;
            }
            Kind::Conversation => self.conversation().await,
        }
    }

    /// A chain's next turn, or a new stream while there is no chain.
    async fn follow_up(&mut self) {
        let Some((prev, prev_router, turns)) = self.prev.clone() else {
            let (r, b) = (self.router(), self.body());
            self.stream(Kind::Stream, r, b, None).await;
            return;
        };
        let n = self.sh.routers.len();
        let r = if self.coin() {
            (prev_router + 1) % n
        } else {
            prev_router
        };
        let mut b = self.body();
        b["previous_response_id"] = json!(prev);
        b["truncation"] = json!("auto");
        let rec = if self.coin() {
            self.stream(Kind::FollowUp, r, b, None).await
        } else {
            self.plain(Kind::FollowUp, r, b).await
        };
        // Go on from the new turn while it finished; cut long chains short.
        self.prev = match (&rec.id, rec.seen) {
            (Some(id), Some(s)) if s.has_full_text() && turns + 1 < MAX_CHAIN => {
                Some((id.clone(), r, turns + 1))
            }
            _ => None,
        };
    }

    /// Remembers a finished response as the head of this client's chain.
    fn chain_from(&mut self, rec: &Record) {
        if let (Some(id), Some(s)) = (&rec.id, rec.seen) {
            if s.has_full_text() {
                self.prev = Some((id.clone(), rec.router, 1));
            }
        }
    }

    async fn plain(&mut self, kind: Kind, r: usize, body: Value) -> Record {
        let sh = self.sh.clone();
        let mut rec = self.record(kind, false, r, sh.now());
        let url = format!("{}/v1/responses", sh.routers[r]);
        match http::json::<ResponseObj>(sh.http.post(url).json(&body)).await {
            Ok(obj) => {
                rec.seen = Some(obj.status).filter(|s| s.is_terminal());
                rec.text = obj.output_text();
                rec.id = Some(obj.id);
            }
            Err(e) => {
                sh.error("create", &e);
                rec.error = Some(e.label());
            }
        }
        rec.end = sh.now();
        if kind == Kind::Plain {
            self.chain_from(&rec);
        }
        sh.push(rec.clone());
        rec
    }

    /// A streamed create; with `drop_after`, the client hangs up after that
    /// many text deltas.
    async fn stream(
        &mut self,
        kind: Kind,
        r: usize,
        mut body: Value,
        drop_after: Option<u64>,
    ) -> Record {
        let sh = self.sh.clone();
        body["stream"] = json!(true);
        let mut rec = self.record(kind, true, r, sh.now());
        let t0 = Instant::now();
        let url = format!("{}/v1/responses", sh.routers[r]);
        let read = match http::send(sh.http.post(url).json(&body)).await {
            Ok(resp) => read_stream(resp, t0, drop_after).await,
            Err(e) => {
                sh.error("create", &e);
                rec.error = Some(e.label());
                rec.end = sh.now();
                sh.push(rec.clone());
                return rec;
            }
        };
        if let Some(e) = &read.error {
            sh.error("stream", e);
            rec.error = Some(e.label());
        }
        rec.violations = check_stream(&read);
        for x in &mut rec.violations {
            x.detail = format!("{kind:?} call from {:.1}s: {}", rec.start, x.detail);
        }
        rec.id = read.id();
        rec.seen = read.terminal().map(|t| t.status);
        rec.text = read.text.clone();
        rec.ttft_ms = read.ttft_ms;
        rec.dropped = read.dropped;
        rec.end = sh.now();
        if kind == Kind::Stream {
            self.chain_from(&rec);
        }
        sh.push(rec.clone());
        rec
    }

    /// A background response (cancelled soon after for [`Kind::Cancel`]),
    /// polled until terminal.
    async fn background(&mut self, kind: Kind, r: usize, mut body: Value) {
        let sh = self.sh.clone();
        body["background"] = json!(true);
        let mut rec = self.record(kind, false, r, sh.now());
        let url = format!("{}/v1/responses", sh.routers[r]);
        let id = match http::json::<ResponseObj>(sh.http.post(url).json(&body)).await {
            Ok(obj) => obj.id,
            Err(e) => {
                sh.error("create", &e);
                rec.error = Some(e.label());
                rec.end = sh.now();
                return sh.push(rec);
            }
        };
        rec.id = Some(id.clone());
        if kind == Kind::Cancel {
            tokio::time::sleep(Duration::from_millis(self.rng.next() % 300)).await;
            let url = format!("{}/v1/responses/{id}/cancel", sh.routers[self.router()]);
            match http::json::<ResponseObj>(sh.http.post(url)).await {
                Ok(obj) => rec.cancel_answer = Some(obj.status),
                Err(e) => sh.error("cancel", &e),
            }
        }
        // Poll through either router; a poll that fails is retried until the deadline.
        let give_up = Instant::now() + sh.timeout;
        loop {
            let url = format!("{}/v1/responses/{id}", sh.routers[self.router()]);
            match http::json::<ResponseObj>(sh.http.get(url)).await {
                Ok(obj) if obj.status.is_terminal() => {
                    rec.seen = Some(obj.status);
                    rec.text = obj.output_text();
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    sh.error("poll", &e);
                    if e.status() == Some(404) {
                        rec.error = Some(e.label());
                        break;
                    }
                }
            }
            if Instant::now() > give_up {
                rec.error = Some("timeout".into());
                sh.error(
                    "poll",
                    &CallErr::timeout("background response not terminal"),
                );
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        rec.end = sh.now();
        sh.push(rec);
    }

    /// A conversation and two turns in it.
    async fn conversation(&mut self) {
        let sh = self.sh.clone();
        let r = self.router();
        let url = format!("{}/v1/conversations", sh.routers[r]);
        let conv = match http::json::<ConversationObj>(sh.http.post(url).json(&json!({}))).await {
            Ok(c) => c.id,
            Err(e) => {
                sh.error("conversation", &e);
                let mut rec = self.record(Kind::Conversation, false, r, sh.now());
                rec.error = Some(e.label());
                return sh.push(rec);
            }
        };
        for turn in 0..2 {
            let r = (r + turn) % sh.routers.len();
            let mut b = self.body();
            b["conversation"] = json!(conv);
            if self.coin() {
                self.stream(Kind::Conversation, r, b, None).await;
            } else {
                self.plain(Kind::Conversation, r, b).await;
            }
        }
    }
}
