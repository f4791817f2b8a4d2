//! Cluster benchmarks (not timed tests):
//!
//! - [`affinity`]: N worker processes behind one in-process router; seeded
//!   multi-turn conversations over `/v1/responses` with `previous_response_id`
//!   chains, once per routing policy. Reports the prefix-cache hit ratio
//!   (Σ cached_tokens / Σ reusable prompt tokens, reusable = the previous turn's
//!   prompt + output), TTFT p50/p99 of turns ≥ 2 and total output tokens/s.
//! - [`overhead`]: a fast fake worker hit directly, through the Spindle router,
//!   and through SGLang's `smg` gateway when it is installed; added latency at
//!   one connection and the most requests/s at many.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use serde_json::{json, Value};
use spindle_router::cluster::{ClusterConfig, ClusterGenerator, Policy};
use spindle_router::{MemoryStore, RouterConfig};
use spindle_testkit::serve::serve;
use spindle_testkit::stats::{percentile as pct, sorted};
use spindle_testkit::{FakeWorker, Proc};
use tokio::process::Command;

/// Settings of both cluster benchmarks.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterBenchArgs {
    /// The `spindle` binary to start workers with (default: this executable).
    #[arg(long)]
    pub spindle_bin: Option<PathBuf>,
    /// Model for the affinity benchmark's workers.
    #[arg(
        long,
        default_value = "../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )]
    pub model: PathBuf,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// llama.cpp threads per worker.
    #[arg(long, default_value_t = 1)]
    pub worker_threads: usize,
    /// Conversations (affinity).
    #[arg(long, default_value_t = 48)]
    pub conversations: usize,
    /// Turns per conversation (affinity).
    #[arg(long, default_value_t = 6)]
    pub turns: usize,
    /// Conversations in flight at once (affinity).
    #[arg(long, default_value_t = 6)]
    pub parallel: usize,
    /// max_output_tokens per turn (affinity).
    #[arg(long, default_value_t = 16)]
    pub max_output_tokens: u32,
    /// Seed of the generated user messages.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Policies to compare (affinity).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "consistent-hash,round-robin,least-load"
    )]
    pub policies: Vec<Policy>,
    /// Requests for the one-connection latency run (overhead).
    #[arg(long, default_value_t = 500)]
    pub latency_requests: usize,
    /// Connections for the throughput run (overhead).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of the throughput run (overhead).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Tokens the fake worker streams per request (overhead).
    #[arg(long, default_value_t = 16)]
    pub fake_tokens: u32,
    /// SGLang's gateway (`pip install smg`), compared when it runs (overhead).
    #[arg(long, env = "SPINDLE_SMG", default_value = "smg")]
    pub smg: PathBuf,
    /// Write results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// How long a worker process may take to load its model and listen.
const WORKER_START: Duration = Duration::from_secs(120);

/// Serves the public API over `gen` (memory store) on a random local port.
async fn serve_router(
    gen: ClusterGenerator,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let app = spindle_router::app(
        Arc::new(gen),
        Arc::new(MemoryStore::default()),
        &RouterConfig::default(),
    );
    Ok(serve(app).await?)
}

/// Deterministic pseudo-random numbers (SplitMix64).
pub(super) struct Rng(pub(super) u64);
impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(super) fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[(self.next() % v.len() as u64) as usize]
    }
}

const TOPICS: &[&str] = &[
    "volcanoes",
    "the Roman empire",
    "sourdough bread",
    "black holes",
    "chess openings",
    "honey bees",
    "the French revolution",
    "electric cars",
    "coral reefs",
    "jazz music",
    "the moon landing",
    "origami",
    "glaciers",
    "the printing press",
    "octopuses",
    "solar panels",
];
const ASKS: &[&str] = &[
    "Tell me more.",
    "Why is that?",
    "Give me an example.",
    "What happened next?",
    "Explain it to a child.",
    "What is surprising about it?",
    "Summarize that.",
    "Go on.",
];

struct TurnResult {
    turn: usize,
    ttft_ms: f64,
    input_tokens: u64,
    cached_tokens: u64,
    output_tokens: u64,
}

/// The response if its status is 2xx, else an error carrying status and body
/// (the body says why a server refused, which `error_for_status` drops).
async fn success(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    bail!("{status}: {}", resp.text().await.unwrap_or_default())
}

/// One streamed `/v1/responses` turn: response id and measurements.
async fn responses_turn(
    client: &reqwest::Client,
    url: &str,
    body: Value,
    turn: usize,
) -> anyhow::Result<(String, TurnResult)> {
    let t0 = Instant::now();
    let resp = client
        .post(format!("{url}/v1/responses"))
        .json(&body)
        .send()
        .await?;
    let resp = success(resp).await?;
    let mut bytes = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut ttft = None;
    while let Some(chunk) = bytes.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..pos + 2).collect();
            if std::env::var_os("CLUSTER_BENCH_DEBUG").is_some() {
                eprintln!("frame: {}", String::from_utf8_lossy(&frame));
            }
            for line in String::from_utf8_lossy(&frame).lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim_start) else {
                    continue;
                };
                let Ok(ev) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                match ev["type"].as_str().unwrap_or("") {
                    "response.output_text.delta" if ttft.is_none() => {
                        ttft = Some(t0.elapsed().as_secs_f64() * 1e3);
                    }
                    "response.completed" | "response.incomplete" => {
                        let r = &ev["response"];
                        let u = &r["usage"];
                        return Ok((
                            r["id"].as_str().unwrap_or_default().to_owned(),
                            TurnResult {
                                turn,
                                ttft_ms: ttft.unwrap_or(t0.elapsed().as_secs_f64() * 1e3),
                                input_tokens: u["input_tokens"].as_u64().unwrap_or(0),
                                cached_tokens: u["input_tokens_details"]["cached_tokens"]
                                    .as_u64()
                                    .unwrap_or(0),
                                output_tokens: u["output_tokens"].as_u64().unwrap_or(0),
                            },
                        ));
                    }
                    "response.failed" | "error" => bail!("turn failed: {data}"),
                    _ => {}
                }
            }
        }
    }
    bail!(
        "stream ended without response.completed: {}",
        String::from_utf8_lossy(&buf)
            .chars()
            .take(400)
            .collect::<String>()
    )
}

async fn conversation(
    client: reqwest::Client,
    url: String,
    seed: u64,
    turns: usize,
    max_output_tokens: u32,
) -> anyhow::Result<Vec<TurnResult>> {
    let mut rng = Rng(seed);
    let topic = rng.pick(TOPICS);
    let mut prev: Option<String> = None;
    let mut out = Vec::new();
    for turn in 1..=turns {
        let text = if turn == 1 {
            format!("Conversation {seed}: I want to learn about {topic}. Start with the basics.")
        } else {
            rng.pick(ASKS).to_owned()
        };
        let mut body = json!({
            "input": text,
            "max_output_tokens": max_output_tokens,
            "temperature": 0,
            "stream": true,
            "store": true,
        });
        if let Some(p) = &prev {
            body["previous_response_id"] = json!(p);
        }
        let (id, r) = responses_turn(&client, &url, body, turn).await?;
        prev = Some(id);
        out.push(r);
    }
    Ok(out)
}

/// Prefix-cache affinity per policy. Prints a table; returns the numbers.
pub async fn affinity(args: &ClusterBenchArgs) -> anyhow::Result<Value> {
    let bin = match &args.spindle_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    if !args.model.exists() {
        bail!("model {} not found", args.model.display());
    }
    let mut rows = Vec::new();
    for &policy in &args.policies {
        // Fresh workers per policy: every policy starts with cold caches.
        let mut procs = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..args.workers {
            let threads = args.worker_threads.to_string();
            let p = Proc::worker(&bin, &args.model, ["--threads", &threads], WORKER_START).await?;
            urls.push(p.url.clone());
            procs.push(p);
        }
        let gen = ClusterGenerator::start(ClusterConfig {
            policy,
            ..ClusterConfig::with_workers(urls.clone())
        })
        .await?;
        let (url, server) = serve_router(gen).await?;
        let client = reqwest::Client::new();
        let t0 = Instant::now();
        let results: Vec<anyhow::Result<Vec<TurnResult>>> =
            futures::stream::iter(0..args.conversations)
                .map(|c| {
                    conversation(
                        client.clone(),
                        url.clone(),
                        args.seed.wrapping_mul(1000).wrapping_add(c as u64),
                        args.turns,
                        args.max_output_tokens,
                    )
                })
                .buffer_unordered(args.parallel.max(1))
                .collect()
                .await;
        let wall = t0.elapsed().as_secs_f64();
        server.abort();
        drop(procs);
        let mut ttfts = Vec::new();
        let (mut cached, mut reusable, mut out_tokens, mut failed) = (0u64, 0u64, 0u64, 0usize);
        for r in results {
            let Ok(turns) = r.inspect_err(|e| eprintln!("conversation failed: {e:#}")) else {
                failed += 1;
                continue;
            };
            for (i, t) in turns.iter().enumerate() {
                out_tokens += t.output_tokens;
                if t.turn >= 2 {
                    let p = &turns[i - 1];
                    reusable += p.input_tokens + p.output_tokens;
                    cached += t.cached_tokens;
                    ttfts.push(t.ttft_ms);
                }
            }
        }
        let ttfts = sorted(ttfts);
        rows.push(json!({
            "policy": policy.as_str(),
            "hit_ratio": if reusable > 0 { cached as f64 / reusable as f64 } else { 0.0 },
            "cached_tokens": cached,
            "reusable_tokens": reusable,
            "ttft_p50_ms": pct(&ttfts, 0.5),
            "ttft_p99_ms": pct(&ttfts, 0.99),
            "output_tokens_per_s": out_tokens as f64 / wall,
            "wall_s": wall,
            "failed_conversations": failed,
        }));
    }
    println!(
        "\ncache affinity: {} workers × {} thread(s), {} conversations × {} turns, {} in parallel, max_output_tokens {}",
        args.workers, args.worker_threads, args.conversations, args.turns, args.parallel, args.max_output_tokens
    );
    println!(
        "{:<16} {:>9} {:>16} {:>12} {:>12} {:>10} {:>7}",
        "policy",
        "hit ratio",
        "cached/reusable",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "out tok/s",
        "failed"
    );
    for r in &rows {
        println!(
            "{:<16} {:>9.3} {:>16} {:>12.1} {:>12.1} {:>10.1} {:>7}",
            r["policy"].as_str().unwrap_or(""),
            r["hit_ratio"].as_f64().unwrap_or(0.0),
            format!("{}/{}", r["cached_tokens"], r["reusable_tokens"]),
            r["ttft_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["ttft_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["output_tokens_per_s"].as_f64().unwrap_or(0.0),
            r["failed_conversations"],
        );
    }
    Ok(json!({"scenario": "cluster_affinity", "results": rows}))
}

/// One streamed chat completion, read to the end; its latency in ms.
async fn chat_once(client: &reqwest::Client, url: &str, tokens: u32) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({
            "model": "fake",
            "messages": [{"role": "user", "content": "hello there, how are you"}],
            "max_tokens": tokens,
            "stream": true,
        }))
        .send()
        .await?;
    let resp = success(resp).await?;
    let mut body = resp.bytes_stream();
    let mut tail = Vec::new();
    while let Some(c) = body.next().await {
        let c = c?;
        tail.extend_from_slice(&c);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
    }
    if !String::from_utf8_lossy(&tail).contains("[DONE]") {
        bail!("stream ended without [DONE]");
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

struct Measured {
    p50: f64,
    p99: f64,
    rps: f64,
    errors: usize,
}

async fn measure(url: &str, args: &ClusterBenchArgs) -> anyhow::Result<Measured> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    for _ in 0..20 {
        chat_once(&client, url, args.fake_tokens).await?;
    }
    let mut lat = Vec::with_capacity(args.latency_requests);
    for _ in 0..args.latency_requests {
        lat.push(chat_once(&client, url, args.fake_tokens).await?);
    }
    let lat = sorted(lat);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| {
            let client = client.clone();
            let url = url.to_owned();
            let tokens = args.fake_tokens;
            tokio::spawn(async move {
                let (mut ok, mut err) = (0usize, 0usize);
                while Instant::now() < deadline {
                    match chat_once(&client, &url, tokens).await {
                        Ok(_) => ok += 1,
                        Err(_) => err += 1,
                    }
                }
                (ok, err)
            })
        })
        .collect();
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await?;
        ok += o;
        errors += e;
    }
    Ok(Measured {
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        rps: ok as f64 / t0.elapsed().as_secs_f64(),
        errors,
    })
}

/// Starts `smg launch` in front of `worker`; Ok(None, reason) when it cannot.
async fn start_smg(smg: &PathBuf, worker: &str) -> (Option<Proc>, String) {
    if !smg.exists() {
        return (
            None,
            format!("{} not found (pip install smg)", smg.display()),
        );
    }
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => return (None, e.to_string()),
    };
    let log = std::env::temp_dir().join(format!("smg-{port}.log"));
    // stdout and stderr share one handle (and offset) into the log.
    let Some((logf, errf)) = std::fs::File::create(&log)
        .and_then(|f| Ok((f.try_clone()?, f)))
        .ok()
    else {
        return (None, "cannot create the smg log".into());
    };
    let child = Command::new(smg)
        .args(["launch", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--worker-urls", worker, "--policy", "consistent_hashing"])
        .stdout(Stdio::from(logf))
        .stderr(Stdio::from(errf))
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (None, format!("cannot start smg: {e}")),
    };
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(st)) = child.try_wait() {
            let tail = log_tail(&log);
            return (None, format!("smg exited ({st}); log tail:\n{tail}"));
        }
        if chat_once(&client, &url, 2).await.is_ok() {
            return (Some(Proc::new(child, url)), String::new());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let tail = log_tail(&log);
    (
        None,
        format!("smg did not serve a chat completion within 60 s; log tail:\n{tail}"),
    )
}

/// The last 15 lines of a log file (empty when unreadable).
fn log_tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Router overhead against a fast fake worker. Prints a table; returns the numbers.
pub async fn overhead(args: &ClusterBenchArgs) -> anyhow::Result<Value> {
    let fake = FakeWorker::spawn(args.fake_tokens, Duration::ZERO).await?;
    let gen = ClusterGenerator::start(ClusterConfig::with_workers([fake.url.clone()])).await?;
    let (router_url, server) = serve_router(gen).await?;
    let mut rows = Vec::new();
    let direct = measure(&fake.url, args).await?;
    let mut targets = vec![("spindle-router", router_url.clone())];
    let (smg, smg_note) = start_smg(&args.smg, &fake.url).await;
    if let Some(p) = &smg {
        targets.push(("smg", p.url.clone()));
    } else {
        eprintln!("smg not compared: {smg_note}");
    }
    rows.push(
        json!({"target": "direct", "p50_ms": direct.p50, "p99_ms": direct.p99,
        "added_p50_ms": 0.0, "added_p99_ms": 0.0, "rps": direct.rps, "errors": direct.errors}),
    );
    for (name, url) in targets {
        let m = measure(&url, args).await?;
        rows.push(json!({"target": name, "p50_ms": m.p50, "p99_ms": m.p99,
            "added_p50_ms": m.p50 - direct.p50, "added_p99_ms": m.p99 - direct.p99,
            "rps": m.rps, "errors": m.errors}));
    }
    server.abort();
    drop(smg);
    println!(
        "\nrouter overhead: fake worker streaming {} tokens; latency over {} sequential requests (1 connection), throughput with {} connections for {} s",
        args.fake_tokens, args.latency_requests, args.connections, args.seconds
    );
    println!(
        "{:<16} {:>9} {:>9} {:>11} {:>11} {:>10} {:>7}",
        "target", "p50 ms", "p99 ms", "added p50", "added p99", "req/s", "errors"
    );
    for r in &rows {
        println!(
            "{:<16} {:>9.3} {:>9.3} {:>11.3} {:>11.3} {:>10.0} {:>7}",
            r["target"].as_str().unwrap_or(""),
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["added_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["added_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["rps"].as_f64().unwrap_or(0.0),
            r["errors"],
        );
    }
    Ok(json!({
        "scenario": "cluster_overhead",
        "results": rows,
        "smg": if smg_note.is_empty() { Value::Null } else { json!(smg_note) },
    }))
}
