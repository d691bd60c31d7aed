//! The Numenta Anomaly Benchmark (NAB) scorer, written from NAB's published rules and checked
//! against its reference implementation (`nab/sweeper.py`, NAB v1.1).
//!
//! The rules:
//! - Each labelled file has anomaly windows (`labels/combined_windows.json`), given as
//!   timestamps; a window spans every row whose timestamp is within its limits.
//! - The first `min(floor(0.15·n), 750)` rows of a file are probationary and not scored.
//! - A detection at row `i` inside a window whose right edge is row `r` and width `w` rows sits
//!   at relative position `y = −(r − i + 1)/w`; it earns `A_TP·σ(y)/σ(−1)` where
//!   `σ(y) = 2/(1 + e^{5y}) − 1` (and `σ(y) = −1` for `y ≥ 3`). The earliest row of a window
//!   earns exactly `A_TP`. Only the best detection of each window counts.
//! - A window with no detection costs `−A_FN`.
//! - A detection outside every window is a false positive worth `A_FP·σ(y)`, where
//!   `y = |r_prev − i|/(w_prev − 1)` relative to the previous window (so a detection just after a
//!   window costs little) or `y = 3` (cost `A_FP`) when no window precedes it.
//! - The corpus score is the sum over files. It is normalised as
//!   `100·(S − S_null)/(S_perfect − S_null)`, where the null detector never fires and the perfect
//!   detector fires exactly at the first row of every window.
//! - A detector's anomaly score becomes detections with `score ≥ threshold`; the scoreboard
//!   reports each detector at the single threshold that maximises its corpus score for each
//!   profile (the sweep of `calcScoreByThreshold`).
//!
//! This module is pure: it takes the parsed files and the detector's scores and returns numbers.

use std::collections::BTreeMap;

use crate::series::parse_timestamp;

/// Weights of one application profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

/// The three profiles of the NAB scoreboard.
pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp: 1.0,
        fp: 0.11,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FP",
        tp: 1.0,
        fp: 0.22,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FN",
        tp: 1.0,
        fp: 0.11,
        fn_: 2.0,
    },
];

/// NAB's scaled sigmoid.
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// Rows of a file that are not scored: `min(floor(0.15·n), 750)`.
pub fn probation_len(n: usize) -> usize {
    ((n as f64 * 0.15).floor() as usize).min(750)
}

/// Why the label file or a window could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NabError {
    #[error("{source_name}: invalid label json: {message}")]
    Json {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: file `{file}`: cannot parse window limit `{text}` as a timestamp")]
    BadLimit {
        source_name: String,
        file: String,
        text: String,
    },
    #[error("file `{file}`: window {start}..{end} matches no row")]
    EmptyWindow {
        file: String,
        start: String,
        end: String,
    },
}

/// Window limits per relative file path (`realKnownCause/nyc_taxi.csv`), in milliseconds.
pub type WindowLimits = BTreeMap<String, Vec<(i64, i64)>>;

/// Parses `combined_windows.json`.
pub fn parse_windows(source_name: &str, json: &str) -> Result<WindowLimits, NabError> {
    let raw: BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_str(json).map_err(|e| NabError::Json {
            source_name: source_name.into(),
            message: e.to_string(),
        })?;
    let mut out = WindowLimits::new();
    for (file, ws) in raw {
        let mut v = Vec::with_capacity(ws.len());
        for (a, b) in ws {
            let p = |t: &str| {
                parse_timestamp(t).ok_or_else(|| NabError::BadLimit {
                    source_name: source_name.into(),
                    file: file.clone(),
                    text: t.into(),
                })
            };
            v.push((p(&a)?, p(&b)?));
        }
        out.insert(file, v);
    }
    Ok(out)
}

/// One data file with its windows resolved to row indices.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledFile {
    pub name: String,
    pub rows: usize,
    /// Inclusive row ranges `(first, last)`, sorted.
    pub windows: Vec<(usize, usize)>,
}

impl LabelledFile {
    /// Resolves `limits` against the file's timestamps by position, as NAB does: a window starts
    /// at the first row at or after its start and ends at the last row before the first row
    /// past its end (NAB's files step back in time at a few clock changes, so this scans rather
    /// than bisects).
    pub fn new(name: &str, timestamps: &[i64], limits: &[(i64, i64)]) -> Result<Self, NabError> {
        let mut windows = Vec::with_capacity(limits.len());
        for &(a, b) in limits {
            let first = timestamps
                .iter()
                .position(|&t| t >= a)
                .unwrap_or(timestamps.len());
            let end = timestamps[first..]
                .iter()
                .position(|&t| t > b)
                .map_or(timestamps.len(), |k| first + k);
            if first >= end {
                return Err(NabError::EmptyWindow {
                    file: name.into(),
                    start: a.to_string(),
                    end: b.to_string(),
                });
            }
            windows.push((first, end - 1));
        }
        windows.sort_unstable();
        Ok(LabelledFile {
            name: name.into(),
            rows: timestamps.len(),
            windows,
        })
    }

    /// Per-row label: the index of the window a row is in.
    fn window_of_rows(&self) -> Vec<Option<u32>> {
        let mut w = vec![None; self.rows];
        for (k, &(a, b)) in self.windows.iter().enumerate() {
            for slot in &mut w[a..=b] {
                *slot = Some(k as u32);
            }
        }
        w
    }
}

/// One scorable row: its anomaly score, what a detection there is worth, and its window.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SweepPoint {
    score: f64,
    worth: f64,
    /// Global window id, or `None` outside windows.
    window: Option<u32>,
}

/// What a detection at each scorable row is worth (NAB's `calcSweepScore`).
fn sweep_points(
    file: &LabelledFile,
    scores: &[f64],
    p: &Profile,
    window_base: u32,
    out: &mut Vec<SweepPoint>,
) {
    assert_eq!(
        file.rows,
        scores.len(),
        "scores and rows of {} differ in length",
        file.name
    );
    let max_tp = scaled_sigmoid(-1.0);
    let probation = probation_len(file.rows);
    let labels = file.window_of_rows();
    let mut prev: Option<(usize, usize)> = None; // (right edge, width)
    for (i, (&s, &label)) in scores.iter().zip(&labels).enumerate() {
        let worth = match label {
            Some(k) => {
                let (a, b) = file.windows[k as usize];
                let width = (b - a + 1) as f64;
                let y = -((b - i + 1) as f64) / width;
                scaled_sigmoid(y) * p.tp / max_tp
            }
            None => {
                let y = match prev {
                    None => 3.0,
                    Some((r, w)) => (i.abs_diff(r)) as f64 / (w as f64 - 1.0),
                };
                scaled_sigmoid(y) * p.fp
            }
        };
        if let Some(k) = label {
            let (a, b) = file.windows[k as usize];
            if i == b {
                prev = Some((b, b - a + 1));
            }
        }
        if i >= probation {
            out.push(SweepPoint {
                score: s,
                worth,
                window: label.map(|k| k + window_base),
            });
        }
    }
}

/// The corpus score at every distinct threshold, and the best one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepResult {
    /// The threshold that maximises the raw score (detections are `score ≥ threshold`).
    pub best_threshold: f64,
    /// The raw score at that threshold.
    pub best_raw: f64,
    /// Windows that have at least one scorable row.
    pub windows: usize,
}

/// Scores a corpus for one profile: the raw score at a fixed `threshold`, and the sweep's best.
/// `files[i].1` holds the detector's score for each row of `files[i].0`.
pub fn sweep(files: &[(LabelledFile, Vec<f64>)], p: &Profile) -> SweepResult {
    let mut pts = Vec::new();
    let mut base = 0u32;
    for (f, s) in files {
        sweep_points(f, s, p, base, &mut pts);
        base += f.windows.len() as u32;
    }
    // Scores descending; NaN scores never detect.
    pts.retain(|x| !x.score.is_nan());
    pts.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut window_best: Vec<Option<f64>> = vec![None; base as usize];
    let mut scorable = vec![false; base as usize];
    for x in &pts {
        if let Some(w) = x.window {
            scorable[w as usize] = true;
        }
    }
    let windows = scorable.iter().filter(|&&b| b).count();
    let mut fp_sum = 0.0;
    let mut tp_sum = 0.0; // Sum over scorable windows of max(worth) where detected.
    let mut detected = 0usize;
    let null = -p.fn_ * windows as f64;
    let mut best_raw = null;
    let mut best_threshold = 1.1;
    let mut i = 0;
    while i < pts.len() {
        let t = pts[i].score;
        while i < pts.len() && pts[i].score == t {
            let x = pts[i];
            match x.window {
                None => fp_sum += x.worth,
                Some(w) => {
                    let slot = &mut window_best[w as usize];
                    match slot {
                        None => {
                            *slot = Some(x.worth);
                            tp_sum += x.worth;
                            detected += 1;
                        }
                        Some(b) if x.worth > *b => {
                            tp_sum += x.worth - *b;
                            *b = x.worth;
                        }
                        Some(_) => {}
                    }
                }
            }
            i += 1;
        }
        let raw = tp_sum + fp_sum - p.fn_ * (windows - detected) as f64;
        if raw > best_raw {
            best_raw = raw;
            best_threshold = t;
        }
    }
    SweepResult {
        best_threshold,
        best_raw,
        windows,
    }
}

/// The raw corpus score when detections are the rows with `score ≥ threshold`.
pub fn raw_score_at(files: &[(LabelledFile, Vec<f64>)], p: &Profile, threshold: f64) -> f64 {
    let mut pts = Vec::new();
    let mut base = 0u32;
    for (f, s) in files {
        sweep_points(f, s, p, base, &mut pts);
        base += f.windows.len() as u32;
    }
    let mut best: Vec<Option<f64>> = vec![None; base as usize];
    let mut scorable = vec![false; base as usize];
    let mut fp = 0.0;
    for x in &pts {
        if let Some(w) = x.window {
            scorable[w as usize] = true;
        }
        if x.score.is_nan() || x.score < threshold {
            continue;
        }
        match x.window {
            None => fp += x.worth,
            Some(w) => {
                let b = &mut best[w as usize];
                *b = Some(b.map_or(x.worth, |v: f64| v.max(x.worth)));
            }
        }
    }
    let windows: f64 = scorable
        .iter()
        .zip(&best)
        .filter(|(s, _)| **s)
        .map(|(_, b)| b.unwrap_or(-p.fn_))
        .sum();
    windows + fp
}

/// `100·(raw − null)/(perfect − null)` with the null score `−A_FN·W` and the perfect score
/// `A_TP·W` for `W` scorable windows.
pub fn normalise(raw: f64, windows: usize, p: &Profile) -> f64 {
    let null = -p.fn_ * windows as f64;
    let perfect = p.tp * windows as f64;
    if perfect == null {
        return 0.0;
    }
    100.0 * (raw - null) / (perfect - null)
}

/// Scores of the perfect detector for a file: 1 at the first row of each window, 0 elsewhere.
pub fn perfect_scores(file: &LabelledFile) -> Vec<f64> {
    let mut s = vec![0.0; file.rows];
    for &(a, _) in &file.windows {
        s[a] = 1.0;
    }
    s
}

/// Detection delay and false alarms of binary alerts, for the artificial-file figures.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct AlertStats {
    /// Windows with at least one alert inside.
    pub detected: usize,
    pub windows: usize,
    /// Sum over detected windows of rows from the window's first row to the first alert.
    pub delay_rows_sum: usize,
    /// Alerts outside every window, after probation.
    pub false_alarms: usize,
    /// Rows after probation.
    pub scored_rows: usize,
}

/// Counts detections, delays and false alarms of `alerts` over `file` (after probation).
pub fn alert_stats(file: &LabelledFile, alerts: &[bool]) -> AlertStats {
    let probation = probation_len(file.rows);
    let labels = file.window_of_rows();
    let mut st = AlertStats {
        windows: file.windows.len(),
        ..Default::default()
    };
    for &(a, b) in &file.windows {
        if let Some(k) = (a.max(probation)..=b).find(|&i| alerts[i]) {
            st.detected += 1;
            st.delay_rows_sum += k - a;
        }
    }
    for i in probation..file.rows {
        st.scored_rows += 1;
        if alerts[i] && labels[i].is_none() {
            st.false_alarms += 1;
        }
    }
    st
}

/// One corpus file ready to run: its labels and its points.
#[derive(Debug, Clone)]
pub struct CorpusFile {
    pub labels: LabelledFile,
    pub points: Vec<crate::series::Point>,
}

/// Normalised scores of one profile.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ProfileScore {
    pub profile: &'static str,
    /// Score of the detector's own alert decisions (alerts as detections).
    pub at_decision: f64,
    /// Score at the best corpus-wide threshold on the detector's score.
    pub at_best_threshold: f64,
    pub best_threshold: f64,
}

/// What [`evaluate`] measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    pub files: usize,
    pub points: usize,
    pub windows: usize,
    pub profiles: Vec<ProfileScore>,
    /// Largest [`crate::anomaly::Detector::memory_bytes`] seen at the end of a file.
    pub max_memory_bytes: usize,
    /// Alert statistics summed over the `artificial*` files.
    pub artificial: AlertStats,
}

/// Runs a fresh detector from `make` over every file and scores the result for every profile.
/// Returns the evaluation and, per file, the verdicts (for timing or inspection by the caller).
pub fn evaluate<F>(
    corpus: &[CorpusFile],
    mut make: F,
) -> (Evaluation, Vec<Vec<crate::anomaly::Verdict>>)
where
    F: FnMut() -> Box<dyn crate::anomaly::Detector>,
{
    let mut verdicts = Vec::with_capacity(corpus.len());
    let mut max_mem = 0;
    for f in corpus {
        let mut d = make();
        let v: Vec<_> = f
            .points
            .iter()
            .map(|p| d.observe(p.ts_ms, p.value))
            .collect();
        max_mem = max_mem.max(d.memory_bytes());
        verdicts.push(v);
    }
    (score_verdicts(corpus, &verdicts, max_mem), verdicts)
}

/// Scores verdicts already computed for every file of `corpus`.
pub fn score_verdicts(
    corpus: &[CorpusFile],
    verdicts: &[Vec<crate::anomaly::Verdict>],
    max_memory_bytes: usize,
) -> Evaluation {
    let scored: Vec<(LabelledFile, Vec<f64>)> = corpus
        .iter()
        .zip(verdicts)
        .map(|(f, v)| (f.labels.clone(), v.iter().map(|x| x.score).collect()))
        .collect();
    let alerts: Vec<(LabelledFile, Vec<f64>)> = corpus
        .iter()
        .zip(verdicts)
        .map(|(f, v)| {
            (
                f.labels.clone(),
                v.iter().map(|x| if x.alert { 1.0 } else { 0.0 }).collect(),
            )
        })
        .collect();
    let mut profiles = Vec::new();
    let mut windows = 0;
    for p in PROFILES {
        let best = sweep(&scored, &p);
        windows = best.windows;
        let own = raw_score_at(&alerts, &p, 0.5);
        profiles.push(ProfileScore {
            profile: p.name,
            at_decision: normalise(own, best.windows, &p),
            at_best_threshold: normalise(best.best_raw, best.windows, &p),
            best_threshold: best.best_threshold,
        });
    }
    let mut artificial = AlertStats::default();
    for (f, v) in corpus.iter().zip(verdicts) {
        if f.labels.name.starts_with("artificial") {
            let a: Vec<bool> = v.iter().map(|x| x.alert).collect();
            let s = alert_stats(&f.labels, &a);
            artificial.detected += s.detected;
            artificial.windows += s.windows;
            artificial.delay_rows_sum += s.delay_rows_sum;
            artificial.false_alarms += s.false_alarms;
            artificial.scored_rows += s.scored_rows;
        }
    }
    Evaluation {
        files: corpus.len(),
        points: corpus.iter().map(|f| f.points.len()).sum(),
        windows,
        profiles,
        max_memory_bytes,
        artificial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rows: usize, windows: &[(usize, usize)]) -> LabelledFile {
        LabelledFile {
            name: "f".into(),
            rows,
            windows: windows.to_vec(),
        }
    }

    #[test]
    fn sigmoid_matches_nab_docstring() {
        assert!((scaled_sigmoid(-1.0) - 0.98661).abs() < 1e-5);
        assert!((scaled_sigmoid(-0.5) - 0.84828).abs() < 1e-5);
        assert_eq!(scaled_sigmoid(0.0), 0.0);
        assert!((scaled_sigmoid(1.0) + 0.98661).abs() < 1e-5);
        assert_eq!(scaled_sigmoid(3.0), -1.0);
    }

    #[test]
    fn probation() {
        assert_eq!(probation_len(1000), 150);
        assert_eq!(probation_len(4032), 604);
        assert_eq!(probation_len(22695), 750);
    }

    #[test]
    fn null_and_perfect_normalise_to_0_and_100() {
        let f = file(1000, &[(300, 339), (700, 739)]);
        let perfect = perfect_scores(&f);
        let null = vec![0.5; 1000];
        let files_p = vec![(f.clone(), perfect)];
        let files_n = vec![(f.clone(), null)];
        for p in PROFILES {
            let s = sweep(&files_p, &p);
            assert_eq!(s.windows, 2);
            assert!((normalise(s.best_raw, 2, &p) - 100.0).abs() < 1e-9);
            assert!((normalise(raw_score_at(&files_p, &p, 0.5), 2, &p) - 100.0).abs() < 1e-9);
            let n = sweep(&files_n, &p);
            assert_eq!(normalise(n.best_raw, 2, &p), 0.0);
            assert_eq!(n.best_threshold, 1.1);
        }
    }

    #[test]
    fn hand_computed_file() {
        // 1000 rows, probation 150. One window rows 400..=499 (width 100).
        let f = file(1000, &[(400, 499)]);
        let p = PROFILES[0];
        let mut s = vec![0.0; 1000];
        // Detection half-way: position −(499 − 449 + 1)/100 = −0.51.
        s[449] = 0.9;
        // A false positive 99 rows after the window: position 99/99 = 1 → −0.98661·0.11.
        s[598] = 0.8;
        // A false positive before any window: −0.11.
        s[200] = 0.7;
        // Inside probation: ignored.
        s[10] = 1.0;
        let tp = scaled_sigmoid(-0.51) / scaled_sigmoid(-1.0);
        let fp1 = scaled_sigmoid(1.0) * 0.11;
        let expect = tp + fp1 - 0.11;
        assert!((raw_score_at(&[(f.clone(), s.clone())], &p, 0.7) - expect).abs() < 1e-12);
        // At 0.85 only the TP counts; it is the best threshold here.
        let r = sweep(&[(f.clone(), s.clone())], &p);
        assert_eq!(r.best_threshold, 0.9);
        assert!((r.best_raw - tp).abs() < 1e-12);
        assert!((raw_score_at(&[(f, s)], &p, 0.95) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn sweep_agrees_with_fixed_threshold() {
        let f = file(2000, &[(500, 599), (1500, 1599)]);
        let s: Vec<f64> = (0..2000)
            .map(|i| ((i * 7919) % 1000) as f64 / 1000.0)
            .collect();
        let files = vec![(f, s)];
        for p in PROFILES {
            let r = sweep(&files, &p);
            assert!((raw_score_at(&files, &p, r.best_threshold) - r.best_raw).abs() < 1e-9);
            for t in [0.1, 0.5, 0.9, 0.999] {
                assert!(raw_score_at(&files, &p, t) <= r.best_raw + 1e-9);
            }
        }
    }

    #[test]
    fn windows_resolve_and_parse() {
        let json = r#"{"a/x.csv": [["1970-01-01 00:00:02.000000", "1970-01-01 00:00:04.000000"]], "a/y.csv": []}"#;
        let w = parse_windows("w.json", json).unwrap();
        assert_eq!(w["a/x.csv"], vec![(2000, 4000)]);
        let ts: Vec<i64> = (0..10).map(|i| i * 1000).collect();
        let f = LabelledFile::new("a/x.csv", &ts, &w["a/x.csv"]).unwrap();
        assert_eq!(f.windows, vec![(2, 4)]);
        assert!(LabelledFile::new("a/x.csv", &ts, &[(100_000, 200_000)]).is_err());
        assert!(parse_windows("w.json", "{")
            .unwrap_err()
            .to_string()
            .starts_with("w.json: invalid label json"));
    }

    #[test]
    fn stats_count_delay_and_false_alarms() {
        let f = file(1000, &[(400, 499)]);
        let mut a = vec![false; 1000];
        a[10] = true; // probation
        a[410] = true;
        a[700] = true;
        let s = alert_stats(&f, &a);
        assert_eq!(
            (s.detected, s.delay_rows_sum, s.false_alarms, s.scored_rows),
            (1, 10, 1, 850)
        );
    }
}
