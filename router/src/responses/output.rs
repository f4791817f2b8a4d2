//! [`Output`]: a response's output items, built from its generation's
//! events, with the stream events that announce them.
//!
//! Text goes into an assistant `message` item, each tool call into a
//! `function_call` item, in the order the model wrote them; each item is
//! opened (`response.output_item.added`), filled (text or argument deltas)
//! and closed (`…done`) before the next one opens, so `output_index` is the
//! item's place in `output`. Log probabilities a generation sent with its
//! text (asked for with `include`) go on each text delta and, all of them,
//! on the message's `output_text` part.

use serde_json::{json, Value};
use spindle_proto::GenerateEvent;

use super::events::ResponseStreamEvent as Ev;
use super::items::{output_message, output_text_part, Phase};
use super::logprobs::{convert, LogProb};
use crate::types::new_id;

/// The item being generated.
enum Open {
    Message {
        id: String,
        text: String,
        logprobs: Vec<LogProb>,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Output items so far.
#[derive(Default)]
pub(super) struct Output {
    done: Vec<Value>,
    open: Option<Open>,
}

/// A `function_call` output item.
pub(super) fn function_call(
    id: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
           "arguments": arguments, "status": status})
}

/// `item` with its `phase` (a message's label, set once it is closed: only
/// then is it known whether a tool call follows).
fn with_phase(mut item: Value, phase: Phase) -> Value {
    item["phase"] = json!(phase);
    item
}

impl Output {
    fn index(&self) -> u32 {
        self.done.len() as u32
    }

    /// Opens an empty message item (a plain-text generation announces it
    /// before its first token).
    pub fn open_message(&mut self) -> Vec<Ev> {
        let mut out = self.close("completed");
        let id = new_id("msg");
        let index = self.index();
        out.push(Ev::OutputItemAdded {
            output_index: index,
            item: output_message(&id, "in_progress", None),
        });
        out.push(Ev::ContentPartAdded {
            item_id: id.clone(),
            output_index: index,
            content_index: 0,
            part: output_text_part("", &[]),
        });
        self.open = Some(Open::Message {
            id,
            text: String::new(),
            logprobs: Vec::new(),
        });
        out
    }

    /// The stream events for one mid-stream generation event.
    pub fn push(&mut self, ev: GenerateEvent) -> Vec<Ev> {
        match ev {
            GenerateEvent::Delta { text, logprobs, .. }
                if text.is_empty() && logprobs.is_empty() =>
            {
                Vec::new()
            }
            GenerateEvent::Delta { text, logprobs, .. } => {
                let mut out = Vec::new();
                if !matches!(self.open, Some(Open::Message { .. })) {
                    out = self.open_message();
                }
                let index = self.index();
                if let Some(Open::Message {
                    id,
                    text: all,
                    logprobs: all_logprobs,
                }) = &mut self.open
                {
                    all.push_str(&text);
                    let logprobs = convert(&logprobs);
                    all_logprobs.extend(logprobs.iter().cloned());
                    out.push(Ev::OutputTextDelta {
                        item_id: id.clone(),
                        output_index: index,
                        content_index: 0,
                        delta: text,
                        logprobs,
                    });
                }
                out
            }
            GenerateEvent::ToolCall { call_id, name, .. } => {
                // Text the model wrote before a call is commentary on it.
                let mut out = self.close_as("completed", Phase::Commentary);
                let id = new_id("fc");
                out.push(Ev::OutputItemAdded {
                    output_index: self.index(),
                    item: function_call(&id, &call_id, &name, "", "in_progress"),
                });
                self.open = Some(Open::Call {
                    id,
                    call_id,
                    name,
                    arguments: String::new(),
                });
                out
            }
            GenerateEvent::ToolArguments { delta, .. } => {
                let index = self.index();
                match &mut self.open {
                    Some(Open::Call { id, arguments, .. }) if !delta.is_empty() => {
                        arguments.push_str(&delta);
                        vec![Ev::FunctionCallArgumentsDelta {
                            item_id: id.clone(),
                            output_index: index,
                            delta,
                        }]
                    }
                    _ => Vec::new(),
                }
            }
            // The Responses API never asks for prompt scores.
            GenerateEvent::Prompt { .. }
            | GenerateEvent::Done { .. }
            | GenerateEvent::Error { .. } => Vec::new(),
        }
    }

    /// Closes the open item with `status` (`completed`, or `incomplete`
    /// when the output was cut), announcing its final form; a message
    /// closed here is the turn's answer (`phase: final_answer`).
    pub fn close(&mut self, status: &str) -> Vec<Ev> {
        self.close_as(status, Phase::FinalAnswer)
    }

    /// [`Output::close`], a message labelled `phase`.
    fn close_as(&mut self, status: &str, phase: Phase) -> Vec<Ev> {
        let output_index = self.index();
        let Some(open) = self.open.take() else {
            return Vec::new();
        };
        let (mut out, item) = match open {
            Open::Message { id, text, logprobs } => (
                vec![
                    Ev::OutputTextDone {
                        item_id: id.clone(),
                        output_index,
                        content_index: 0,
                        text: text.clone(),
                        logprobs: logprobs.clone(),
                    },
                    Ev::ContentPartDone {
                        item_id: id.clone(),
                        output_index,
                        content_index: 0,
                        part: output_text_part(&text, &logprobs),
                    },
                ],
                with_phase(output_message(&id, status, Some((&text, &logprobs))), phase),
            ),
            Open::Call {
                id,
                call_id,
                name,
                arguments,
            } => (
                vec![Ev::FunctionCallArgumentsDone {
                    item_id: id.clone(),
                    output_index,
                    arguments: arguments.clone(),
                }],
                function_call(&id, &call_id, &name, &arguments, status),
            ),
        };
        out.push(Ev::OutputItemDone {
            output_index,
            item: item.clone(),
        });
        self.done.push(item);
        out
    }

    /// Ends the output: the open item closes with `status`; a generation
    /// that produced nothing still answers with an (empty) message.
    pub fn finish(&mut self, status: &str) -> Vec<Ev> {
        let mut out = Vec::new();
        if self.done.is_empty() && self.open.is_none() {
            out = self.open_message();
        }
        out.extend(self.close(status));
        out
    }

    /// The items, an unfinished one as `incomplete` (a failed or cancelled
    /// generation keeps what it produced; no events).
    pub fn into_items(mut self) -> Vec<Value> {
        if let Some(open) = self.open.take() {
            self.done.push(match open {
                Open::Message { id, text, logprobs } => {
                    output_message(&id, "incomplete", Some((&text, &logprobs)))
                }
                Open::Call {
                    id,
                    call_id,
                    name,
                    arguments,
                } => function_call(&id, &call_id, &name, &arguments, "incomplete"),
            });
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(evs: &[Ev]) -> Vec<&'static str> {
        evs.iter().map(Ev::kind).collect()
    }

    #[test]
    fn text_then_a_call_are_two_items_in_order() {
        let mut o = Output::default();
        let mut evs = o.push(GenerateEvent::delta("Let me check.", vec![1]));
        evs.extend(o.push(GenerateEvent::ToolCall {
            index: 0,
            call_id: "call_1".into(),
            name: "get_weather".into(),
            raw: String::new(),
            token_ids: vec![],
        }));
        for part in ["{\"city\":", "\"Paris\"}"] {
            evs.extend(o.push(GenerateEvent::ToolArguments {
                index: 0,
                delta: part.into(),
                raw: String::new(),
                token_ids: vec![],
            }));
        }
        evs.extend(o.finish("completed"));
        assert_eq!(
            kinds(&evs),
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
            ]
        );
        let items = o.into_items();
        assert_eq!(items[0]["type"], "message");
        assert_eq!(
            items[0]["phase"], "commentary",
            "text before a call comments on it"
        );
        assert_eq!(items[1]["type"], "function_call");
        assert_eq!(items[1]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(items[1]["call_id"], "call_1");
        assert_eq!(items[1]["status"], "completed");
        let Ev::OutputItemDone { output_index, .. } = &evs[10] else {
            panic!()
        };
        assert_eq!(*output_index, 1);
    }

    #[test]
    fn nothing_generated_is_one_empty_message_and_a_cut_call_is_incomplete() {
        let mut o = Output::default();
        assert_eq!(o.finish("completed").len(), 5);
        let answer = &o.into_items()[0];
        assert_eq!(answer["content"][0]["text"], "");
        assert_eq!(answer["phase"], "final_answer");
        let mut o = Output::default();
        o.push(GenerateEvent::ToolCall {
            index: 0,
            call_id: "c".into(),
            name: "f".into(),
            raw: String::new(),
            token_ids: vec![],
        });
        assert_eq!(o.into_items()[0]["status"], "incomplete");
    }
}
