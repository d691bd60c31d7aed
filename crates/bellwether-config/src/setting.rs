//! An instance's settings as `pg_settings` shows them, and values with units.
//!
//! OWNER: helper `confcore`. The types are the contract other crates code against; change
//! them only additively and say so in the report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `pg_settings.vartype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarType {
    Bool,
    Integer,
    Real,
    String,
    Enum,
}

/// `pg_settings.context`: what it takes for a new value to take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Context {
    /// Cannot be changed (compiled in or set by initdb).
    #[serde(rename = "internal")]
    Internal,
    /// Needs a server restart.
    #[serde(rename = "postmaster")]
    Postmaster,
    /// A reload (`pg_reload_conf()`, SIGHUP).
    #[serde(rename = "sighup")]
    Sighup,
    /// New sessions of superusers (at connection start).
    #[serde(rename = "superuser-backend")]
    SuperuserBackend,
    /// New sessions (at connection start).
    #[serde(rename = "backend")]
    Backend,
    /// Any time, by a superuser (`SET`), or by reload for the default.
    #[serde(rename = "superuser")]
    Superuser,
    /// Any time, by any user (`SET`), or by reload for the default.
    #[serde(rename = "user")]
    User,
}

/// What applying a change takes; ordered by cost (`Session < Reload < Restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyKind {
    /// Takes effect per session (`SET`) and, after a reload, as every new session's default.
    Session,
    /// `pg_reload_conf()`.
    Reload,
    /// A server restart.
    Restart,
}

impl Context {
    /// What a change of a setting with this context takes; `None` for `internal` (it cannot
    /// be changed at all).
    pub fn apply_kind(self) -> Option<ApplyKind> {
        match self {
            Context::Internal => None,
            Context::Postmaster => Some(ApplyKind::Restart),
            Context::Sighup | Context::SuperuserBackend | Context::Backend => {
                Some(ApplyKind::Reload)
            }
            Context::Superuser | Context::User => Some(ApplyKind::Session),
        }
    }

    /// The `pg_settings.context` spelling.
    pub fn parse(s: &str) -> Option<Context> {
        Some(match s {
            "internal" => Context::Internal,
            "postmaster" => Context::Postmaster,
            "sighup" => Context::Sighup,
            "superuser-backend" => Context::SuperuserBackend,
            "backend" => Context::Backend,
            "superuser" => Context::Superuser,
            "user" => Context::User,
            _ => return None,
        })
    }
}

/// One row of `pg_settings` (the columns Bellwether uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub name: String,
    /// `setting`: the current value, in the setting's base `unit` for numbers.
    pub value: String,
    /// `unit`: `kB`, `8kB`, `MB`, `ms`, `s`, `min`… or `None`.
    pub unit: Option<String>,
    pub vartype: VarType,
    pub context: Context,
    /// `min_val`, `max_val` (numbers only).
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// `enumvals` (enums only).
    #[serde(default)]
    pub enumvals: Vec<String>,
    /// `boot_val`, `reset_val`.
    pub boot_val: Option<String>,
    pub reset_val: Option<String>,
    /// `source` (`default`, `configuration file`, `command line`…).
    pub source: String,
    pub sourcefile: Option<String>,
    pub sourceline: Option<i32>,
    pub pending_restart: bool,
    /// `category` and `short_desc`, for people.
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub short_desc: String,
}

/// An instance's whole configuration as read: every setting by name, and its server version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// `server_version_num` (150019 for 15.19).
    pub server_version_num: u32,
    pub settings: BTreeMap<String, Setting>,
}

/// A value parsed against its setting: numbers in the setting's base unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Bool(bool),
    Int(i64),
    Real(f64),
    /// A string or an enum value (enums lower-cased as PostgreSQL stores them).
    Str(String),
}

/// Why a proposed value is not acceptable. Every variant names the setting and the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("unknown setting {name:?}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default())]
    UnknownSetting {
        name: String,
        suggestion: Option<String>,
    },
    #[error("{name} cannot be changed (context internal)")]
    Internal { name: String },
    #[error("{name} = {value:?}: {expected}")]
    BadValue {
        name: String,
        value: String,
        expected: String,
    },
    #[error("{name} = {value:?} is out of range: allowed {min} to {max}{}", unit.as_ref().map(|u| format!(" (unit {u})")).unwrap_or_default())]
    OutOfRange {
        name: String,
        value: String,
        min: String,
        max: String,
        unit: Option<String>,
    },
    #[error("{name} = {value:?}: unit {unit:?} is not valid here; use one of {}", allowed.join(", "))]
    BadUnit {
        name: String,
        value: String,
        unit: String,
        allowed: Vec<String>,
    },
    #[error("{name} = {value:?} is not one of {}", allowed.join(", "))]
    NotInEnum {
        name: String,
        value: String,
        allowed: Vec<String>,
    },
}

impl Setting {
    /// Parses `input` (`64kB`, `4MB`, `10s`, `on`, `'replica'`, a bare number in the base
    /// unit) against this setting's type, unit, bounds and enum values, as PostgreSQL would.
    pub fn parse_value(&self, input: &str) -> Result<Value, ValueError> {
        let _ = input;
        todo!("confcore")
    }

    /// The current value, parsed (`value` is in the base unit already).
    pub fn current(&self) -> Result<Value, ValueError> {
        self.parse_value(&self.value)
    }
}

impl Value {
    /// The number for comparisons (bools as 0/1), `None` for strings.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(*i as f64),
            Value::Real(r) => Some(*r),
            Value::Str(_) => None,
        }
    }

    /// The form `pg_settings.setting` shows (base unit, `on`/`off`).
    pub fn to_setting_string(&self) -> String {
        match self {
            Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Real(r) => r.to_string(),
            Value::Str(s) => s.clone(),
        }
    }
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings.get(name)
    }

    /// Every setting's current value (`setting` column), by name.
    pub fn values(&self) -> BTreeMap<String, String> {
        self.settings
            .iter()
            .map(|(k, s)| (k.clone(), s.value.clone()))
            .collect()
    }

    /// Checks one proposed `name = input`: the setting exists (else a suggestion by edit
    /// distance), can be changed, and the value is valid. Returns it normalised.
    pub fn validate(&self, name: &str, input: &str) -> Result<Value, ValueError> {
        let _ = (name, input);
        todo!("confcore")
    }
}
