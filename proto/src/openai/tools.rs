//! Chat Completions' `tools`, `tool_choice`, `parallel_tool_calls` and
//! `response_format` (Completions' too), validated once into the worker's
//! [`OutputSpec`]; and the `tool_calls` of an answer, whole or streamed.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{invalid, InvalidParam};
use crate::tools::{FunctionTool, OutputFormat, OutputSpec, ToolChoice};

/// One entry of `tools`: `{"type": "function", "function": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatTool {
    #[serde(rename = "type")]
    #[schema(pattern = "^function$")]
    pub kind: String,
    pub function: FunctionDef,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// Chat Completions' default is false.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// A call in an answer (`message.tool_calls[i]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: CalledFunction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CalledFunction {
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

/// A streamed piece of a call (`delta.tool_calls[i]`): the first one names
/// it, later ones add argument text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: FunctionDelta,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// A function or format name: 1 to 64 of `a-zA-Z0-9_-`, as OpenAI's API allows.
pub fn check_name(name: &str, param: &str) -> Result<(), InvalidParam> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            param,
            format!("invalid name '{name}': use 1 to 64 letters, digits, '_' or '-'"),
        ))
    }
}

/// A schema the worker's grammar can enforce; otherwise a 400 naming the
/// feature (`unsupported_schema`).
pub fn check_schema(schema: &Value, param: &str) -> Result<(), InvalidParam> {
    match crate::schema::unsupported(schema) {
        Some(feature) => Err(InvalidParam {
            param: Some(param.to_owned()),
            message: format!(
                "'{param}' uses a JSON Schema feature Spindle cannot enforce: {feature}"
            ),
            code: Some("unsupported_schema"),
        }),
        None => Ok(()),
    }
}

/// `response_format`: `text`, `json_object`, or `json_schema` with
/// `{"json_schema": {"name", "schema", "strict"?, "description"?}}`.
pub fn output_format(response_format: Option<&Value>) -> Result<OutputFormat, InvalidParam> {
    let Some(f) = response_format.filter(|f| !f.is_null()) else {
        return Ok(OutputFormat::Text);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(OutputFormat::Text),
        Some("json_object") => Ok(OutputFormat::JsonObject),
        Some("json_schema") => {
            let spec = f.get("json_schema").ok_or_else(|| {
                invalid(
                    "response_format.json_schema",
                    "'response_format.json_schema' is required",
                )
            })?;
            let name = spec.get("name").and_then(Value::as_str).unwrap_or_default();
            check_name(name, "response_format.json_schema.name")?;
            let param = "response_format.json_schema.schema";
            let schema = match spec.get("schema") {
                Some(s @ Value::Object(_)) => s.clone(),
                _ => {
                    return Err(invalid(
                        param,
                        format!("'{param}' must be a JSON Schema object"),
                    ))
                }
            };
            check_schema(&schema, param)?;
            Ok(OutputFormat::JsonSchema { schema })
        }
        _ => Err(invalid(
            "response_format.type",
            "'response_format.type' must be 'text', 'json_object' or 'json_schema'",
        )),
    }
}

/// The worker's spec from a chat request's tool fields and format.
pub fn output_spec(
    tools: Option<&[ChatTool]>,
    tool_choice: Option<&Value>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<&Value>,
) -> Result<OutputSpec, InvalidParam> {
    let mut offered = Vec::new();
    for (i, t) in tools.unwrap_or_default().iter().enumerate() {
        if t.kind != "function" {
            return Err(invalid(
                format!("tools[{i}].type"),
                format!("tool type '{}' is not supported; use 'function'", t.kind),
            ));
        }
        let f = &t.function;
        check_name(&f.name, &format!("tools[{i}].function.name"))?;
        let parameters = match &f.parameters {
            None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                let param = format!("tools[{i}].function.parameters");
                return Err(invalid(
                    &param,
                    format!("'{param}' must be a JSON Schema object"),
                ));
            }
        };
        check_schema(&parameters, &format!("tools[{i}].function.parameters"))?;
        offered.push(FunctionTool {
            name: f.name.clone(),
            description: f.description.clone(),
            parameters,
            strict: f.strict.unwrap_or(false),
        });
    }
    let bad = || {
        invalid(
            "tool_choice",
            "'tool_choice' must be 'none', 'auto', 'required' or \
             {\"type\": \"function\", \"function\": {\"name\": …}}",
        )
    };
    let choice = match tool_choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => return Err(bad()),
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(bad)?;
            if !offered.iter().any(|t| t.name == name) {
                return Err(invalid(
                    "tool_choice.function.name",
                    format!("tool_choice names '{name}', which is not in 'tools'"),
                ));
            }
            ToolChoice::Function {
                name: name.to_owned(),
            }
        }
    };
    if offered.is_empty() && choice == ToolChoice::Required {
        return Err(invalid(
            "tool_choice",
            "tool_choice 'required' needs at least one tool in 'tools'",
        ));
    }
    Ok(OutputSpec {
        tools: offered,
        tool_choice: choice,
        parallel_tool_calls: parallel_tool_calls.unwrap_or(true),
        format: output_format(response_format)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str) -> ChatTool {
        serde_json::from_value(json!({"type": "function", "function": {"name": name,
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}))
        .unwrap()
    }

    #[test]
    fn choices_and_formats_validate_into_the_spec() {
        let tools = [tool("search")];
        let named = json!({"type": "function", "function": {"name": "search"}});
        let spec = output_spec(Some(&tools), Some(&named), Some(false), None).unwrap();
        assert_eq!(
            spec.tool_choice,
            ToolChoice::Function {
                name: "search".into()
            }
        );
        assert!(!spec.parallel_tool_calls && !spec.tools[0].strict);
        let unknown = json!({"type": "function", "function": {"name": "nope"}});
        let e = output_spec(Some(&tools), Some(&unknown), None, None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice.function.name"));
        assert!(output_spec(None, Some(&json!("required")), None, None).is_err());
        let fmt = json!({"type": "json_schema", "json_schema": {"name": "x",
                         "schema": {"type": "object"}}});
        let spec = output_spec(None, None, None, Some(&fmt)).unwrap();
        assert!(matches!(spec.format, OutputFormat::JsonSchema { .. }));
        let bad = json!({"type": "json_schema", "json_schema": {"name": "x",
                         "schema": {"type": "array", "uniqueItems": true}}});
        let e = output_format(Some(&bad)).unwrap_err();
        assert_eq!(e.code, Some("unsupported_schema"));
    }
}
