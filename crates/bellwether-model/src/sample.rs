//! Metric samples as agents send them.

use serde::{Deserialize, Serialize};

/// One observation of one metric on one host. Unknown fields are refused, as everywhere in
/// a request body: a misspelt field is an error, not a silent default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSample {
    /// Milliseconds since the Unix epoch, taken on the agent.
    pub ts_ms: i64,
    /// Metric name, such as `load1` or `memory_available_ratio`.
    pub name: String,
    pub value: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let ok: MetricSample =
            serde_json::from_str(r#"{"ts_ms": 1, "name": "load1", "value": 0.5}"#).unwrap();
        assert_eq!(ok.value, 0.5);
        let err = serde_json::from_str::<MetricSample>(
            r#"{"ts_ms": 1, "name": "load1", "value": 0.5, "unit": "x"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `unit`"), "{err}");
    }
}
