//! [`ClusterGenerator`]: a [`Generator`] over many workers — one consistent-hash
//! ring per served model, with bounded load, ejection, retry and migration.
//! Finding and probing workers lives in `probe`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use spindle_proto::openai::{EmbeddingRequest, EmbeddingResponse, ModelCard};
use spindle_proto::{GenerateEvent, GenerateRequest};

use super::config::{ClusterConfig, Policy};
use super::key::routing_key;
use super::member::{Member, MemberStatus};
use super::probe::{every, probe_all, resolve};
use super::ring::HashRing;
use super::run::Run;
use crate::generator::{GenerateError, Generator};
use crate::sync;

/// Counters of routing decisions past the ring owner (also exported as
/// `spindle_router_routing_decisions_total{reason}`).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Requests sent past their ring owner because it was over the load bound.
    pub spills: AtomicU64,
    /// New legs opened after a failure before the first token.
    pub retries: AtomicU64,
    /// Streams moved to another worker after tokens were sent.
    pub migrations: AtomicU64,
}

/// The routable workers of one model and the ring over them.
struct Pool {
    ring: HashRing,
    members: HashMap<String, Arc<Member>>,
    /// Sorted by URL.
    order: Vec<Arc<Member>>,
}

impl Pool {
    fn new(order: Vec<Arc<Member>>, vnodes: usize) -> Self {
        Self {
            ring: HashRing::new(order.iter().map(|m| m.url.clone()), vnodes),
            members: order.iter().map(|m| (m.url.clone(), m.clone())).collect(),
            order,
        }
    }
}

/// What requests are routed over: a pool per model.
struct View {
    pools: BTreeMap<String, Pool>,
    /// Every routable worker, sorted by URL, with the models it serves: the
    /// view is rebuilt only when this changes.
    signature: Vec<(String, Vec<String>)>,
    /// Every model any known worker lists (ready or not): owner and the
    /// smallest context window any of its workers reports.
    known: BTreeMap<String, ModelCard>,
}

pub(crate) struct Inner {
    pub(crate) cfg: ClusterConfig,
    pub(crate) client: reqwest::Client,
    /// Every known worker (static, or the last DNS answers).
    pub(crate) members: RwLock<Vec<Arc<Member>>>,
    view: RwLock<Arc<View>>,
    rr: AtomicUsize,
    pub(crate) stats: ClusterStats,
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
        for t in sync::lock(&self.0).drain(..) {
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
    /// [`ClusterGenerator::start`]) find them ready and learn their models.
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
            .map(|u| Member::new(u, None, config.deadlines(), &config.worker_token))
            .collect();
        let inner = Arc::new(Inner {
            view: RwLock::new(Arc::new(View {
                pools: BTreeMap::new(),
                signature: Vec::new(),
                known: BTreeMap::new(),
            })),
            cfg: config,
            client,
            members: RwLock::new(members),
            rr: AtomicUsize::new(0),
            stats: ClusterStats::default(),
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
        if !cfg.workers_dns.is_empty() {
            tasks.push(tokio::spawn(every(
                weak,
                cfg.dns_interval,
                |i| async move { resolve(&i).await },
            )));
        }
        *sync::lock(&this._tasks.0) = tasks;
        Ok(this)
    }

    /// Probe `/ready`, `/load` and `/v1/models` of every worker now and update the rings.
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
        let members = sync::read(&self.inner.members);
        members
            .iter()
            .map(|m| m.status(view.signature.iter().any(|(u, _)| *u == m.url)))
            .collect()
    }

    /// URLs of every routable worker (on some model's ring), sorted.
    pub fn ring_members(&self) -> Vec<String> {
        let view = self.inner.view();
        view.signature.iter().map(|(u, _)| u.clone()).collect()
    }

    /// The worker that owns `key` on `model`'s ring (before load bounds);
    /// `None` for the model means the only one served.
    pub fn owner_of(&self, model: Option<&str>, key: &str) -> Option<String> {
        let view = self.inner.view();
        view.pool(model)?.ring.get(key).map(str::to_owned)
    }

    /// [`ClusterGenerator::owner_of`] when one model is served.
    pub fn owner(&self, key: &str) -> Option<String> {
        self.owner_of(None, key)
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.inner.stats
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.cfg
    }
}

impl View {
    /// `model`'s pool; with no model named, the pool of the only model served.
    fn pool(&self, model: Option<&str>) -> Option<&Pool> {
        match model.filter(|m| !m.is_empty()) {
            Some(m) => self.pools.get(m),
            None if self.known.len() == 1 => self.pools.values().next(),
            None => None,
        }
    }
}

impl Inner {
    fn view(&self) -> Arc<View> {
        sync::read(&self.view).clone()
    }

    /// Rebuilds the pools when the routable workers or their models changed,
    /// and publishes the per-worker and per-model gauges.
    pub(crate) fn refresh_view(&self) {
        let members = sync::read(&self.members).clone();
        let mut known = BTreeMap::new();
        let mut routable: Vec<(Arc<Member>, Vec<String>)> = Vec::new();
        for m in &members {
            m.publish();
            let models: Vec<String> = {
                let h = m.lock();
                for card in &h.models {
                    known
                        .entry(card.id.clone())
                        .and_modify(|k: &mut ModelCard| {
                            k.max_model_len = match (k.max_model_len, card.max_model_len) {
                                (Some(a), Some(b)) => Some(a.min(b)),
                                (a, b) => a.or(b),
                            }
                        })
                        .or_insert_with(|| card.clone());
                }
                h.models.iter().map(|c| c.id.clone()).collect()
            };
            if m.routable() {
                routable.push((m.clone(), models));
            }
        }
        routable.sort_by(|a, b| a.0.url.cmp(&b.0.url));
        let signature: Vec<(String, Vec<String>)> = routable
            .iter()
            .map(|(m, models)| (m.url.clone(), models.clone()))
            .collect();
        let mut cur = sync::write(&self.view);
        if cur.signature == signature && cur.known == known {
            return;
        }
        let mut by_model: BTreeMap<String, Vec<Arc<Member>>> = BTreeMap::new();
        for (m, models) in &routable {
            for model in models {
                by_model.entry(model.clone()).or_default().push(m.clone());
            }
        }
        tracing::info!(
            pools = ?by_model.iter().map(|(k, v)| (k.as_str(), v.iter().map(|m| m.url.as_str()).collect::<Vec<_>>())).collect::<Vec<_>>(),
            "worker rings changed"
        );
        metrics::gauge!("spindle_router_ring_workers").set(routable.len() as f64);
        // Models gone from every worker report 0 too, so alerts see them drop.
        for model in cur.known.keys().chain(known.keys()) {
            let n = by_model.get(model).map_or(0, Vec::len);
            metrics::gauge!("spindle_router_model_ready_workers", "model" => model.clone())
                .set(n as f64);
        }
        // A new model's gauges exist (at 0) before its first request.
        for model in known.keys().filter(|m| !cur.known.contains_key(*m)) {
            let m = || model.clone();
            metrics::gauge!("spindle_router_inflight_streams", "model" => m()).increment(0.0);
            metrics::gauge!("spindle_router_background_responses", "model" => m()).increment(0.0);
        }
        *cur = Arc::new(View {
            pools: by_model
                .into_iter()
                .map(|(model, order)| (model, Pool::new(order, self.cfg.vnodes)))
                .collect(),
            signature,
            known,
        });
    }

    pub(crate) fn eject(&self, m: &Member) {
        if m.eject(self.cfg.breaker_cooldown) {
            self.refresh_view();
        }
    }

    /// Worker says it cannot take work now (503: draining or overloaded).
    pub(crate) fn mark_unready(&self, m: &Member) {
        m.lock().ready = false;
        self.refresh_view();
    }

    /// The workers of `model` by load, least first (ties rotate): for work
    /// with no cache to follow, such as embeddings.
    pub(crate) fn least_loaded(&self, model: Option<&str>) -> Vec<Arc<Member>> {
        let view = self.view();
        let Some(pool) = view.pool(model) else {
            return Vec::new();
        };
        let n = pool.order.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed) % n;
        let mut v: Vec<(u32, Arc<Member>)> = (0..n)
            .map(|i| {
                let m = &pool.order[(start + i) % n];
                (m.load(), m.clone())
            })
            .collect();
        v.sort_by_key(|(l, _)| *l);
        v.into_iter().map(|(_, m)| m).collect()
    }

    /// The workers of the request's model to try, best first, and whether the
    /// ring owner was skipped for load.
    fn pick(&self, req: &GenerateRequest, count: bool) -> (Vec<Arc<Member>>, bool) {
        let view = self.view();
        let Some(pool) = view.pool(req.model.as_deref()) else {
            return (Vec::new(), false);
        };
        let n = pool.order.len();
        if n == 0 {
            return (Vec::new(), false);
        }
        match self.cfg.policy {
            Policy::RoundRobin => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed) % n;
                let v = (0..n)
                    .map(|i| pool.order[(start + i) % n].clone())
                    .collect();
                (v, false)
            }
            Policy::LeastLoad => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed) % n;
                let mut v: Vec<(u32, Arc<Member>)> = (0..n)
                    .map(|i| {
                        let m = &pool.order[(start + i) % n];
                        (m.load(), m.clone())
                    })
                    .collect();
                v.sort_by_key(|(l, _)| *l); // stable: ties keep the rotation
                (v.into_iter().map(|(_, m)| m).collect(), false)
            }
            Policy::ConsistentHash => {
                let key = routing_key(req);
                let mut cands: Vec<Arc<Member>> = pool
                    .ring
                    .candidates(&key)
                    .into_iter()
                    .filter_map(|u| pool.members.get(u).cloned())
                    .collect();
                let loads: Vec<u32> = cands.iter().map(|m| m.load()).collect();
                let mean = loads.iter().map(|&l| f64::from(l)).sum::<f64>() / n as f64;
                let bound = self.cfg.load_factor * mean + 1.0;
                let mut spilled = false;
                if let Some(first_ok) = loads.iter().position(|&l| f64::from(l) <= bound) {
                    if first_ok > 0 {
                        // Spill: the owner (and maybe its successors) are over the bound;
                        // they stay at the end as fallbacks.
                        cands.rotate_left(first_ok);
                        spilled = true;
                        if count {
                            self.stats.spills.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (cands, spilled)
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
            let (candidates, spilled) = inner.pick(&req, true);
            if candidates.is_empty() {
                let model = req.model.as_deref().unwrap_or("the model");
                return Err(GenerateError::Unavailable {
                    message: format!("no worker serving {model} is ready"),
                    retry_after: 1,
                });
            }
            let run = Run::open(inner, req, candidates, spilled).await?;
            let stream = futures::stream::unfold(run, |mut run| async move {
                let ev = run.step().await?;
                Some((ev, run))
            });
            Ok(stream.boxed())
        })
    }

    fn embed(
        &self,
        req: EmbeddingRequest,
    ) -> BoxFuture<'static, Result<EmbeddingResponse, GenerateError>> {
        Box::pin(super::embed::embed(self.inner.clone(), req))
    }

    fn models(&self) -> Vec<ModelCard> {
        let view = self.inner.view();
        view.known
            .iter()
            .map(|(id, card)| {
                let workers = view.pools.get(id).map_or(0, |p| p.order.len());
                ModelCard {
                    workers: Some(workers),
                    ..card.clone()
                }
            })
            .collect()
    }

    fn ready(&self) -> Result<(), String> {
        let view = self.inner.view();
        if view.known.is_empty() {
            return Err("no worker has reported a model yet".into());
        }
        let missing: Vec<&str> = view
            .known
            .keys()
            .filter(|m| !view.pools.contains_key(*m))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("no ready worker for {}", missing.join(", ")))
        }
    }
}
