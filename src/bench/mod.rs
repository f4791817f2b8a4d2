//! `spindle bench`: drive any OpenAI-compatible server and measure it
//! (compiled with `--features bench`).
//!
//! Scenarios (`spindle bench <scenario>`):
//! - `streams`, `followup`, `prefill`: a server's streaming throughput,
//!   prefix-cache TTFT and batched prefill ceiling (see [`engine`]);
//! - `structured`: a Spindle worker's throughput with half its streams
//!   constrained by a JSON schema, against none (see [`structured`]);
//! - `store`: the Redis response store beside `redis-benchmark` (see [`store`]);
//! - `affinity`, `overhead`: cluster routing (see [`cluster`]);
//! - `chain`: the cost of one more turn of a long chain (see [`chain`]);
//! - `context`: per-turn time and memory of one chat growing to a long
//!   context, against any server (see [`context`]);
//! - `soak`: a Redis-backed cluster under mixed load and faults, audited
//!   request by request (see [`soak`]; exits non-zero when the audit fails).
//!
//! Prints a table and writes the numbers as JSON (`--out`). Works against
//! Spindle and llama.cpp's `llama-server` alike, so a script can run both in
//! one go and compare.

mod chain;
mod cluster;
mod context;
mod engine;
mod soak;
mod store;
mod structured;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use chain::ChainArgs;
use cluster::ClusterBenchArgs;
use context::ContextArgs;
use engine::ClientArgs;
use soak::SoakArgs;
use store::StoreArgs;
use structured::StructuredArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// N concurrent streaming chats per concurrency level: tokens/s, TTFT, inter-token latency.
    Streams(ClientArgs),
    /// TTFT of a turn whose ~1,000-token history is cached, against the same history cold.
    Followup(ClientArgs),
    /// N unique ~1,000-token prompts at once, one output token each: prompt tokens/s (the ceiling).
    Prefill(ClientArgs),
    /// A worker's tokens/s with half of N streams constrained by a JSON schema, against none.
    Structured(StructuredArgs),
    /// The Redis response store: create/get/complete latency beside redis-benchmark.
    Store(StoreArgs),
    /// Cache affinity per routing policy: 3 workers behind a router, multi-turn conversations.
    Affinity(ClusterBenchArgs),
    /// Router overhead in front of a fast fake worker, beside SGLang's gateway (smg).
    Overhead(ClusterBenchArgs),
    /// A 500-turn chain with a 2 KB tool output per turn: router, engine and store cost per turn.
    Chain(ChainArgs),
    /// One chat growing to --target-tokens of context: per-turn time and server memory.
    Context(ContextArgs),
    /// Redis, 3 workers, 2 routers under mixed clients and optional faults; audits every request.
    Soak(SoakArgs),
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        // Fresh connections: llama-server closes idle keep-alive ones unannounced.
        .pool_max_idle_per_host(0)
        .build()?)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // `passed` is false only for a scenario whose own checks failed (soak's
    // audit): its JSON is still written, then the command fails.
    let mut passed = true;
    let (name, out, result) = match &args.scenario {
        Scenario::Streams(a) => ("streams", &a.out, engine::streams(&client()?, a).await?),
        Scenario::Followup(a) => ("followup", &a.out, engine::followup(&client()?, a).await?),
        Scenario::Prefill(a) => ("prefill", &a.out, engine::prefill(&client()?, a).await?),
        Scenario::Structured(a) => {
            let r = structured::structured(&client()?, a).await?;
            ("structured", &a.out, r)
        }
        Scenario::Store(a) => {
            let r = store::store_bench(&a.redis_url, a.ops_per_sec, a.seconds).await;
            ("store", &a.out, r)
        }
        Scenario::Affinity(a) => ("affinity", &a.out, cluster::affinity(a).await?),
        Scenario::Overhead(a) => ("overhead", &a.out, cluster::overhead(a).await?),
        Scenario::Chain(a) => ("chain", &a.out, chain::chain(a).await?),
        Scenario::Context(a) => ("context", &a.out, context::context(&client()?, a).await?),
        Scenario::Soak(a) => {
            let (r, ok) = soak::soak(a).await?;
            passed = ok;
            ("soak", &a.out, r)
        }
    };
    if let Some(out) = out {
        let doc = json!({"scenario": name, "results": result});
        std::fs::write(out, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("[bench] wrote {}", out.display());
    }
    if !passed {
        anyhow::bail!("{name}: the audit failed (violations above)");
    }
    Ok(())
}
