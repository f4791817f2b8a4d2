//! `spindle bench chain`: what one more turn of a long `previous_response_id`
//! chain costs as the chain grows.
//!
//! Starts its own redis-server and `spindle serve --store redis`, then runs
//! one chain of `--turns` turns, each with a function call and a
//! `--tool-bytes` tool output as input and `truncation: "auto"`. For every
//! turn it records:
//! - router-side milliseconds: the request's wall time minus the engine's
//!   (the growth of `spindle_router_e2e_seconds_sum`, generation start to
//!   last event, scraped from `/metrics` around the turn);
//! - engine milliseconds, prompt and cached tokens (from `usage`);
//! - at the checkpoints, the Redis bytes the turn added (`MEMORY USAGE` of
//!   every key before and after).
//!
//! Prints a table at turns 1/10/100/250/500 (medians of the 10 turns up to
//! each checkpoint beside the checkpoint's own numbers), checks the targets
//! (store bytes per turn within ±20% from turn 10 on; router time at the last
//! checkpoint within 1.5× of turn 10's) and writes everything as JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};
use spindle_testkit::redis::{cli, RedisServer};
use spindle_testkit::stats::{percentile, sorted};
use spindle_testkit::Proc;

#[derive(Args, Debug)]
pub struct ChainArgs {
    /// Turns in the chain.
    #[arg(long, default_value_t = 500)]
    pub turns: u32,
    /// Bytes of tool output per turn.
    #[arg(long, default_value_t = 2048)]
    pub tool_bytes: usize,
    /// Output tokens per turn.
    #[arg(long, default_value_t = 8)]
    pub max_output_tokens: u32,
    /// Context of the server's sequences (`--ctx-size`).
    #[arg(long, default_value_t = 8192)]
    pub ctx_size: u32,
    /// Model for `spindle serve` (default: its default model, SmolLM2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Engine threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// The `spindle` binary to run (default: this executable).
    #[arg(long)]
    pub spindle_bin: Option<PathBuf>,
    /// Write results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What one turn cost.
#[derive(Debug, Clone, Serialize)]
struct Turn {
    turn: u32,
    wall_ms: f64,
    engine_ms: f64,
    router_ms: f64,
    input_tokens: u64,
    cached_tokens: u64,
    /// Redis bytes this turn added (checkpoints only).
    store_bytes: Option<i64>,
}

const CHECKPOINTS: [u32; 5] = [1, 10, 100, 250, 500];

/// Total of a Prometheus series' samples whose line starts with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Seconds of generation the router has timed so far.
async fn engine_seconds(http: &reqwest::Client, url: &str) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(metric_sum(&text, "spindle_router_e2e_seconds_sum"))
}

/// Bytes Redis holds for every key (the server is this bench's own).
fn redis_bytes(port: u16) -> anyhow::Result<i64> {
    const SUM: &str = "local t = 0 for _, k in ipairs(redis.call('KEYS', '*')) do \
        t = t + (redis.call('MEMORY', 'USAGE', k, 'SAMPLES', '0') or 0) end return t";
    let out = cli(port, &["EVAL", SUM, "0"]);
    out.trim()
        .parse()
        .with_context(|| format!("redis-cli answered {out:?}"))
}

/// The input of turn `n`: the model "called" a tool, and here is its output.
fn turn_input(n: u32, tool_bytes: usize) -> Value {
    let line = format!("record {n}: the sensor reported nominal values, all within range. ");
    let output: String = line.chars().cycle().take(tool_bytes).collect();
    let call_id = format!("call_{n}");
    json!([
        {"type": "function_call", "call_id": call_id, "name": "read_sensor",
         "arguments": format!("{{\"turn\":{n}}}")},
        {"type": "function_call_output", "call_id": call_id, "output": output},
    ])
}

pub async fn chain(args: &ChainArgs) -> anyhow::Result<Value> {
    let bin = match &args.spindle_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let redis = RedisServer::start();
    let mut serve_args = vec![
        "--store".to_owned(),
        "redis".into(),
        "--redis-url".into(),
        redis.url(),
        "--ctx-size".into(),
        args.ctx_size.to_string(),
        "--threads".into(),
        args.threads.to_string(),
    ];
    if let Some(m) = &args.model {
        serve_args.extend(["--model".into(), m.display().to_string()]);
    }
    eprintln!(
        "[bench] starting spindle serve --store redis (ctx {})",
        args.ctx_size
    );
    let server = Proc::spawn(&bin, "serve", &serve_args, Duration::from_secs(600)).await?;
    let url = server.url.clone();
    let http = reqwest::Client::new();

    let mut turns: Vec<Turn> = Vec::new();
    let mut prev: Option<String> = None;
    let started = Instant::now();
    for n in 1..=args.turns {
        let checkpoint = CHECKPOINTS.contains(&n) || n == args.turns;
        let before_bytes = if checkpoint {
            Some(redis_bytes(redis.port)?)
        } else {
            None
        };
        let engine_before = engine_seconds(&http, &url).await?;
        let mut body = json!({
            "input": turn_input(n, args.tool_bytes),
            "truncation": "auto",
            "max_output_tokens": args.max_output_tokens,
            "temperature": 0,
        });
        if let Some(p) = &prev {
            body["previous_response_id"] = json!(p);
        }
        let t0 = Instant::now();
        let resp = http
            .post(format!("{url}/v1/responses"))
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let r: Value = resp.json().await?;
        let wall_ms = t0.elapsed().as_secs_f64() * 1000.0;
        if !status.is_success() {
            bail!("turn {n}: {status}: {r}");
        }
        let engine_ms = (engine_seconds(&http, &url).await? - engine_before) * 1000.0;
        let store_bytes = match before_bytes {
            Some(b) => Some(redis_bytes(redis.port)? - b),
            None => None,
        };
        let usage = &r["usage"];
        turns.push(Turn {
            turn: n,
            wall_ms,
            engine_ms,
            router_ms: (wall_ms - engine_ms).max(0.0),
            input_tokens: usage["input_tokens"].as_u64().unwrap_or(0),
            cached_tokens: usage["input_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0),
            store_bytes,
        });
        prev = r["id"].as_str().map(str::to_owned);
        if n % 50 == 0 {
            eprintln!(
                "[bench] turn {n}/{} ({:.0} s)",
                args.turns,
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(server);
    Ok(report(args, &turns))
}

/// Median of `f` over the (up to) 10 turns ending at `at`.
fn median_before(turns: &[Turn], at: u32, f: impl Fn(&Turn) -> f64) -> f64 {
    let lo = at.saturating_sub(9).max(1);
    let v: Vec<f64> = turns
        .iter()
        .filter(|t| (lo..=at).contains(&t.turn))
        .map(f)
        .collect();
    percentile(&sorted(v), 0.5)
}

fn report(args: &ChainArgs, turns: &[Turn]) -> Value {
    let points: Vec<u32> = CHECKPOINTS
        .iter()
        .copied()
        .filter(|&c| c < args.turns)
        .chain([args.turns])
        .collect();
    println!(
        "\n{:>6} {:>10} {:>12} {:>10} {:>12} {:>12} {:>8} {:>8}",
        "turn",
        "router ms",
        "router p50",
        "engine ms",
        "engine p50",
        "store bytes",
        "prompt",
        "cached"
    );
    let mut rows = Vec::new();
    for &p in &points {
        let Some(t) = turns.iter().find(|t| t.turn == p) else {
            continue;
        };
        let router_p50 = median_before(turns, p, |t| t.router_ms);
        let engine_p50 = median_before(turns, p, |t| t.engine_ms);
        println!(
            "{:>6} {:>10.2} {:>12.2} {:>10.1} {:>12.1} {:>12} {:>8} {:>8}",
            p,
            t.router_ms,
            router_p50,
            t.engine_ms,
            engine_p50,
            t.store_bytes.map_or("-".into(), |b| b.to_string()),
            t.input_tokens,
            t.cached_tokens
        );
        rows.push(
            json!({"turn": p, "router_ms": t.router_ms, "router_ms_p50": router_p50,
            "engine_ms": t.engine_ms, "engine_ms_p50": engine_p50, "store_bytes": t.store_bytes,
            "input_tokens": t.input_tokens, "cached_tokens": t.cached_tokens}),
        );
    }
    // Targets, from turn 10 to the last checkpoint.
    let bytes_at = |p: u32| {
        turns
            .iter()
            .find(|t| t.turn == p)
            .and_then(|t| t.store_bytes)
    };
    let from = 10.min(args.turns);
    let last = args.turns;
    let bytes_ratio = match (bytes_at(from), bytes_at(last)) {
        (Some(a), Some(b)) if a > 0 => b as f64 / a as f64,
        _ => f64::NAN,
    };
    let router_ratio =
        median_before(turns, last, |t| t.router_ms) / median_before(turns, from, |t| t.router_ms);
    // Where engine time goes: turns that reused their prefix vs those that
    // re-read the whole window (after a truncation step).
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for t in turns.iter().filter(|t| t.turn > 1) {
        if t.cached_tokens * 2 >= t.input_tokens {
            warm.push(t.engine_ms);
        } else {
            cold.push(t.engine_ms);
        }
    }
    let (nw, nc) = (warm.len(), cold.len());
    let (warm_p50, cold_p50) = (
        percentile(&sorted(warm), 0.5),
        percentile(&sorted(cold), 0.5),
    );
    let p50 = |n: usize, v: f64| {
        if n == 0 {
            "-".to_owned()
        } else {
            format!("{v:.0} ms")
        }
    };
    let engine_s: f64 = turns.iter().map(|t| t.engine_ms).sum::<f64>() / 1000.0;
    let prompt: u64 = turns.iter().map(|t| t.input_tokens).sum();
    let computed: u64 = turns
        .iter()
        .map(|t| t.input_tokens.saturating_sub(t.cached_tokens))
        .sum();
    println!(
        "\nstore bytes per turn, turn {last} / turn {from}: {bytes_ratio:.2} (target 0.8–1.2)\n\
         router ms per turn (p50 of 10), turn {last} / turn {from}: {router_ratio:.2} (target ≤ 1.5)\n\
         engine: {engine_s:.1} s in all; {computed} of {prompt} prompt tokens computed, the rest \
         reused from the prefix cache\n\
         engine: {nw} turns reused the cached prefix (p50 {}), \
         {nc} re-read the window after a truncation step (p50 {})",
        p50(nw, warm_p50),
        p50(nc, cold_p50),
    );
    json!({
        "turns": args.turns, "tool_bytes": args.tool_bytes, "ctx_size": args.ctx_size,
        "max_output_tokens": args.max_output_tokens,
        "checkpoints": rows,
        "store_bytes_ratio": bytes_ratio,
        "router_ms_ratio": router_ratio,
        "engine": {"total_s": engine_s, "prompt_tokens": prompt, "computed_tokens": computed,
                   "warm_turns": nw, "warm_ms_p50": warm_p50,
                   "cold_turns": nc, "cold_ms_p50": cold_p50},
        "per_turn": turns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_labelled_series() {
        let text = "# HELP x\nspindle_router_e2e_seconds_sum{model=\"a\"} 1.5\n\
                    spindle_router_e2e_seconds_sum{model=\"b\"} 0.25\n\
                    spindle_router_e2e_seconds_count{model=\"a\"} 3\n";
        assert_eq!(metric_sum(text, "spindle_router_e2e_seconds_sum"), 1.75);
    }

    #[test]
    fn turn_inputs_have_the_asked_size() {
        let v = turn_input(3, 2048);
        assert_eq!(v[1]["output"].as_str().unwrap().len(), 2048);
        assert_eq!(v[0]["call_id"], v[1]["call_id"]);
    }
}
