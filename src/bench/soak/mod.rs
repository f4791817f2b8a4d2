//! `spindle bench soak`: a cluster under a mixed client load, with optional
//! faults, audited request by request.
//!
//! Starts its own processes from this executable (see [`cluster`]): one
//! redis-server (AOF, `appendfsync everysec`), `--workers` workers and
//! `--routers` routers sharing it (`--store redis`). `--clients` clients run
//! the fixed mix of [`mix::MIX`] for `--duration`, each call through a
//! random router; `--faults` injects worker/Redis/router faults on a
//! schedule ([`faults`]). When the load ends and the calls in flight finish
//! (each bounded by `--request-timeout`), every response id a client got is
//! read back from a router, for up to `--grace` until all are terminal (the
//! reaper needs a lease, ~3 s, to fail what a killed router left), and
//! [`audit`] checks stream protocol, error shapes and store-vs-client
//! agreement. Prints the report ([`report`]), memory of every process
//! ([`rss`]), progress every 10 s on stderr, and exits non-zero when the
//! audit fails. Ctrl-C or SIGTERM kills every child before exiting.

mod audit;
mod cluster;
mod faults;
mod http;
mod mix;
mod report;
mod rss;
mod stream;
mod wire;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};
use spindle_router::cluster::config::parse_duration;

use audit::{Stored, Violation, Windows};
use mix::{lock, Shared};
use wire::{ModelList, ResponseObj};

/// After a fault's target is back, how long its effects may still show
/// (leases of ~3 s expire, probes readmit workers every 2 s, breakers cool).
const SETTLE: f64 = 10.0;
/// How often memory is sampled.
const RSS_EVERY: Duration = Duration::from_secs(2);
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long the clients start new calls (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Faults: `off`, `default` (every kind, spread over the run) or
    /// `KIND@SECONDS[:HOLD],…` with kinds kill-worker, term-worker,
    /// stop-worker, kill-redis, kill-router.
    #[arg(long, default_value = "off")]
    pub faults: String,
    /// Model of the workers.
    #[arg(long, default_value = "../shared/models/stories260K.gguf")]
    pub model: PathBuf,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Router processes.
    #[arg(long, default_value_t = 2)]
    pub routers: usize,
    /// llama.cpp threads per worker.
    #[arg(long, default_value_t = 1)]
    pub worker_threads: u32,
    /// Longest one call (or one background response's polling) may take;
    /// longer counts as a hung request.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// After the load, how long stored responses may take to become terminal.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The `spindle` binary to start (default: this executable).
    #[arg(long)]
    pub spindle_bin: Option<PathBuf>,
    /// Write results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the soak; the JSON result and whether the audit passed.
pub async fn soak(args: &SoakArgs) -> anyhow::Result<(Value, bool)> {
    if args.clients == 0 || args.workers == 0 || args.routers == 0 {
        bail!("--clients, --workers and --routers must be at least 1");
    }
    if !args.model.exists() {
        bail!("model {} not found", args.model.display());
    }
    let plan = faults::plan(&args.faults, args.duration.as_secs_f64())?;
    // Dropping `run` (on a signal) drops the cluster, which kills every child.
    tokio::select! {
        r = run(args, plan) => r,
        _ = interrupted() => bail!("interrupted; child processes killed"),
    }
}

async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

async fn run(args: &SoakArgs, plan: Vec<faults::Fault>) -> anyhow::Result<(Value, bool)> {
    let bin = match &args.spindle_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("locating this executable")?,
    };
    let http = reqwest::Client::builder()
        .timeout(args.request_timeout)
        .build()?;
    eprintln!(
        "[soak] starting redis, {} workers ({}), {} routers",
        args.workers,
        args.model.display(),
        args.routers
    );
    let spec = cluster::Spec {
        bin,
        model: args.model.clone(),
        workers: args.workers,
        routers: args.routers,
        worker_threads: args.worker_threads,
    };
    let mut cluster = cluster::Cluster::start(&spec, &http).await?;
    let routers: Vec<String> = cluster.routers.iter().map(cluster::Proc::url).collect();
    let models: ModelList = http
        .get(format!("{}/v1/models", routers[0]))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let model = models
        .data
        .first()
        .context("the router lists no model")?
        .id
        .clone();

    let t0 = Instant::now();
    let deadline = t0 + args.duration;
    let sh = Arc::new(Shared {
        http: http.clone(),
        routers: routers.clone(),
        model: model.clone(),
        t0,
        deadline,
        timeout: args.request_timeout,
        records: Mutex::default(),
        errors: Mutex::default(),
        done: Default::default(),
        failed_calls: Default::default(),
        in_flight: Default::default(),
    });
    eprintln!(
        "[soak] {} clients for {:?} over {} routers, faults: {}",
        args.clients,
        args.duration,
        routers.len(),
        args.faults
    );
    let board = Arc::new(Mutex::new(cluster.pids()));
    let sampler = tokio::spawn(rss::sample(board.clone(), t0, RSS_EVERY, deadline));
    let progress = tokio::spawn(progress(sh.clone()));
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            tokio::spawn(mix::run_client(sh.clone(), seed))
        })
        .collect();
    let fault_log = faults::run(&mut cluster, &plan, t0, &board).await;
    for c in clients {
        c.await.context("a client task panicked")?;
    }
    let load_end = t0.elapsed().as_secs_f64();
    progress.abort();
    let rss = sampler.await.context("the memory sampler panicked")?;

    let records = std::mem::take(&mut *lock(&sh.records));
    let errors = std::mem::take(&mut *lock(&sh.errors));
    let ids: BTreeSet<String> = records.iter().filter_map(|r| r.id.clone()).collect();
    eprintln!(
        "[soak] load done at {load_end:.0} s; reading {} responses back (grace {:?})",
        ids.len(),
        args.grace
    );
    let stored = read_back(&http, &routers, ids.into_iter().collect(), args.grace).await;

    let windows = Windows {
        faults: fault_log
            .iter()
            .map(|f| (f.at, f.recovered.unwrap_or(load_end) + SETTLE))
            .collect(),
        redis_kills: fault_log
            .iter()
            .filter(|f| f.action == faults::Action::KillRedis)
            .map(|f| f.at)
            .collect(),
        aof_slow: cluster.redis_log().contains("fsync is taking too long"),
    };
    let mut audit = audit::audit(&records, &errors, &stored, &windows);
    for f in fault_log.iter().filter(|f| f.error.is_some()) {
        audit.violations.push(Violation {
            rule: "fault.not_recovered",
            id: None,
            detail: format!(
                "{} at {:.1}s: {}",
                f.target,
                f.at,
                f.error.as_deref().unwrap_or("")
            ),
        });
    }
    let header = format!(
        "soak: {} clients × {:?}, faults {}, model {} ({}), {} workers × {} thread(s), {} routers, redis AOF everysec",
        args.clients,
        args.duration,
        args.faults,
        model,
        args.model.display(),
        args.workers,
        args.worker_threads,
        args.routers
    );
    let mut result = report::report(&report::Input {
        header,
        records: &records,
        errors: &errors,
        windows: &windows,
        audit: &audit,
        faults: &fault_log,
        rss: &rss,
        wall_s: t0.elapsed().as_secs_f64(),
    });
    result["config"] = json!({
        "clients": args.clients, "duration_s": args.duration.as_secs_f64(), "faults": args.faults,
        "model": args.model, "workers": args.workers, "routers": args.routers,
        "worker_threads": args.worker_threads, "request_timeout_s": args.request_timeout.as_secs_f64(),
        "grace_s": args.grace.as_secs_f64(), "seed": args.seed,
        "mix_percent": mix::MIX.iter().map(|(k, w)| (json!(k).as_str().unwrap_or("").to_owned(), *w)).collect::<HashMap<_, _>>(),
    });
    let passed = audit.violations.is_empty();
    drop(cluster);
    Ok((result, passed))
}

/// Progress on stderr every [`PROGRESS_EVERY`].
async fn progress(sh: Arc<Shared>) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let viol: usize = lock(&sh.records).iter().map(|r| r.violations.len()).sum();
        eprintln!(
            "[soak] t={:.0}s: {} calls done, {} failed HTTP calls, {} in flight, {} stream violations so far",
            sh.t0.elapsed().as_secs_f64(),
            sh.done.load(Ordering::Relaxed),
            sh.failed_calls.load(Ordering::Relaxed),
            sh.in_flight.load(Ordering::Relaxed),
            viol
        );
    }
}

/// Reads every id back (through the routers in turn) until all are terminal
/// or missing, or `grace` has passed.
async fn read_back(
    http: &reqwest::Client,
    routers: &[String],
    mut pending: Vec<String>,
    grace: Duration,
) -> HashMap<String, Stored> {
    let until = Instant::now() + grace;
    let mut out = HashMap::new();
    loop {
        let batch: Vec<(String, Stored)> = futures::stream::iter(std::mem::take(&mut pending))
            .enumerate()
            .map(|(i, id)| async move {
                let s = read_one(http, routers, i, &id).await;
                (id, s)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let last = Instant::now() >= until;
        for (id, s) in batch {
            let settled = match &s {
                Stored::Found(r) => r.status.is_terminal(),
                Stored::Missing => true,
                Stored::Unreadable(_) => false,
            };
            if settled || last {
                out.insert(id, s);
            } else {
                pending.push(id);
            }
        }
        if pending.is_empty() {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn read_one(http: &reqwest::Client, routers: &[String], i: usize, id: &str) -> Stored {
    let mut why = String::new();
    for k in 0..routers.len() {
        let url = format!("{}/v1/responses/{id}", routers[(i + k) % routers.len()]);
        match http::json::<ResponseObj>(http.get(url)).await {
            Ok(r) => return Stored::Found(r),
            Err(e) if e.status() == Some(404) => return Stored::Missing,
            Err(e) => why = format!("{}: {}", e.label(), e.detail()),
        }
    }
    Stored::Unreadable(why)
}
