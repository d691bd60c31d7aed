//! From columns to features: which columns to use, of what kind, and how a cell becomes the
//! number the estimators see.
//!
//! A numeric feature keeps its raw value (NaN when missing) and a list of bin edges for
//! histogram training. A categorical feature maps each frequent category to a small integer
//! code; code 0 is "missing" and code 1 is "other", which also takes categories never seen in
//! training. Both estimators and the explanations work on these "prepared" rows.
//!
//! A value training had (almost) no rows of has no learnt meaning: a category never seen (when
//! training pooled no rare categories into "other"), a missing categorical cell when training
//! had none, a missing number when training had none. [`Feature::is_unknown`] names them; the
//! model treats such a feature as unknown for that row (averaged over the training rows) instead
//! of sending it down whichever branch the trees happened to give the empty code.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::PredictError;
use crate::frame::{FeatureValue, Frame};

/// Code of a missing categorical cell.
pub const CAT_MISSING: u32 = 0;
/// Code of a category that is rare or unseen in training.
pub const CAT_OTHER: u32 = 1;

/// Largest number of histogram bins per feature, including the "missing" bin 0.
pub const MAX_BINS: usize = 256;

/// Why a column is not a feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The column is the label.
    Label,
    /// The name starts with `_` (for example the oracle `_p`).
    Underscore,
    /// Named in `--ignore`.
    Ignored,
    /// Nearly every row has its own value (an identifier such as a deployment id or host).
    Identifier,
    /// Every row holds the same value.
    Constant,
    /// Every cell is empty.
    Empty,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::Label => "the label",
            SkipReason::Underscore => "name starts with `_`",
            SkipReason::Ignored => "named in --ignore",
            SkipReason::Identifier => "an identifier (a distinct value in nearly every row)",
            SkipReason::Constant => "the same value in every row",
            SkipReason::Empty => "every cell is empty",
        })
    }
}

/// A column left out of the model, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedColumn {
    pub column: String,
    pub reason: SkipReason,
}

/// One model input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub kind: FeatureKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeatureKind {
    Numeric {
        /// Histogram bin edges: bin k (1-based) holds values `<= edges[k-1]`.
        edges: Vec<f64>,
        mean: f64,
        std: f64,
        /// Whether training saw missing cells in this column.
        missing_seen: bool,
    },
    Categorical {
        /// The categories with their own code; category `i` has code `i + 2`.
        categories: Vec<String>,
        /// The codes among "missing" (0) and "other" (1) that training had fewer than the
        /// rows a category needs of: their cells are unknown at prediction time. `None` in
        /// model files written before this field existed (their codes route as trained).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unlearnt: Option<Vec<u32>>,
        #[serde(skip)]
        lookup: HashMap<String, u32>,
    },
}

impl Feature {
    /// Rebuilds lookup tables after deserialisation.
    pub(crate) fn rebuild(&mut self) {
        if let FeatureKind::Categorical {
            categories, lookup, ..
        } = &mut self.kind
        {
            *lookup = categories
                .iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), i as u32 + 2))
                .collect();
        }
    }

    pub fn is_categorical(&self) -> bool {
        matches!(self.kind, FeatureKind::Categorical { .. })
    }

    /// Whether a prepared value is one training had too few rows of to learn from: a missing
    /// number when training saw no missing cells, or a categorical code listed as unlearnt
    /// (a category never seen, or a missing cell, when training had too few such rows).
    #[inline]
    pub fn is_unknown(&self, prepared: f64) -> bool {
        match &self.kind {
            FeatureKind::Numeric { missing_seen, .. } => prepared.is_nan() && !missing_seen,
            FeatureKind::Categorical { unlearnt, .. } => unlearnt
                .as_ref()
                .is_some_and(|u| u.iter().any(|&c| c as f64 == prepared)),
        }
    }

    /// Whether any value of this feature can be unknown (see [`Feature::is_unknown`]).
    pub fn can_be_unknown(&self) -> bool {
        match &self.kind {
            FeatureKind::Numeric { missing_seen, .. } => !missing_seen,
            FeatureKind::Categorical { unlearnt, .. } => {
                unlearnt.as_ref().is_some_and(|u| !u.is_empty())
            }
        }
    }

    /// The number of histogram bins this feature uses (bin 0 is missing).
    pub fn bins(&self) -> usize {
        match &self.kind {
            FeatureKind::Numeric { edges, .. } => edges.len() + 2,
            FeatureKind::Categorical { categories, .. } => categories.len() + 2,
        }
    }

    /// Turns a cell into the prepared value. `Err` holds the offending text when a numeric
    /// feature is given a category.
    pub fn prepare(&self, value: &FeatureValue) -> Result<f64, String> {
        match (&self.kind, value) {
            (_, FeatureValue::Missing) => Ok(match self.kind {
                FeatureKind::Numeric { .. } => f64::NAN,
                FeatureKind::Categorical { .. } => CAT_MISSING as f64,
            }),
            (FeatureKind::Numeric { .. }, FeatureValue::Number(v)) => Ok(*v),
            (FeatureKind::Numeric { .. }, FeatureValue::Category(s)) => Err(s.clone()),
            (FeatureKind::Categorical { lookup, .. }, FeatureValue::Category(s)) => {
                Ok(lookup.get(s.as_str()).copied().unwrap_or(CAT_OTHER) as f64)
            }
            (FeatureKind::Categorical { lookup, .. }, FeatureValue::Number(v)) => {
                Ok(lookup.get(&format!("{v}")).copied().unwrap_or(CAT_OTHER) as f64)
            }
        }
    }

    /// The histogram bin of a prepared value.
    pub fn bin(&self, prepared: f64) -> u8 {
        match &self.kind {
            FeatureKind::Numeric { edges, .. } => {
                if prepared.is_nan() {
                    0
                } else {
                    (1 + edges.partition_point(|e| *e < prepared)) as u8
                }
            }
            FeatureKind::Categorical { .. } => prepared as u8,
        }
    }

    /// The text shown for a categorical code.
    pub fn category_name(&self, code: u32) -> Option<&str> {
        match &self.kind {
            FeatureKind::Categorical { categories, .. } => match code {
                CAT_MISSING => Some("(missing)"),
                CAT_OTHER => Some("(other)"),
                c => categories.get(c as usize - 2).map(String::as_str),
            },
            FeatureKind::Numeric { .. } => None,
        }
    }
}

/// Options for choosing the features of a frame.
#[derive(Debug, Clone)]
pub struct SchemaOptions {
    pub label: String,
    pub ignore: Vec<String>,
    /// A category needs this many rows to get its own code; rarer ones share "other".
    pub min_category_rows: usize,
}

/// Chooses features from `frame` and fits their encodings.
pub fn infer_features(
    frame: &Frame,
    opts: &SchemaOptions,
) -> Result<(Vec<Feature>, Vec<SkippedColumn>), PredictError> {
    for col in &opts.ignore {
        if frame.column(col).is_none() {
            return Err(PredictError::UnknownIgnoredColumn {
                source_name: frame.source().to_string(),
                column: col.clone(),
            });
        }
    }
    let mut features = Vec::new();
    let mut skipped = Vec::new();
    for (i, name) in frame.names().iter().enumerate() {
        let skip = |reason| SkippedColumn {
            column: name.clone(),
            reason,
        };
        if *name == opts.label {
            skipped.push(skip(SkipReason::Label));
            continue;
        }
        if name.starts_with('_') {
            skipped.push(skip(SkipReason::Underscore));
            continue;
        }
        if opts.ignore.iter().any(|c| c == name) {
            skipped.push(skip(SkipReason::Ignored));
            continue;
        }
        match fit_feature(name, frame.column_at(i), opts.min_category_rows) {
            Ok(f) => features.push(f),
            Err(reason) => skipped.push(skip(reason)),
        }
    }
    if features.is_empty() {
        let list: Vec<String> = skipped
            .iter()
            .map(|s| format!("`{}`: {}", s.column, s.reason))
            .collect();
        return Err(PredictError::NoFeatures {
            source_name: frame.source().to_string(),
            skipped: list.join("; "),
        });
    }
    Ok((features, skipped))
}

fn fit_feature(
    name: &str,
    cells: &[FeatureValue],
    min_category_rows: usize,
) -> Result<Feature, SkipReason> {
    let present: Vec<&FeatureValue> = cells.iter().filter(|c| !c.is_missing()).collect();
    if present.is_empty() {
        return Err(SkipReason::Empty);
    }
    let missing_seen = present.len() < cells.len();
    let all_numeric = present.iter().all(|c| matches!(c, FeatureValue::Number(_)));
    if all_numeric {
        let mut values: Vec<f64> = present
            .iter()
            .map(|c| match c {
                FeatureValue::Number(v) => *v,
                _ => unreachable!("checked above"),
            })
            .collect();
        values.sort_by(f64::total_cmp);
        let distinct = 1 + values.windows(2).filter(|w| w[0] != w[1]).count();
        if distinct == 1 && !missing_seen {
            return Err(SkipReason::Constant);
        }
        // An integer column with a distinct value in every row is a row number or an id.
        if values.len() >= 20 && distinct == values.len() && values.iter().all(|v| v.fract() == 0.0)
        {
            return Err(SkipReason::Identifier);
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let std = if var > 0.0 { var.sqrt() } else { 1.0 };
        let edges = bin_edges(&values, MAX_BINS - 2);
        return Ok(Feature {
            name: name.to_string(),
            kind: FeatureKind::Numeric {
                edges,
                mean,
                std,
                missing_seen,
            },
        });
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for c in &present {
        *counts
            .entry(c.category_text().unwrap_or_default())
            .or_default() += 1;
    }
    if counts.len() == 1 && !missing_seen {
        return Err(SkipReason::Constant);
    }
    if is_identifier(counts.len(), present.len()) {
        return Err(SkipReason::Identifier);
    }
    let mut frequent: Vec<(String, usize)> = counts
        .into_iter()
        .filter(|(_, n)| *n >= min_category_rows)
        .collect();
    // Most frequent first, then by name, so that the codes do not depend on hash order.
    frequent.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    frequent.truncate(MAX_BINS - 2);
    let coded: usize = frequent.iter().map(|(_, n)| n).sum();
    let missing_rows = cells.len() - present.len();
    let other_rows = present.len() - coded;
    let unlearnt: Vec<u32> = [(CAT_MISSING, missing_rows), (CAT_OTHER, other_rows)]
        .into_iter()
        .filter(|&(_, n)| n < min_category_rows.max(1))
        .map(|(c, _)| c)
        .collect();
    let categories: Vec<String> = frequent.into_iter().map(|(c, _)| c).collect();
    let mut f = Feature {
        name: name.to_string(),
        kind: FeatureKind::Categorical {
            categories,
            unlearnt: Some(unlearnt),
            lookup: HashMap::new(),
        },
    };
    f.rebuild();
    Ok(f)
}

/// A text column is an identifier when every value is distinct, or, with enough rows, when
/// more than half the rows have a value of their own: such a column names rows, it does not
/// describe them, and a model would only memorise it.
fn is_identifier(distinct: usize, rows: usize) -> bool {
    (rows >= 2 && distinct == rows) || (rows >= 20 && distinct * 2 > rows)
}

/// Quantile bin edges over sorted values: at most `max_edges` midpoints between distinct
/// values, placed so that bins hold about the same number of rows.
fn bin_edges(sorted: &[f64], max_edges: usize) -> Vec<f64> {
    let mut distinct: Vec<(f64, usize)> = Vec::new();
    for &v in sorted {
        match distinct.last_mut() {
            Some((d, n)) if *d == v => *n += 1,
            _ => distinct.push((v, 1)),
        }
    }
    if distinct.len() <= max_edges + 1 {
        return distinct
            .windows(2)
            .map(|w| midpoint(w[0].0, w[1].0))
            .collect();
    }
    let target = sorted.len() as f64 / (max_edges + 1) as f64;
    let mut edges = Vec::with_capacity(max_edges);
    let mut acc = 0usize;
    let mut next_cut = target;
    for w in distinct.windows(2) {
        acc += w[0].1;
        if acc as f64 >= next_cut && edges.len() < max_edges {
            edges.push(midpoint(w[0].0, w[1].0));
            while next_cut <= acc as f64 {
                next_cut += target;
            }
        }
    }
    edges
}

fn midpoint(a: f64, b: f64) -> f64 {
    let m = a + (b - a) / 2.0;
    // Keep the edge strictly below `b`, so `b` lands in the upper bin.
    if m < b {
        m
    } else {
        a
    }
}

/// Prepared rows: `rows × features` values, row-major.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub features: usize,
    pub values: Vec<f64>,
}

impl Prepared {
    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.features).unwrap_or(0)
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.features..(i + 1) * self.features]
    }
}

/// Prepares every row of `frame`. A feature absent from the frame is missing in every row;
/// its name is returned in the second value.
pub fn prepare_frame(
    features: &[Feature],
    frame: &Frame,
) -> Result<(Prepared, Vec<String>), PredictError> {
    let n = frame.rows();
    let nf = features.len();
    let mut values = vec![0.0; n * nf];
    let mut absent = Vec::new();
    for (j, f) in features.iter().enumerate() {
        match frame.column(&f.name) {
            Some(col) => {
                for (i, cell) in col.iter().enumerate() {
                    values[i * nf + j] =
                        f.prepare(cell).map_err(|value| PredictError::NotANumber {
                            source_name: frame.source().to_string(),
                            line: frame.line(i),
                            column: f.name.clone(),
                            value,
                        })?;
                }
            }
            None => {
                absent.push(f.name.clone());
                let v = f.prepare(&FeatureValue::Missing).unwrap_or(f64::NAN);
                for i in 0..n {
                    values[i * nf + j] = v;
                }
            }
        }
    }
    Ok((
        Prepared {
            features: nf,
            values,
        },
        absent,
    ))
}

/// Prepares one row given by name.
pub fn prepare_row(
    features: &[Feature],
    row: &HashMap<String, FeatureValue>,
) -> Result<Vec<f64>, PredictError> {
    features
        .iter()
        .map(|f| {
            f.prepare(row.get(&f.name).unwrap_or(&FeatureValue::Missing))
                .map_err(|value| PredictError::RowNotANumber {
                    column: f.name.clone(),
                    value,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(csv: &str) -> Frame {
        Frame::from_csv(csv.as_bytes(), "t.csv").unwrap()
    }

    fn opts() -> SchemaOptions {
        SchemaOptions {
            label: "outcome".into(),
            ignore: vec![],
            min_category_rows: 1,
        }
    }

    #[test]
    fn columns_are_typed_and_identifiers_skipped() {
        let mut csv = String::from("id,host,os,size,flat,_p,outcome\n");
        for i in 0..30 {
            let os = ["debian", "rhel", "ubuntu"][i % 3];
            let size = if i % 7 == 0 {
                String::new()
            } else {
                format!("{}", i % 5)
            };
            csv.push_str(&format!("{i},h{i},{os},{size},1,0.5,{}\n", i % 2));
        }
        let (features, skipped) = infer_features(&frame(&csv), &opts()).unwrap();
        let names: Vec<_> = features
            .iter()
            .map(|f| (f.name.as_str(), f.is_categorical()))
            .collect();
        assert_eq!(names, vec![("os", true), ("size", false)]);
        let reasons: Vec<_> = skipped
            .iter()
            .map(|s| (s.column.as_str(), s.reason.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("id", SkipReason::Identifier),
                ("host", SkipReason::Identifier),
                ("flat", SkipReason::Constant),
                ("_p", SkipReason::Underscore),
                ("outcome", SkipReason::Label),
            ]
        );
    }

    #[test]
    fn unseen_and_missing_categories_get_their_own_codes() {
        let csv = "os,outcome\na,1\nb,0\na,0\n";
        let (features, _) = infer_features(&frame(csv), &opts()).unwrap();
        let os = &features[0];
        assert_eq!(os.prepare(&FeatureValue::Category("a".into())), Ok(2.0));
        assert_eq!(
            os.prepare(&FeatureValue::Category("zzz".into())),
            Ok(CAT_OTHER as f64)
        );
        assert_eq!(os.prepare(&FeatureValue::Missing), Ok(CAT_MISSING as f64));
    }

    #[test]
    fn codes_training_had_too_few_rows_of_are_unknown() {
        let o = SchemaOptions {
            min_category_rows: 10,
            ..opts()
        };
        // Two frequent categories, no missing cells, no rare ones: "other" and "missing" are
        // unlearnt, so an unseen category and a missing cell are unknown.
        let csv = String::from("os,n,outcome\n") + &"a,1,1\nb,2,0\n".repeat(10);
        let (f, _) = infer_features(&frame(&csv), &o).unwrap();
        let cat = FeatureValue::Category("zzz".into());
        assert!(f[0].is_unknown(f[0].prepare(&cat).unwrap()));
        assert!(f[0].is_unknown(f[0].prepare(&FeatureValue::Missing).unwrap()));
        assert!(!f[0].is_unknown(f[0].prepare(&FeatureValue::Category("a".into())).unwrap()));
        assert!(f[0].can_be_unknown());
        // The numeric column had no missing cells: a missing number is unknown.
        assert!(f[1].is_unknown(f[1].prepare(&FeatureValue::Missing).unwrap()));
        assert!(!f[1].is_unknown(f[1].prepare(&FeatureValue::Number(7.0)).unwrap()));
        // Ten rare categories pooled into "other" and ten missing cells: both learnt.
        let mut csv = String::from("os,n,outcome\n") + &"a,1,1\nb,2,0\n".repeat(10);
        for i in 0..10 {
            csv.push_str(&format!("rare{i},,{}\n,3,{}\n", i % 2, (i + 1) % 2));
        }
        let (f, _) = infer_features(&frame(&csv), &o).unwrap();
        assert!(!f[0].is_unknown(f[0].prepare(&cat).unwrap()));
        assert!(!f[0].is_unknown(f[0].prepare(&FeatureValue::Missing).unwrap()));
        assert!(!f[0].can_be_unknown());
        assert!(!f[1].is_unknown(f[1].prepare(&FeatureValue::Missing).unwrap()));
    }

    #[test]
    fn a_model_file_without_unlearnt_codes_routes_them_as_trained() {
        let json = r#"{"name":"os","kind":{"type":"categorical","categories":["a","b"]}}"#;
        let mut f: Feature = serde_json::from_str(json).unwrap();
        f.rebuild();
        let v = f.prepare(&FeatureValue::Category("zzz".into())).unwrap();
        assert_eq!(v, CAT_OTHER as f64);
        assert!(!f.is_unknown(v) && !f.can_be_unknown());
        // And a new file keeps the list through JSON.
        let (g, _) = infer_features(&frame("os,outcome\na,1\nb,0\na,0\n"), &opts()).unwrap();
        let back: Feature = serde_json::from_str(&serde_json::to_string(&g[0]).unwrap()).unwrap();
        assert!(back.is_unknown(CAT_OTHER as f64));
    }

    #[test]
    fn ignoring_an_unknown_column_is_an_error() {
        let o = SchemaOptions {
            ignore: vec!["nope".into()],
            ..opts()
        };
        let err = infer_features(&frame("x,outcome\n1,0\n2,1\n"), &o).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv: --ignore names column `nope`, which is not in the file"
        );
    }

    #[test]
    fn bins_respect_edges() {
        let values: Vec<f64> = (0..10_000).map(|i| (i % 1000) as f64 / 10.0).collect();
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let edges = bin_edges(&sorted, 254);
        assert!(edges.len() <= 254 && edges.len() > 200);
        assert!(edges.windows(2).all(|w| w[0] < w[1]));
        let f = Feature {
            name: "x".into(),
            kind: FeatureKind::Numeric {
                edges: edges.clone(),
                mean: 0.0,
                std: 1.0,
                missing_seen: false,
            },
        };
        for &v in &values {
            let b = f.bin(v) as usize;
            assert!(b >= 1);
            if b >= 2 {
                assert!(v > edges[b - 2]);
            }
            if b - 1 < edges.len() {
                assert!(v <= edges[b - 1]);
            }
        }
        assert_eq!(f.bin(f64::NAN), 0);
    }
}
