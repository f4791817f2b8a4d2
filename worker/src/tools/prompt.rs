//! How tools, calls and results reach the chat template.
//!
//! A template that renders tools itself gets them in the Hugging Face
//! shape ([`hf_tools`], [`hf_tool_calls`]). For one that does not (ChatML,
//! SmolLM2), [`fallback_messages`] writes everything as message text in the
//! syntax the parser reads back (Hermes unless `--tool-call-format` says
//! otherwise): a system block listing the tools and how to call them,
//! assistant calls as `<tool_call>` blocks and tool results as
//! `<tool_response>` blocks in a user turn. Being message text,
//! none of it can produce special tokens.

use super::ToolFormat;
use serde_json::{json, Value};
use spindle_proto::tools::{FunctionTool, ToolCall};
use spindle_proto::ChatMessage;

/// Tools as chat templates expect them.
pub fn hf_tools(tools: &[FunctionTool]) -> Value {
    tools
        .iter()
        .map(|t| {
            let mut function = json!({"name": t.name, "parameters": t.parameters});
            if let Some(d) = &t.description {
                function["description"] = json!(d);
            }
            json!({"type": "function", "function": function})
        })
        .collect()
}

/// A call's arguments as a JSON object when they parse as one (what
/// templates iterate or `tojson`), else the text as is.
fn arguments_value(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::String(arguments.to_owned()),
    }
}

/// An assistant turn's calls as chat templates expect them.
pub fn hf_tool_calls(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .map(|c| {
            json!({
                "id": c.call_id,
                "type": "function",
                "function": {"name": c.name, "arguments": arguments_value(&c.arguments)},
            })
        })
        .collect()
}

/// The system block that shows `tools` to a model whose template does
/// not, with the call syntax of `format`.
pub fn tools_block(tools: &[FunctionTool], format: ToolFormat) -> String {
    let mut s = String::from(
        "You may call one or more functions to assist with the user query. \
         Function signatures are within <tools></tools> XML tags:\n<tools>\n",
    );
    for t in hf_tools(tools).as_array().into_iter().flatten() {
        s.push_str(&t.to_string());
        s.push('\n');
    }
    s.push_str("</tools>\n");
    s.push_str(match format {
        ToolFormat::Hermes => {
            "For each function call, return a json object with function name and \
             arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
             {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
        }
        ToolFormat::Llama3 => {
            "To call a function, answer with only a json object:\n\
             {\"name\": <function-name>, \"parameters\": <args-json-object>}"
        }
        ToolFormat::Mistral => {
            "To call functions, answer with [TOOL_CALLS] and a json list:\n\
             [TOOL_CALLS][{\"name\": <function-name>, \"arguments\": <args-json-object>}]"
        }
        ToolFormat::Json => {
            "To call a function, answer with only a json object:\n\
             {\"name\": <function-name>, \"arguments\": <args-json-object>}"
        }
    });
    s
}

/// A call as the model would write it in `format`.
fn call_text(c: &ToolCall, format: ToolFormat) -> String {
    // Name first, as the system block shows it (maps serialize sorted).
    let name = Value::String(c.name.clone());
    let arguments = arguments_value(&c.arguments);
    let key = format.arguments_key();
    let call = format!("{{\"name\": {name}, \"{key}\": {arguments}}}");
    match format {
        ToolFormat::Hermes => format!("<tool_call>\n{call}\n</tool_call>"),
        ToolFormat::Mistral => format!("[TOOL_CALLS][{call}]"),
        ToolFormat::Llama3 | ToolFormat::Json => call,
    }
}

/// `messages` with tools, calls and results written as text (calls in
/// `format`, results as `<tool_response>` blocks) for a template that
/// renders none of them. `tools` is empty when no tools are offered this
/// turn (history may still hold calls).
pub fn fallback_messages(
    messages: &[ChatMessage],
    tools: &[FunctionTool],
    format: ToolFormat,
) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    if !tools.is_empty() {
        let block = tools_block(tools, format);
        match messages.first() {
            Some(m) if m.role == "system" => {
                out.push(ChatMessage::text(
                    "system",
                    format!("{}\n\n{block}", m.content),
                ));
            }
            _ => out.push(ChatMessage::text("system", block)),
        }
    }
    let skip =
        usize::from(!tools.is_empty() && messages.first().is_some_and(|m| m.role == "system"));
    for m in &messages[skip..] {
        if m.role == "tool" {
            let response = format!("<tool_response>\n{}\n</tool_response>", m.content);
            // Consecutive results share one user turn (roles alternate).
            match out.last_mut() {
                Some(last) if last.role == "user" && last.content.ends_with("</tool_response>") => {
                    last.content.push('\n');
                    last.content.push_str(&response);
                }
                _ => out.push(ChatMessage::text("user", response)),
            }
            continue;
        }
        let mut content = m.content.clone();
        for c in &m.tool_calls {
            if !content.is_empty() {
                content.push('\n');
            }
            content.push_str(&call_text(c, format));
        }
        out.push(ChatMessage::text(m.role.clone(), content));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_writes_tools_calls_and_results_as_text() {
        let tools = vec![FunctionTool {
            name: "get_weather".into(),
            description: Some("Weather of a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            strict: false,
        }];
        let call = ToolCall {
            call_id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        };
        let messages = vec![
            ChatMessage::text("system", "Be brief."),
            ChatMessage::text("user", "Weather in Paris and Rome?"),
            ChatMessage {
                tool_calls: vec![call.clone(), call],
                ..ChatMessage::text("assistant", "")
            },
            ChatMessage {
                tool_call_id: Some("call_1".into()),
                ..ChatMessage::text("tool", "18C")
            },
            ChatMessage {
                tool_call_id: Some("call_1".into()),
                ..ChatMessage::text("tool", "21C")
            },
        ];
        let out = fallback_messages(&messages, &tools, ToolFormat::Hermes);
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(out[0].content.starts_with("Be brief.\n\nYou may call"));
        assert!(
            out[0].content.contains(r#""name":"get_weather""#),
            "{}",
            out[0].content
        );
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>"
        );
        assert_eq!(
            out[3].content,
            "<tool_response>\n18C\n</tool_response>\n<tool_response>\n21C\n</tool_response>"
        );
        // Without tools this turn, history is still text, and no block is added.
        let plain = fallback_messages(&messages, &[], ToolFormat::Hermes);
        assert_eq!(plain.len(), 4);
        assert_eq!(plain[0].content, "Be brief.");
        // Another format's syntax, in the block and the history alike.
        let mistral = fallback_messages(&messages, &tools, ToolFormat::Mistral);
        assert!(mistral[0].content.ends_with(
            "[TOOL_CALLS][{\"name\": <function-name>, \"arguments\": <args-json-object>}]"
        ));
        assert!(mistral[2]
            .content
            .starts_with("[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {"));
        let llama = fallback_messages(&messages, &tools, ToolFormat::Llama3);
        assert!(llama[2]
            .content
            .starts_with("{\"name\": \"get_weather\", \"parameters\": {"));
    }

    #[test]
    fn hf_shapes() {
        let calls = hf_tool_calls(&[ToolCall {
            call_id: "c".into(),
            name: "f".into(),
            arguments: "not json".into(),
        }]);
        assert_eq!(calls[0]["function"]["arguments"], "not json");
        assert_eq!(calls[0]["id"], "c");
    }
}
