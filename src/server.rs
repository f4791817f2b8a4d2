//! Running the servers: listening, metrics, and graceful shutdown.
//!
//! On SIGTERM (or Ctrl-C) a worker stops admitting (`/ready` turns 503, new
//! requests get 503), lets in-flight requests finish for up to
//! `--drain-timeout`, then exits 0.

use crate::inprocess::InProcess;
use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Args;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use spindle_router::store::StoreError;
use spindle_router::{ClusterConfig, ClusterGenerator, ResponseStore, RouterConfig};
use spindle_worker::{Worker, WorkerConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Where a server listens.
#[derive(Args, Debug, Clone)]
pub struct Listen {
    /// Address to bind.
    #[arg(long, env = "SPINDLE_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free one; the chosen port is logged).
    #[arg(long, env = "SPINDLE_PORT", default_value_t = 8080)]
    pub port: u16,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listen: Listen,
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
    pub router: RouterConfig,
    #[command(flatten)]
    pub cluster: ClusterConfig,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub listen: Listen,
    #[command(flatten)]
    pub worker: WorkerConfig,
}

fn metrics_recorder() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")
}

async fn bind(listen: &Listen) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind((listen.host.as_str(), listen.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", listen.host, listen.port))?;
    let addr: SocketAddr = listener.local_addr()?;
    // Tests and scripts wait for this exact line.
    eprintln!("spindle listening on http://{addr}");
    Ok(listener)
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

/// Serve `app` until a shutdown signal; then drain `worker` (if any) within `timeout`.
async fn run_until_signal(
    listener: TcpListener,
    app: axum::Router,
    worker: Option<Worker>,
    timeout: Duration,
) -> anyhow::Result<()> {
    // Without TCP_NODELAY, Nagle and delayed ACKs hold small SSE frames ~40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    shutdown_signal().await;
    let Some(worker) = worker else {
        tracing::info!("shutting down");
        server.abort();
        return Ok(());
    };
    worker.engine.start_draining();
    let deadline = Instant::now() + timeout;
    tracing::info!(in_flight = worker.engine.in_flight(), "draining");
    while worker.engine.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = worker.engine.in_flight();
    if left > 0 {
        tracing::warn!(left, "drain timeout: cutting remaining requests");
    }
    // Let the last bytes of finished streams reach their clients.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.abort();
    tracing::info!("drained; exiting");
    Ok(())
}

/// `--store memory|redis`. An unreachable Redis is waited for (a router
/// started before its Redis comes up when Redis returns); a bad setting fails.
async fn response_store(config: &RouterConfig) -> anyhow::Result<Arc<dyn ResponseStore>> {
    let mut delay = Duration::from_millis(250);
    loop {
        match spindle_router::store::from_config(config).await {
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

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let metrics = metrics_recorder()?;
    let worker = Worker::start(&args.worker).await?;
    let app = spindle_worker::api::router(worker.clone(), Some(metrics));
    let listener = bind(&args.listen).await?;
    run_until_signal(listener, app, Some(worker), args.worker.drain_timeout).await
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let metrics = metrics_recorder()?;
    let worker = Worker::start(&args.worker).await?;
    let store = response_store(&args.router).await?;
    let generator = Arc::new(InProcess::new(worker.clone()));
    let app = spindle_router::app(generator, store, &args.router).merge(
        // The worker's operational endpoints, on the same port.
        spindle_worker::api::ops_router(worker.clone(), Some(metrics)),
    );
    let listener = bind(&args.listen).await?;
    run_until_signal(listener, app, Some(worker), args.worker.drain_timeout).await
}

pub async fn router(args: RouterArgs) -> anyhow::Result<()> {
    let metrics = metrics_recorder()?;
    // Without --workers/--workers-dns, the one --worker-url is the cluster.
    let mut cluster = args.cluster.clone();
    if cluster.workers.is_empty() && cluster.workers_dns.is_none() {
        cluster.workers = vec![args.router.worker_url.clone()];
    }
    cluster.validate().map_err(anyhow::Error::msg)?;
    let generator = ClusterGenerator::start(cluster).await?;
    let generator = Arc::new(generator.with_models(vec![args.router.model_name.clone()]));
    let store = response_store(&args.router).await?;
    let app = spindle_router::app(generator, store, &args.router).route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move { m.render() }
        }),
    );
    let listener = bind(&args.listen).await?;
    run_until_signal(listener, app, None, Duration::ZERO).await
}
