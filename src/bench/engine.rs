//! The engine benchmarks, against any OpenAI-compatible server:
//! - `streams`: for each concurrency level, N parallel streaming chat
//!   requests with fixed prompts; aggregate output tokens/s, TTFT and
//!   inter-token latency percentiles.
//! - `followup`: TTFT of a turn whose ~1,000-token history was just served
//!   (prefix cache warm) against the same history cold (unique prefix).
//! - `prefill`: N unique ~1,000-token prompts at once, one output token each:
//!   prompt tokens/s, the batched throughput the server's kernels reach
//!   (the ceiling `streams` is compared against).

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use spindle_testkit::stats::{ms_sorted, percentile};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// Base URL of the server (e.g. http://127.0.0.1:8080).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Concurrency levels for `streams` (and `prefill`'s, its largest), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub concurrency: Vec<usize>,
    /// Requests per concurrent stream (each stream runs them one after another).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Output tokens per request (generation does not stop early: ignore_eos).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Trials for `followup` and `prefill`.
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
    /// Name for this server in the table and JSON.
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Model name to send (some servers check it).
    #[arg(long)]
    pub model: Option<String>,
    /// Write results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const PROMPTS: &[&str] = &[
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works, step by step.",
    "Describe a journey across a desert, day by day.",
    "Write a detailed recipe for bread and explain each step.",
    "Tell a long fairy tale about a fox and a crow.",
    "Describe the history of a small mountain village over a hundred years.",
    "Write a letter from a sailor to his family, describing the sea.",
    "Explain how plants grow, from seed to tree, in detail.",
];

/// One finished request as the client saw it.
struct Sample {
    ttft: Duration,
    /// Gaps between successive content chunks.
    gaps: Vec<Duration>,
    tokens: u32,
}

/// POST a chat completion `body` (with `--model` when set); a non-2xx status is an error.
async fn post_chat(
    client: &reqwest::Client,
    args: &ClientArgs,
    mut body: Value,
) -> anyhow::Result<reqwest::Response> {
    if let Some(m) = &args.model {
        body["model"] = json!(m);
    }
    Ok(client
        .post(format!("{}/v1/chat/completions", args.url))
        .json(&body)
        .send()
        .await?
        .error_for_status()?)
}

async fn stream_chat(
    client: &reqwest::Client,
    args: &ClientArgs,
    messages: Value,
    max_tokens: u32,
) -> anyhow::Result<Sample> {
    let body = json!({
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": true,
    });
    let start = Instant::now();
    let resp = post_chat(client, args, body).await?;
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut first = None;
    let mut last = start;
    let mut gaps = Vec::new();
    let mut chunks = 0u32;
    let mut usage_tokens = None;
    while let Some(bytes) = stream.next().await {
        buf.extend_from_slice(&bytes?);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).context("bad SSE chunk")?;
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                usage_tokens = Some(n as u32);
            }
            let has_text = v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty());
            if has_text {
                let now = Instant::now();
                if first.is_none() {
                    first = Some(now - start);
                } else {
                    gaps.push(now - last);
                }
                last = now;
                chunks += 1;
            }
        }
    }
    Ok(Sample {
        ttft: first.unwrap_or_else(|| start.elapsed()),
        gaps,
        tokens: usage_tokens.unwrap_or(chunks),
    })
}

#[derive(Serialize)]
struct StreamsResult {
    label: String,
    concurrency: usize,
    requests: usize,
    output_tokens: u64,
    wall_s: f64,
    tokens_per_s: f64,
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
    itl_p50_ms: f64,
    itl_p99_ms: f64,
}

pub async fn streams(client: &reqwest::Client, args: &ClientArgs) -> anyhow::Result<Value> {
    let mut results = Vec::new();
    // Warm-up: load pages, spin up threads.
    stream_chat(client, args, json!([{"role": "user", "content": "Hi"}]), 8).await?;
    for &c in &args.concurrency {
        eprintln!(
            "[bench] {}: {c} concurrent streams × {} rounds",
            args.label, args.rounds
        );
        let start = Instant::now();
        let tasks = (0..c).map(|i| async move {
            let mut out = Vec::new();
            for r in 0..args.rounds {
                let prompt = PROMPTS[(i + r) % PROMPTS.len()];
                let msgs = json!([{"role": "user", "content": prompt}]);
                out.push(stream_chat(client, args, msgs, args.max_tokens).await?);
            }
            anyhow::Ok(out)
        });
        let samples: Vec<Sample> = futures::future::try_join_all(tasks)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let wall = start.elapsed().as_secs_f64();
        let tokens: u64 = samples.iter().map(|s| u64::from(s.tokens)).sum();
        let ttft = ms_sorted(samples.iter().map(|s| s.ttft));
        let itl = ms_sorted(samples.iter().flat_map(|s| s.gaps.iter().copied()));
        results.push(StreamsResult {
            label: args.label.clone(),
            concurrency: c,
            requests: samples.len(),
            output_tokens: tokens,
            wall_s: wall,
            tokens_per_s: tokens as f64 / wall,
            ttft_p50_ms: percentile(&ttft, 0.5),
            ttft_p99_ms: percentile(&ttft, 0.99),
            itl_p50_ms: percentile(&itl, 0.5),
            itl_p99_ms: percentile(&itl, 0.99),
        });
    }
    println!(
        "{:<12} {:>5} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "server", "conc", "tokens", "tok/s", "ttft p50", "ttft p99", "itl p50", "itl p99"
    );
    for r in &results {
        println!(
            "{:<12} {:>5} {:>8} {:>10.1} {:>8.1}ms {:>8.1}ms {:>7.2}ms {:>7.2}ms",
            r.label,
            r.concurrency,
            r.output_tokens,
            r.tokens_per_s,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.itl_p50_ms,
            r.itl_p99_ms
        );
    }
    Ok(serde_json::to_value(&results)?)
}

/// A deterministic ~1,000-token conversation history (SmolLM2 tokenizer), made unique by `tag`.
fn history(tag: &str) -> Vec<Value> {
    let mut msgs = vec![
        json!({"role": "system", "content": format!("Session {tag}. You are a helpful assistant.")}),
    ];
    for turn in 0..8 {
        msgs.push(json!({"role": "user", "content": format!(
            "Question {turn}: tell me about the harbour, the boats, the fishermen, the weather and the market on day {turn}, with every detail you remember about the nets, ropes, gulls and tides."
        )}));
        msgs.push(json!({"role": "assistant", "content": format!(
            "On day {turn} the harbour was busy. The boats came in early with full nets, the fishermen sorted the catch on the quay, the gulls circled above the ropes, the tide turned at noon, and the market sold fresh fish, bread and salt until the evening bells rang over the water."
        )}));
    }
    msgs
}

pub async fn followup(client: &reqwest::Client, args: &ClientArgs) -> anyhow::Result<Value> {
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for trial in 0..args.trials {
        let tag = format!("{:08x}-{trial}", std::process::id());
        let mut msgs = history(&tag);
        msgs.push(json!({"role": "user", "content": "And what happened next?"}));
        // Cold: this history was never seen (unique tag at the very start).
        let s = stream_chat(client, args, Value::Array(msgs.clone()), 4).await?;
        cold.push(s.ttft);
        // Warm: the same history plus one more short turn.
        msgs.push(json!({"role": "assistant", "content": "The boats went out again."}));
        msgs.push(json!({"role": "user", "content": "And then?"}));
        let s = stream_chat(client, args, Value::Array(msgs), 4).await?;
        warm.push(s.ttft);
    }
    let cold = ms_sorted(cold);
    let warm = ms_sorted(warm);
    let (c50, w50) = (percentile(&cold, 0.5), percentile(&warm, 0.5));
    println!(
        "{:<12} {:>14} {:>14} {:>8}",
        "server", "cold ttft p50", "warm ttft p50", "ratio"
    );
    println!(
        "{:<12} {:>12.1}ms {:>12.1}ms {:>8.3}",
        args.label,
        c50,
        w50,
        w50 / c50
    );
    Ok(
        json!([{"label": args.label, "cold_ttft_p50_ms": c50, "warm_ttft_p50_ms": w50, "ratio": w50 / c50,
               "cold_ms": cold, "warm_ms": warm}]),
    )
}

/// The part of a chat completion `prefill` reads.
#[derive(Deserialize)]
struct Completion {
    usage: Usage,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u64,
}

#[derive(Serialize)]
struct PrefillResult {
    label: String,
    concurrency: usize,
    prompt_tokens: u64,
    wall_s: Vec<f64>,
    /// Median over the trials.
    prompt_tokens_per_s: f64,
}

pub async fn prefill(client: &reqwest::Client, args: &ClientArgs) -> anyhow::Result<Value> {
    let n = args.concurrency.iter().copied().max().unwrap_or(16).max(1);
    let mut walls = Vec::new();
    let mut rates = Vec::new();
    let mut prompt_tokens = 0;
    for trial in 0..args.trials.max(1) {
        let start = Instant::now();
        let requests = (0..n).map(|i| {
            // A unique tag at the very start: nothing is cached.
            let tag = format!("{:08x}-p{trial}-{i}", std::process::id());
            let mut msgs = history(&tag);
            msgs.push(json!({"role": "user", "content": "And what happened next?"}));
            let body = json!({"messages": msgs, "max_tokens": 1, "temperature": 0});
            async move {
                let resp = post_chat(client, args, body).await?;
                anyhow::Ok(resp.json::<Completion>().await?.usage.prompt_tokens)
            }
        });
        let tokens: u64 = futures::future::try_join_all(requests)
            .await?
            .into_iter()
            .sum();
        let wall = start.elapsed().as_secs_f64();
        prompt_tokens = tokens;
        walls.push(wall);
        rates.push(tokens as f64 / wall);
    }
    rates.sort_by(f64::total_cmp);
    let result = PrefillResult {
        label: args.label.clone(),
        concurrency: n,
        prompt_tokens,
        wall_s: walls,
        prompt_tokens_per_s: rates[rates.len() / 2],
    };
    println!(
        "{:<12} {:>6} prompts x {:>5} tokens: {:>8.1} prompt tok/s (median of {})",
        result.label,
        n,
        prompt_tokens / n as u64,
        result.prompt_tokens_per_s,
        rates.len()
    );
    Ok(serde_json::to_value([result])?)
}
