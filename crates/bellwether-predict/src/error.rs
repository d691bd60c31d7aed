//! The one error type of the crate. Every variant names what the user must look at: the
//! source (a file name or "input"), the line, the column.

/// Errors from reading histories, training, predicting and loading models.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("{source_name}: the file is empty (no header line)")]
    EmptyFile { source_name: String },

    #[error("{source_name}: the file has a header but no data rows")]
    NoRows { source_name: String },

    #[error("{source_name}: line {line} has {found} fields but the header has {expected}")]
    Ragged {
        source_name: String,
        line: u64,
        expected: usize,
        found: usize,
    },

    #[error("{source_name}: line {line}: {message}")]
    Csv {
        source_name: String,
        line: u64,
        message: String,
    },

    #[error("{source_name}: column `{column}` appears twice in the header")]
    DuplicateColumn { source_name: String, column: String },

    #[error("{source_name}: no label column `{label}` (the columns are: {columns})")]
    MissingLabel {
        source_name: String,
        label: String,
        columns: String,
    },

    #[error(
        "{source_name}: line {line}, column `{label}`: label `{value}` is not one of 1/0, true/false, failure/success"
    )]
    BadLabel {
        source_name: String,
        label: String,
        line: u64,
        value: String,
    },

    #[error(
        "{source_name}: column `{label}` holds only {class} rows ({rows} of them); training needs both failures and successes"
    )]
    OneClass {
        source_name: String,
        label: String,
        class: &'static str,
        rows: usize,
    },

    #[error("{source_name}: too few rows to train ({rows}); at least {needed} are needed")]
    TooFewRows {
        source_name: String,
        rows: usize,
        needed: usize,
    },

    #[error("{source_name}: --ignore names column `{column}`, which is not in the file")]
    UnknownIgnoredColumn { source_name: String, column: String },

    #[error("{source_name}: no usable feature columns remain ({skipped})")]
    NoFeatures {
        source_name: String,
        skipped: String,
    },

    #[error("{source_name}: line {line}, column `{column}`: expected a number, found `{value}`")]
    NotANumber {
        source_name: String,
        line: u64,
        column: String,
        value: String,
    },

    #[error("feature `{column}`: expected a number, found `{value}`")]
    RowNotANumber { column: String, value: String },

    #[error("invalid training parameter: {0}")]
    BadParameter(String),

    #[error(
        "{source_name}: not a bellwether model file (format is `{found}`, expected `{expected}`)"
    )]
    WrongFormat {
        source_name: String,
        found: String,
        expected: &'static str,
    },

    #[error(
        "{source_name}: model file version {found} is not supported; this build reads version {supported}, retrain the model with `bellwether model train`"
    )]
    WrongVersion {
        source_name: String,
        found: u64,
        supported: u32,
    },

    #[error("{source_name}: the model file is corrupt: {message}")]
    CorruptModel {
        source_name: String,
        message: String,
    },

    #[error("{target}: write failed: {source}")]
    Write {
        target: String,
        source: std::io::Error,
    },
}
