//! One streamed call: reading its SSE body (text, TTFT, an optional
//! hang-up after some deltas) and the protocol rules every stream must keep.
//!
//! The rules ([`check_stream`]):
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

use std::time::Instant;

use futures::StreamExt;

use super::audit::{short, v, Violation};
use super::http::CallErr;
use super::wire::{Envelope, Event, Frame, ResponseObj, SseParser};

/// What reading one stream gave.
#[derive(Debug, Default)]
pub struct StreamRead {
    pub events: Vec<Envelope>,
    pub garbage: Vec<String>,
    pub done: bool,
    pub text: String,
    pub ttft_ms: Option<f64>,
    /// The client hung up on purpose.
    pub dropped: bool,
    /// A transport error (or timeout) cut the stream.
    pub error: Option<CallErr>,
}

impl StreamRead {
    /// The response id of `response.created`.
    pub fn id(&self) -> Option<String> {
        self.events.iter().find_map(|e| match &e.event {
            Event::Created { response } => Some(response.id.clone()),
            _ => None,
        })
    }

    /// The first terminal event's response.
    pub fn terminal(&self) -> Option<&ResponseObj> {
        self.events.iter().find_map(|e| e.event.terminal())
    }
}

pub async fn read_stream(
    resp: reqwest::Response,
    t0: Instant,
    drop_after: Option<u64>,
) -> StreamRead {
    let mut out = StreamRead::default();
    let mut parser = SseParser::default();
    let mut body = resp.bytes_stream();
    let mut deltas = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                out.error = Some(CallErr::from_reqwest(&e));
                break;
            }
        };
        for frame in parser.push(&chunk) {
            match frame {
                Frame::Done => out.done = true,
                Frame::Garbage(g) => out.garbage.push(g),
                Frame::Event(env) => {
                    if let Event::Delta { delta } = &env.event {
                        out.ttft_ms.get_or_insert(t0.elapsed().as_secs_f64() * 1e3);
                        out.text.push_str(delta);
                        deltas += 1;
                    }
                    out.events.push(*env);
                }
            }
        }
        let ended = out.terminal().is_some();
        if !ended && drop_after.is_some_and(|n| deltas >= n) {
            out.dropped = true;
            break; // dropping `body` closes the connection
        }
    }
    if !out.dropped && out.error.is_none() && parser.leftover() > 0 {
        out.garbage.push(format!(
            "{} bytes after the last complete frame",
            parser.leftover()
        ));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
