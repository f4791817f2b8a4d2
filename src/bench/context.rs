//! `spindle bench context`: the cost of a turn as one chat's context grows.
//!
//! One chat against any OpenAI-compatible server (`/v1/chat/completions`):
//! every turn sends the whole history plus a new user message and asks for
//! `--max-tokens` tokens (`ignore_eos`, greedy), then appends the answer, so
//! the server can reuse its cached prefix and computes only the ~300 new
//! tokens; it goes on until the context reaches `--target-tokens` (or the
//! server refuses the prompt). Per turn it records the wall time, the
//! context length (`usage`), the tokens the server reports cached, and with
//! `--pid` the server's resident memory. Prints the turns nearest to each
//! checkpoint and writes every turn as JSON.

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct ContextArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Name for this server in the table and JSON.
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Model name to send.
    #[arg(long)]
    pub model: Option<String>,
    /// Stop once the context (prompt plus answer) reaches this many tokens.
    #[arg(long, default_value_t = 25_000)]
    pub target_tokens: u64,
    /// Output tokens per turn (the user message adds about 50 more).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// The server's process id: its resident memory is read after each turn.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Write results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct Message {
    role: &'static str,
    content: String,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    messages: &'a [Message],
    max_tokens: u32,
    temperature: f32,
    ignore_eos: bool,
    stream: bool,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    usage: Usage,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
}

#[derive(Deserialize)]
struct AnswerMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

/// What one turn cost.
#[derive(Debug, Clone, Serialize)]
struct Turn {
    turn: u32,
    /// Prompt plus answer tokens: the context after this turn.
    context_tokens: u64,
    prompt_tokens: u64,
    cached_tokens: Option<u64>,
    completion_tokens: u64,
    ms: f64,
    rss_mb: Option<f64>,
}

/// Context lengths the table reports (the first turn reaching each).
const CHECKPOINTS: [u64; 9] = [
    1_000, 2_000, 4_000, 8_000, 12_000, 16_000, 20_000, 24_000, 25_000,
];

/// The new user message of turn `n`: about 50 tokens, distinct per turn.
fn user_message(n: u32) -> String {
    format!(
        "Chapter {n}. Tell me what happened next to the little fox and the old owl in the \
         forest, where they went on day {n}, what they found under the big tree and who \
         they met by the river before the sun went down."
    )
}

/// Resident memory of `pid` in MB (Linux `/proc`).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

pub async fn context(http: &reqwest::Client, args: &ContextArgs) -> anyhow::Result<Value> {
    // A tag per run keeps one run's chain out of another's prefix cache.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!("{:x}-{nanos:08x}", std::process::id());
    let mut messages = vec![Message {
        role: "system",
        content: format!("Story session {tag}. You tell long stories for children."),
    }];
    let mut turns: Vec<Turn> = Vec::new();
    let started = Instant::now();
    let mut n = 0u32;
    loop {
        n += 1;
        messages.push(Message {
            role: "user",
            content: user_message(n),
        });
        let body = ChatRequest {
            model: args.model.as_deref(),
            messages: &messages,
            max_tokens: args.max_tokens,
            temperature: 0.0,
            ignore_eos: true,
            stream: false,
        };
        let t0 = Instant::now();
        let resp = http
            .post(format!("{}/v1/chat/completions", args.url))
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        if !status.is_success() {
            // The context is full: the prompt no longer fits.
            if status.as_u16() == 400 && !turns.is_empty() {
                eprintln!(
                    "[bench] {}: turn {n} refused ({status}): {text}",
                    args.label
                );
                break;
            }
            bail!("turn {n}: {status}: {text}");
        }
        let r: ChatResponse =
            serde_json::from_str(&text).with_context(|| format!("turn {n}: {text}"))?;
        let answer = r
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .unwrap_or_default();
        messages.push(Message {
            role: "assistant",
            content: answer,
        });
        let turn = Turn {
            turn: n,
            context_tokens: r.usage.prompt_tokens + r.usage.completion_tokens,
            prompt_tokens: r.usage.prompt_tokens,
            cached_tokens: r.usage.prompt_tokens_details.and_then(|d| d.cached_tokens),
            completion_tokens: r.usage.completion_tokens,
            ms,
            rss_mb: args.pid.and_then(rss_mb),
        };
        let done = turn.context_tokens >= args.target_tokens;
        if n.is_multiple_of(20) {
            eprintln!(
                "[bench] {}: turn {n}, {} tokens, {:.0} ms ({:.0} s)",
                args.label,
                turn.context_tokens,
                turn.ms,
                started.elapsed().as_secs_f64()
            );
        }
        turns.push(turn);
        if done {
            break;
        }
    }
    report(args, &turns)
}

/// The first turn at or past each checkpoint (and the last turn).
fn checkpoint_turns(turns: &[Turn]) -> Vec<&Turn> {
    let mut picked: Vec<&Turn> = Vec::new();
    for c in CHECKPOINTS {
        if let Some(t) = turns.iter().find(|t| t.context_tokens >= c) {
            if !picked.iter().any(|p| p.turn == t.turn) {
                picked.push(t);
            }
        }
    }
    if let Some(last) = turns
        .last()
        .filter(|l| !picked.iter().any(|p| p.turn == l.turn))
    {
        picked.push(last);
    }
    picked
}

#[derive(Serialize)]
struct ContextResult<'a> {
    label: &'a str,
    target_tokens: u64,
    max_tokens: u32,
    turns: &'a [Turn],
}

fn report(args: &ContextArgs, turns: &[Turn]) -> anyhow::Result<Value> {
    println!(
        "{:<14} {:>6} {:>9} {:>9} {:>8} {:>10} {:>9}",
        "server", "turn", "context", "prompt", "cached", "turn ms", "rss MB"
    );
    let opt = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
    for t in checkpoint_turns(turns) {
        println!(
            "{:<14} {:>6} {:>9} {:>9} {:>8} {:>10.1} {:>9}",
            args.label,
            t.turn,
            t.context_tokens,
            t.prompt_tokens,
            opt(t.cached_tokens.map(|c| c as f64), 0),
            t.ms,
            opt(t.rss_mb, 1),
        );
    }
    Ok(serde_json::to_value(ContextResult {
        label: &args.label,
        target_tokens: args.target_tokens,
        max_tokens: args.max_tokens,
        turns,
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(turn: u32, context_tokens: u64) -> Turn {
        Turn {
            turn,
            context_tokens,
            prompt_tokens: context_tokens,
            cached_tokens: None,
            completion_tokens: 0,
            ms: 1.0,
            rss_mb: None,
        }
    }

    #[test]
    fn checkpoints_take_the_first_turn_past_each_and_the_last() {
        let turns: Vec<Turn> = (1..=10).map(|n| turn(n, u64::from(n) * 900)).collect();
        let picked: Vec<u32> = checkpoint_turns(&turns).iter().map(|t| t.turn).collect();
        // 1000 → turn 2 (1800), 2000 → 3 (2700), 4000 → 5 (4500), 8000 → 9, last 10.
        assert_eq!(picked, vec![2, 3, 5, 9, 10]);
    }

    #[test]
    fn user_messages_differ_per_turn() {
        assert_ne!(user_message(1), user_message(2));
        assert!(user_message(7).contains("day 7"));
    }
}
