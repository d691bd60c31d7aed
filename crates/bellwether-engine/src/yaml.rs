//! YAML input with limits: every YAML file Bellwether reads (rollout plans, patch plans,
//! sandbox scenarios) goes through [`from_str`], which refuses oversized or deeply nested
//! text before it costs time, refuses a key repeated in any mapping, and reports every error
//! with its line, column and field path.
//!
//! The parser is `serde-saphyr`: it streams events into the target type (no intermediate
//! tree), never panics on malformed input, and enforces a [`Budget`](serde_saphyr::Budget) of
//! depth, nodes and bytes while it parses, so a 100,000-deep document is refused after the
//! first [`MAX_DEPTH`] levels instead of being parsed in full. `serde_path_to_error` adds the
//! field path.

use serde::de::DeserializeOwned;

/// The largest YAML text accepted, in bytes (1 MiB): a plan of the largest fleet is a few
/// kilobytes.
pub const MAX_BYTES: usize = 1 << 20;
/// The deepest nesting of mappings and sequences accepted (a plan nests at most 6 levels).
pub const MAX_DEPTH: usize = 32;
/// The most nodes (mappings, sequences and scalars) accepted in one document.
pub const MAX_NODES: usize = 100_000;
/// The most aliases (`*name`) and anchors accepted in one document; aliases may replay at most
/// ten times as many values in all, which bounds an alias bomb.
pub const MAX_ALIASES: usize = 1_000;

/// A YAML error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based; 1 where the parser knows no place (an empty document).
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// The field path (`analysis.metrics[0].direction`), empty at the top level.
    pub path: String,
    /// What is wrong, without the location.
    pub message: String,
}

impl YamlError {
    /// `PATH: MESSAGE`, or `MESSAGE` at the top level.
    pub fn path_and_message(&self) -> String {
        if self.path.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.path, self.message)
        }
    }
}

impl std::fmt::Display for YamlError {
    /// `line L, column C: PATH: MESSAGE`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line,
            self.column,
            self.path_and_message()
        )
    }
}

/// The parser options every Bellwether YAML input is read with.
pub fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_events: 4 * MAX_NODES,
            max_aliases: MAX_ALIASES,
            max_anchors: MAX_ALIASES,
            max_documents: 1,
            max_total_scalar_bytes: MAX_BYTES,
            max_merge_keys: MAX_ALIASES,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 10 * MAX_ALIASES,
            max_replay_stack_depth: MAX_DEPTH,
        },
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::Error,
        with_snippet: false,
    }
}

/// Parses one YAML document into `T` within the limits above.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    if text.len() > MAX_BYTES {
        return Err(YamlError {
            line: 1,
            column: 1,
            path: String::new(),
            message: format!(
                "the text is {} bytes; the limit is {MAX_BYTES} bytes",
                text.len()
            ),
        });
    }
    let mut path = String::new();
    let r = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    r.map_err(|e| {
        if let serde_saphyr::Error::SerdeUnknownField { field, .. } = e.without_snippet() {
            // The path of an unknown key is its mapping's, as for every other key error.
            if let Some(p) = path.strip_suffix(field.as_str()) {
                path = p.trim_end_matches('.').to_string();
            }
        }
        let (line, column) = e
            .location()
            .map_or((1, 1), |l| (l.line() as usize, l.column() as usize));
        // serde_path_to_error writes `.` for the top level and `?` for a key it could not
        // read (a repeated key): the path is the mapping's.
        let path: String = path
            .split('.')
            .filter(|p| !p.is_empty() && *p != "?")
            .collect::<Vec<_>>()
            .join(".");
        YamlError {
            line: line.max(1),
            column: column.max(1),
            path,
            message: bare_message(&e),
        }
    })
}

/// The error's text, without the location (which [`YamlError`] carries), worded as serde's
/// own messages are (`expected one of `a`, `b``) and with the limits named.
fn bare_message(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    use serde_saphyr::{Error as E, MessageFormatter as _};
    let e = e.without_snippet();
    let text = match e {
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => format!(
            "unknown variant `{variant}`, {}",
            one_of(expected, "variants")
        ),
        E::SerdeUnknownField {
            field, expected, ..
        } => format!("unknown field `{field}`, {}", one_of(expected, "fields")),
        E::InvalidScalar { ty, .. } => match *ty {
            "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => {
                format!("invalid value: expected a whole number ≥ 0 ({ty})")
            }
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => {
                format!("invalid value: expected a whole number ({ty})")
            }
            "f32" | "f64" => "invalid value: expected a number".into(),
            "boolean" | "bool" => "invalid boolean: expected true or false".into(),
            other => format!("invalid {other}"),
        },
        E::Unexpected { expected, .. } => match *expected {
            "mapping start" => {
                "invalid type: expected a mapping (`key: value` lines or `{ … }`)".into()
            }
            "sequence start" => "invalid type: expected a list (`- item` lines or `[ … ]`)".into(),
            "string scalar" | "scalar" => "invalid type: expected a single value".into(),
            other => format!("expected {other}"),
        },
        E::DuplicateMappingKey { key, .. } => match key {
            Some(k) => format!("duplicate key `{k}`: a key may appear only once in a mapping"),
            None => "duplicate key: a key may appear only once in a mapping".into(),
        },
        E::Budget { breach, .. } => match breach {
            B::Depth { .. } => {
                format!("nested deeper than {MAX_DEPTH} levels of mappings and sequences")
            }
            B::Nodes { .. } | B::Events { .. } => {
                format!("more than {MAX_NODES} values in one document")
            }
            B::ScalarBytes { .. } | B::InputBytes { .. } => {
                format!("more than {MAX_BYTES} bytes of text")
            }
            B::Documents { .. } => "more than one YAML document".into(),
            B::Aliases { .. }
            | B::Anchors { .. }
            | B::AliasAnchorRatio { .. }
            | B::MergeKeys { .. }
            | B::RecordedAnchorEvents { .. }
            | B::RecordedAnchorBytes { .. } => {
                format!("more than {MAX_ALIASES} anchors, aliases or merge keys")
            }
            other => format!("over a YAML limit: {other:?}"),
        },
        // The scanner's own nesting limit (set to the budget's depth) says only this.
        other if other.to_string().starts_with("recursion limit exceeded") => {
            format!("nested deeper than {MAX_DEPTH} levels of mappings and sequences")
        }
        other => serde_saphyr::DefaultMessageFormatter
            .format_message(other)
            .into_owned(),
    };
    // A message may quote the input: never pass a control character through.
    bellwether_model::text::escape(&text).into_owned()
}

/// serde's wording of the names a value may take.
fn one_of(names: &[&str], what: &str) -> String {
    match names {
        [] => format!("there are no {what}"),
        [a] => format!("expected `{a}`"),
        [a, b] => format!("expected `{a}` or `{b}`"),
        _ => {
            let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            format!("expected one of {}", quoted.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget, on a type that takes any shape (as a future field of free-form values
    /// would): depth and node count are refused at once, with the place.
    #[test]
    fn depth_nodes_and_aliases_are_bounded() {
        for text in [
            "[".repeat(100_000),
            (0..300).map(|i| format!("{}a:\n", " ".repeat(i))).collect(),
            (0..300).map(|i| format!("{}-\n", " ".repeat(i))).collect(),
            "- ".repeat(100_000),
        ] {
            let t = std::time::Instant::now();
            let e = from_str::<serde_json::Value>(&text).unwrap_err();
            assert!(
                t.elapsed() < std::time::Duration::from_secs(2),
                "{:?}",
                t.elapsed()
            );
            assert!(
                e.message.contains("deeper than 32 levels") || e.message.contains("nesting"),
                "{e}"
            );
            assert!(e.line >= 1 && e.column >= 1, "{e}");
        }
        let ok = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        from_str::<serde_json::Value>(&ok).unwrap();
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        let e = from_str::<serde_json::Value>(&deep).unwrap_err();
        assert_eq!((e.line, e.column), (1, MAX_DEPTH + 1), "{e}");
        let many = format!("[{}]", vec!["1"; MAX_NODES + 1].join(","));
        let e = from_str::<Vec<u8>>(&many).unwrap_err();
        assert!(e.message.contains("more than 100000 values"), "{e}");
        // An alias bomb: nine levels of ten aliases each.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let t = std::time::Instant::now();
        let e = from_str::<serde_json::Value>(&bomb).unwrap_err();
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
        assert!(!e.message.is_empty());
    }

    #[test]
    fn duplicate_keys_are_refused_in_every_mapping() {
        let e = from_str::<serde_json::Value>("a:\n  b: 1\n  c: {d: 1, d: 2}\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 13), "{e}");
        assert_eq!(e.path, "a.c");
        assert_eq!(
            e.message,
            "duplicate key `d`: a key may appear only once in a mapping"
        );
        let e = from_str::<std::collections::BTreeMap<String, u8>>("x: 1\n\"x\": 2\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 1), "{e}");
    }

    #[test]
    fn messages_carry_no_control_characters() {
        let e = from_str::<u8>("\"a\\x1b[31mb\"").unwrap_err();
        assert!(!e.to_string().chars().any(char::is_control), "{e}");
    }
}
