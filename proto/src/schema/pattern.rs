//! Which regular expressions llama.cpp's converter turns into grammar
//! (json-schema-to-grammar.cpp's `_visit_pattern`); it accepts any string
//! for the others.

use super::MAX_REPEAT;

/// Characters a pattern may escape as literals, and GBNF's own escapes.
const LITERAL_ESCAPES: &str = "^$.[]()|{}*+?tnr\\\"-";

/// Whether the converter translates `p` (else it accepts any string): a
/// pattern anchored with `^…$` of literals, `.`, classes, groups (plain or
/// `(?:`), alternation, `*+?` and `{m,n}`, without class escapes like `\d`.
pub(super) fn pattern(p: &str) -> Result<(), String> {
    let Some(body) = p.strip_prefix('^').and_then(|b| b.strip_suffix('$')) else {
        return Err("not anchored with ^ and $".into());
    };
    let chars: Vec<char> = body.chars().collect();
    let mut i = 0;
    let mut depth = 0i32;
    let escape = |i: usize| -> Result<usize, String> {
        match chars.get(i + 1) {
            Some(c) if LITERAL_ESCAPES.contains(*c) => Ok(2),
            Some(c @ ('x' | 'u' | 'U')) => {
                let n = match c {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex = chars.get(i + 2..i + 2 + n).unwrap_or(&[]);
                if hex.len() == n && hex.iter().all(char::is_ascii_hexdigit) {
                    Ok(2 + n)
                } else {
                    Err(format!("escape \\{c} without {n} hex digits"))
                }
            }
            Some(c) => Err(format!("escape \\{c}")),
            None => Err("a trailing backslash".into()),
        }
    };
    while i < chars.len() {
        match chars[i] {
            '\\' => i += escape(i)?,
            '(' => {
                if chars.get(i + 1) == Some(&'?') {
                    if chars.get(i + 2) != Some(&':') {
                        return Err("a group other than (?:…)".into());
                    }
                    i += 2;
                }
                depth += 1;
                i += 1;
            }
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced parentheses".into());
                }
                i += 1;
            }
            '^' | '$' => return Err("an anchor inside the pattern".into()),
            '[' => {
                i += 1;
                while i < chars.len() && chars[i] != ']' {
                    if chars[i] == '\\' {
                        match chars.get(i + 1) {
                            Some(c) if "tnr\\\"[]-".contains(*c) => i += 2,
                            _ => {
                                i += escape(i).and_then(|n| {
                                    if matches!(chars.get(i + 1), Some('x' | 'u' | 'U')) {
                                        Ok(n)
                                    } else {
                                        Err(format!("escape \\{} in a class", chars[i + 1]))
                                    }
                                })?
                            }
                        }
                    } else {
                        i += 1;
                    }
                }
                if i >= chars.len() {
                    return Err("an unterminated class".into());
                }
                i += 1;
            }
            '{' => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or("unterminated braces")?;
                let inner: String = chars[i + 1..i + end].iter().collect();
                let nums: Vec<&str> = inner.split(',').collect();
                if nums.is_empty() || nums.len() > 2 {
                    return Err(format!("repetition {{{inner}}}"));
                }
                for n in &nums {
                    if n.is_empty() {
                        continue;
                    }
                    match n.parse::<u64>() {
                        Ok(n) if n <= MAX_REPEAT => {}
                        Ok(_) => return Err(format!("a repetition over {MAX_REPEAT}")),
                        Err(_) => return Err(format!("repetition {{{inner}}}")),
                    }
                }
                i += end + 1;
            }
            ']' | '}' => return Err(format!("a stray {}", chars[i])),
            _ => i += 1,
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    Ok(())
}
