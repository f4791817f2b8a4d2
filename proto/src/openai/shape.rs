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
