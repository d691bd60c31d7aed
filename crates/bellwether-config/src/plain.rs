//! Plain configuration files of other services (key = value, INI, YAML, JSON, TOML) as one
//! flat map of dotted keys (`server.port`, `section.key`, `list.0`) to their string values, so
//! that any format's change is a list of `key: old → new`.
//!
//! OWNER: helper `confcore`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `key = value` or `key: value` lines, `#`/`;` comments (also `.properties`, `.env`).
    KeyValue,
    Ini,
    Yaml,
    Json,
    Toml,
}

impl Format {
    /// By extension: `.ini`, `.yaml`/`.yml`, `.json`, `.toml`; `.conf`, `.cfg`, `.properties`,
    /// `.env` and no extension are key = value.
    pub fn from_path(path: &str) -> Format {
        let _ = path;
        todo!("confcore")
    }

    /// `key_value`, `ini`, `yaml`, `json`, `toml` (the spelling in flags and files).
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "key_value" | "kv" => Format::KeyValue,
            "ini" => Format::Ini,
            "yaml" | "yml" => Format::Yaml,
            "json" => Format::Json,
            "toml" => Format::Toml,
            _ => return None,
        })
    }
}

/// A file that does not parse as its format; names the file, and the line where known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct PlainError {
    pub file: String,
    pub line: Option<u32>,
    pub message: String,
}

/// Parses `text` as `format` into a flat key → value map.
pub fn parse(
    text: &str,
    format: Format,
    file: &str,
) -> Result<BTreeMap<String, String>, PlainError> {
    let _ = (text, format, file);
    todo!("confcore")
}
