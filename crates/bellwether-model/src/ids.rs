//! Identifiers.

use serde::{Deserialize, Serialize};

/// The name of a host in the fleet: 1 to 253 characters of `[A-Za-z0-9._-]`, and neither `.`
/// nor `..`.
///
/// It doubles as a path segment in the HTTP API and a file name in the sandbox, which is why
/// the character set is narrow; `.` and `..` are refused because both resolve to another path
/// (`/api/v1/hosts/..` is `/api/v1/`), so such a host could enrol but never be reached.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct HostName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostNameError {
    #[error("host name is empty")]
    Empty,
    #[error("host name is longer than 253 characters")]
    TooLong,
    #[error(
        "host name {name:?} contains {ch:?}; only letters, digits, '.', '_' and '-' are allowed"
    )]
    BadChar { name: String, ch: char },
    #[error("host name {0:?} is a relative path segment (`.` or `..`) and cannot name a host")]
    DotSegment(String),
}

impl HostName {
    pub fn new(s: impl Into<String>) -> Result<Self, HostNameError> {
        let s = s.into();
        if s.is_empty() {
            return Err(HostNameError::Empty);
        }
        if s.len() > 253 {
            return Err(HostNameError::TooLong);
        }
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(HostNameError::BadChar { name: s, ch });
        }
        if s == "." || s == ".." {
            return Err(HostNameError::DotSegment(s));
        }
        Ok(HostName(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for HostName {
    type Err = HostNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostName::new(s)
    }
}

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostName::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        assert_eq!(HostName::new(""), Err(HostNameError::Empty));
        assert!(matches!(
            HostName::new("a/b"),
            Err(HostNameError::BadChar { ch: '/', .. })
        ));
        assert!(HostName::new("x".repeat(254)).is_err());
        assert_eq!(
            HostName::new("."),
            Err(HostNameError::DotSegment(".".into()))
        );
        assert_eq!(
            HostName::new(".."),
            Err(HostNameError::DotSegment("..".into()))
        );
        assert!(serde_json::from_str::<HostName>("\"..\"").is_err());
        // Dots inside a name, or three of them, are ordinary path segments.
        for ok in ["...", ".hidden", "a..b", "web-01."] {
            assert!(HostName::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            HostName::new("web-01.example").unwrap().as_str(),
            "web-01.example"
        );
    }
}
