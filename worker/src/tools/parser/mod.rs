//! Incremental tool-call parsing of generated text ([`ToolParser`]).
//!
//! Text streams through as [`Piece::Text`] except what may be a call: the
//! tail that could begin an opener (a few bytes) and a call being written,
//! held until its JSON is complete. A call that turns out malformed (bad
//! JSON, no `name`, an unknown function, over [`MAX_CALL_BYTES`]) is
//! released as text. Whole calls are emitted at once; concatenating every
//! piece's text (`Text`, or a call's `raw`) gives back the input.

use super::ToolFormat;
use serde_json::Value;

/// A call is held back until complete; past this size it is released as
/// text (the model is not writing a call, or not one we could send).
pub const MAX_CALL_BYTES: usize = 64 * 1024;

/// Leading whitespace held back while a leading-JSON format waits to see
/// whether the output starts with a call.
const MAX_LEADING_SPACE: usize = 256;

/// One piece of parsed output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// A complete call: `raw` is the text it was parsed from (empty for the
    /// second and later calls of one Mistral list, whose `raw` the first holds).
    Call {
        name: String,
        arguments: String,
        raw: String,
    },
}

/// Parses one sequence's output as it streams.
pub struct ToolParser {
    format: ToolFormat,
    names: Vec<String>,
    /// Text not yet released: a possible opener prefix, or a call.
    buf: String,
    in_call: bool,
    /// Nothing but whitespace was released since the output (or the last
    /// call) began: a leading call may start here.
    at_start: bool,
    /// `parallel_tool_calls: false`: the first call ends parsing.
    single: bool,
    calls: usize,
}

impl ToolParser {
    /// A parser for `format` that accepts calls to `names` only.
    pub fn new(format: ToolFormat, names: Vec<String>, parallel: bool) -> Self {
        Self {
            format,
            names,
            buf: String::new(),
            in_call: false,
            at_start: true,
            single: !parallel,
            calls: 0,
        }
    }

    /// Calls parsed so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// True once no more calls may follow (`parallel_tool_calls: false`
    /// and one was made): the sequence should end.
    pub fn is_done(&self) -> bool {
        self.single && self.calls > 0
    }

    /// Take in text already sent (a failover's continuation): its calls
    /// count, nothing of it is released again.
    pub fn resume(&mut self, sent: &str) {
        self.push(sent);
        // It was all sent, so none of it can still be a call's beginning.
        self.buf.clear();
        self.in_call = false;
    }

    /// Feed generated text; returns what can be released now.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        if self.is_done() {
            push_text(&mut out, text.to_owned());
            return out;
        }
        self.buf.push_str(text);
        self.drain(&mut out, false);
        out
    }

    /// The output ended: release everything held.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        self.drain(&mut out, true);
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            push_text(&mut out, rest);
        }
        self.in_call = false;
        out
    }

    fn drain(&mut self, out: &mut Vec<Piece>, end: bool) {
        loop {
            if self.is_done() {
                let rest = std::mem::take(&mut self.buf);
                push_text(out, rest);
                return;
            }
            if !self.in_call {
                match self.find_opener() {
                    Some(at) => {
                        let before: String = self.buf.drain(..at).collect();
                        self.release(out, before);
                        self.in_call = true;
                    }
                    None => {
                        let keep = if end { 0 } else { self.held_tail() };
                        let cut = self.buf.len() - keep;
                        let text: String = self.buf.drain(..cut).collect();
                        self.release(out, text);
                        return;
                    }
                }
            }
            match self.parse_call(end) {
                Parse::Incomplete if self.buf.len() <= MAX_CALL_BYTES && !end => return,
                Parse::Incomplete | Parse::Malformed => {
                    // Not a call: its first character is text, and the
                    // search for an opener goes on after it.
                    self.in_call = false;
                    let first = self.buf.chars().next().map_or(0, char::len_utf8);
                    let text: String = self.buf.drain(..first).collect();
                    self.release(out, text);
                    if end && self.buf.is_empty() {
                        return;
                    }
                }
                Parse::Done { len, calls } => {
                    let mut raw: String = self.buf.drain(..len).collect();
                    self.in_call = false;
                    self.at_start = true;
                    for (name, arguments) in calls {
                        self.calls += 1;
                        out.push(Piece::Call {
                            name,
                            arguments,
                            raw: std::mem::take(&mut raw),
                        });
                    }
                }
            }
        }
    }

    fn release(&mut self, out: &mut Vec<Piece>, text: String) {
        if !text.trim_start_matches(self.format.separators()).is_empty() {
            self.at_start = false;
        }
        push_text(out, text);
    }

    /// Where the first opener in `buf` starts.
    fn find_opener(&self) -> Option<usize> {
        let marked = self.format.marker().and_then(|m| self.buf.find(m));
        let leading = if self.at_start {
            self.format.leading().and_then(|c| {
                let skipped = self.buf.trim_start_matches(self.format.separators());
                skipped
                    .starts_with(c)
                    .then(|| self.buf.len() - skipped.len())
            })
        } else {
            None
        };
        match (marked, leading) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes at the end of `buf` to hold back: the longest tail that may
    /// begin the marker, or leading whitespace before a possible call.
    fn held_tail(&self) -> usize {
        let buf = &self.buf;
        if self.at_start
            && self.format.leading().is_some()
            && buf.len() <= MAX_LEADING_SPACE
            && buf.trim_start_matches(self.format.separators()).is_empty()
        {
            return buf.len();
        }
        let Some(marker) = self.format.marker() else {
            return 0;
        };
        (1..marker.len().min(buf.len() + 1))
            .rev()
            .find(|&n| {
                buf.is_char_boundary(buf.len() - n) && marker.starts_with(&buf[buf.len() - n..])
            })
            .unwrap_or(0)
    }

    /// Parse the call at the start of `buf` (an opener is there).
    fn parse_call(&self, end: bool) -> Parse {
        let buf = self.buf.as_str();
        let body_at = match self.format.marker() {
            Some(m) if buf.starts_with(m) => m.len(),
            _ => 0,
        };
        let rest = &buf[body_at..];
        let trimmed = rest.trim_start();
        let json_at = body_at + rest.len() - trimmed.len();
        let Some(first) = trimmed.chars().next() else {
            return Parse::Incomplete;
        };
        let list = first == '[';
        if first != '{' && !(list && self.format.allows_list()) {
            return Parse::Malformed;
        }
        let Some(json_len) = json_value_end(trimmed) else {
            return Parse::Incomplete;
        };
        let json_end = json_at + json_len;
        let Ok(value) = serde_json::from_str::<Value>(&buf[json_at..json_end]) else {
            return Parse::Malformed;
        };
        let items = match value {
            Value::Array(items) if list => items,
            one => vec![one],
        };
        let mut calls = Vec::with_capacity(items.len());
        for item in &items {
            match self.call_of(item) {
                Some(c) => calls.push(c),
                None => return Parse::Malformed,
            }
        }
        if calls.is_empty() {
            return Parse::Malformed;
        }
        let mut len = json_end;
        if let Some(close) = self.format.closer() {
            let after = &buf[json_end..];
            let spaced = after.trim_start();
            let space = after.len() - spaced.len();
            if spaced.starts_with(close) {
                len += space + close.len();
            } else if !end && close.starts_with(spaced) {
                // The closer may still come.
                return Parse::Incomplete;
            }
        }
        Parse::Done { len, calls }
    }

    /// `(name, arguments JSON)` of a call object naming a known function.
    fn call_of(&self, item: &Value) -> Option<(String, String)> {
        let obj = item.as_object()?;
        let name = obj.get("name")?.as_str()?;
        if !self.names.iter().any(|n| n == name) {
            return None;
        }
        let args = obj.get("arguments").or_else(|| obj.get("parameters"));
        let arguments = match args {
            None => "{}".to_owned(),
            Some(Value::Object(_)) => args.map(Value::to_string)?,
            // Some models write the arguments as a JSON string.
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(v @ Value::Object(_)) => v.to_string(),
                _ => return None,
            },
            Some(_) => return None,
        };
        Some((name.to_owned(), arguments))
    }
}

enum Parse {
    Incomplete,
    Malformed,
    Done {
        len: usize,
        calls: Vec<(String, String)>,
    },
}

fn push_text(out: &mut Vec<Piece>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(Piece::Text(last)) = out.last_mut() {
        last.push_str(&text);
    } else {
        out.push(Piece::Text(text));
    }
}

/// The length of the JSON object or array `s` starts with, once its
/// brackets balance (strings and escapes respected); `None` while open.
fn json_value_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests;
