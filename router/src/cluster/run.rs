//! One request across the cluster: [`Run`] opens a leg on the best worker
//! of the request's pool, retries on the next one when a worker fails before
//! the first token, and migrates the stream (with the text so far as
//! `continuation`) when it fails after.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use spindle_proto::{FailureCode, GenerateEvent, GenerateRequest};
use tokio::sync::watch;

use super::balancer::Inner;
use super::config::Policy;
use super::member::{InflightGuard, Member};
use crate::generator::{GenerateError, Generator};

/// Why a leg went to its worker: `spindle_router_routing_decisions_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// The ring owner of the request's key.
    Owner,
    /// Past the owner, which was over the load bound.
    Spill,
    /// Another worker after a failure before the first token.
    Retry,
    /// Another worker after a failure mid-stream.
    Migration,
    /// Round-robin or least-load: no owner.
    Balance,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Spill => "spill",
            Self::Retry => "retry",
            Self::Migration => "migration",
            Self::Balance => "balance",
        }
    }
}

/// A request in progress: the legs opened so far and what they produced.
pub(crate) struct Run {
    inner: Arc<Inner>,
    req: GenerateRequest,
    candidates: Vec<Arc<Member>>,
    next: usize,
    leg: Option<Leg>,
    /// Text already sent to the caller by earlier legs of this request.
    text: String,
    /// Tokens already sent to the caller.
    produced: u32,
    /// `produced` when the current leg started.
    leg_base: u32,
    retries_left: u32,
    migrations_left: u32,
    finished: bool,
    /// The first candidate is past the ring owner (load bound).
    spilled: bool,
    /// Workers asked so far (a leg opened or refused).
    tried: u32,
}

/// A leg that had an event this recently is still being served: its
/// worker's ejection (a probe timing out under load) does not end it; the
/// token-gap deadline still watches it.
const LIVE_LEG: Duration = Duration::from_secs(2);

/// A stream's next event; its end before the last event is a failure.
fn or_ended(ev: Option<GenerateEvent>) -> GenerateEvent {
    ev.unwrap_or_else(|| GenerateEvent::Error {
        code: FailureCode::WorkerStreamError,
        message: "worker stream ended before completion".into(),
    })
}

/// The stream open on one worker.
struct Leg {
    events: BoxStream<'static, GenerateEvent>,
    /// Changes when the worker is ejected (probes or another request failed
    /// on it): a leg that is not delivering then ends at once instead of
    /// waiting on a dead worker.
    ejections: watch::Receiver<u64>,
    last_event: Instant,
    guard: InflightGuard,
}

impl Leg {
    async fn next(&mut self) -> GenerateEvent {
        loop {
            tokio::select! {
                ev = self.events.next() => {
                    self.last_event = Instant::now();
                    return or_ended(ev);
                }
                changed = self.ejections.changed() => {
                    if changed.is_err() {
                        // The member is gone (never while a leg holds it):
                        // nothing to watch but the stream.
                        let ev = self.events.next().await;
                        self.last_event = Instant::now();
                        return or_ended(ev);
                    }
                    if self.last_event.elapsed() >= LIVE_LEG {
                        return GenerateEvent::Error {
                            code: FailureCode::WorkerTimeout,
                            message: "the worker was ejected (failed health checks or requests)"
                                .into(),
                        };
                    }
                }
            }
        }
    }
}

enum Opened {
    Ok,
    /// The request itself is bad: no other worker will take it either.
    Rejected(GenerateError),
    /// No worker left to try.
    Exhausted(GenerateError),
}

impl Run {
    /// Opens the first leg (trying up to `--max-retries` + 1 workers).
    pub(crate) async fn open(
        inner: Arc<Inner>,
        req: GenerateRequest,
        candidates: Vec<Arc<Member>>,
        spilled: bool,
    ) -> Result<Self, GenerateError> {
        let cfg = &inner.cfg;
        let mut run = Run {
            retries_left: cfg.max_retries,
            migrations_left: cfg.max_migrations,
            inner: inner.clone(),
            req,
            candidates,
            next: 0,
            leg: None,
            text: String::new(),
            produced: 0,
            leg_base: 0,
            finished: false,
            spilled,
            tried: 0,
        };
        let attempts = run.retries_left + 1;
        match run.open_leg(attempts).await {
            Opened::Ok => {}
            Opened::Rejected(e) | Opened::Exhausted(e) => return Err(e),
        }
        // Retries used up while opening count against the budget.
        let retried = run.next.saturating_sub(1) as u64;
        if retried > 0 {
            inner.stats.retries.fetch_add(retried, Ordering::Relaxed);
        }
        run.retries_left = run
            .retries_left
            .saturating_sub(run.next.saturating_sub(1) as u32);
        Ok(run)
    }

    /// The request as the next leg sends it: after tokens were sent, with the
    /// text so far as continuation and `max_tokens` reduced accordingly.
    fn leg_request(&self) -> GenerateRequest {
        let mut req = self.req.clone();
        if self.produced > 0 {
            let mut cont = req.continuation.take().unwrap_or_default();
            cont.push_str(&self.text);
            req.continuation = Some(cont);
            if let Some(m) = req.sampling.max_tokens.as_mut() {
                *m = m.saturating_sub(self.produced).max(1);
            }
        }
        req
    }

    /// Opens a leg on the next candidate that accepts; `attempts` bounds how many are tried.
    async fn open_leg(&mut self, mut attempts: u32) -> Opened {
        let mut last = GenerateError::Unavailable {
            message: "no worker is available".into(),
            retry_after: 1,
        };
        while attempts > 0 && self.next < self.candidates.len() {
            let m = self.candidates[self.next].clone();
            self.next += 1;
            if !m.routable() {
                continue;
            }
            attempts -= 1;
            self.tried += 1;
            let guard = m.start_stream();
            let ejections = m.watch_ejections();
            match m.http.generate(self.leg_request()).await {
                Ok(events) => {
                    m.record_success();
                    self.record_decision(&m);
                    self.leg = Some(Leg {
                        events,
                        ejections,
                        last_event: Instant::now(),
                        guard,
                    });
                    self.leg_base = self.produced;
                    return Opened::Ok;
                }
                Err(e @ GenerateError::BadRequest(_)) => return Opened::Rejected(e),
                Err(e) => {
                    tracing::warn!(worker = %m.url, "worker failed to start a request: {e}");
                    match &e {
                        GenerateError::Unavailable { .. } => self.inner.mark_unready(&m),
                        _ => self.inner.eject(&m),
                    }
                    last = e;
                }
            }
        }
        Opened::Exhausted(last)
    }

    fn record_decision(&self, m: &Member) {
        let reason = if self.produced > 0 {
            Reason::Migration
        } else if self.tried > 1 {
            Reason::Retry
        } else if self.inner.cfg.policy != Policy::ConsistentHash {
            Reason::Balance
        } else if self.spilled {
            Reason::Spill
        } else {
            Reason::Owner
        };
        metrics::counter!(
            "spindle_router_routing_decisions_total",
            "model" => self.req.model.clone().unwrap_or_default(),
            "worker" => m.label.clone(),
            "reason" => reason.as_str(),
        )
        .increment(1);
    }

    /// The next event for the caller; `None` after the last one.
    pub(crate) async fn step(&mut self) -> Option<GenerateEvent> {
        if self.finished {
            return None;
        }
        loop {
            if self.leg.is_none() {
                let migrating = self.produced > 0;
                let opened = self.open_leg(self.candidates.len() as u32).await;
                match opened {
                    Opened::Ok => {
                        if migrating {
                            self.inner.stats.migrations.fetch_add(1, Ordering::Relaxed);
                        } else {
                            self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Opened::Rejected(e) | Opened::Exhausted(e) => {
                        self.finished = true;
                        return Some(GenerateEvent::Error {
                            code: FailureCode::WorkerUnavailable,
                            message: format!("the worker failed and no other could continue: {e}"),
                        });
                    }
                }
            }
            let leg = self.leg.as_mut()?;
            let ev = leg.next().await;
            if let Some((text, token_ids)) = ev.generated() {
                self.produced += token_ids.len() as u32;
                self.text.push_str(text);
                return Some(ev);
            }
            match ev {
                GenerateEvent::Prompt { .. }
                | GenerateEvent::Delta { .. }
                | GenerateEvent::ToolCall { .. }
                | GenerateEvent::ToolArguments { .. } => return Some(ev),
                GenerateEvent::Done {
                    finish_reason,
                    mut usage,
                    timings,
                } => {
                    self.finished = true;
                    self.leg = None;
                    if self.leg_base > 0 {
                        // The last leg's prompt included the continuation.
                        usage.completion_tokens += self.leg_base;
                        usage.prompt_tokens = usage.prompt_tokens.saturating_sub(self.leg_base);
                        usage.cached_tokens = usage.cached_tokens.min(usage.prompt_tokens);
                    }
                    return Some(GenerateEvent::Done {
                        finish_reason,
                        usage,
                        timings,
                    });
                }
                GenerateEvent::Error { code, message } => {
                    if !code.is_worker_failure() {
                        self.finished = true;
                        return Some(GenerateEvent::Error { code, message });
                    }
                    let m = leg.guard.member().clone();
                    tracing::warn!(worker = %m.url, produced = self.produced, "worker stream failed: {message}");
                    self.leg = None;
                    self.inner.eject(&m);
                    let can = if self.produced == 0 {
                        self.retries_left
                            .checked_sub(1)
                            .map(|r| self.retries_left = r)
                    } else {
                        self.migrations_left
                            .checked_sub(1)
                            .map(|r| self.migrations_left = r)
                    };
                    if can.is_none() {
                        self.finished = true;
                        return Some(GenerateEvent::Error { code, message });
                    }
                    // Loop: open the next leg.
                }
            }
        }
    }
}
