//! Tabular data: a CSV (or in-memory rows) held as typed cells, column by column.
//!
//! The frame knows nothing of models; it only turns text into numbers, categories and gaps,
//! and remembers the source line of every row so that later errors can point at it. It never
//! opens files: callers hand in a reader.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::error::PredictError;

/// One cell: a number, a category, or nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FeatureValue {
    Number(f64),
    Category(String),
    Missing,
}

impl FeatureValue {
    /// Parses CSV text: empty, `NA`, `N/A`, `NaN` and `null` are missing; a finite number is a
    /// number; anything else is a category.
    pub fn parse(text: &str) -> FeatureValue {
        let t = text.trim();
        if t.is_empty() || is_missing_token(t) {
            return FeatureValue::Missing;
        }
        match t.parse::<f64>() {
            Ok(v) if v.is_finite() => FeatureValue::Number(v),
            _ => FeatureValue::Category(t.to_string()),
        }
    }

    /// The value as the text of a category (numbers are printed the shortest way).
    pub fn category_text(&self) -> Option<String> {
        match self {
            FeatureValue::Number(v) => Some(format!("{v}")),
            FeatureValue::Category(s) => Some(s.clone()),
            FeatureValue::Missing => None,
        }
    }

    pub fn is_missing(&self) -> bool {
        matches!(self, FeatureValue::Missing)
    }
}

impl std::fmt::Display for FeatureValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeatureValue::Number(v) => write!(f, "{v}"),
            FeatureValue::Category(s) => f.write_str(s),
            FeatureValue::Missing => f.write_str(""),
        }
    }
}

fn is_missing_token(t: &str) -> bool {
    ["na", "n/a", "nan", "null"]
        .iter()
        .any(|m| t.eq_ignore_ascii_case(m))
}

/// Reads a label cell: 1/0, true/false or failure/success (any case). `Some(true)` is a failure.
pub fn parse_label(value: &FeatureValue) -> Option<bool> {
    match value {
        FeatureValue::Number(v) if *v == 1.0 => Some(true),
        FeatureValue::Number(v) if *v == 0.0 => Some(false),
        FeatureValue::Category(s) => {
            let s = s.trim();
            if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("failure") {
                Some(true)
            } else if s.eq_ignore_ascii_case("false") || s.eq_ignore_ascii_case("success") {
                Some(false)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// A table of typed cells, stored column by column.
#[derive(Debug, Clone)]
pub struct Frame {
    source: String,
    names: Vec<String>,
    columns: Vec<Vec<FeatureValue>>,
    /// The 1-based source line of each row (the header is line 1 in a CSV).
    lines: Vec<u64>,
    index: HashMap<String, usize>,
}

impl Frame {
    /// Reads a CSV with a header line. `source` names the input in error messages.
    pub fn from_csv<R: Read>(reader: R, source: &str) -> Result<Frame, PredictError> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(reader);
        let csv_err = |e: csv::Error| csv_error(source, e);
        let headers = rdr.headers().map_err(csv_err)?.clone();
        if headers.is_empty() || (headers.len() == 1 && headers[0].trim().is_empty()) {
            return Err(PredictError::EmptyFile {
                source_name: source.to_string(),
            });
        }
        let names: Vec<String> = headers.iter().map(|h| h.trim().to_string()).collect();
        let mut columns: Vec<Vec<FeatureValue>> = vec![Vec::new(); names.len()];
        let mut lines = Vec::new();
        let mut record = csv::StringRecord::new();
        loop {
            match rdr.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => return Err(csv_err(e)),
            }
            let line = record.position().map(|p| p.line()).unwrap_or(0);
            // A blank line in the middle of a file reads as one empty field; skip it.
            if record.len() == 1 && record[0].trim().is_empty() && names.len() > 1 {
                continue;
            }
            for (col, cell) in columns.iter_mut().zip(record.iter()) {
                col.push(FeatureValue::parse(cell));
            }
            lines.push(line);
        }
        Frame::new(source, names, columns, lines)
    }

    /// Builds a frame from in-memory rows; a column missing from a row is a missing cell.
    /// Columns are ordered by first appearance. Row `i` is reported as line `i + 1`.
    pub fn from_rows(
        source: &str,
        rows: &[HashMap<String, FeatureValue>],
    ) -> Result<Frame, PredictError> {
        let mut names: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for row in rows {
            let mut keys: Vec<&String> = row.keys().collect();
            keys.sort();
            for k in keys {
                if seen.insert(k.clone()) {
                    names.push(k.clone());
                }
            }
        }
        let columns = names
            .iter()
            .map(|n| {
                rows.iter()
                    .map(|r| r.get(n).cloned().unwrap_or(FeatureValue::Missing))
                    .collect()
            })
            .collect();
        let lines = (1..=rows.len() as u64).collect();
        Frame::new(source, names, columns, lines)
    }

    /// Builds a frame from named columns of equal length.
    pub fn from_columns(
        source: &str,
        names: Vec<String>,
        columns: Vec<Vec<FeatureValue>>,
    ) -> Result<Frame, PredictError> {
        let rows = columns.first().map_or(0, Vec::len);
        if let Some((i, c)) = columns.iter().enumerate().find(|(_, c)| c.len() != rows) {
            return Err(PredictError::Csv {
                source_name: source.to_string(),
                line: 1,
                message: format!(
                    "column `{}` has {} cells but the first has {rows}",
                    names[i],
                    c.len()
                ),
            });
        }
        let lines = (2..rows as u64 + 2).collect();
        Frame::new(source, names, columns, lines)
    }

    fn new(
        source: &str,
        names: Vec<String>,
        columns: Vec<Vec<FeatureValue>>,
        lines: Vec<u64>,
    ) -> Result<Frame, PredictError> {
        let mut index = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            if index.insert(n.clone(), i).is_some() {
                return Err(PredictError::DuplicateColumn {
                    source_name: source.to_string(),
                    column: n.clone(),
                });
            }
        }
        if names.is_empty() {
            return Err(PredictError::EmptyFile {
                source_name: source.to_string(),
            });
        }
        if lines.is_empty() {
            return Err(PredictError::NoRows {
                source_name: source.to_string(),
            });
        }
        Ok(Frame {
            source: source.to_string(),
            names,
            columns,
            lines,
            index,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn rows(&self) -> usize {
        self.lines.len()
    }

    /// The source line of row `row`.
    pub fn line(&self, row: usize) -> u64 {
        self.lines[row]
    }

    pub fn column(&self, name: &str) -> Option<&[FeatureValue]> {
        self.index.get(name).map(|&i| self.columns[i].as_slice())
    }

    pub fn column_at(&self, i: usize) -> &[FeatureValue] {
        &self.columns[i]
    }

    /// Reads column `label` as failure (true) / success (false), naming the first bad cell.
    pub fn labels(&self, label: &str) -> Result<Vec<bool>, PredictError> {
        let col = self
            .column(label)
            .ok_or_else(|| PredictError::MissingLabel {
                source_name: self.source.clone(),
                label: label.to_string(),
                columns: self.names.join(", "),
            })?;
        col.iter()
            .enumerate()
            .map(|(i, v)| {
                parse_label(v).ok_or_else(|| PredictError::BadLabel {
                    source_name: self.source.clone(),
                    label: label.to_string(),
                    line: self.lines[i],
                    value: v.to_string(),
                })
            })
            .collect()
    }

    /// Keeps the rows whose index is in `rows`, in that order.
    pub fn select_rows(&self, rows: &[usize]) -> Frame {
        Frame {
            source: self.source.clone(),
            names: self.names.clone(),
            columns: self
                .columns
                .iter()
                .map(|c| rows.iter().map(|&r| c[r].clone()).collect())
                .collect(),
            lines: rows.iter().map(|&r| self.lines[r]).collect(),
            index: self.index.clone(),
        }
    }
}

fn csv_error(source: &str, e: csv::Error) -> PredictError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => PredictError::Ragged {
            source_name: source.to_string(),
            line: pos.as_ref().map(|p| p.line()).unwrap_or(line),
            expected: *expected_len as usize,
            found: *len as usize,
        },
        _ => PredictError::Csv {
            source_name: source.to_string(),
            line,
            message: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_parse_to_numbers_categories_and_gaps() {
        assert_eq!(FeatureValue::parse(" 3.5 "), FeatureValue::Number(3.5));
        assert_eq!(FeatureValue::parse("NA"), FeatureValue::Missing);
        assert_eq!(FeatureValue::parse(""), FeatureValue::Missing);
        assert_eq!(
            FeatureValue::parse("inf"),
            FeatureValue::Category("inf".into())
        );
        assert_eq!(
            FeatureValue::parse("debian-12"),
            FeatureValue::Category("debian-12".into())
        );
    }

    #[test]
    fn labels_accept_three_spellings_in_any_case() {
        for (t, want) in [
            ("1", true),
            ("0", false),
            ("TRUE", true),
            ("false", false),
            ("Failure", true),
            ("success", false),
        ] {
            assert_eq!(parse_label(&FeatureValue::parse(t)), Some(want), "{t}");
        }
        assert_eq!(parse_label(&FeatureValue::parse("2")), None);
        assert_eq!(parse_label(&FeatureValue::parse("maybe")), None);
    }

    #[test]
    fn ragged_csv_names_the_line() {
        let err = Frame::from_csv("a,b\n1,2\n3\n".as_bytes(), "h.csv").unwrap_err();
        assert_eq!(
            err.to_string(),
            "h.csv: line 3 has 1 fields but the header has 2"
        );
    }

    #[test]
    fn empty_and_header_only_files_are_refused() {
        let err = Frame::from_csv("".as_bytes(), "h.csv").unwrap_err();
        assert_eq!(err.to_string(), "h.csv: the file is empty (no header line)");
        let err = Frame::from_csv("a,b\n".as_bytes(), "h.csv").unwrap_err();
        assert_eq!(
            err.to_string(),
            "h.csv: the file has a header but no data rows"
        );
    }

    #[test]
    fn bad_label_names_line_and_column() {
        let f = Frame::from_csv("x,outcome\n1,1\n2,maybe\n".as_bytes(), "h.csv").unwrap();
        let err = f.labels("outcome").unwrap_err();
        assert_eq!(
            err.to_string(),
            "h.csv: line 3, column `outcome`: label `maybe` is not one of 1/0, true/false, failure/success"
        );
        let err = f.labels("failed").unwrap_err();
        assert_eq!(
            err.to_string(),
            "h.csv: no label column `failed` (the columns are: x, outcome)"
        );
    }
}
