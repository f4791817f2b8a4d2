//! Which JSON Schemas the worker's grammar can enforce.
//!
//! llama.cpp's `json_schema_to_grammar` turns a schema into a GBNF grammar;
//! some keywords have no grammar form. A schema that uses one is refused
//! with a 400 naming it, rather than enforced in part.

use serde_json::Value;

/// Keywords with no grammar form.
const UNSUPPORTED: &[&str] = &[
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "uniqueItems",
    "multipleOf",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "patternProperties",
];

/// The first feature of `schema` the grammar cannot express, as
/// `keyword at path`; `None` when all of it can be enforced.
pub fn unsupported(schema: &Value) -> Option<String> {
    walk(schema, "$", 0)
}

/// Deeper schemas are refused too: the grammar grows with them.
const MAX_DEPTH: usize = 32;

fn walk(v: &Value, path: &str, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return Some(format!("nesting deeper than {MAX_DEPTH} at {path}"));
    }
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                // Values of these are data, not schemas.
                if matches!(k.as_str(), "enum" | "const" | "default" | "examples") {
                    continue;
                }
                if UNSUPPORTED.contains(&k.as_str()) {
                    return Some(format!("'{k}' at {path}"));
                }
                if let Some(Value::String(r)) = (k == "$ref").then_some(child) {
                    if !r.starts_with('#') {
                        return Some(format!("a remote '$ref' ({r}) at {path}"));
                    }
                }
                let at = format!("{path}.{k}");
                let found = match (k.as_str(), child) {
                    // Maps from names (which may look like keywords) to schemas.
                    ("properties" | "$defs" | "definitions", Value::Object(named)) => named
                        .iter()
                        .find_map(|(n, s)| walk(s, &format!("{at}.{n}"), depth + 1)),
                    _ => walk(child, &at, depth + 1),
                };
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| walk(x, &format!("{path}[{i}]"), depth + 1)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_first_unsupported_feature() {
        let ok = json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"enum": ["a", "not"]}}}, "required": ["n"]});
        assert_eq!(unsupported(&ok), None);
        let bad = json!({"type": "object", "properties": {"n": {"not": {"type": "string"}}}});
        let found = unsupported(&bad).unwrap();
        assert!(
            found.contains("'not'") && found.contains("$.properties.n"),
            "{found}"
        );
        let remote = json!({"$ref": "https://example.com/s.json"});
        assert!(unsupported(&remote).unwrap().contains("remote"));
        // A property may be named like a keyword.
        let named = json!({"type": "object", "properties": {"not": {"type": "string"}}});
        assert_eq!(unsupported(&named), None);
    }
}
