//! The soak report: requests by kind and outcome, errors by kind (inside and
//! outside fault windows), TTFT, audit verdict with examples, faults, and
//! each process's memory; printed as tables and returned as JSON.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use spindle_testkit::stats::{percentile, sorted};

use super::audit::{Audit, Windows};
use super::faults::FaultLog;
use super::mix::{ClientError, Kind, Record};
use super::rss::{judge, Sample, FLAT_MIB, FLAT_PCT};
use super::wire::Status;

/// Outcome columns, in order.
const OUTCOMES: [&str; 8] = [
    "completed",
    "incomplete",
    "failed",
    "cancelled",
    "dropped",
    "cut",
    "error",
    "total",
];

/// The column a record counts in.
fn outcome(r: &Record) -> &'static str {
    match (r.seen, r.id.is_some()) {
        (Some(s), _) => match s {
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Queued | Status::InProgress => "cut",
        },
        // The client hung up on purpose.
        (None, true) if r.dropped => "dropped",
        // An id, but the call broke before a terminal status.
        (None, true) => "cut",
        (None, false) => "error",
    }
}

/// Everything the report is made of.
pub struct Input<'a> {
    pub header: String,
    pub records: &'a [Record],
    pub errors: &'a [ClientError],
    pub windows: &'a Windows,
    pub audit: &'a Audit,
    pub faults: &'a [FaultLog],
    pub rss: &'a BTreeMap<String, Vec<Sample>>,
    pub wall_s: f64,
}

pub fn report(i: &Input) -> Value {
    println!("\n{}", i.header);

    // Requests by kind and outcome.
    let mut table: BTreeMap<Kind, BTreeMap<&str, usize>> = BTreeMap::new();
    for r in i.records {
        let row = table.entry(r.kind).or_default();
        *row.entry(outcome(r)).or_default() += 1;
        *row.entry("total").or_default() += 1;
    }
    print!("\n{:<18}", "requests");
    for o in OUTCOMES {
        print!(" {o:>10}");
    }
    println!();
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, row) in &table {
        print!("{:<18}", json!(k).as_str().unwrap_or(""));
        for o in OUTCOMES {
            let n = row.get(o).copied().unwrap_or(0);
            *totals.entry(o).or_default() += n;
            print!(" {n:>10}");
        }
        println!();
    }
    print!("{:<18}", "all");
    for o in OUTCOMES {
        print!(" {:>10}", totals.get(o).copied().unwrap_or(0));
    }
    println!(
        "\n(dropped: the client hung up mid-stream on purpose; cut: an id but the call broke \
         before a terminal status; error: refused before an id)"
    );

    // Errors by kind.
    let mut errs: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for e in i.errors {
        let c = errs.entry(format!("{} ({})", e.kind, e.step)).or_default();
        if i.windows.faulty(e.at, e.at) {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
    }
    println!(
        "\n{:<44} {:>14} {:>14}",
        "errors (kind, step)", "in fault win", "outside"
    );
    if errs.is_empty() {
        println!("(none)");
    }
    for (k, (a, b)) in &errs {
        println!("{k:<44} {a:>14} {b:>14}");
    }

    // TTFT of every stream that got a delta.
    let ttft = sorted(i.records.iter().filter_map(|r| r.ttft_ms).collect());
    let (p50, p99) = (percentile(&ttft, 0.5), percentile(&ttft, 0.99));
    println!(
        "\nTTFT (request sent → first text delta), {} streams: p50 {p50:.1} ms, p99 {p99:.1} ms",
        ttft.len()
    );

    // Faults.
    if !i.faults.is_empty() {
        println!(
            "\n{:>8} {:<14} {:<10} {:>10}  note",
            "t", "fault", "target", "back at"
        );
        for f in i.faults {
            println!(
                "{:>7.1}s {:<14} {:<10} {:>10}  {}",
                f.at,
                json!(f.action).as_str().unwrap_or(""),
                f.target,
                f.recovered.map_or("never".into(), |t| format!("{t:.1}s")),
                f.error.as_deref().unwrap_or("")
            );
        }
    }

    // Memory.
    println!(
        "\n{:<10} {:>9} {:>9} {:>13} {:>9} {:>9}  flat (≤{FLAT_PCT}% or {FLAT_MIB} MiB over the later half)",
        "RSS MiB", "start", "half", "max 2nd half", "end", "growth"
    );
    let mut rss_json = BTreeMap::new();
    for (name, samples) in i.rss {
        let Some(f) = judge(samples) else { continue };
        let opt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
        println!(
            "{name:<10} {:>9.1} {:>9} {:>13} {:>9.1} {:>9}  {}{}",
            f.start_mib,
            opt(f.half_mib),
            opt(f.last_half_max_mib),
            f.end_mib,
            opt(f.growth_mib),
            match f.flat {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "not judged",
            },
            if f.restarted { " (restarted)" } else { "" }
        );
        rss_json.insert(name.clone(), json!({"summary": f, "samples": samples}));
    }

    println!("(redis holds every stored response: its growth is data)");

    // Audit.
    let pass = i.audit.violations.is_empty();
    println!(
        "\naudit: {} — {} ids checked, {} violations, {} tolerated (AOF writes lost to a Redis kill under everysec; Redis logged fsyncs over 2 s: {})",
        if pass { "PASS" } else { "FAIL" },
        i.audit.checked_ids,
        i.audit.violations.len(),
        i.audit.tolerated.len(),
        if i.windows.aof_slow { "yes" } else { "no" }
    );
    let mut audit_json = BTreeMap::new();
    for (label, list) in [
        ("violation", &i.audit.violations),
        ("tolerated", &i.audit.tolerated),
    ] {
        for (rule, (n, ex)) in Audit::by_rule(list, 3) {
            println!("  {label} {rule}: {n}");
            for e in &ex {
                println!("      {} {}", e.id.as_deref().unwrap_or("-"), e.detail);
            }
        }
        let full: BTreeMap<&str, Value> = Audit::by_rule(list, 10)
            .into_iter()
            .map(|(r, (n, ex))| (r, json!({"count": n, "examples": ex})))
            .collect();
        audit_json.insert(label, full);
    }
    println!("wall time {:.0} s", i.wall_s);

    let requests: BTreeMap<String, &BTreeMap<&str, usize>> = table
        .iter()
        .map(|(k, v)| (json!(k).as_str().unwrap_or("").to_owned(), v))
        .collect();
    json!({
        "passed": pass,
        "requests": requests,
        "requests_total": totals,
        "errors": errs.iter().map(|(k, (a, b))| (k.clone(), json!({"in_fault_window": a, "outside": b}))).collect::<BTreeMap<_, _>>(),
        "ttft_ms": {"n": ttft.len(), "p50": p50, "p99": p99},
        "faults": i.faults,
        "fault_windows": i.windows,
        "audit": {"checked_ids": i.audit.checked_ids, "violations": i.audit.violations.len(),
                  "tolerated": i.audit.tolerated.len(), "by_rule": audit_json},
        "rss": rss_json,
        "wall_s": i.wall_s,
    })
}
