//! One worker as the cluster sees it: its client, load accounting, readiness
//! and circuit breaker.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spindle_proto::openai::ModelCard;
use spindle_proto::LoadReport;

use tokio::sync::watch;

use crate::generator::{Deadlines, HttpWorker, WorkerToken};
use crate::sync;

/// Circuit-breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Serving normally.
    Closed,
    /// Ejected until `until`; `cooldown` is the current back-off.
    Open { until: Instant, cooldown: Duration },
    /// Back in the ring on trial: the next success closes it, a failure
    /// reopens it with twice the cooldown.
    HalfOpen { cooldown: Duration },
}

#[derive(Debug)]
pub(crate) struct Health {
    /// Last `/ready` answered 200 (and `/load` did not say draining).
    pub ready: bool,
    pub breaker: Breaker,
    pub probe_failures: u32,
    /// Load the worker reported beyond this router's own streams.
    pub external_load: u32,
    pub last_load: Option<LoadReport>,
    /// What its last `/v1/models` listed (kept while probes fail).
    pub models: Vec<ModelCard>,
}

/// A worker known to the cluster.
#[derive(Debug)]
pub struct Member {
    pub url: String,
    /// `host:port`: the `worker` label of router metrics, which is also the
    /// `instance` label Prometheus gives the worker's own metrics.
    pub label: String,
    /// The `--workers-dns` name that found it (`None`: a static worker).
    pub(crate) source: Option<String>,
    pub(crate) http: HttpWorker,
    inflight: AtomicU32,
    pub(crate) health: Mutex<Health>,
    /// Counts ejections: streams open on the worker watch it and move to
    /// another worker at once when it is ejected.
    ejections: watch::Sender<u64>,
}

/// A snapshot of one worker's state, for status pages and tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberStatus {
    pub url: String,
    pub ready: bool,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    pub in_ring: bool,
    pub inflight: u32,
    pub load: u32,
    pub models: Vec<String>,
}

impl Member {
    pub(crate) fn new(
        url: String,
        source: Option<String>,
        deadlines: Deadlines,
        token: &WorkerToken,
    ) -> Arc<Self> {
        let label = url
            .split_once("://")
            .map_or(url.as_str(), |(_, rest)| rest)
            .to_owned();
        // The series exists from the start: "no ejections", not "no data".
        metrics::counter!("spindle_router_ejections_total", "worker" => label.clone()).increment(0);
        Arc::new(Self {
            http: HttpWorker::with_deadlines(url.clone(), deadlines).with_token(token.0.as_deref()),
            url,
            label,
            source,
            inflight: AtomicU32::new(0),
            health: Mutex::new(Health {
                ready: false,
                breaker: Breaker::Closed,
                probe_failures: 0,
                external_load: 0,
                last_load: None,
                models: Vec::new(),
            }),
            ejections: watch::Sender::new(0),
        })
    }

    /// Changes when the worker is ejected from now on.
    pub(crate) fn watch_ejections(&self) -> watch::Receiver<u64> {
        self.ejections.subscribe()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        sync::lock(&self.health)
    }

    /// Streams this router has open on the worker.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Own open streams plus what the worker's last `/load` showed beyond them.
    pub fn load(&self) -> u32 {
        self.inflight() + self.lock().external_load
    }

    /// May take requests: ready and not ejected.
    pub fn routable(&self) -> bool {
        let h = self.lock();
        h.ready && !matches!(h.breaker, Breaker::Open { .. })
    }

    /// Publishes `spindle_router_worker_up` and `_circuit_state` for this worker.
    pub(crate) fn publish(&self) {
        let (up, state) = {
            let h = self.lock();
            let state = match h.breaker {
                Breaker::Closed => 0.0,
                Breaker::HalfOpen { .. } => 1.0,
                Breaker::Open { .. } => 2.0,
            };
            let up = h.ready && !matches!(h.breaker, Breaker::Open { .. });
            (if up { 1.0 } else { 0.0 }, state)
        };
        metrics::gauge!("spindle_router_worker_up", "worker" => self.label.clone()).set(up);
        metrics::gauge!("spindle_router_worker_circuit_state", "worker" => self.label.clone())
            .set(state);
    }

    pub(crate) fn start_stream(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self.clone())
    }

    /// A request succeeded: a half-open breaker closes.
    pub(crate) fn record_success(&self) {
        let mut h = self.lock();
        if matches!(h.breaker, Breaker::HalfOpen { .. }) {
            tracing::info!(worker = %self.url, "worker recovered");
            h.breaker = Breaker::Closed;
        }
    }

    /// Eject now (passive: a request failed, or probes failed repeatedly).
    /// Returns true when the worker was in service before.
    pub(crate) fn eject(&self, base: Duration) -> bool {
        let mut h = self.lock();
        let cooldown = match h.breaker {
            Breaker::Open { .. } => return false,
            Breaker::Closed => base,
            Breaker::HalfOpen { cooldown } => (cooldown * 2).min(base * 16),
        };
        h.breaker = Breaker::Open {
            until: Instant::now() + cooldown,
            cooldown,
        };
        drop(h);
        tracing::warn!(worker = %self.url, ?cooldown, "worker ejected");
        self.ejections.send_modify(|n| *n += 1);
        metrics::counter!("spindle_router_ejections_total", "worker" => self.label.clone())
            .increment(1);
        true
    }

    pub fn status(&self, in_ring: bool) -> MemberStatus {
        let inflight = self.inflight();
        let h = self.lock();
        MemberStatus {
            url: self.url.clone(),
            ready: h.ready,
            breaker: match h.breaker {
                Breaker::Closed => "closed",
                Breaker::Open { .. } => "open",
                Breaker::HalfOpen { .. } => "half_open",
            },
            in_ring,
            inflight,
            load: inflight + h.external_load,
            models: h.models.iter().map(|m| m.id.clone()).collect(),
        }
    }
}

/// Counts one open stream on a worker until dropped.
pub(crate) struct InflightGuard(Arc<Member>);

impl InflightGuard {
    pub(crate) fn member(&self) -> &Arc<Member> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
