//! The soak audit: what must hold for every request, fault or not.
//!
//! Per stream, the protocol rules of [`super::stream::check_stream`]
//! (their violations travel with the record).
//!
//! Per failed call ([`audit`]): `error.unclean` when an HTTP error body is
//! not the OpenAI error shape (or a 2xx body is not the object asked for);
//! `error.unexpected` for any error outside a fault window except 503 and
//! 429 (backpressure is allowed any time) and timeouts (see `client.hung`).
//!
//! Per response id, against the store after the run (`GET` from a router):
//! - `client.duplicate_id`: no id reaches two clients' calls;
//! - `store.lost` (404), `store.unreadable` (GET kept failing);
//! - `store.stuck`: the stored status is terminal (after the grace period);
//! - `store.status_mismatch`: when the client saw a terminal status, the
//!   store has the same one;
//! - `store.text_mismatch`: for completed/incomplete ones, the stored output
//!   text equals what the client saw;
//! - when the client saw no terminal status (it hung up, or the call broke):
//!   any terminal status is acceptable, and for completed/incomplete the
//!   client's partial text must be a prefix of the stored text
//!   (`store.prefix_mismatch`); `failed` counts as below;
//! - `response.failed_outside_fault`: a response that ends `failed` (seen or
//!   stored) must overlap a fault window;
//! - cancels: when `POST …/cancel` answered `cancelled`, the stored status
//!   stays `cancelled` (`cancel.overwritten`); an answer that is not
//!   terminal is `cancel.not_applied`. A cancel that lost the race answers
//!   the finished status, which the store must then keep (status rule).
//!
//! Per call, `client.hung`: no call (nor a background response's polling)
//! may outlast `--request-timeout`.
//!
//! A fault window runs from a fault's injection to its recovery plus a
//! settle time (leases expire, probes readmit workers).
//!
//! Redis is killed with SIGKILL under `appendfsync everysec`. Redis
//! write()s the AOF before it replies and the page cache outlives the
//! process, except while a background fsync is still running: then it
//! postpones the write, silently for up to 2 s (it logs "fsync is taking
//! too long" only past that), and still replies. So two findings within the
//! [`AOF_LOSS`] seconds before a Redis kill are tolerated (reported apart,
//! not violations): `store.lost` of a response whose call overlaps them, and
//! the status/text/cancel rules of one whose call ended in them. Outside
//! those spans a response the store lost or contradicts is a violation,
//! whatever the fault.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::mix::{ClientError, Record};
use super::wire::{ResponseObj, Status};

/// Seconds before a Redis SIGKILL whose writes a slow fsync may have left
/// unwritten (Redis postpones them up to 2 s).
pub const AOF_LOSS: f64 = 3.0;

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub rule: &'static str,
    pub id: Option<String>,
    pub detail: String,
}

pub(super) fn v(rule: &'static str, id: Option<&str>, detail: impl Into<String>) -> Violation {
    Violation {
        rule,
        id: id.map(str::to_owned),
        detail: detail.into(),
    }
}

pub(super) fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Fault windows and Redis kill times, in seconds since the run began.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Windows {
    pub faults: Vec<(f64, f64)>,
    pub redis_kills: Vec<f64>,
    /// Redis logged AOF writes postponed past 2 s (reported, not needed
    /// for the tolerance: shorter postponements go unlogged).
    pub aof_slow: bool,
}

impl Windows {
    /// Does `[start, end]` overlap a fault window?
    pub fn faulty(&self, start: f64, end: f64) -> bool {
        self.faults.iter().any(|&(a, b)| start <= b && end >= a)
    }

    /// Does `[start, end]` overlap the writes a Redis kill may have lost?
    pub fn aof_loss(&self, start: f64, end: f64) -> bool {
        self.redis_kills
            .iter()
            .any(|&k| start <= k && end >= k - AOF_LOSS)
    }

    /// Did a call that ended at `end` write its final state in that span?
    pub fn aof_final(&self, end: f64) -> bool {
        self.aof_loss(end, end)
    }
}

/// A response as the store returned it after the run.
#[derive(Debug)]
pub enum Stored {
    Found(ResponseObj),
    Missing,
    Unreadable(String),
}

/// What the audit found.
#[derive(Debug, Default, Serialize)]
pub struct Audit {
    pub violations: Vec<Violation>,
    /// Violations excused by the AOF loss window.
    pub tolerated: Vec<Violation>,
    pub checked_ids: usize,
}

impl Audit {
    /// Count and up to `n` examples per rule.
    pub fn by_rule(
        list: &[Violation],
        n: usize,
    ) -> BTreeMap<&'static str, (usize, Vec<&Violation>)> {
        let mut m: BTreeMap<&'static str, (usize, Vec<&Violation>)> = BTreeMap::new();
        for x in list {
            let e = m.entry(x.rule).or_default();
            e.0 += 1;
            if e.1.len() < n {
                e.1.push(x);
            }
        }
        m
    }
}

/// 503 and 429: a busy cluster may refuse work at any time.
fn backpressure(kind: &str) -> bool {
    kind.starts_with("HTTP 503") || kind.starts_with("HTTP 429")
}

/// Every rule after the run.
pub fn audit(
    records: &[Record],
    errors: &[ClientError],
    stored: &HashMap<String, Stored>,
    w: &Windows,
) -> Audit {
    let mut a = Audit::default();
    for e in errors {
        if !e.clean {
            a.violations.push(v(
                "error.unclean",
                None,
                format!("{} at {:.1}s: {}", e.kind, e.at, e.detail),
            ));
        } else if e.kind == "timeout" {
            // Reported per call, with its id, below.
        } else if !w.faulty(e.at, e.at) && !backpressure(&e.kind) {
            a.violations.push(v(
                "error.unexpected",
                None,
                format!("{} {} at {:.1}s: {}", e.step, e.kind, e.at, e.detail),
            ));
        }
    }
    let mut seen_ids: HashMap<&str, usize> = HashMap::new();
    for r in records {
        a.violations.extend(r.violations.iter().cloned());
        if r.error.as_deref() == Some("timeout") {
            a.violations.push(v(
                "client.hung",
                r.id.as_deref(),
                format!("{:?} call {:.1}s–{:.1}s timed out", r.kind, r.start, r.end),
            ));
        }
        let Some(id) = r.id.as_deref() else { continue };
        *seen_ids.entry(id).or_default() += 1;
        a.checked_ids += 1;
        let (hard, excused) = check_record(r, id, stored.get(id), w);
        a.violations.extend(hard);
        a.tolerated.extend(excused);
    }
    for (id, n) in seen_ids.into_iter().filter(|&(_, n)| n > 1) {
        a.violations.push(v(
            "client.duplicate_id",
            Some(id),
            format!("seen by {n} calls"),
        ));
    }
    a
}

/// One record against its stored response: (violations, findings a lost
/// Redis write explains).
fn check_record(
    r: &Record,
    id: &str,
    stored: Option<&Stored>,
    w: &Windows,
) -> (Vec<Violation>, Vec<Violation>) {
    let faulty = w.faulty(r.start, r.end);
    let (mut hard, mut soft) = (Vec::new(), Vec::new());
    // Findings about the final state, which the AOF may have lost.
    let mut fin = Vec::new();
    let id_ = Some(id);
    let when = format!("{:?} call {:.1}–{:.1}s", r.kind, r.start, r.end);
    if r.seen == Some(Status::Failed) && !faulty {
        hard.push(v("response.failed_outside_fault", id_, when.clone()));
    }
    if r.cancel_answer.is_some_and(|s| !s.is_terminal()) {
        hard.push(v(
            "cancel.not_applied",
            id_,
            format!("cancel answered {:?}", r.cancel_answer),
        ));
    }
    let s = match stored {
        None | Some(Stored::Unreadable(_)) => {
            let why = match stored {
                Some(Stored::Unreadable(e)) => e.clone(),
                _ => "never fetched".into(),
            };
            hard.push(v("store.unreadable", id_, why));
            return (hard, soft);
        }
        Some(Stored::Missing) => {
            let x = v("store.lost", id_, format!("404 after the run; {when}"));
            if w.aof_loss(r.start, r.end) {
                soft.push(x);
            } else {
                hard.push(x);
            }
            return (hard, soft);
        }
        Some(Stored::Found(s)) => s,
    };
    if !s.status.is_terminal() {
        hard.push(v(
            "store.stuck",
            id_,
            format!(
                "{} after the grace period; client saw {:?}; {when}",
                s.status.as_str(),
                r.seen
            ),
        ));
        return (hard, soft);
    }
    if r.cancel_answer == Some(Status::Cancelled) && s.status != Status::Cancelled {
        fin.push(v(
            "cancel.overwritten",
            id_,
            format!("cancel answered cancelled, stored {}", s.status.as_str()),
        ));
    }
    match r.seen {
        Some(seen) if seen != s.status => fin.push(v(
            "store.status_mismatch",
            id_,
            format!(
                "client saw {}, store has {}; {when}",
                seen.as_str(),
                s.status.as_str()
            ),
        )),
        Some(seen) if seen.has_full_text() && s.output_text() != r.text => fin.push(v(
            "store.text_mismatch",
            id_,
            format!(
                "client {:?} vs store {:?}",
                short(&r.text),
                short(&s.output_text())
            ),
        )),
        None if s.status.has_full_text() && !s.output_text().starts_with(&r.text) => fin.push(v(
            "store.prefix_mismatch",
            id_,
            format!(
                "client's partial {:?} vs store {:?}",
                short(&r.text),
                short(&s.output_text())
            ),
        )),
        None if s.status == Status::Failed && !faulty => hard.push(v(
            "response.failed_outside_fault",
            id_,
            format!("stored failed; {when}"),
        )),
        _ => {}
    }
    if w.aof_final(r.end) {
        soft.extend(fin);
    } else {
        hard.extend(fin);
    }
    (hard, soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: &str, text: &str) -> String {
        format!(
            r#"{{"id":"resp_1","status":"{status}","output":[{{"type":"message","content":[{{"type":"output_text","text":"{text}"}}]}}]{}}}"#,
            if status == "failed" {
                r#","error":{"code":"x","message":"y"}"#
            } else {
                ""
            }
        )
    }

    fn record(seen: Option<Status>, text: &str) -> Record {
        Record {
            kind: super::super::mix::Kind::Stream,
            streamed: true,
            router: 0,
            start: 10.0,
            end: 11.0,
            id: Some("resp_1".into()),
            seen,
            text: text.into(),
            ttft_ms: None,
            dropped: seen.is_none(),
            error: None,
            cancel_answer: None,
            violations: vec![],
        }
    }

    fn stored(status: &str, text: &str) -> HashMap<String, Stored> {
        let obj: ResponseObj = serde_json::from_str(&resp(status, text)).unwrap();
        HashMap::from([("resp_1".to_owned(), Stored::Found(obj))])
    }

    fn audit_rules(
        r: Record,
        st: HashMap<String, Stored>,
        w: &Windows,
    ) -> (Vec<&'static str>, usize) {
        let a = audit(&[r], &[], &st, w);
        (
            a.violations.iter().map(|v| v.rule).collect(),
            a.tolerated.len(),
        )
    }

    #[test]
    fn store_rules() {
        let w = Windows::default();
        let ok = audit_rules(
            record(Some(Status::Completed), "abc"),
            stored("completed", "abc"),
            &w,
        );
        assert_eq!(ok, (vec![], 0));
        let text = audit_rules(
            record(Some(Status::Completed), "abc"),
            stored("completed", "abd"),
            &w,
        );
        assert_eq!(text.0, ["store.text_mismatch"]);
        let stuck = audit_rules(
            record(Some(Status::Completed), "abc"),
            stored("in_progress", ""),
            &w,
        );
        assert_eq!(stuck.0, ["store.stuck"]);
        let dropped = audit_rules(record(None, "ab"), stored("completed", "abc"), &w);
        assert_eq!(dropped, (vec![], 0));
        let cancelled = audit_rules(record(None, "ab"), stored("cancelled", "ab"), &w);
        assert_eq!(cancelled, (vec![], 0));
        let failed = audit_rules(record(None, "ab"), stored("failed", "ab"), &w);
        assert_eq!(failed.0, ["response.failed_outside_fault"]);
        let in_fault = Windows {
            faults: vec![(5.0, 10.5)],
            ..Windows::default()
        };
        assert_eq!(
            audit_rules(record(None, "ab"), stored("failed", "ab"), &in_fault),
            (vec![], 0)
        );
        let lost = audit_rules(
            record(Some(Status::Completed), "abc"),
            HashMap::from([("resp_1".into(), Stored::Missing)]),
            &w,
        );
        assert_eq!(lost.0, ["store.lost"]);
        let ended_after_kill = Windows {
            faults: vec![(10.5, 20.0)],
            redis_kills: vec![10.5],
            aof_slow: true,
        };
        let mismatch = audit_rules(
            record(Some(Status::Completed), "abc"),
            stored("failed", "abc"),
            &ended_after_kill,
        );
        assert_eq!(mismatch, (vec!["store.status_mismatch"], 0));
        let ended_before_kill = Windows {
            faults: vec![(11.5, 20.0)],
            redis_kills: vec![11.5],
            aof_slow: true,
        };
        let excused = audit_rules(
            record(Some(Status::Completed), "abc"),
            stored("failed", "abc"),
            &ended_before_kill,
        );
        assert_eq!(excused, (vec![], 1));
        let tolerated = audit_rules(
            record(Some(Status::Completed), "abc"),
            HashMap::from([("resp_1".into(), Stored::Missing)]),
            &ended_before_kill,
        );
        assert_eq!(tolerated, (vec![], 1));
        // Unlogged postponements are tolerated too, but only in that span:
        // a call that ended well before the kill is held to the store.
        let unlogged = Windows {
            aof_slow: false,
            ..ended_before_kill.clone()
        };
        let excused = audit_rules(
            record(Some(Status::Completed), "abc"),
            stored("failed", "abc"),
            &unlogged,
        );
        assert_eq!(excused, (vec![], 1));
        let long_before = Windows {
            redis_kills: vec![11.0 + AOF_LOSS + 1.0],
            ..unlogged
        };
        let strict = audit_rules(
            record(Some(Status::Completed), "abc"),
            stored("failed", "abc"),
            &long_before,
        );
        assert_eq!(strict, (vec!["store.status_mismatch"], 0));
    }
}
