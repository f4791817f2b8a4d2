//! Function tools and output constraints on the worker wire.
//!
//! The router validates the OpenAI request once and sends the worker only
//! these typed forms. Everything model-specific (how tools are shown to
//! the model, the tool-call syntax, the grammar that enforces a format or a
//! call) happens in the worker, which owns the chat template.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionTool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
    /// Arguments must match `parameters` exactly (enforced by grammar when
    /// the call is forced).
    #[serde(default)]
    pub strict: bool,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ToolChoice {
    /// Tools are not shown; the model answers in text.
    None,
    /// The model decides.
    #[default]
    Auto,
    /// At least one call, to any of the tools (forced by grammar).
    Required,
    /// One call to this function (forced by grammar).
    Function { name: String },
}

/// The shape the output text must have.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `schema` (a subset the grammar can express:
    /// see `schema::unsupported`).
    JsonSchema { schema: Value },
}

impl OutputFormat {
    pub fn is_text(&self) -> bool {
        matches!(self, Self::Text)
    }
}

/// A call an assistant turn made, as the template renders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub call_id: String,
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

/// What a generation's output may contain: the tools the model may call
/// and the shape of its text. The default is plain text, no tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputSpec {
    /// Functions shown to the model (through its chat template's `tools`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<FunctionTool>,
    pub tool_choice: ToolChoice,
    /// False: at most one call per turn.
    pub parallel_tool_calls: bool,
    /// Constraint on the text (not on tool-call arguments).
    pub format: OutputFormat,
}

impl Default for OutputSpec {
    fn default() -> Self {
        Self {
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: true,
            format: OutputFormat::Text,
        }
    }
}

impl OutputSpec {
    /// True when tools can be called this turn.
    pub fn tools_enabled(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != ToolChoice::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GenerateEvent, GenerateRequest};

    #[test]
    fn output_spec_defaults_to_plain_text_without_tools() {
        let r: GenerateRequest = serde_json::from_str(r#"{"prompt":"x"}"#).unwrap();
        assert_eq!(r.output, OutputSpec::default());
        assert!(r.output.parallel_tool_calls);
        assert!(!r.output.tools_enabled());
    }

    #[test]
    fn choices_and_formats_are_tagged() {
        let c: ToolChoice = serde_json::from_str(r#"{"mode":"function","name":"f"}"#).unwrap();
        assert_eq!(c, ToolChoice::Function { name: "f".into() });
        let f: OutputFormat =
            serde_json::from_str(r#"{"type":"json_schema","schema":{"type":"object"}}"#).unwrap();
        assert!(matches!(f, OutputFormat::JsonSchema { .. }));
        let spec = OutputSpec {
            tools: vec![FunctionTool {
                name: "f".into(),
                description: None,
                parameters: serde_json::json!({"type": "object"}),
                strict: true,
            }],
            tool_choice: ToolChoice::None,
            ..OutputSpec::default()
        };
        assert!(!spec.tools_enabled(), "tool_choice none hides the tools");
    }

    #[test]
    fn tool_events_carry_their_generated_text() {
        let line = r#"{"type":"tool_call","index":0,"call_id":"call_1","name":"f","raw":"<tool_call>","token_ids":[7]}"#;
        let ev: GenerateEvent = serde_json::from_str(line).unwrap();
        assert_eq!(ev.generated(), Some(("<tool_call>", &[7][..])));
        assert!(!ev.is_last());
        let args: GenerateEvent =
            serde_json::from_str(r#"{"type":"tool_arguments","index":0,"delta":"{}"}"#).unwrap();
        assert_eq!(args.generated(), Some(("", &[][..])));
    }
}
