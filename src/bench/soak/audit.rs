//! The soak audit: what must hold for every request, fault or not.
//!
//! Per stream, while reading it ([`check_stream`]):
//! - `stream.sequence`: sequence numbers count up from 0 without gaps;
//! - `stream.unparseable`: every `data:` frame is an event or `[DONE]`;
//! - `stream.terminal_count`: at most one terminal event
//!   (`response.completed` / `.incomplete` / `.failed`), and exactly one when
//!   the stream ended by itself (`stream.no_terminal`: it closed, with or
//!   without `[DONE]`, and no terminal event came; a transport error or the
//!   client hanging up is not "by itself");
//! - `stream.after_terminal`: nothing but `[DONE]` after the terminal event;
//! - `stream.error_not_before_failed`: an `error` event is immediately
//!   followed by `response.failed`, whose response carries `error`
//!   (`stream.failed_without_error`);
//! - `stream.id_mismatch`: the terminal event's id is `response.created`'s;
//! - `stream.text_mismatch`: a completed/incomplete terminal's output text
//!   equals the concatenated deltas.
//!
//! Per failed call ([`audit`]): `error.unclean` when an HTTP error body is
//! not the OpenAI error shape (or a 2xx body is not the object asked for);
//! `client.hung` for a timeout (a call or a background response's polling
//! outlasting `--request-timeout`); `error.unexpected` for any error outside
//! a fault window except 503 and 429 (backpressure is allowed any time).
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
//! A fault window runs from a fault's injection to its recovery plus a
//! settle time (leases expire, probes readmit workers). Redis is killed with
//! SIGKILL and `appendfsync everysec` may lose the last second or two of
//! writes, so losses and status/text mismatches of responses whose calls
//! overlap the [`AOF_LOSS`] seconds before a Redis kill are reported as
//! tolerated, not as violations; everything else about them still holds.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::mix::{ClientError, Record, StreamRead};
use super::wire::{Event, ResponseObj, Status};

/// Seconds before a Redis SIGKILL whose writes may be lost (everysec fsync
/// loses up to ~2 s in Redis's own words).
pub const AOF_LOSS: f64 = 3.0;

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub rule: &'static str,
    pub id: Option<String>,
    pub detail: String,
}

fn v(rule: &'static str, id: Option<&str>, detail: impl Into<String>) -> Violation {
    Violation {
        rule,
        id: id.map(str::to_owned),
        detail: detail.into(),
    }
}

/// The stream-protocol rules over one read stream.
pub fn check_stream(s: &StreamRead) -> Vec<Violation> {
    let id = s.id();
    let id = id.as_deref();
    let mut out = Vec::new();
    for (i, e) in s.events.iter().enumerate() {
        if e.sequence_number != i as u64 {
            out.push(v(
                "stream.sequence",
                id,
                format!("event {i} has sequence_number {}", e.sequence_number),
            ));
            break;
        }
    }
    for g in &s.garbage {
        out.push(v("stream.unparseable", id, g.clone()));
    }
    let terminals: Vec<usize> = (0..s.events.len())
        .filter(|&i| s.events[i].event.terminal().is_some())
        .collect();
    let cut = s.dropped || s.error.is_some();
    match terminals.as_slice() {
        [] if !cut => out.push(v(
            "stream.no_terminal",
            id,
            format!(
                "stream closed{} after {} events without a terminal event",
                if s.done { " with [DONE]" } else { "" },
                s.events.len()
            ),
        )),
        [] => {}
        [t] => {
            if *t + 1 != s.events.len() {
                out.push(v(
                    "stream.after_terminal",
                    id,
                    format!("{} events after the terminal one", s.events.len() - t - 1),
                ));
            }
        }
        many => out.push(v(
            "stream.terminal_count",
            id,
            format!("{} terminal events", many.len()),
        )),
    }
    for (i, e) in s.events.iter().enumerate() {
        if let Event::Error { code, message } = &e.event {
            let next_failed = matches!(
                s.events.get(i + 1).map(|n| &n.event),
                Some(Event::Failed { .. })
            );
            // The last event of a cut stream may be an error whose failure never arrived.
            let last_of_cut = cut && i + 1 == s.events.len();
            if !next_failed && !last_of_cut {
                out.push(v(
                    "stream.error_not_before_failed",
                    id,
                    format!("error {code:?}: {message}"),
                ));
            }
        }
        if let Event::Failed { response } = &e.event {
            let clean = response
                .error
                .as_ref()
                .is_some_and(|e| !e.code.is_empty() && !e.message.is_empty());
            if !clean {
                out.push(v(
                    "stream.failed_without_error",
                    id,
                    "response.failed without an error code and message",
                ));
            }
        }
    }
    if let Some(t) = s.terminal() {
        if id.is_some_and(|c| c != t.id) {
            out.push(v(
                "stream.id_mismatch",
                id,
                format!("terminal event is for {}", t.id),
            ));
        }
        if t.status.has_full_text() && t.output_text() != s.text {
            out.push(v(
                "stream.text_mismatch",
                id,
                format!(
                    "deltas {:?} vs terminal text {:?}",
                    short(&s.text),
                    short(&t.output_text())
                ),
            ));
        }
    }
    out
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Fault windows and Redis kill times, in seconds since the run began.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Windows {
    pub faults: Vec<(f64, f64)>,
    pub redis_kills: Vec<f64>,
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
            a.violations.push(v(
                "client.hung",
                None,
                format!("{} at {:.1}s: {}", e.step, e.at, e.detail),
            ));
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
        let Some(id) = r.id.as_deref() else { continue };
        *seen_ids.entry(id).or_default() += 1;
        a.checked_ids += 1;
        let faulty = w.faulty(r.start, r.end);
        let (hard, soft) = check_record(r, id, stored.get(id), faulty);
        a.violations.extend(hard);
        if w.aof_loss(r.start, r.end) {
            a.tolerated.extend(soft);
        } else {
            a.violations.extend(soft);
        }
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

/// One record against its stored response: (always violations, violations
/// a lost Redis write can explain).
fn check_record(
    r: &Record,
    id: &str,
    stored: Option<&Stored>,
    faulty: bool,
) -> (Vec<Violation>, Vec<Violation>) {
    let (mut hard, mut soft) = (Vec::new(), Vec::new());
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
            soft.push(v("store.lost", id_, format!("404 after the run; {when}")));
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
        soft.push(v(
            "cancel.overwritten",
            id_,
            format!("cancel answered cancelled, stored {}", s.status.as_str()),
        ));
    }
    match r.seen {
        Some(seen) if seen != s.status => soft.push(v(
            "store.status_mismatch",
            id_,
            format!(
                "client saw {}, store has {}; {when}",
                seen.as_str(),
                s.status.as_str()
            ),
        )),
        Some(seen) if seen.has_full_text() && s.output_text() != r.text => soft.push(v(
            "store.text_mismatch",
            id_,
            format!(
                "client {:?} vs store {:?}",
                short(&r.text),
                short(&s.output_text())
            ),
        )),
        None if s.status.has_full_text() && !s.output_text().starts_with(&r.text) => soft.push(v(
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
    (hard, soft)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::soak::wire::Envelope;

    fn ev(json: &str) -> Envelope {
        serde_json::from_str(json).unwrap()
    }

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

    fn stream(events: &[String], done: bool) -> StreamRead {
        StreamRead {
            events: events.iter().map(|e| ev(e)).collect(),
            done,
            text: events
                .iter()
                .filter_map(|e| {
                    serde_json::from_str::<serde_json::Value>(e).ok()?["delta"]
                        .as_str()
                        .map(str::to_owned)
                })
                .collect(),
            ..Default::default()
        }
    }

    fn created(seq: u64) -> String {
        format!(
            r#"{{"type":"response.created","sequence_number":{seq},"response":{}}}"#,
            resp("in_progress", "")
        )
    }

    fn delta(seq: u64, d: &str) -> String {
        format!(r#"{{"type":"response.output_text.delta","sequence_number":{seq},"delta":"{d}"}}"#)
    }

    fn terminal(seq: u64, kind: &str, status: &str, text: &str) -> String {
        format!(
            r#"{{"type":"response.{kind}","sequence_number":{seq},"response":{}}}"#,
            resp(status, text)
        )
    }

    fn rules(s: &StreamRead) -> Vec<&'static str> {
        check_stream(s).iter().map(|v| v.rule).collect()
    }

    #[test]
    fn a_clean_stream_passes() {
        let s = stream(
            &[
                created(0),
                delta(1, "ab"),
                delta(2, "c"),
                terminal(3, "completed", "completed", "abc"),
            ],
            true,
        );
        assert!(rules(&s).is_empty(), "{:?}", check_stream(&s));
    }

    #[test]
    fn stream_rules_fire() {
        let two = stream(
            &[
                created(0),
                terminal(1, "completed", "completed", ""),
                terminal(2, "failed", "failed", ""),
            ],
            true,
        );
        assert_eq!(rules(&two), ["stream.terminal_count"]);
        let none = stream(&[created(0), delta(1, "a")], true);
        assert_eq!(rules(&none), ["stream.no_terminal"]);
        let mut cut = stream(&[created(0), delta(1, "a")], false);
        cut.dropped = true;
        assert!(rules(&cut).is_empty());
        let gap = stream(
            &[
                created(0),
                delta(2, "a"),
                terminal(3, "completed", "completed", "b"),
            ],
            true,
        );
        assert_eq!(rules(&gap), ["stream.sequence", "stream.text_mismatch"]);
        let err = r#"{"type":"error","sequence_number":1,"code":"x","message":"m"}"#.to_owned();
        let ok = stream(
            &[created(0), err.clone(), terminal(2, "failed", "failed", "")],
            true,
        );
        assert!(rules(&ok).is_empty());
        let bad = stream(
            &[
                created(0),
                err,
                delta(2, "a"),
                terminal(3, "completed", "completed", "a"),
            ],
            true,
        );
        assert_eq!(rules(&bad), ["stream.error_not_before_failed"]);
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
            redis_kills: vec![],
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
        let aof = Windows {
            faults: vec![(11.5, 20.0)],
            redis_kills: vec![11.5],
        };
        let tolerated = audit_rules(
            record(Some(Status::Completed), "abc"),
            HashMap::from([("resp_1".into(), Stored::Missing)]),
            &aof,
        );
        assert_eq!(tolerated, (vec![], 1));
    }
}
