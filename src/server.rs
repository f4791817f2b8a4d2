//! Running the servers: listening, metrics, and graceful shutdown.
//!
//! On SIGTERM (or Ctrl-C) a server drains: `/ready` turns 503 and new
//! generations get 503 at once (the listener stays open, so probes and
//! clients see why), in-flight requests (streams, background generations,
//! engine sequences) finish for up to `--drain-timeout`, then connections
//! close and the process exits 0. A router marks whatever is still running
//! at the deadline `failed` in the store, so nothing stays `in_progress`.

use crate::inprocess::InProcess;
use crate::listen::Listen;
use crate::secrets::{reload_keys_on_sighup, WorkerTokenArgs};
use anyhow::Context;
use clap::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use spindle_router::cluster::config::parse_duration;
use spindle_router::store::StoreError;
use spindle_router::{ClusterConfig, ClusterGenerator, Lifecycle, ResponseStore, RouterConfig};
use spindle_worker::{Worker, WorkerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Where activity counters are served.
#[derive(Args, Debug, Clone)]
pub struct Stats {
    /// Serve `/metrics` (and `/load`) on this port of the same host instead of
    /// the API port, where they need an API key when keys are set. Prometheus
    /// scrapes it; keep it off the public network.
    #[arg(long, env = "SPINDLE_METRICS_PORT")]
    pub metrics_port: Option<u16>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listen: Listen,
    #[command(flatten)]
    pub stats: Stats,
    #[command(flatten)]
    pub worker: WorkerConfig,
    #[command(flatten)]
    pub router: RouterConfig,
}

#[derive(Args, Debug)]
pub struct RouterArgs {
    #[command(flatten)]
    pub listen: Listen,
    #[command(flatten)]
    pub stats: Stats,
    #[command(flatten)]
    pub router: RouterConfig,
    #[command(flatten)]
    pub cluster: ClusterConfig,
    #[command(flatten)]
    pub token: WorkerTokenArgs,
    /// On SIGTERM, how long in-flight streams and background generations may
    /// run before the process exits (what is left is marked failed).
    #[arg(long, env = "SPINDLE_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub listen: Listen,
    #[command(flatten)]
    pub worker: WorkerConfig,
    #[command(flatten)]
    pub token: WorkerTokenArgs,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// The model to fetch into $SPINDLE_CACHE_DIR: hf:OWNER/REPO/FILE.gguf, a
    /// path (checked), or nothing for the default model. Prints its path.
    #[arg(long, env = "SPINDLE_MODEL")]
    pub model: Option<String>,
}

impl ServeArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.worker.validate()?;
        self.router.validate().map_err(anyhow::Error::msg)
    }
}

impl RouterArgs {
    /// The cluster to route over: `--workers`/`--workers-dns`, else `--worker-url`.
    fn cluster(&self) -> ClusterConfig {
        let mut cluster = self.cluster.clone();
        if cluster.workers.is_empty() && cluster.workers_dns.is_empty() {
            cluster.workers = vec![self.router.worker_url.clone()];
        }
        cluster
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.router.validate().map_err(anyhow::Error::msg)?;
        self.token.token()?;
        self.cluster().validate().map_err(anyhow::Error::msg)
    }
}

fn metrics_recorder() -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    let buckets = spindle_router::telemetry::BUCKETS
        .iter()
        .chain(spindle_worker::metrics::BUCKETS);
    for (name, bounds) in buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), bounds)
            .with_context(|| format!("bad buckets for {name}"))?;
    }
    let handle = builder
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    // Histogram samples pile up in the recorder until upkeep folds them into
    // their buckets: without it, memory grows with every request when
    // nobody scrapes /metrics (the soak's routers grew ~400 B a request).
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// What a server drains on SIGTERM.
struct Drain {
    timeout: Duration,
    worker: Option<Worker>,
    router: Option<(Arc<Lifecycle>, Arc<dyn ResponseStore>)>,
}

/// Serve `app` until a shutdown signal, then drain within `drain.timeout`.
async fn run_until_signal(
    listen: &Listen,
    listener: TcpListener,
    app: axum::Router,
    drain: Drain,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = listen.clone();
    let mut server = tokio::spawn(async move {
        crate::listen::serve(listener, app, &limits, async {
            let _ = stop_rx.await;
        })
        .await
    });
    shutdown_signal().await;
    let deadline = Instant::now() + drain.timeout;
    if let Some(w) = &drain.worker {
        w.engine.start_draining();
    }
    if let Some((lifecycle, _)) = &drain.router {
        lifecycle.start_draining();
    }
    tracing::info!(
        generations = drain.router.as_ref().map(|(l, _)| l.active()),
        sequences = drain.worker.as_ref().map(|w| w.engine.in_flight()),
        timeout = ?drain.timeout,
        "draining"
    );
    if let Some((lifecycle, _)) = &drain.router {
        lifecycle.wait_idle(deadline).await;
    }
    if let Some(w) = &drain.worker {
        while w.engine.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Stop accepting; open connections finish their responses (the last
    // bytes of finished streams) within a short grace.
    let _ = stop_tx.send(());
    let flush = deadline.max(Instant::now() + Duration::from_secs(2));
    let closed = tokio::time::timeout_at(flush, &mut server).await.is_ok();
    if let Some((lifecycle, store)) = &drain.router {
        let failed = lifecycle.fail_unfinished(store.as_ref()).await;
        if failed > 0 {
            tracing::warn!(failed, "drain timeout: marked unfinished responses failed");
        }
    }
    if let Some(w) = &drain.worker {
        let left = w.engine.in_flight();
        if left > 0 {
            tracing::warn!(left, "drain timeout: cutting remaining requests");
        }
    }
    if !closed {
        server.abort();
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// `--store memory|redis`. An unreachable Redis is waited for (a router
/// started before its Redis comes up when Redis returns); a bad setting fails.
async fn response_store(config: &RouterConfig) -> anyhow::Result<Arc<dyn ResponseStore>> {
    let mut delay = Duration::from_millis(250);
    loop {
        match spindle_router::store::from_config(config, spindle_router::responses::lost).await {
            Ok(store) => {
                tracing::info!(store = ?config.store, "response store ready");
                return Ok(store);
            }
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!("response store unavailable ({why}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("cannot open the response store"),
        }
    }
}

fn metrics_route(metrics: PrometheusHandle) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move { m.render() }
        }),
    )
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let metrics = metrics_recorder()?;
    let token = args.token.token()?;
    if token.is_none() && !args.listen.is_loopback() {
        tracing::warn!(
            "no worker token: anyone who can reach {}:{} can generate on this worker; \
             set --worker-token-file or SPINDLE_WORKER_TOKEN on workers and routers",
            args.listen.host,
            args.listen.port
        );
    }
    let token = token.as_deref().map(spindle_proto::auth::SharedToken::new);
    let worker = Worker::start(&args.worker).await?;
    let app = spindle_worker::api::router(worker.clone(), Some(metrics), token);
    let listener = args.listen.bind().await?;
    let drain = Drain {
        timeout: args.worker.drain_timeout,
        worker: Some(worker),
        router: None,
    };
    run_until_signal(&args.listen, listener, app, drain).await
}

/// Loads the API keys (a bad key file stops startup) and reloads them on
/// SIGHUP. Without keys a router answers anyone who reaches it: on loopback
/// it checks `Host` (DNS rebinding), elsewhere it says loudly that it is open.
fn guard_keyless(router: &mut RouterConfig, listen: &Listen) -> anyhow::Result<()> {
    let n = router.load_keys().map_err(anyhow::Error::msg)?;
    if router.has_keys() {
        tracing::info!(keys = n, file = ?router.api_keys_file, "API keys loaded");
    }
    reload_keys_on_sighup(router.keys.clone());
    let keyless = !router.has_keys();
    router.host_check = keyless && listen.is_loopback();
    if keyless && !listen.is_loopback() {
        tracing::warn!(
            host = %listen.host,
            "NO API KEYS: anyone who can reach {}:{} can generate, read and delete every \
             response; set --api-keys-file (or SPINDLE_API_KEYS) or bind to 127.0.0.1",
            listen.host,
            listen.port
        );
    }
    Ok(())
}

/// Loads the key that seals compaction items (a bad key or file stops
/// startup); without one the router makes its own and says what that costs.
fn load_compaction_key(router: &mut RouterConfig) -> anyhow::Result<()> {
    if router.load_compaction_key().map_err(anyhow::Error::msg)? {
        tracing::info!(file = ?router.compaction_key_file, "compaction key loaded");
    }
    Ok(())
}

/// `stats` (activity counters) on `--metrics-port`, served there from now
/// on; returns what the API port keeps of them (all, or nothing).
async fn place_stats(
    stats: axum::Router,
    place: &Stats,
    listen: &Listen,
) -> anyhow::Result<axum::Router> {
    let Some(port) = place.metrics_port else {
        return Ok(stats);
    };
    let listener = listen.bind_as("metrics", port).await?;
    let limits = listen.clone();
    tokio::spawn(async move {
        crate::listen::serve(listener, stats, &limits, std::future::pending()).await;
    });
    Ok(axum::Router::new())
}

pub async fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    guard_keyless(&mut args.router, &args.listen)?;
    load_compaction_key(&mut args.router)?;
    let metrics = metrics_recorder()?;
    let worker = Worker::start(&args.worker).await?;
    let store = response_store(&args.router).await?;
    let generator = Arc::new(InProcess::new(worker.clone()));
    let lifecycle = Arc::new(Lifecycle::default());
    // The worker's /load and /metrics (the router answers /health, /ready).
    let stats = spindle_worker::api::stats_router(worker.clone(), Some(metrics));
    let stats = place_stats(stats, &args.stats, &args.listen).await?;
    let app = spindle_router::app_with_ops(
        generator,
        store.clone(),
        &args.router,
        lifecycle.clone(),
        stats,
    );
    let listener = args.listen.bind().await?;
    let drain = Drain {
        timeout: args.worker.drain_timeout,
        worker: Some(worker),
        router: Some((lifecycle, store)),
    };
    run_until_signal(&args.listen, listener, app, drain).await
}

pub async fn router(mut args: RouterArgs) -> anyhow::Result<()> {
    args.validate()?;
    guard_keyless(&mut args.router, &args.listen)?;
    load_compaction_key(&mut args.router)?;
    let mut cluster = args.cluster();
    cluster.worker_token =
        spindle_router::generator::WorkerToken(args.token.token()?.map(Arc::from));
    let metrics = metrics_recorder()?;
    let generator = Arc::new(ClusterGenerator::start(cluster).await?);
    let store = response_store(&args.router).await?;
    let lifecycle = Arc::new(Lifecycle::default());
    let stats = place_stats(metrics_route(metrics), &args.stats, &args.listen).await?;
    let app = spindle_router::app_with_ops(
        generator,
        store.clone(),
        &args.router,
        lifecycle.clone(),
        stats,
    );
    let listener = args.listen.bind().await?;
    let drain = Drain {
        timeout: args.drain_timeout,
        worker: None,
        router: Some((lifecycle, store)),
    };
    run_until_signal(&args.listen, listener, app, drain).await
}

/// `spindle download`: resolve (and fetch) a model, print its path.
pub async fn download(args: DownloadArgs) -> anyhow::Result<()> {
    let path = spindle_worker::model_source::resolve(args.model.as_deref()).await?;
    println!("{}", path.display());
    Ok(())
}
