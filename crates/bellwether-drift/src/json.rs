//! Reading profiles and scores from JSON with errors that say where: the line, the column and
//! the path of the field (such as `hardware.cpu_count`), for the CLI and the server alike.

use serde::de::DeserializeOwned;

use bellwether_model::{DriftScore, HostProfile};

/// A JSON document that could not be read as the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}{}: {message}", field_suffix(.field))]
pub struct JsonError {
    pub line: usize,
    pub column: usize,
    /// The path of the field, such as `hardware.cpu_count` or `dependencies[0].name`; empty
    /// when the document is not even JSON or the problem is at the top level.
    pub field: String,
    pub message: String,
}

fn field_suffix(field: &str) -> String {
    if field.is_empty() || field == "." {
        String::new()
    } else {
        format!(", field {field}")
    }
}

/// Parses any type with field paths in errors.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, JsonError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        // serde_json appends " at line L column C" to its messages; we report those apart.
        let msg = inner.to_string();
        let message = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_owned(),
            None => msg,
        };
        JsonError {
            line: inner.line(),
            column: inner.column(),
            field,
            message,
        }
    })?;
    Ok(value)
}

/// Parses a [`HostProfile`].
pub fn parse_profile(text: &str) -> Result<HostProfile, JsonError> {
    parse(text)
}

/// Parses a [`DriftScore`].
pub fn parse_score(text: &str) -> Result<DriftScore, JsonError> {
    parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_line_column_and_field() {
        let e = parse_profile("{\n  \"hardware\": {\"cpu_count\": \"four\"}\n}").unwrap_err();
        assert_eq!(e.field, "hardware.cpu_count");
        assert_eq!(e.line, 2);
        assert!(
            e.message.starts_with("invalid type: string \"four\""),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "line 2, column {}, field hardware.cpu_count: {}",
                e.column, e.message
            )
        );
        let e = parse_profile(
            "{\"dependencies\": [{\"name\": \"db\", \"endpoint\": \"h:1\", \"reachable\": 3}]}",
        )
        .unwrap_err();
        assert_eq!(e.field, "dependencies[0].reachable");
        let e = parse_profile("{\"kernal\": 1}").unwrap_err();
        assert!(e.message.contains("unknown field `kernal`"), "{e}");
        let e = parse_profile("not json").unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (1, "."));
        assert!(!e.to_string().contains("field"), "{e}");
        let e = parse_score("{\"configuration\": 2}").unwrap_err();
        assert_eq!(e.field, "configuration");
        assert!(e.message.contains("outside the range"), "{e}");
    }
}
