//! Checks a JSON body's shape before it is parsed into a request: no object
//! repeats a key (serde would silently keep the last one, so
//! `{"role":"user","role":"system"}` would become a system message), and
//! nesting stays within [`MAX_DEPTH`]. One pass, nothing kept but the keys
//! of the objects being walked.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of arrays and objects a request may have.
pub const MAX_DEPTH: usize = 32;

/// Why a body's shape is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// A key appears twice in one object, at `path`.
    DuplicateKey { key: String, path: String },
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Not JSON at all (the parser proper says how).
    Syntax,
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateKey { key, path } => {
                write!(f, "duplicate key '{key}' in the object at '{path}'")
            }
            Self::TooDeep => write!(f, "the JSON nests deeper than {MAX_DEPTH} levels"),
            Self::Syntax => write!(f, "not valid JSON"),
        }
    }
}

/// Walk `bytes` as JSON, refusing duplicate keys and deep nesting.
pub fn check(bytes: &[u8]) -> Result<(), ShapeError> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walk = Walk {
        depth: 0,
        path: &mut Vec::new(),
        found: &mut found,
    };
    match walk.deserialize(&mut de).and_then(|()| de.end()) {
        Ok(()) => Ok(()),
        Err(_) => Err(found.unwrap_or(ShapeError::Syntax)),
    }
}

/// One value being walked; `path` holds the keys and indexes above it.
struct Walk<'a> {
    depth: usize,
    path: &'a mut Vec<String>,
    found: &'a mut Option<ShapeError>,
}

impl Walk<'_> {
    fn fail<E: Error>(self, e: ShapeError) -> E {
        let msg = e.to_string();
        *self.found = Some(e);
        E::custom(msg)
    }

    fn child(&mut self) -> Walk<'_> {
        Walk {
            depth: self.depth + 1,
            path: self.path,
            found: self.found,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(self.fail(ShapeError::TooDeep));
        }
        let mut i = 0usize;
        loop {
            self.path.push(format!("[{i}]"));
            let next = seq.next_element_seed(self.child());
            self.path.pop();
            if next?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(self.fail(ShapeError::TooDeep));
        }
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                let path = if self.path.is_empty() {
                    "$".to_owned()
                } else {
                    format!("${}", self.path.concat())
                };
                return Err(self.fail(ShapeError::DuplicateKey { key, path }));
            }
            self.path.push(format!(".{key}"));
            let r = map.next_value_seed(self.child());
            self.path.pop();
            r?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_found_wherever_they_are() {
        assert_eq!(check(br#"{"a":1,"b":[{"c":2}]}"#), Ok(()));
        assert_eq!(
            check(br#"{"input":[{"role":"user","role":"system","content":"x"}]}"#),
            Err(ShapeError::DuplicateKey {
                key: "role".into(),
                path: "$.input[0]".into()
            })
        );
        assert_eq!(
            check(br#"{"model":"a","model":"b"}"#),
            Err(ShapeError::DuplicateKey {
                key: "model".into(),
                path: "$".into()
            })
        );
        // Escapes that spell the same key are the same key.
        assert!(matches!(
            check(br#"{"a":1,"\u0061":2}"#),
            Err(ShapeError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(check(deep(MAX_DEPTH).as_bytes()), Ok(()));
        assert_eq!(
            check(deep(MAX_DEPTH + 1).as_bytes()),
            Err(ShapeError::TooDeep)
        );
        // Far past serde_json's own recursion limit: still our error.
        assert_eq!(check(deep(100_000).as_bytes()), Err(ShapeError::TooDeep));
    }

    #[test]
    fn syntax_errors_are_left_to_the_parser() {
        assert_eq!(check(b"{not json"), Err(ShapeError::Syntax));
        assert_eq!(check(b"{} trailing"), Err(ShapeError::Syntax));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Arbitrary JSON, nested a few levels.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Never panics, whatever the bytes.
        #[test]
        fn any_bytes_are_judged(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = check(&bytes);
            let _ = crate::openai::parse_body::<crate::openai::ChatCompletionRequest>(&bytes);
        }

        /// Serialized JSON (keys unique by construction) passes; the same
        /// with one object key repeated does not.
        #[test]
        fn serialized_json_passes_and_a_repeated_key_does_not(v in json(), key in "[a-z]{1,4}") {
            let text = serde_json::to_string(&v).unwrap();
            prop_assert_eq!(check(text.as_bytes()), Ok(()));
            let dup = format!("{{\"{key}\":1,\"{key}\":2,\"v\":{text}}}");
            let is_duplicate = matches!(check(dup.as_bytes()), Err(ShapeError::DuplicateKey { .. }));
            prop_assert!(is_duplicate);
        }
    }
}
