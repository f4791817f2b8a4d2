//! The JSON Schema of a forced call (`tool_choice` `required` or a named
//! function), from which the grammar module builds the grammar that makes
//! the model write one syntactically valid call whose arguments match the
//! function's `parameters`.

use super::ToolFormat;
use serde_json::Value;
use spindle_proto::tools::{FunctionTool, ToolChoice};

/// Why no call can be forced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForcedError {
    #[error("tool_choice names function {0:?}, which is not among the tools")]
    UnknownFunction(String),
    #[error("function {name:?}: its parameters use {feature}, which constrained generation cannot enforce")]
    Unsupported { name: String, feature: String },
}

/// The schema every forced call must match, as JSON text, or `None` when
/// the choice forces nothing (`auto`, `none`). Text, not a `Value`: the
/// converter keeps properties in the order it reads them, and `name` must
/// come first (the model picks the function, then writes its arguments;
/// `Value` maps serialize sorted).
pub fn call_schema(
    tools: &[FunctionTool],
    choice: &ToolChoice,
    format: ToolFormat,
) -> Result<Option<String>, ForcedError> {
    let key = format.arguments_key();
    let chosen: Vec<&FunctionTool> = match choice {
        ToolChoice::None | ToolChoice::Auto => return Ok(None),
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function { name } => match tools.iter().find(|t| &t.name == name) {
            Some(t) => vec![t],
            None => return Err(ForcedError::UnknownFunction(name.clone())),
        },
    };
    for t in &chosen {
        if let Some(feature) = spindle_proto::schema::unsupported(&t.parameters) {
            return Err(ForcedError::Unsupported {
                name: t.name.clone(),
                feature,
            });
        }
    }
    let one = |t: &FunctionTool, base: String| {
        let mut params = t.parameters.clone();
        rebase_refs(&mut params, &base);
        let name = Value::String(t.name.clone());
        format!(
            r#"{{"type":"object","properties":{{"name":{{"const":{name}}},"{key}":{params}}},"required":["name","{key}"],"additionalProperties":false}}"#
        )
    };
    Ok(match chosen.as_slice() {
        [] => None,
        [t] => Some(one(t, format!("/properties/{key}"))),
        many => {
            let alternatives: Vec<String> = many
                .iter()
                .enumerate()
                .map(|(i, t)| one(t, format!("/anyOf/{i}/properties/{key}")))
                .collect();
            Some(format!(r#"{{"anyOf":[{}]}}"#, alternatives.join(",")))
        }
    })
}

/// The grammar rule (GBNF) around a call object rule named `call`: the
/// format's markers, which the model must write too.
pub fn wrap(format: ToolFormat, call: &str) -> String {
    match format {
        ToolFormat::Hermes => format!("\"<tool_call>\\n\" {call} \"\\n</tool_call>\""),
        // The list's marker is a control token in Mistral vocabularies (the
        // parser accepts a leading list): write the list alone.
        ToolFormat::Mistral => format!("\"[\" {call} \"]\""),
        ToolFormat::Llama3 | ToolFormat::Json => call.to_owned(),
    }
}

/// Point the local `$ref`s of a schema embedded at `base` (a JSON pointer)
/// at their new place.
fn rebase_refs(v: &mut Value, base: &str) {
    match v {
        Value::Object(map) => {
            for (k, sub) in map.iter_mut() {
                match sub {
                    Value::String(r) if k == "$ref" && r.starts_with("#/") => {
                        *r = format!("#{base}{}", &r[1..]);
                    }
                    _ => rebase_refs(sub, base),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| rebase_refs(i, base)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str, parameters: Value) -> FunctionTool {
        FunctionTool {
            name: name.into(),
            description: None,
            parameters,
            strict: true,
        }
    }

    #[test]
    fn named_function_schema_pins_the_name_and_rebases_refs() {
        let params = json!({"type": "object", "properties": {"p": {"$ref": "#/$defs/p"}}, "$defs": {"p": {"type": "integer"}}});
        let tools = [tool("a", json!({"type": "object"})), tool("b", params)];
        let choice = ToolChoice::Function { name: "b".into() };
        let text = call_schema(&tools, &choice, ToolFormat::Llama3)
            .unwrap()
            .unwrap();
        assert!(
            text.find("\"name\"") < text.find("\"parameters\""),
            "{text}"
        );
        let s: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(s["properties"]["name"]["const"], "b");
        assert_eq!(
            s["properties"]["parameters"]["properties"]["p"]["$ref"],
            "#/properties/parameters/$defs/p"
        );
        assert_eq!(spindle_proto::schema::unsupported(&s), None);
        let all = call_schema(&tools, &ToolChoice::Required, ToolFormat::Hermes)
            .unwrap()
            .unwrap();
        let all: Value = serde_json::from_str(&all).unwrap();
        assert_eq!(all["anyOf"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            all["anyOf"][1]["properties"]["arguments"]["properties"]["p"]["$ref"],
            "#/anyOf/1/properties/arguments/$defs/p"
        );
        assert_eq!(
            call_schema(&tools, &ToolChoice::Auto, ToolFormat::Hermes),
            Ok(None)
        );
    }

    #[test]
    fn unknown_functions_and_unsupported_parameters_are_refused() {
        let tools = [tool(
            "a",
            json!({"type": "object", "properties": {"x": {"not": {}}}}),
        )];
        let missing = ToolChoice::Function { name: "zz".into() };
        assert!(matches!(
            call_schema(&tools, &missing, ToolFormat::Hermes),
            Err(ForcedError::UnknownFunction(_))
        ));
        let err = call_schema(&tools, &ToolChoice::Required, ToolFormat::Hermes).unwrap_err();
        assert!(err.to_string().contains("\"not\""), "{err}");
    }
}
