//! The `store` benchmark: open-loop create / get / complete calls against a
//! [`RedisStore`] at a fixed rate, with `redis-benchmark` run on the same
//! server in the same run as a baseline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::redis::{RedisOptions, RedisStore};
use super::{ResponseRecord, ResponseStore};
use crate::types::{new_id, ResponseObject, ResponseStatus};

/// A minimal in-progress response object (also used by the store tests).
pub(crate) fn sample_response(id: &str) -> ResponseObject {
    serde_json::from_value(json!({
        "id": id, "object": "response", "created_at": 0, "completed_at": null,
        "status": "in_progress", "error": null, "incomplete_details": null,
        "instructions": null, "model": "bench", "output": [], "previous_response_id": null,
        "conversation": null, "tools": [], "tool_choice": "auto", "parallel_tool_calls": true,
        "temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "top_logprobs": 0, "truncation": "disabled", "text": {"format": {"type": "text"}},
        "reasoning": null, "max_output_tokens": null, "max_tool_calls": null, "store": true,
        "background": false, "service_tier": "default", "metadata": {},
        "safety_identifier": null, "user": null, "prompt_cache_key": null, "usage": null
    }))
    .expect("valid response object")
}

#[derive(Default)]
struct Lat {
    create: Vec<f64>,
    get: Vec<f64>,
    complete: Vec<f64>,
    errors: u64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn host_port(url: &str) -> (String, String) {
    let first = url.split(',').next().unwrap_or_default();
    let rest = first.split("://").nth(1).unwrap_or(first);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let hp = rest.split('/').next().unwrap_or(rest);
    match hp.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.to_owned()),
        None => (hp.to_owned(), "6379".to_owned()),
    }
}

/// `redis-benchmark -h H -p P -t get,set -n 100000 -q` → {"SET": rps, "GET": rps, "raw": ...}.
async fn redis_benchmark(url: &str) -> Value {
    let (host, port) = host_port(url);
    let out = tokio::process::Command::new("redis-benchmark")
        .args([
            "-h", &host, "-p", &port, "-t", "get,set", "-n", "100000", "-q",
        ])
        .output()
        .await;
    let Ok(out) = out else {
        return json!({"error": "redis-benchmark not found"});
    };
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let mut res = serde_json::Map::new();
    for line in text.lines() {
        // "SET: 98231.83 requests per second, p50=0.263 msec"
        if let Some((name, rest)) = line.trim().split_once(": ") {
            if let Some(rps) = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<f64>().ok())
            {
                if rest.contains("requests per second") {
                    let p50 = rest
                        .split("p50=")
                        .nth(1)
                        .and_then(|s| s.split_whitespace().next())
                        .and_then(|n| n.parse::<f64>().ok());
                    res.insert(name.to_owned(), json!({"rps": rps, "p50_ms": p50}));
                }
            }
        }
    }
    Value::Object(res)
}

/// Run `ops_per_sec` store operations per second (create, get, complete in
/// rotation; each open-loop, so latency includes queueing) for `seconds`,
/// then `redis-benchmark` on the same server; prints a table and returns
/// the numbers as JSON. Keys use the `spindle-bench` prefix and expire after 10 minutes.
pub async fn store_bench(redis_url: &str, ops_per_sec: u32, seconds: u32) -> Value {
    let mut opts = RedisOptions::new(redis_url, crate::responses::lost);
    opts.prefix = "spindle-bench".into();
    opts.ttl = Duration::from_secs(600);
    let store = match RedisStore::connect(opts).await {
        Ok(s) => Arc::new(s),
        Err(e) => return json!({"error": e.to_string()}),
    };
    let lat = Arc::new(Mutex::new(Lat::default()));
    let created: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let total = u64::from(ops_per_sec.max(1)) * u64::from(seconds.max(1));
    let period = Duration::from_secs_f64(1.0 / f64::from(ops_per_sec.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        tick.tick().await;
        let (store, lat, created) = (store.clone(), lat.clone(), created.clone());
        tasks.push(tokio::spawn(async move {
            let op = n % 3;
            let t = Instant::now();
            let ok = match op {
                0 => {
                    let id = new_id("resp");
                    let rec = ResponseRecord {
                        response: sample_response(&id),
                        input_items: vec![json!({"id": "msg_1", "type": "message", "role": "user",
                            "content": [{"type": "input_text", "text": "hello there"}]})],
                        context: vec![],
                        chain_root: id.clone(),
                        owner: "bench".into(),
                        routing_key: String::new(),
                    };
                    let r = store.insert_response(rec).await;
                    if r.is_ok() {
                        if let Ok(mut c) = created.lock() {
                            c.push(id);
                        }
                    }
                    r.is_ok()
                }
                1 => {
                    let id = created.lock().ok().and_then(|c| c.last().cloned());
                    match id {
                        Some(id) => store.get_response("bench", &id).await.is_ok(),
                        None => true,
                    }
                }
                _ => {
                    let id = created.lock().ok().and_then(|mut c| c.pop());
                    match id {
                        Some(id) => {
                            let mut r = sample_response(&id);
                            r.status = ResponseStatus::Completed;
                            r.completed_at = Some(crate::types::now_secs());
                            store.update_if_active(r).await.is_ok()
                        }
                        None => true,
                    }
                }
            };
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if let Ok(mut l) = lat.lock() {
                if !ok {
                    l.errors += 1;
                }
                match op {
                    0 => l.create.push(ms),
                    1 => l.get.push(ms),
                    _ => l.complete.push(ms),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(store);
    let mut l = match Arc::try_unwrap(lat) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        Err(_) => Lat::default(),
    };
    let mut ops = serde_json::Map::new();
    let mut rows = Vec::new();
    for (name, v) in [
        ("create", &mut l.create),
        ("get", &mut l.get),
        ("complete", &mut l.complete),
    ] {
        let n = v.len();
        let (p50, p99) = (pct(v, 0.50), pct(v, 0.99));
        let rate = n as f64 / elapsed;
        rows.push(format!(
            "{name:<10} {n:>8} {rate:>10.1} {p50:>9.3} {p99:>9.3}"
        ));
        ops.insert(
            name.into(),
            json!({"count": n, "ops_per_sec": rate, "p50_ms": p50, "p99_ms": p99}),
        );
    }
    let baseline = redis_benchmark(redis_url).await;
    println!("store bench: {ops_per_sec} ops/s target for {seconds} s against {redis_url}");
    println!(
        "{:<10} {:>8} {:>10} {:>9} {:>9}",
        "op", "count", "ops/s", "p50 ms", "p99 ms"
    );
    for r in &rows {
        println!("{r}");
    }
    println!("errors: {}", l.errors);
    if let Value::Object(m) = &baseline {
        for (k, v) in m {
            println!(
                "redis-benchmark {k:<5} {:>12.1} req/s  p50 {} ms",
                v["rps"].as_f64().unwrap_or(0.0),
                v["p50_ms"]
            );
        }
    }
    json!({
        "scenario": "store",
        "redis_url": redis_url,
        "target_ops_per_sec": ops_per_sec,
        "seconds": seconds,
        "elapsed_s": elapsed,
        "errors": l.errors,
        "ops": ops,
        "redis_benchmark": baseline,
        "round_trips": {"create": 2, "get": 1, "complete": 1},
    })
}
