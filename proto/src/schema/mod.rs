//! Which JSON Schemas a worker can enforce by grammar.
//!
//! Workers turn a schema into a llama.cpp grammar with its
//! `json_schema_to_grammar`, which ignores what it cannot express (a
//! `not`, a `multipleOf`, a `\d` in a pattern…) instead of failing, so the
//! output would not be guaranteed to validate. [`unsupported`] names the
//! first such feature; router and worker answer 400 with it. The rules
//! mirror llama.cpp's converter (common/json-schema.cpp and
//! json-schema-to-grammar.cpp of the vendored version).

mod pattern;

use pattern::pattern;
use serde_json::{Map, Value};

/// Largest schema (serialized) a request may constrain output with: the
/// grammar is built per request, and its cost grows with the schema.
pub const MAX_SCHEMA_BYTES: usize = 32 * 1024;

/// Largest count in `minItems`/`maxItems`/`minLength`/`maxLength` and in a
/// pattern's `{m,n}`: the grammar spells a bounded repetition out, one rule
/// per allowed item.
pub const MAX_REPEAT: u64 = 256;

/// Deepest nesting of sub-schemas.
const MAX_DEPTH: usize = 32;

/// Keywords the converter ignores: output would not honour them.
const IGNORED: &[&str] = &[
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
    "multipleOf",
    "$dynamicRef",
    "$recursiveRef",
    "contentSchema",
];

/// Keywords that only describe: ignoring them changes nothing.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "definitions",
    "$anchor",
    "strict",
];

const FORMATS: &[&str] = &[
    "date",
    "time",
    "date-time",
    "uuid",
    "uuid1",
    "uuid2",
    "uuid3",
    "uuid4",
    "uuid5",
];

const TYPES: &[&str] = &[
    "object", "array", "string", "integer", "number", "boolean", "null",
];

/// The first feature of `schema` that grammar-constrained output cannot
/// honour, in words (e.g. `"not" at #/properties/a`), or `None` when the
/// whole schema can be enforced.
pub fn unsupported(schema: &Value) -> Option<String> {
    let size = serde_json::to_string(schema).map_or(usize::MAX, |s| s.len());
    if size > MAX_SCHEMA_BYTES {
        return Some(format!(
            "a schema of {size} bytes (at most {MAX_SCHEMA_BYTES})"
        ));
    }
    let checker = Checker { root: schema };
    checker.node(schema, "#", 0).err()
}

struct Checker<'a> {
    root: &'a Value,
}

type Check = Result<(), String>;

fn at(feature: impl std::fmt::Display, path: &str) -> String {
    format!("{feature} at {path}")
}

fn count(obj: &Map<String, Value>, key: &str, path: &str) -> Check {
    match obj.get(key) {
        None => Ok(()),
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_REPEAT => Ok(()),
            Some(_) => Err(at(format!("\"{key}\" over {MAX_REPEAT}"), path)),
            None => Err(at(format!("\"{key}\" that is not a count"), path)),
        },
    }
}

impl Checker<'_> {
    fn node(&self, schema: &Value, path: &str, depth: usize) -> Check {
        if depth > MAX_DEPTH {
            return Err(at(format!("nesting deeper than {MAX_DEPTH}"), path));
        }
        let Some(obj) = schema.as_object() else {
            return Err(at("a schema that is not an object", path));
        };
        if let Some(k) = IGNORED.iter().find(|k| obj.contains_key(**k)) {
            return Err(at(format!("\"{k}\""), path));
        }
        for defs in ["$defs", "definitions"] {
            if let Some(d) = obj.get(defs) {
                let Some(d) = d.as_object() else {
                    return Err(at(format!("\"{defs}\" that is not an object"), path));
                };
                for (name, sub) in d {
                    self.node(sub, &format!("{path}/{defs}/{name}"), depth + 1)?;
                }
            }
        }
        // The converter reads the first of these it finds and ignores the
        // keywords beside it that constrain anything.
        let leading = ["$ref", "oneOf", "anyOf"]
            .into_iter()
            .find(|k| obj.contains_key(*k));
        if let Some(k) = leading {
            if let Some(other) = obj
                .keys()
                .find(|o| o.as_str() != k && !ANNOTATIONS.contains(&o.as_str()))
            {
                return Err(at(format!("\"{other}\" beside \"{k}\""), path));
            }
            return if k == "$ref" {
                self.reference(&obj[k], path)
            } else {
                self.alternatives(&obj[k], &format!("{path}/{k}"), depth)
            };
        }
        match obj.get("type") {
            Some(Value::Array(types)) => {
                if types.is_empty() {
                    return Err(at("an empty \"type\" list", path));
                }
                for (i, t) in types.iter().enumerate() {
                    let mut alt = obj.clone();
                    alt.insert("type".into(), t.clone());
                    self.typed(&alt, &format!("{path}/type/{i}"), depth)?;
                }
                Ok(())
            }
            _ => self.typed(obj, path, depth),
        }
    }

    fn reference(&self, reference: &Value, path: &str) -> Check {
        let Some(r) = reference.as_str() else {
            return Err(at("a \"$ref\" that is not a string", path));
        };
        let Some(pointer) = r.strip_prefix('#').filter(|p| p.starts_with('/')) else {
            return Err(at(
                format!("\"$ref\" {r:?} (only \"#/…\" references into the same schema)"),
                path,
            ));
        };
        if self.root.pointer(pointer).is_none() {
            return Err(at(format!("\"$ref\" {r:?} that resolves to nothing"), path));
        }
        // The target is checked where it lives (`$defs`), or is a part of
        // the schema checked anyway; a reference elsewhere is checked here.
        let inside_defs = pointer.starts_with("/$defs/") || pointer.starts_with("/definitions/");
        if !inside_defs && !self.is_on_walked_path(pointer) {
            return Err(at(
                format!("\"$ref\" {r:?} (only into \"$defs\", \"definitions\" or the schema's own parts)"),
                path,
            ));
        }
        Ok(())
    }

    /// Whether `pointer` names a sub-schema the walk visits anyway (the
    /// root or a chain of `properties`/`items`/… steps).
    fn is_on_walked_path(&self, pointer: &str) -> bool {
        let mut steps = pointer.split('/').skip(1).peekable();
        while let Some(step) = steps.next() {
            match step {
                "properties" | "$defs" | "definitions" | "anyOf" | "oneOf" | "allOf"
                | "prefixItems" => {
                    if steps.next().is_none() {
                        return false;
                    }
                }
                "items" | "additionalProperties" => {}
                _ => return false,
            }
        }
        true
    }

    fn alternatives(&self, list: &Value, path: &str, depth: usize) -> Check {
        match list.as_array() {
            Some(alts) if !alts.is_empty() => {
                for (i, alt) in alts.iter().enumerate() {
                    self.node(alt, &format!("{path}/{i}"), depth + 1)?;
                }
                Ok(())
            }
            _ => Err(at("alternatives that are not a non-empty list", path)),
        }
    }

    fn typed(&self, obj: &Map<String, Value>, path: &str, depth: usize) -> Check {
        if obj.contains_key("const") {
            return Ok(());
        }
        if let Some(e) = obj.get("enum") {
            return match e.as_array() {
                Some(v) if !v.is_empty() => Ok(()),
                _ => Err(at("an \"enum\" that is not a non-empty list", path)),
            };
        }
        let ty = match obj.get("type") {
            None => None,
            Some(Value::String(t)) if TYPES.contains(&t.as_str()) => Some(t.as_str()),
            Some(t) => return Err(at(format!("\"type\" {t}"), path)),
        };
        let has_properties = obj.contains_key("properties")
            || obj
                .get("additionalProperties")
                .is_some_and(|a| a != &Value::Bool(true));
        let stringy = ["pattern", "minLength", "maxLength", "format"]
            .iter()
            .any(|k| obj.contains_key(*k));
        match ty {
            Some("object") => self.object(obj, path, depth),
            None if has_properties => self.object(obj, path, depth),
            None if obj.contains_key("allOf") => self.all_of(obj, path, depth),
            Some("array") => self.array(obj, path, depth),
            None if obj.contains_key("items") || obj.contains_key("prefixItems") => {
                self.array(obj, path, depth)
            }
            Some("string") => self.string(obj, path),
            None if stringy => self.string(obj, path),
            Some("number") => {
                let bound = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]
                    .into_iter()
                    .find(|k| obj.contains_key(*k));
                match bound {
                    Some(k) => Err(at(
                        format!("\"{k}\" on a number (only integers can be bounded)"),
                        path,
                    )),
                    None => Ok(()),
                }
            }
            Some("integer") => {
                for k in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
                    if obj.get(k).is_some_and(|v| !v.is_number()) {
                        return Err(at(format!("\"{k}\" that is not a number"), path));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn object(&self, obj: &Map<String, Value>, path: &str, depth: usize) -> Check {
        let props = match obj.get("properties") {
            None => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(at("\"properties\" that is not an object", path)),
        };
        if props.is_none() && !obj.contains_key("additionalProperties") {
            if obj.contains_key("allOf") {
                return self.all_of(obj, path, depth);
            }
        } else if obj.contains_key("allOf") {
            return Err(at("\"allOf\" beside \"properties\"", path));
        }
        for (name, sub) in props.into_iter().flatten() {
            self.node(sub, &format!("{path}/properties/{name}"), depth + 1)?;
        }
        match obj.get("required") {
            None => {}
            Some(Value::Array(req)) => {
                for r in req {
                    let Some(name) = r.as_str() else {
                        return Err(at("a \"required\" entry that is not a string", path));
                    };
                    if !props.is_some_and(|p| p.contains_key(name)) {
                        return Err(at(
                            format!("\"required\" property {name:?} missing from \"properties\""),
                            path,
                        ));
                    }
                }
            }
            Some(_) => return Err(at("\"required\" that is not a list", path)),
        }
        match obj.get("additionalProperties") {
            None | Some(Value::Bool(_)) => Ok(()),
            Some(extra @ Value::Object(_)) => {
                self.node(extra, &format!("{path}/additionalProperties"), depth + 1)
            }
            Some(_) => Err(at("\"additionalProperties\" that is not a schema", path)),
        }
    }

    /// `allOf` is merged as one object of every part's properties, so
    /// every part must be an object schema with properties.
    fn all_of(&self, obj: &Map<String, Value>, path: &str, depth: usize) -> Check {
        let path = format!("{path}/allOf");
        let Some(parts) = obj.get("allOf").and_then(Value::as_array) else {
            return Err(at("\"allOf\" that is not a list", &path));
        };
        for (i, part) in parts.iter().enumerate() {
            let target = match part.get("$ref").and_then(Value::as_str) {
                Some(r) => r
                    .strip_prefix('#')
                    .and_then(|p| self.root.pointer(p))
                    .unwrap_or(part),
                None => part,
            };
            let is_object = target.get("properties").is_some_and(Value::is_object)
                && target.get("anyOf").is_none()
                && target.get("oneOf").is_none();
            if !is_object {
                return Err(at(
                    "\"allOf\" of a part that is not an object with \"properties\"",
                    &format!("{path}/{i}"),
                ));
            }
            self.node(part, &format!("{path}/{i}"), depth + 1)?;
        }
        Ok(())
    }

    fn array(&self, obj: &Map<String, Value>, path: &str, depth: usize) -> Check {
        count(obj, "minItems", path)?;
        count(obj, "maxItems", path)?;
        let key = if obj.contains_key("items") {
            "items"
        } else {
            "prefixItems"
        };
        match obj.get(key) {
            None => Ok(()),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    self.node(item, &format!("{path}/{key}/{i}"), depth + 1)?;
                }
                Ok(())
            }
            Some(item) => self.node(item, &format!("{path}/{key}"), depth + 1),
        }
    }

    fn string(&self, obj: &Map<String, Value>, path: &str) -> Check {
        count(obj, "minLength", path)?;
        count(obj, "maxLength", path)?;
        let lengths = obj.contains_key("minLength") || obj.contains_key("maxLength");
        if let Some(f) = obj.get("format") {
            match f.as_str() {
                Some(f) if FORMATS.contains(&f) => {}
                _ => return Err(at(format!("\"format\" {f}"), path)),
            }
            if lengths || obj.contains_key("pattern") {
                return Err(at("\"format\" beside \"pattern\" or lengths", path));
            }
        }
        if let Some(p) = obj.get("pattern") {
            let Some(p) = p.as_str() else {
                return Err(at("a \"pattern\" that is not a string", path));
            };
            if lengths {
                return Err(at("\"pattern\" beside \"minLength\"/\"maxLength\"", path));
            }
            pattern(p).map_err(|why| at(format!("\"pattern\" {p:?} ({why})"), path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(schema: Value) {
        assert_eq!(unsupported(&schema), None, "{schema}");
    }

    fn refused(schema: Value, feature: &str) {
        match unsupported(&schema) {
            Some(why) => assert!(why.contains(feature), "{why:?} should name {feature:?}"),
            None => panic!("{schema} should be refused for {feature}"),
        }
    }

    #[test]
    fn common_schemas_are_supported() {
        ok(json!({"type": "object"}));
        ok(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 40},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "score": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
                "kind": {"enum": ["a", "b"]},
                "when": {"type": "string", "format": "date"},
                "id": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]+(?:\\.[a-z])?$"},
                "maybe": {"type": ["string", "null"]},
                "either": {"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/point"}]},
            },
            "required": ["name", "age"],
            "additionalProperties": false,
            "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}}}},
        }));
        ok(json!({"allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}},
            {"properties": {"b": {"type": "integer"}}},
        ]}));
        // Recursion through $defs.
        ok(json!({
            "$ref": "#/$defs/node",
            "$defs": {"node": {"type": "object", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            }}},
        }));
    }

    #[test]
    fn keywords_the_converter_ignores_are_named() {
        refused(json!({"not": {"type": "string"}}), "\"not\" at #");
        refused(
            json!({"type": "object", "properties": {"a": {"if": {}, "then": {}}}}),
            "\"if\" at #/properties/a",
        );
        refused(json!({"type": "array", "uniqueItems": true}), "uniqueItems");
        refused(json!({"type": "integer", "multipleOf": 3}), "multipleOf");
        refused(
            json!({"type": "object", "patternProperties": {"^x": {}}}),
            "patternProperties",
        );
        refused(
            json!({"type": "object", "dependentRequired": {"a": ["b"]}}),
            "dependentRequired",
        );
        refused(
            json!({"type": "object", "minProperties": 1}),
            "minProperties",
        );
    }

    #[test]
    fn silently_weakened_constructs_are_named() {
        refused(
            json!({"type": "number", "minimum": 0}),
            "\"minimum\" on a number",
        );
        refused(json!({"$ref": "https://example.com/s.json"}), "$ref");
        refused(json!({"$ref": "#/$defs/nowhere"}), "resolves to nothing");
        refused(
            json!({"type": "string", "format": "email"}),
            "\"format\" \"email\"",
        );
        refused(
            json!({"type": "string", "pattern": "[a-z]+"}),
            "not anchored",
        );
        refused(json!({"type": "string", "pattern": "^\\d+$"}), "escape \\d");
        refused(json!({"type": "string", "pattern": "^(?=a)b$"}), "group");
        refused(
            json!({"type": "string", "pattern": "^a{1,1000}$"}),
            "repetition",
        );
        refused(
            json!({"type": "object", "properties": {"a": {}}, "required": ["a", "b"]}),
            "\"b\" missing",
        );
        refused(
            json!({"type": "object", "properties": {"a": {}}, "anyOf": [{"required": ["a"]}]}),
            "beside \"anyOf\"",
        );
        refused(
            json!({"type": "object", "properties": {"a": {}}, "allOf": [{"properties": {}}]}),
            "allOf",
        );
        refused(json!({"allOf": [{"type": "string"}]}), "allOf");
        refused(json!({"type": "array", "items": true}), "not an object");
        refused(json!({"type": "array", "maxItems": 100000}), "maxItems");
        refused(json!({"type": "date"}), "\"type\"");
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let mut deep = json!({"type": "string"});
        for _ in 0..40 {
            deep = json!({"type": "array", "items": deep});
        }
        refused(deep, "nesting");
        let big = json!({"enum": ["x".repeat(MAX_SCHEMA_BYTES)]});
        refused(big, "bytes");
    }
}
