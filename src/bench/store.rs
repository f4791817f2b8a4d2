//! The `store` benchmark: open-loop create / get / complete calls against a
//! [`RedisStore`] at a fixed rate, with `redis-benchmark` run on the same
//! server in the same run as a baseline.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use spindle_router::store::redis::{RedisOptions, RedisStore};
use spindle_router::store::ResponseStore;
use spindle_router::types::{new_id, now_secs, ResponseStatus};
use spindle_testkit::fixtures::{record, response};
use spindle_testkit::stats::{percentile, sorted};

#[derive(Args, Debug)]
pub struct StoreArgs {
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Store operations per second offered (create, get and complete in turn).
    #[arg(long, default_value_t = 1000)]
    pub ops_per_sec: u32,
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Write results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Default)]
struct Lat {
    create: Vec<f64>,
    get: Vec<f64>,
    complete: Vec<f64>,
    errors: u64,
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
    let mut opts = RedisOptions::new(redis_url, spindle_router::responses::lost);
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
                    let rec = record(&id, "bench");
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
                            let mut r = response(&id, ResponseStatus::Completed);
                            r.completed_at = Some(now_secs());
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
    let l = match Arc::try_unwrap(lat) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        Err(_) => Lat::default(),
    };
    let mut ops = serde_json::Map::new();
    let mut rows = Vec::new();
    for (name, v) in [
        ("create", l.create),
        ("get", l.get),
        ("complete", l.complete),
    ] {
        let n = v.len();
        let v = sorted(v);
        let (p50, p99) = (percentile(&v, 0.50), percentile(&v, 0.99));
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

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn redis_benchmark_gets_host_and_port_from_any_store_url() {
        let hp = |u: &str| host_port(u);
        assert_eq!(
            hp("redis://127.0.0.1:7000"),
            ("127.0.0.1".into(), "7000".into())
        );
        assert_eq!(
            hp("rediss://user:pw@db:6380/2"),
            ("db".into(), "6380".into())
        );
        assert_eq!(hp("redis://a:1,redis://b:2"), ("a".into(), "1".into()));
        assert_eq!(hp("redis://cache"), ("cache".into(), "6379".into()));
    }
}
