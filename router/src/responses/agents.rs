//! `tools`, `tool_choice`, `parallel_tool_calls` and `text.format` of a
//! create request, validated once into what the worker enforces (a
//! [`OutputSpec`]: the tools it shows the model, which call it forces, the
//! shape the text must have) and what the response object echoes.
//!
//! Echoes follow the Open Responses schema: every `FunctionTool` key is
//! present (`strict` defaults to `true`), and a `json_schema` format echoes
//! `schema: null`, as its `JsonSchemaResponseFormat` requires (OpenAI's API
//! echoes the schema itself; Spindle follows the specification).

use serde::Deserialize;
use serde_json::{json, Map, Value};
use spindle_proto::openai::tools as openai_tools;
use spindle_proto::tools::{self, OutputFormat, OutputSpec, ToolChoice};

use crate::error::{ApiError, ApiResult};
use crate::types::{CreateResponseRequest, FunctionTool};

/// A validated request's tools and format.
pub(super) struct Agentic {
    /// Echoed as `tools`.
    pub tools: Vec<FunctionTool>,
    /// Echoed as `tool_choice`.
    pub tool_choice: Value,
    /// Echoed as `text`.
    pub text: Value,
    /// Sent to the worker.
    pub spec: OutputSpec,
}

/// Validates the request's tools, tool choice and text format.
pub(super) fn validate(req: &CreateResponseRequest) -> ApiResult<Agentic> {
    let tools = validate_tools(req.tools.as_deref().unwrap_or_default())?;
    let (tool_choice, choice, allowed) = validate_choice(req.tool_choice.as_ref(), &tools)?;
    let (text, format) = validate_format(req.text.as_ref().and_then(|t| t.format.as_ref()))?;
    let offered = tools
        .iter()
        .filter(|t| allowed.as_ref().is_none_or(|a| a.contains(&t.name)))
        .map(|t| tools::FunctionTool {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: t.parameters.clone().map_or_else(
                || json!({"type": "object", "properties": {}}),
                Value::Object,
            ),
            strict: t.strict.unwrap_or(true),
        })
        .collect();
    Ok(Agentic {
        tools,
        tool_choice,
        text,
        spec: OutputSpec {
            tools: offered,
            tool_choice: choice,
            parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
            format,
        },
    })
}

/// A schema the grammar can enforce (400 `unsupported_schema` otherwise).
fn check_schema(schema: &Value, param: &str) -> ApiResult<()> {
    Ok(openai_tools::check_schema(schema, param)?)
}

/// A name as OpenAI allows it (1 to 64 of `a-zA-Z0-9_-`).
fn check_name(name: &str, param: &str) -> ApiResult<()> {
    Ok(openai_tools::check_name(name, param)?)
}

fn validate_tools(tools: &[Value]) -> ApiResult<Vec<FunctionTool>> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let at = format!("tools[{i}]");
            match tool.get("type").and_then(Value::as_str) {
                Some("function") => {}
                Some(other) => {
                    return Err(ApiError::invalid(
                        format!("tool type '{other}' is not supported; use 'function'"),
                        Some(&format!("{at}.type")),
                    ))
                }
                None => return Err(ApiError::missing(&format!("{at}.type"))),
            }
            let mut tool: FunctionTool = serde_json::from_value(tool.clone()).map_err(|e| {
                ApiError::invalid(format!("invalid function tool at '{at}': {e}"), Some(&at))
            })?;
            check_name(&tool.name, &format!("{at}.name"))?;
            if let Some(p) = &tool.parameters {
                check_schema(&Value::Object(p.clone()), &format!("{at}.parameters"))?;
            }
            tool.strict = Some(tool.strict.unwrap_or(true));
            Ok(tool)
        })
        .collect()
}

/// `tool_choice` as the request may give it.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ChoiceObject {
    Function {
        name: String,
    },
    AllowedTools {
        tools: Vec<ChoiceObject>,
        #[serde(default)]
        mode: Option<String>,
    },
}

/// (echo, choice, the tool names an `allowed_tools` choice keeps).
fn validate_choice(
    choice: Option<&Value>,
    tools: &[FunctionTool],
) -> ApiResult<(Value, ToolChoice, Option<Vec<String>>)> {
    let known = |name: &str, param: &str| {
        if tools.iter().any(|t| t.name == name) {
            Ok(())
        } else {
            Err(ApiError::invalid(
                format!("tool_choice names '{name}', which is not in 'tools'"),
                Some(param),
            ))
        }
    };
    let mode = |m: &str| match m {
        "none" => Some(ToolChoice::None),
        "auto" => Some(ToolChoice::Auto),
        "required" => Some(ToolChoice::Required),
        _ => None,
    };
    let bad = || {
        ApiError::invalid(
            "tool_choice must be 'none', 'auto', 'required', {\"type\": \"function\", \"name\": …} \
             or {\"type\": \"allowed_tools\", \"mode\": …, \"tools\": […]}",
            Some("tool_choice"),
        )
    };
    let needs_tools = |c: &ToolChoice| {
        if tools.is_empty() && matches!(c, ToolChoice::Required | ToolChoice::Function { .. }) {
            Err(ApiError::invalid(
                "tool_choice requires a tool call, but 'tools' is empty",
                Some("tool_choice"),
            ))
        } else {
            Ok(())
        }
    };
    match choice {
        None | Some(Value::Null) => Ok((json!("auto"), ToolChoice::Auto, None)),
        Some(Value::String(s)) => {
            let c = mode(s).ok_or_else(bad)?;
            needs_tools(&c)?;
            Ok((json!(s), c, None))
        }
        Some(v) => match serde_json::from_value::<ChoiceObject>(v.clone()).map_err(|_| bad())? {
            ChoiceObject::Function { name } => {
                known(&name, "tool_choice.name")?;
                let echo = json!({"type": "function", "name": name});
                Ok((echo, ToolChoice::Function { name }, None))
            }
            ChoiceObject::AllowedTools {
                tools: allowed,
                mode: m,
            } => {
                let m = m.unwrap_or_else(|| "auto".into());
                let c = mode(&m).ok_or_else(bad)?;
                let mut names = Vec::new();
                for (i, t) in allowed.into_iter().enumerate() {
                    let ChoiceObject::Function { name } = t else {
                        return Err(bad());
                    };
                    known(&name, &format!("tool_choice.tools[{i}].name"))?;
                    names.push(name);
                }
                if names.is_empty() {
                    return Err(bad());
                }
                needs_tools(&c)?;
                let listed: Vec<Value> = names
                    .iter()
                    .map(|n| json!({"type": "function", "name": n}))
                    .collect();
                let echo = json!({"type": "allowed_tools", "mode": m, "tools": listed});
                Ok((echo, c, Some(names)))
            }
        },
    }
}

/// (echoed `text`, the format the worker enforces).
fn validate_format(format: Option<&Value>) -> ApiResult<(Value, OutputFormat)> {
    let text = |format: Value| json!({ "format": format });
    let Some(f) = format.filter(|f| !f.is_null()) else {
        return Ok((text(json!({"type": "text"})), OutputFormat::Text));
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok((text(json!({"type": "text"})), OutputFormat::Text)),
        Some("json_object") => Ok((
            text(json!({"type": "json_object"})),
            OutputFormat::JsonObject,
        )),
        Some("json_schema") => {
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::missing("text.format.name"))?;
            check_name(name, "text.format.name")?;
            let schema = match f.get("schema") {
                Some(Value::Object(o)) => Value::Object(o.clone()),
                Some(_) => {
                    return Err(ApiError::invalid(
                        "text.format.schema must be a JSON Schema object",
                        Some("text.format.schema"),
                    ))
                }
                None => return Err(ApiError::missing("text.format.schema")),
            };
            check_schema(&schema, "text.format.schema")?;
            let description = f.get("description").and_then(Value::as_str);
            let strict = f.get("strict").and_then(Value::as_bool).unwrap_or(false);
            let echo = Map::from_iter([
                ("type".to_owned(), json!("json_schema")),
                ("name".to_owned(), json!(name)),
                ("description".to_owned(), json!(description)),
                ("schema".to_owned(), Value::Null),
                ("strict".to_owned(), json!(strict)),
            ]);
            Ok((
                text(Value::Object(echo)),
                OutputFormat::JsonSchema { schema },
            ))
        }
        _ => Err(ApiError::invalid(
            "text.format.type must be 'text', 'json_object' or 'json_schema'",
            Some("text.format.type"),
        )),
    }
}
