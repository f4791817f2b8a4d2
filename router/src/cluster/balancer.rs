//! [`ClusterGenerator`]: a [`Generator`] over many workers — consistent-hash
//! affinity with bounded load, health probing, ejection, retry and migration.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use spindle_proto::{GenerateEvent, GenerateRequest, LoadReport};

use super::config::{ClusterConfig, Policy};
use super::key::routing_key;
use super::member::{Breaker, InflightGuard, Member, MemberStatus};
use super::ring::HashRing;
use crate::generator::{GenerateError, Generator};

/// Counters, also exported as `spindle_router_*_total` metrics.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Requests sent past their ring owner because it was over the load bound.
    pub spills: AtomicU64,
    /// New legs opened after a failure before the first token.
    pub retries: AtomicU64,
    /// Streams moved to another worker after tokens were sent.
    pub migrations: AtomicU64,
}

/// The routable workers and the ring over them.
struct View {
    ring: HashRing,
    members: HashMap<String, Arc<Member>>,
    /// Sorted by URL.
    order: Vec<Arc<Member>>,
}

struct Inner {
    cfg: ClusterConfig,
    client: reqwest::Client,
    /// Every known worker (static, or the last DNS answer).
    members: RwLock<Vec<Arc<Member>>>,
    view: RwLock<Arc<View>>,
    rr: AtomicUsize,
    stats: ClusterStats,
    models: RwLock<Vec<String>>,
}

/// A [`Generator`] that spreads requests over a cluster of workers.
///
/// Cheap to clone; background probing stops when the last clone is dropped.
#[derive(Clone)]
pub struct ClusterGenerator {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

struct Tasks(std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in self.0.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

fn normalize_url(u: &str) -> String {
    let u = u.trim().trim_end_matches('/');
    if u.contains("://") {
        u.to_owned()
    } else {
        format!("http://{u}")
    }
}

impl ClusterGenerator {
    /// Builds the cluster without probing: static workers are known but not
    /// routable until [`ClusterGenerator::probe_now`] (or the loops of
    /// [`ClusterGenerator::start`]) find them ready.
    pub fn new(config: ClusterConfig) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let mut seen = HashSet::new();
        let members = config
            .workers
            .iter()
            .filter(|w| !w.trim().is_empty())
            .map(|w| normalize_url(w))
            .filter(|u| seen.insert(u.clone()))
            .map(Member::new)
            .collect();
        let inner = Arc::new(Inner {
            view: RwLock::new(Arc::new(View {
                ring: HashRing::new(Vec::new(), config.vnodes),
                members: HashMap::new(),
                order: Vec::new(),
            })),
            cfg: config,
            client,
            members: RwLock::new(members),
            rr: AtomicUsize::new(0),
            stats: ClusterStats::default(),
            models: RwLock::new(Vec::new()),
        });
        Ok(Self {
            inner,
            _tasks: Arc::new(Tasks(std::sync::Mutex::new(Vec::new()))),
        })
    }

    /// [`ClusterGenerator::new`], then resolve DNS and probe every worker once,
    /// then keep doing both in the background (`--dns-interval`, `--health-interval`).
    pub async fn start(config: ClusterConfig) -> anyhow::Result<Self> {
        let this = Self::new(config)?;
        this.resolve_now().await;
        this.probe_now().await;
        let mut tasks = Vec::new();
        let weak = Arc::downgrade(&this.inner);
        let cfg = &this.inner.cfg;
        tasks.push(tokio::spawn(every(
            weak.clone(),
            cfg.health_interval,
            |i| async move { probe_all(&i).await },
        )));
        if cfg.workers_dns.is_some() {
            tasks.push(tokio::spawn(every(
                weak,
                cfg.dns_interval,
                |i| async move { resolve(&i).await },
            )));
        }
        *this._tasks.0.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        Ok(this)
    }

    /// Also list (and accept) these model names.
    pub fn with_models(self, models: Vec<String>) -> Self {
        *self.inner.models.write().unwrap_or_else(|p| p.into_inner()) = models;
        self
    }

    /// Probe `/ready` and `/load` of every worker now and update the ring.
    pub async fn probe_now(&self) {
        probe_all(&self.inner).await;
    }

    /// Re-resolve `--workers-dns` now (no-op for static workers).
    pub async fn resolve_now(&self) {
        resolve(&self.inner).await;
    }

    /// Every known worker's state.
    pub fn members(&self) -> Vec<MemberStatus> {
        let view = self.inner.view();
        let members = self.inner.members.read().unwrap_or_else(|p| p.into_inner());
        members
            .iter()
            .map(|m| m.status(view.members.contains_key(&m.url)))
            .collect()
    }

    /// URLs on the ring now, sorted.
    pub fn ring_members(&self) -> Vec<String> {
        self.inner
            .view()
            .order
            .iter()
            .map(|m| m.url.clone())
            .collect()
    }

    /// The worker that owns `key` on the current ring (before load bounds).
    pub fn owner(&self, key: &str) -> Option<String> {
        self.inner.view().ring.get(key).map(str::to_owned)
    }

    /// The workers a request would try, in order (load bounds applied).
    pub fn route(&self, req: &GenerateRequest) -> Vec<String> {
        self.inner
            .pick(req, false)
            .iter()
            .map(|m| m.url.clone())
            .collect()
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.inner.stats
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.cfg
    }
}

impl Inner {
    fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Rebuilds the ring when the set of routable workers changed.
    fn refresh_view(&self) {
        let members = self
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut routable: Vec<Arc<Member>> = members.into_iter().filter(|m| m.routable()).collect();
        routable.sort_by(|a, b| a.url.cmp(&b.url));
        let mut cur = self.view.write().unwrap_or_else(|p| p.into_inner());
        let same = cur.order.len() == routable.len()
            && cur
                .order
                .iter()
                .zip(&routable)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if same {
            return;
        }
        tracing::info!(
            workers = ?routable.iter().map(|m| m.url.as_str()).collect::<Vec<_>>(),
            "worker ring changed"
        );
        metrics::gauge!("spindle_router_ring_workers").set(routable.len() as f64);
        *cur = Arc::new(View {
            ring: HashRing::new(routable.iter().map(|m| m.url.clone()), self.cfg.vnodes),
            members: routable
                .iter()
                .map(|m| (m.url.clone(), m.clone()))
                .collect(),
            order: routable,
        });
    }

    fn eject(&self, m: &Member) {
        if m.eject(self.cfg.breaker_cooldown) {
            self.refresh_view();
        }
    }

    /// Worker says it cannot take work now (503: draining or overloaded).
    fn mark_unready(&self, m: &Member) {
        m.lock().ready = false;
        self.refresh_view();
    }

    /// The workers to try for `req`, best first.
    fn pick(&self, req: &GenerateRequest, count: bool) -> Vec<Arc<Member>> {
        let view = self.view();
        let n = view.order.len();
        if n == 0 {
            return Vec::new();
        }
        match self.cfg.policy {
            Policy::RoundRobin => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed) % n;
                (0..n)
                    .map(|i| view.order[(start + i) % n].clone())
                    .collect()
            }
            Policy::LeastLoad => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed) % n;
                let mut v: Vec<(u32, Arc<Member>)> = (0..n)
                    .map(|i| {
                        let m = &view.order[(start + i) % n];
                        (m.load(), m.clone())
                    })
                    .collect();
                v.sort_by_key(|(l, _)| *l); // stable: ties keep the rotation
                v.into_iter().map(|(_, m)| m).collect()
            }
            Policy::ConsistentHash => {
                let key = routing_key(req);
                let mut cands: Vec<Arc<Member>> = view
                    .ring
                    .candidates(&key)
                    .into_iter()
                    .filter_map(|u| view.members.get(u).cloned())
                    .collect();
                let loads: Vec<u32> = cands.iter().map(|m| m.load()).collect();
                let mean = loads.iter().map(|&l| f64::from(l)).sum::<f64>() / n as f64;
                let bound = self.cfg.load_factor * mean + 1.0;
                if let Some(first_ok) = loads.iter().position(|&l| f64::from(l) <= bound) {
                    if first_ok > 0 {
                        // Spill: the owner (and maybe its successors) are over the bound;
                        // they stay at the end as fallbacks.
                        cands.rotate_left(first_ok);
                        if count {
                            self.stats.spills.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("spindle_router_spills_total").increment(1);
                        }
                    }
                }
                cands
            }
        }
    }
}

/// Run `job` every `every` (first run one period from now) until the
/// generator is dropped.
async fn every<F, Fut>(inner: Weak<Inner>, every: Duration, job: F)
where
    F: Fn(Arc<Inner>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        job(inner).await;
    }
}

/// Re-resolves `--workers-dns`, adding new workers (probed before they join the
/// ring) and forgetting the ones gone from the answer.
async fn resolve(inner: &Arc<Inner>) {
    let Some(name) = inner.cfg.workers_dns.clone() else {
        return;
    };
    let addrs = match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host(name.as_str()),
    )
    .await
    {
        Ok(Ok(a)) => a.collect::<Vec<_>>(),
        Ok(Err(e)) => {
            tracing::warn!(%name, "worker DNS lookup failed, keeping the last answer: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(%name, "worker DNS lookup timed out, keeping the last answer");
            return;
        }
    };
    let urls: HashSet<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    let added: Vec<Arc<Member>> = {
        let mut members = inner.members.write().unwrap_or_else(|p| p.into_inner());
        let before = members.len();
        members.retain(|m| urls.contains(&m.url));
        let removed = before - members.len();
        let known: HashSet<String> = members.iter().map(|m| m.url.clone()).collect();
        let added: Vec<Arc<Member>> = urls
            .iter()
            .filter(|u| !known.contains(*u))
            .map(|u| Member::new(u.clone()))
            .collect();
        members.extend(added.iter().cloned());
        if removed > 0 || !added.is_empty() {
            tracing::info!(%name, added = added.len(), removed, "worker set changed");
        }
        added
    };
    futures::future::join_all(added.iter().map(|m| probe(inner, m))).await;
    inner.refresh_view();
}

async fn probe_all(inner: &Arc<Inner>) {
    let members = inner
        .members
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    futures::future::join_all(members.iter().map(|m| probe(inner, m))).await;
    inner.refresh_view();
}

/// One health check: `GET /ready` then `GET /load`.
async fn probe(inner: &Inner, m: &Arc<Member>) {
    let timeout = inner
        .cfg
        .health_interval
        .clamp(Duration::from_millis(200), Duration::from_secs(2));
    let ready = inner
        .client
        .get(format!("{}/ready", m.url))
        .timeout(timeout)
        .send()
        .await;
    let ready = match ready {
        Ok(r) if r.status().is_success() => Some(true),
        // Loaded but not taking work (draining, or still loading the model).
        Ok(r) if r.status().as_u16() == 503 => Some(false),
        Ok(_) | Err(_) => None,
    };
    let Some(mut ready) = ready else {
        let eject = {
            let mut h = m.lock();
            h.probe_failures += 1;
            h.probe_failures >= inner.cfg.eject_after
        };
        if eject {
            m.eject(inner.cfg.breaker_cooldown);
        }
        return;
    };
    let own = m.inflight();
    let load = async {
        let r = inner
            .client
            .get(format!("{}/load", m.url))
            .timeout(timeout)
            .send()
            .await
            .ok()?;
        r.json::<LoadReport>().await.ok()
    }
    .await;
    let mut h = m.lock();
    h.probe_failures = 0;
    if let Some(l) = &load {
        h.external_load = (l.running + l.waiting).saturating_sub(own);
        ready &= !l.draining;
    }
    h.last_load = load;
    h.ready = ready;
    if let Breaker::Open { until, cooldown } = h.breaker {
        if ready && Instant::now() >= until {
            tracing::info!(worker = %m.url, "worker back on trial (half-open)");
            h.breaker = Breaker::HalfOpen { cooldown };
        }
    }
}

/// Error codes that mean "the worker failed", not "the request is bad".
fn worker_failed(code: &str) -> bool {
    matches!(
        code,
        "worker_stream_error" | "worker_timeout" | "bad_worker_response"
    )
}

/// A request in progress: the legs opened so far and what they produced.
struct Run {
    inner: Arc<Inner>,
    req: GenerateRequest,
    candidates: Vec<Arc<Member>>,
    next: usize,
    leg: Option<(BoxStream<'static, GenerateEvent>, InflightGuard)>,
    /// Text already sent to the caller by earlier legs of this request.
    text: String,
    /// Tokens already sent to the caller.
    produced: u32,
    /// `produced` when the current leg started.
    leg_base: u32,
    retries_left: u32,
    migrations_left: u32,
    finished: bool,
}

enum Opened {
    Ok,
    /// The request itself is bad: no other worker will take it either.
    Rejected(GenerateError),
    /// No worker left to try.
    Exhausted(GenerateError),
}

impl Run {
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
            let guard = m.start_stream();
            match m.http.generate(self.leg_request()).await {
                Ok(stream) => {
                    m.record_success();
                    self.leg = Some((stream, guard));
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

    /// The next event for the caller; `None` after the last one.
    async fn step(&mut self) -> Option<GenerateEvent> {
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
                            metrics::counter!("spindle_router_migrations_total").increment(1);
                        } else {
                            self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("spindle_router_retries_total").increment(1);
                        }
                    }
                    Opened::Rejected(e) | Opened::Exhausted(e) => {
                        self.finished = true;
                        return Some(GenerateEvent::Error {
                            code: "worker_unavailable".into(),
                            message: format!("the worker failed and no other could continue: {e}"),
                        });
                    }
                }
            }
            let (stream, guard) = self.leg.as_mut()?;
            let ev = stream.next().await.unwrap_or_else(|| GenerateEvent::Error {
                code: "worker_stream_error".into(),
                message: "worker stream ended before completion".into(),
            });
            match ev {
                GenerateEvent::Delta {
                    ref token_ids,
                    ref text,
                } => {
                    self.produced += token_ids.len() as u32;
                    self.text.push_str(text);
                    return Some(ev);
                }
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
                    if !worker_failed(&code) {
                        self.finished = true;
                        return Some(GenerateEvent::Error { code, message });
                    }
                    let m = guard.member().clone();
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

impl Generator for ClusterGenerator {
    fn generate(
        &self,
        mut req: GenerateRequest,
    ) -> BoxFuture<'static, Result<BoxStream<'static, GenerateEvent>, GenerateError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            req.request_id
                .get_or_insert_with(|| uuid::Uuid::new_v4().simple().to_string());
            let candidates = inner.pick(&req, true);
            if candidates.is_empty() {
                return Err(GenerateError::Unavailable {
                    message: "no worker is ready".into(),
                    retry_after: 1,
                });
            }
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
                metrics::counter!("spindle_router_retries_total").increment(retried);
            }
            run.retries_left = run
                .retries_left
                .saturating_sub(run.next.saturating_sub(1) as u32);
            let stream = futures::stream::unfold(run, |mut run| async move {
                let ev = run.step().await?;
                Some((ev, run))
            });
            Ok(stream.boxed())
        })
    }

    fn models(&self) -> Vec<String> {
        self.inner
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
