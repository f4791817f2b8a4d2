//! Fixtures for every format, malformed and partial calls, and a
//! property test: any input, cut anywhere, never panics and loses nothing.

use super::*;
use proptest::prelude::*;

fn parser(format: ToolFormat) -> ToolParser {
    ToolParser::new(format, vec!["get_weather".into(), "add".into()], true)
}

/// Feed `chunks` one by one, then finish.
fn run(p: &mut ToolParser, chunks: &[&str]) -> Vec<Piece> {
    let mut out = Vec::new();
    for c in chunks {
        for piece in p.push(c) {
            match (out.last_mut(), piece) {
                (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
                (_, piece) => out.push(piece),
            }
        }
    }
    for piece in p.finish() {
        match (out.last_mut(), piece) {
            (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
            (_, piece) => out.push(piece),
        }
    }
    out
}

fn chars(s: &str) -> Vec<String> {
    s.chars().map(String::from).collect()
}

fn call(name: &str, arguments: &str, raw: &str) -> Piece {
    Piece::Call {
        name: name.into(),
        arguments: arguments.into(),
        raw: raw.into(),
    }
}

fn text(t: &str) -> Piece {
    Piece::Text(t.into())
}

#[test]
fn hermes_calls_between_text_streamed_one_character_at_a_time() {
    let out_text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris <3\"}}\n</tool_call>\n<tool_call>{\"arguments\": {\"a\": 1, \"b\": 2}, \"name\": \"add\"}</tool_call>";
    let mut p = parser(ToolFormat::Hermes);
    let pieces = chars(out_text);
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let out = run(&mut p, &refs);
    assert_eq!(
        out,
        vec![
            text("Let me check.\n"),
            call(
                "get_weather",
                r#"{"city":"Paris <3"}"#,
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris <3\"}}\n</tool_call>"
            ),
            text("\n"),
            call(
                "add",
                r#"{"a":1,"b":2}"#,
                "<tool_call>{\"arguments\": {\"a\": 1, \"b\": 2}, \"name\": \"add\"}</tool_call>"
            ),
        ]
    );
    assert_eq!(p.calls(), 2);
}

#[test]
fn text_that_only_looks_like_a_marker_is_released() {
    let mut p = parser(ToolFormat::Hermes);
    // "<tool" is held until it cannot be the marker any more.
    assert_eq!(p.push("a <tool"), vec![text("a ")]);
    assert_eq!(p.push("box> b"), vec![text("<toolbox> b")]);
    assert_eq!(run(&mut p, &["x < y"]), vec![text("x < y")]);
}

#[test]
fn malformed_hermes_calls_are_text() {
    for bad in [
        "<tool_call>not json</tool_call> after",
        "<tool_call>{\"name\": \"unknown_fn\", \"arguments\": {}}</tool_call>",
        "<tool_call>{\"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"add\", \"arguments\": 5}</tool_call>",
        "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1",
    ] {
        let mut p = parser(ToolFormat::Hermes);
        assert_eq!(run(&mut p, &[bad]), vec![text(bad)], "{bad}");
        assert_eq!(p.calls(), 0);
    }
}

#[test]
fn a_call_cut_before_its_closer_still_counts() {
    let mut p = parser(ToolFormat::Hermes);
    let out = run(
        &mut p,
        &["<tool_call>{\"name\": \"add\", \"arguments\": {}}\n</tool"],
    );
    assert_eq!(
        out,
        vec![
            call(
                "add",
                "{}",
                "<tool_call>{\"name\": \"add\", \"arguments\": {}}"
            ),
            text("\n</tool")
        ]
    );
}

#[test]
fn llama3_json_with_parameters_and_python_tag() {
    let mut p = parser(ToolFormat::Llama3);
    let out = run(
        &mut p,
        &[
            "  {\"name\": \"add\", ",
            "\"parameters\": {\"a\": 1}}",
            "; {\"name\": \"add\", \"parameters\": {}}",
        ],
    );
    assert_eq!(
        out,
        vec![
            text("  "),
            call(
                "add",
                r#"{"a":1}"#,
                "{\"name\": \"add\", \"parameters\": {\"a\": 1}}"
            ),
            text("; "),
            call("add", "{}", "{\"name\": \"add\", \"parameters\": {}}"),
        ]
    );
    let mut p = parser(ToolFormat::Llama3);
    let out = run(
        &mut p,
        &["<|python_tag|>{\"name\": \"add\", \"parameters\": {}}"],
    );
    assert_eq!(
        out,
        vec![call(
            "add",
            "{}",
            "<|python_tag|>{\"name\": \"add\", \"parameters\": {}}"
        )]
    );
    // JSON later in the text is not a call.
    let mut p = parser(ToolFormat::Llama3);
    let later = "Sure: {\"name\": \"add\", \"parameters\": {}}";
    assert_eq!(run(&mut p, &[later]), vec![text(later)]);
}

#[test]
fn mistral_lists_with_and_without_the_marker() {
    let list = "[{\"name\": \"add\", \"arguments\": {\"a\": 1}}, {\"name\": \"get_weather\", \"arguments\": {}}]";
    for prefix in ["", "[TOOL_CALLS]", "ok [TOOL_CALLS] "] {
        let mut p = parser(ToolFormat::Mistral);
        let out = run(&mut p, &[prefix, list]);
        let mut want = Vec::new();
        if prefix.starts_with("ok") {
            want.push(text("ok "));
        }
        let raw = format!("{}{list}", prefix.trim_start_matches("ok "));
        want.push(call("add", r#"{"a":1}"#, &raw));
        want.push(call("get_weather", "{}", ""));
        assert_eq!(out, want, "{prefix}");
    }
    let mut p = parser(ToolFormat::Mistral);
    let bad = "[TOOL_CALLS][{\"name\": \"add\"}, 3]";
    assert_eq!(run(&mut p, &[bad]), vec![text(bad)]);
}

#[test]
fn plain_json_call_at_the_start_only() {
    let mut p = parser(ToolFormat::Json);
    let out = run(
        &mut p,
        &["{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 2}\"}"],
    );
    assert_eq!(out.len(), 1);
    assert!(
        matches!(&out[0], Piece::Call { name, arguments, .. } if name == "add" && arguments == r#"{"a":2}"#)
    );
    let mut p = parser(ToolFormat::Json);
    let plain = "{\"answer\": 42}";
    assert_eq!(run(&mut p, &[plain]), vec![text(plain)]);
}

#[test]
fn one_call_only_without_parallel_calls() {
    let mut p = ToolParser::new(ToolFormat::Hermes, vec!["add".into()], false);
    let first = "<tool_call>{\"name\": \"add\", \"arguments\": {}}</tool_call>";
    let out = p.push(&format!("{first}<tool_call>"));
    assert_eq!(out, vec![call("add", "{}", first), text("<tool_call>")]);
    assert!(p.is_done());
}

#[test]
fn held_back_text_is_bounded() {
    let mut p = parser(ToolFormat::Hermes);
    let mut released = 0;
    let body = "x".repeat(1000);
    released += p
        .push("<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": \"")
        .len();
    for _ in 0..(MAX_CALL_BYTES / 1000 + 2) {
        released += p.push(&body).len();
    }
    assert!(released > 0, "an endless call is released as text");
    assert!(p.buf.len() <= MAX_CALL_BYTES);
}

#[test]
fn resuming_counts_the_calls_already_sent() {
    let mut p = parser(ToolFormat::Hermes);
    p.resume("Sure. <tool_call>{\"name\": \"add\", \"arguments\": {}}</tool_call> <tool");
    assert_eq!(p.calls(), 1);
    assert_eq!(
        p.push("box"),
        vec![text("box")],
        "the sent tail is not held"
    );
}

fn format_strategy() -> impl Strategy<Value = ToolFormat> {
    prop_oneof![
        Just(ToolFormat::Hermes),
        Just(ToolFormat::Llama3),
        Just(ToolFormat::Mistral),
        Just(ToolFormat::Json),
    ]
}

/// Fragments that steer the input towards markers and JSON.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("<tool_call>".to_owned()),
        Just("</tool_call>".to_owned()),
        Just("[TOOL_CALLS]".to_owned()),
        Just("<|python_tag|>".to_owned()),
        Just("{\"name\": \"add\", \"arguments\": {\"a\": 1}}".to_owned()),
        Just("[{\"name\": \"add\", \"parameters\": {}}]".to_owned()),
        Just("{\"name\": \"add\"".to_owned()),
        Just("\"\\".to_owned()),
        Just(" ".to_owned()),
        "[{}\\[\\]\"\\\\<>a-z é]{0,6}",
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn never_panics_and_loses_nothing(
        format in format_strategy(),
        parallel in any::<bool>(),
        frags in proptest::collection::vec(fragment(), 0..12),
        cuts in proptest::collection::vec(0usize..8, 0..12),
    ) {
        let input: String = frags.concat();
        // Split the input at arbitrary character boundaries.
        let mut chunks = Vec::new();
        let mut rest = input.as_str();
        for c in cuts {
            let at = rest.char_indices().nth(c).map_or(rest.len(), |(i, _)| i);
            chunks.push(&rest[..at]);
            rest = &rest[at..];
        }
        chunks.push(rest);
        let mut p = ToolParser::new(format, vec!["add".into()], parallel);
        let mut seen = String::new();
        let mut pieces = Vec::new();
        for c in &chunks {
            pieces.extend(p.push(c));
        }
        pieces.extend(p.finish());
        for piece in &pieces {
            match piece {
                Piece::Text(t) => seen.push_str(t),
                Piece::Call { raw, arguments, .. } => {
                    seen.push_str(raw);
                    prop_assert!(serde_json::from_str::<Value>(arguments).is_ok());
                }
            }
        }
        prop_assert_eq!(seen, input);
    }
}
