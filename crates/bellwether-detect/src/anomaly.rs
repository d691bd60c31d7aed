//! Online anomaly detectors for one metric series.
//!
//! Each detector takes `(timestamp, value)` in time order and returns a [`Verdict`]: a score in
//! [0, 1] and a production alert decision whose threshold is fixed in the code (never tuned on
//! labels; see docs/detect.md for how the defaults were chosen on the NAB corpus). State is
//! bounded: every detector reports its [`Detector::memory_bytes`], and none grows with the length
//! of the series (`cad` grows with what the series shows, up to its context bound).
//!
//! The detectors, by [`DetectorKind`]:
//! - `windowed-gaussian`: a port of NAB's `windowedGaussian` baseline (tail probability under a
//!   Gaussian fitted to the last 1000 values). It is here as a check of the NAB scorer, not for
//!   production.
//! - `robust-z`: distance from the median of a sliding window in units of its inter-quartile
//!   range.
//! - `ewma`: Huber-clipped exponentially weighted level and scale, with level-shift handling.
//! - `two-scale-entropy` (default, [`TwoScaleEntropy`]): `relative-entropy` at two time scales:
//!   the range rule on every point, and the full test on the means of blocks of 4 points. It
//!   scored best on NAB of the methods tried (docs/detect.md has the table).
//! - `relative-entropy`: the histogram of the last 52 points against the histograms
//!   seen before (Wang et al. 2011, as NAB's `relativeEntropy`, but learning its value range
//!   online instead of reading the whole file's minimum and maximum; a value more than 10 % of
//!   the range beyond it is an anomaly and widens it), with alert suppression.
//! - `seasonal`: the `ewma` residual after removing a time-of-day profile (48 bins) learnt
//!   online.
//! - `record`: the `robust-z` deviation judged against the largest deviation the series has
//!   shown so far (a slowly decaying record), so that "unusual" is learnt per series online.
//! - `bellwether`: an ensemble of `robust-z` and `seasonal` (the larger deviation counts).
//! - `cad`: CAD OSE ([`crate::cad`]), with its value range learnt from the first 750 points.
//! - `seasonal-cusum`: a seasonal baseline with CUSUMs on its residual
//!   ([`crate::changepoint`]), built for deployment faults.
//! - `seasonal-entropy`: `seasonal-cusum` and `two-scale-entropy` with one decision
//!   ([`crate::watch`]).
//!
//! Every z-based detector alerts when its deviation reaches [`Z_ALERT`]
//! standard units and then stays quiet for [`SUPPRESS_POINTS`] points (scores halved), so that
//! one incident raises one alert. Both are constants for every series: nothing is tuned per
//! series or on a series' labels. They were chosen once by measurement on NAB (docs/detect.md), so
//! the NAB figure at the detector's own decision is a corpus-tuned figure for one parameter.
//!
//! NaN values are skipped: they get score 0, no alert, and do not change any state.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// What a detector says about one point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Anomaly score in [0, 1]; higher is more anomalous.
    pub score: f64,
    /// The production decision: raise an alert for this point.
    pub alert: bool,
}

impl Verdict {
    const QUIET: Verdict = Verdict {
        score: 0.0,
        alert: false,
    };
}

/// A streaming detector over one series.
pub trait Detector: Send {
    /// Judges the next point. Timestamps are milliseconds since the Unix epoch in the order
    /// the samples came; equal timestamps and a few going back (a clock change) are judged as
    /// they come ([`crate::series::parse_series`] warns on the ones going back).
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict;
    /// Approximate heap and inline bytes this detector holds (bounded, independent of the
    /// series length).
    fn memory_bytes(&self) -> usize;
}

/// Values whose magnitude is above this are never learnt: their squares and sums would
/// overflow (`1e150²` is `1e300`, still finite), and a detector's range or mean would be
/// stretched so far that nothing later could stand out.
pub const MAX_MAGNITUDE: f64 = 1e150;

/// A value is wild when it lies further outside the range of the recent accepted values than
/// this many times that range's width.
pub const WILD_WIDTHS: f64 = 1e6;

/// Consecutive wild (finite) values after which they are taken as a real change of level and
/// learnt.
pub const WILD_CONFIRM: u32 = 3;

/// Guards a detector against values it must not learn from, so that one of them cannot blind it
/// to every later anomaly: a non-finite value (`inf`), a value above [`MAX_MAGNITUDE`], or a
/// value more than [`WILD_WIDTHS`] widths outside the range of the last 256 accepted values
/// (the `relative-entropy` range, a `record`, a `seasonal` bin or `windowed-gaussian`'s sums
/// would otherwise take it in for good). Such a value is not passed on: it scores 1 and raises
/// an alert (the first of a run only; never for a detector that never alerts), and the detector
/// sees the next value as if it had not happened. [`WILD_CONFIRM`] wild values in a row within
/// [`MAX_MAGNITUDE`] are a change of level: they are passed on from then. NaN is passed on (every
/// detector skips it).
#[derive(Debug, Clone)]
pub struct Guarded<D> {
    inner: D,
    alerts: bool,
    /// Minimum and maximum of each block of 32 accepted values, the last 8 blocks.
    blocks: VecDeque<(f64, f64)>,
    filled: u32,
    wild_run: u32,
}

impl<D: Detector> Guarded<D> {
    const BLOCK: u32 = 32;
    const BLOCKS: usize = 8;

    /// Guards `inner`; `alerts` is false for a detector that only scores.
    pub fn new(inner: D, alerts: bool) -> Self {
        Guarded {
            inner,
            alerts,
            blocks: VecDeque::with_capacity(Self::BLOCKS),
            filled: 0,
            wild_run: 0,
        }
    }

    fn range(&self) -> Option<(f64, f64)> {
        self.blocks
            .iter()
            .copied()
            .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
    }

    /// Whether `value` (not NaN) must not reach the detector.
    fn is_wild(&self, value: f64) -> bool {
        if !value.is_finite() || value.abs() > MAX_MAGNITUDE {
            return true;
        }
        match self.range() {
            // A flat recent past has no width to measure against; the detector judges.
            Some((lo, hi)) if hi > lo => {
                let slack = WILD_WIDTHS * (hi - lo);
                value < lo - slack || value > hi + slack
            }
            _ => false,
        }
    }

    fn accept(&mut self, value: f64) {
        if self.filled == 0 || self.blocks.is_empty() {
            if self.blocks.len() == Self::BLOCKS {
                self.blocks.pop_front();
            }
            self.blocks.push_back((value, value));
        } else if let Some(b) = self.blocks.back_mut() {
            *b = (b.0.min(value), b.1.max(value));
        }
        self.filled = (self.filled + 1) % Self::BLOCK;
    }
}

impl<D: Detector> Detector for Guarded<D> {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        if value.is_nan() {
            return self.inner.observe(ts_ms, value);
        }
        if self.is_wild(value) {
            self.wild_run = self.wild_run.saturating_add(1);
            let learnable = value.is_finite() && value.abs() <= MAX_MAGNITUDE;
            if !(learnable && self.wild_run >= WILD_CONFIRM) {
                return Verdict {
                    score: 1.0,
                    alert: self.alerts && self.wild_run == 1,
                };
            }
            // A new level: forget the old range, so the values that follow are judged
            // against the new one.
            self.blocks.clear();
            self.filled = 0;
        }
        self.wild_run = 0;
        self.accept(value);
        self.inner.observe(ts_ms, value)
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() - std::mem::size_of::<D>()
            + self.blocks.capacity() * 16
            + self.inner.memory_bytes()
    }
}

impl Detector for Box<dyn Detector> {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        (**self).observe(ts_ms, value)
    }

    fn memory_bytes(&self) -> usize {
        (**self).memory_bytes()
    }
}

/// The detectors this crate offers, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorKind {
    Seasonal,
    Bellwether,
    RobustZ,
    Ewma,
    Record,
    RelativeEntropy,
    #[default]
    TwoScaleEntropy,
    WindowedGaussian,
    Cad,
    SeasonalCusum,
    SeasonalEntropy,
}

impl DetectorKind {
    /// Every detector, default first.
    pub const ALL: [DetectorKind; 11] = [
        DetectorKind::TwoScaleEntropy,
        DetectorKind::SeasonalEntropy,
        DetectorKind::SeasonalCusum,
        DetectorKind::RelativeEntropy,
        DetectorKind::Seasonal,
        DetectorKind::Bellwether,
        DetectorKind::RobustZ,
        DetectorKind::Ewma,
        DetectorKind::Record,
        DetectorKind::WindowedGaussian,
        DetectorKind::Cad,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Bellwether => "bellwether",
            DetectorKind::RobustZ => "robust-z",
            DetectorKind::Ewma => "ewma",
            DetectorKind::Record => "record",
            DetectorKind::RelativeEntropy => "relative-entropy",
            DetectorKind::TwoScaleEntropy => "two-scale-entropy",
            DetectorKind::Seasonal => "seasonal",
            DetectorKind::WindowedGaussian => "windowed-gaussian",
            DetectorKind::Cad => "cad",
            DetectorKind::SeasonalCusum => "seasonal-cusum",
            DetectorKind::SeasonalEntropy => "seasonal-entropy",
        }
    }

    /// Parses a name from [`DetectorKind::name`].
    pub fn parse(s: &str) -> Option<DetectorKind> {
        DetectorKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// A fresh detector of this kind with its default settings, behind [`Guarded`].
    pub fn build(self) -> Box<dyn Detector> {
        let alerts = self != DetectorKind::WindowedGaussian;
        Box::new(Guarded::new(self.build_unguarded(), alerts))
    }

    /// The detector alone, without [`Guarded`]: one inf or 1e300 can blind it.
    fn build_unguarded(self) -> Box<dyn Detector> {
        match self {
            DetectorKind::Bellwether => Box::new(Bellwether::new(BellwetherConfig::default())),
            DetectorKind::RobustZ => Box::new(Alerting::new(RobustZ::new(256), Z_ALERT)),
            DetectorKind::Ewma => Box::new(Alerting::new(Ewma::new(0.01), Z_ALERT)),
            DetectorKind::Seasonal => Box::new(Alerting::new(Seasonal::new(0.01, 48), Z_ALERT)),
            DetectorKind::Record => Box::new(Record::new(RobustZ::new(256))),
            DetectorKind::RelativeEntropy => {
                Box::new(Suppressed::new(RelativeEntropy::new(), RE_SUPPRESS_POINTS))
            }
            DetectorKind::TwoScaleEntropy => Box::new(Graded::new(
                Suppressed::new(TwoScaleEntropy::new(), RE_SUPPRESS_POINTS),
                crate::changepoint::SeasonalCusum::default(),
            )),
            DetectorKind::WindowedGaussian => Box::new(WindowedGaussian::new(1000)),
            DetectorKind::Cad => Box::new(crate::cad::Cad::new(
                crate::cad::CadConfig::default(),
                crate::cad::CAD_ONLINE_RANGE,
            )),
            DetectorKind::SeasonalCusum => Box::new(crate::changepoint::SeasonalCusum::default()),
            DetectorKind::SeasonalEntropy => Box::new(crate::watch::SeasonalEntropy::default()),
        }
    }
}

impl std::fmt::Display for DetectorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// |z| at which the detectors alert. It was chosen once for all series, on the NAB corpus, from
/// {4, 5, 6, 8, 12} (docs/detect.md has the table); it is not adjusted per series.
pub const Z_ALERT: f64 = 6.0;

pub use crate::stats::{erfc, normal_tail};

/// A raw scorer: turns a point into a deviation in standard-normal units (|z|), or `None`
/// while it is warming up. The wrappers below turn that into a score and a decision.
pub trait RawScorer: Send {
    fn z(&mut self, ts_ms: i64, value: f64) -> Option<f64>;
    fn memory_bytes(&self) -> usize;
}

/// Points after an alert during which the relative-entropy detectors (`relative-entropy`,
/// `two-scale-entropy`) raise no further alert, chosen on NAB for `relative-entropy` from
/// {0, 50, 100, 150, 250} and kept for `two-scale-entropy`.
pub const RE_SUPPRESS_POINTS: u32 = 100;

/// Points after an alert during which the single-model detectors raise no further alert and
/// halve their scores, so that one incident is one alert.
pub const SUPPRESS_POINTS: u32 = 250;

impl RawScorer for Box<dyn RawScorer> {
    fn z(&mut self, ts_ms: i64, value: f64) -> Option<f64> {
        (**self).z(ts_ms, value)
    }

    fn memory_bytes(&self) -> usize {
        (**self).memory_bytes()
    }
}

/// Score `|z|/(|z| + 3)` (0.5 at three standard deviations; it never saturates, so that a
/// threshold sweep can still order extreme points) and an alert when `|z|` reaches a fixed
/// threshold.
#[derive(Debug, Clone)]
pub struct Alerting<R> {
    raw: R,
    quiet_for: u32,
    /// Alert threshold on |z|.
    threshold: f64,
    suppress: u32,
}

impl<R: RawScorer> Alerting<R> {
    pub fn new(raw: R, threshold: f64) -> Self {
        Alerting::with_suppression(raw, threshold, SUPPRESS_POINTS)
    }

    /// As [`Alerting::new`] with a given suppression length in points.
    pub fn with_suppression(raw: R, threshold: f64, suppress: u32) -> Self {
        Alerting {
            raw,
            threshold,
            quiet_for: 0,
            suppress,
        }
    }
}

impl<R: RawScorer> Detector for Alerting<R> {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        if value.is_nan() {
            return Verdict::QUIET;
        }
        match self.raw.z(ts_ms, value) {
            None => Verdict::QUIET,
            Some(z) => {
                let z = if z.is_finite() { z.abs() } else { 1e12 };
                let score = (z / (z + 3.0)).clamp(0.0, 1.0);
                if self.quiet_for > 0 {
                    self.quiet_for -= 1;
                    return Verdict {
                        score: score * 0.5,
                        alert: false,
                    };
                }
                let alert = z >= self.threshold;
                if alert {
                    self.quiet_for = self.suppress;
                }
                Verdict { score, alert }
            }
        }
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.raw.memory_bytes()
    }
}

/// Scores a raw deviation against the largest deviation seen so far (which decays slowly), so
/// that what counts as unusual is learnt per series online: the score is `z/(z + m)`, 0.5 when the
/// deviation equals the running maximum `m`, and an alert is raised when a deviation breaks the
/// record by `margin` (and is at least `Z_ALERT/2`) after `warmup` points. Alerts are then suppressed for `suppress` points.
#[derive(Debug, Clone)]
pub struct Record<R> {
    raw: R,
    max: f64,
    n: u64,
    quiet_for: u32,
    /// Points before the detector may alert (the record is still being learnt).
    pub warmup: u64,
    /// Factor by which a deviation must exceed the record to alert.
    pub margin: f64,
    /// Per-point decay of the record.
    pub decay: f64,
    /// Points of suppression after an alert.
    pub suppress: u32,
}

impl<R: RawScorer> Record<R> {
    pub fn new(raw: R) -> Self {
        Record {
            raw,
            max: 0.0,
            n: 0,
            quiet_for: 0,
            warmup: 300,
            margin: 1.5,
            decay: 0.999_9,
            suppress: SUPPRESS_POINTS,
        }
    }
}

impl<R: RawScorer> Detector for Record<R> {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        if value.is_nan() {
            return Verdict::QUIET;
        }
        let Some(z) = self.raw.z(ts_ms, value) else {
            return Verdict::QUIET;
        };
        let z = if z.is_finite() { z.abs() } else { 1e12 };
        self.n += 1;
        let m = self.max.max(1.0);
        let score = (z / (z + m)).clamp(0.0, 1.0);
        let record = z > (m * self.margin).max(Z_ALERT / 2.0);
        // The first deviations come from a model that has seen few points; they would set a
        // record nothing later could break.
        if self.n > self.warmup / 4 {
            self.max = (self.max * self.decay).max(z);
        }
        if self.n < self.warmup {
            return Verdict::QUIET;
        }
        if self.quiet_for > 0 {
            self.quiet_for -= 1;
            return Verdict {
                score: score * 0.5,
                alert: false,
            };
        }
        if record {
            self.quiet_for = self.suppress;
        }
        Verdict {
            score,
            alert: record,
        }
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() - std::mem::size_of::<R>() + self.raw.memory_bytes()
    }
}

/// One remembered histogram: `ln q` per bin (−∞ for an empty bin) and how many windows matched it.
#[derive(Debug, Clone, Copy)]
struct Hypothesis {
    lnq: [f64; 10],
    count: u32,
}

/// Online relative-entropy detector in the style of Wang et al. (2011) and NAB's
/// `relativeEntropy`: the values of the last `window` points are quantised into `bins` bins and
/// their histogram is compared with every histogram seen before (the hypotheses) by the
/// relative-entropy statistic `2·W·KL`, against the 0.99 point of χ² with `bins − 1` degrees of
/// freedom. A window that matches no hypothesis, or matches one seen only once, is anomalous.
///
/// NAB's version bins with the file's global minimum and maximum, which an online detector cannot
/// know; this one learns the range over its first `learn` points, and a later value more than
/// `widen_margin` (10 %) of the range's width outside it widens the range, drops the hypotheses
/// (their bins no longer apply) and is reported anomalous; values just outside count in the end
/// bins.
/// At most `max_hypotheses` are kept (the least used is dropped).
#[derive(Debug, Clone)]
pub struct RelativeEntropy {
    window: usize,
    bins: usize,
    learn: u64,
    max_hypotheses: usize,
    n: u64,
    lo: f64,
    hi: f64,
    recent: VecDeque<f64>,
    counts: Vec<u32>,
    hypotheses: Vec<Hypothesis>,
    /// `ln(c/W)` for `c` in `0..=W`.
    ln_frac: Vec<f64>,
    threshold: f64,
    nab_binning: bool,
    /// A window matching a hypothesis seen this many times or fewer is still anomalous (NAB: 1).
    pub min_matches: u32,
    /// A value must leave the range by this share of its width to widen it; closer values are
    /// counted in the end bins.
    pub widen_margin: f64,
}

impl RelativeEntropy {
    /// χ²₀.₉₉ quantiles for 1..=9 degrees of freedom (R: `qchisq(0.99, 1:9)`).
    const CHI2_99: [f64; 9] = [
        6.634_896_601_021_214,
        9.210_340_371_976_182,
        11.344_866_730_144_37,
        13.276_704_135_987_62,
        15.086_272_469_388_99,
        16.811_893_829_770_93,
        18.475_306_906_582_36,
        20.090_235_029_663_23,
        21.665_994_333_461_92,
    ];

    /// NAB's settings: a window of 52 points and 5 bins; the range is learnt over 300 points.
    pub fn new() -> Self {
        RelativeEntropy::with(52, 5, 300, 64)
    }

    /// A detector with the given window, bins (2 to 10), learning length and hypothesis cap.
    pub fn with(window: usize, bins: usize, learn: u64, max_hypotheses: usize) -> Self {
        let bins = bins.clamp(2, 10);
        RelativeEntropy {
            window: window.max(2),
            bins,
            learn: learn.max(2),
            max_hypotheses: max_hypotheses.max(1),
            n: 0,
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
            recent: VecDeque::with_capacity(window.max(2)),
            counts: vec![0; bins],
            hypotheses: Vec::new(),
            ln_frac: (0..=window.max(2))
                .map(|c| (c as f64 / window.max(2) as f64).ln())
                .collect(),
            threshold: Self::CHI2_99[bins - 2],
            nab_binning: false,
            min_matches: 1,
            widen_margin: 0.1,
        }
    }

    /// NAB's variant: the range is given (NAB hands its detectors the whole file's minimum and
    /// maximum) and nothing is learnt. Only for reproducing NAB's published figure.
    pub fn with_known_range(lo: f64, hi: f64) -> Self {
        let mut d = RelativeEntropy::with(52, 5, 2, 64);
        d.learn = 0;
        d.lo = lo;
        d.hi = hi;
        d.nab_binning = true;
        d
    }

    fn bin(&self, v: f64) -> usize {
        let step = (self.hi - self.lo) / self.bins as f64;
        if step <= 0.0 || !step.is_finite() {
            return 0;
        }
        if self.nab_binning {
            // NAB quantises with ceil((v − min)/step) into a histogram over [0, bins]: the first
            // bin holds only the minimum and the last one two steps.
            return (((v - self.lo) / step).ceil().max(0.0) as usize).min(self.bins - 1);
        }
        (((v - self.lo) / step).floor().max(0.0) as usize).min(self.bins - 1)
    }
}

impl Default for RelativeEntropy {
    fn default() -> Self {
        RelativeEntropy::new()
    }
}

impl Detector for RelativeEntropy {
    fn observe(&mut self, _ts_ms: i64, value: f64) -> Verdict {
        if value.is_nan() {
            return Verdict::QUIET;
        }
        self.n += 1;
        if self.n <= self.learn {
            self.lo = self.lo.min(value);
            self.hi = self.hi.max(value);
            return Verdict::QUIET;
        }
        if self.hi <= self.lo {
            // A flat learning period: widen the range to the first different value.
            if value != self.lo {
                self.lo = self.lo.min(value);
                self.hi = self.hi.max(value);
            }
            return Verdict::QUIET;
        }
        // A value outside the learnt range widens it (unless NAB's fixed range is in use). The
        // bins change, so the hypotheses no longer apply and are dropped; leaving the range seen
        // so far is itself the anomaly.
        let slack = self.widen_margin * (self.hi - self.lo);
        let widened = !self.nab_binning && (value < self.lo - slack || value > self.hi + slack);
        if widened {
            self.lo = self.lo.min(value);
            self.hi = self.hi.max(value);
            self.hypotheses.clear();
            self.counts.iter_mut().for_each(|c| *c = 0);
            for i in 0..self.recent.len() {
                let b = self.bin(self.recent[i]);
                self.counts[b] += 1;
            }
        }
        if self.recent.len() == self.window {
            if let Some(old) = self.recent.pop_front() {
                let ob = self.bin(old);
                self.counts[ob] -= 1;
            }
        }
        let b = self.bin(value);
        self.recent.push_back(value);
        self.counts[b] += 1;
        if widened {
            return Verdict {
                score: 1.0,
                alert: true,
            };
        }
        if self.recent.len() < self.window {
            return Verdict::QUIET;
        }
        let w = self.window as f64;
        // KL(p‖q) = Σ p·(ln p − ln q) over the bins where p > 0, with ln q kept per hypothesis.
        let mut plnp = 0.0;
        let mut lnp = [0.0; 10];
        for (k, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                lnp[k] = self.ln_frac[c as usize];
                plnp += f64::from(c) / w * lnp[k];
            }
        }
        let mut best: Option<(usize, f64)> = None;
        for (i, h) in self.hypotheses.iter().enumerate() {
            let mut cross = 0.0;
            for (k, &c) in self.counts.iter().enumerate() {
                if c > 0 {
                    cross += f64::from(c) / w * h.lnq[k];
                }
            }
            let stat = 2.0 * w * (plnp - cross);
            if stat < self.threshold && best.is_none_or(|(_, s)| stat < s) {
                best = Some((i, stat));
            }
        }
        let anomalous = match best {
            Some((i, _)) => {
                let h = &mut self.hypotheses[i];
                h.count = h.count.saturating_add(1);
                h.count <= self.min_matches
            }
            None => {
                let first = self.hypotheses.is_empty();
                if self.hypotheses.len() == self.max_hypotheses {
                    if let Some(k) =
                        (0..self.hypotheses.len()).min_by_key(|&k| self.hypotheses[k].count)
                    {
                        self.hypotheses.swap_remove(k);
                    }
                }
                let mut lnq = [f64::NEG_INFINITY; 10];
                for (k, &c) in self.counts.iter().enumerate() {
                    if c > 0 {
                        lnq[k] = lnp[k];
                    }
                }
                self.hypotheses.push(Hypothesis { lnq, count: 1 });
                !first
            }
        };
        if anomalous {
            Verdict {
                score: 1.0,
                alert: true,
            }
        } else {
            let s = best.map_or(0.0, |(_, s)| 0.5 * (s / self.threshold).min(1.0));
            Verdict {
                score: s,
                alert: false,
            }
        }
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.recent.capacity() * 8
            + self.counts.capacity() * 4
            + self.hypotheses.capacity() * std::mem::size_of::<Hypothesis>()
            + self.ln_frac.capacity() * 8
    }
}

/// Relative entropy at two time scales, the default detector.
///
/// - **Points** (the fine scale): the value range is learnt over the first `learn` points, and a
///   value more than `widen_margin` (10 %) of the range's width beyond it is an anomaly and widens
///   the range. This is [`RelativeEntropy`]'s range rule alone: its window test on raw points
///   raised most of its false alarms on NAB, and it is left to the coarse scale.
/// - **Blocks** (the coarse scale): the means of consecutive blocks of `block` (4) points feed a
///   [`RelativeEntropy`] (window 52 blocks, 5 bins, range learnt over `learn / block` blocks), with
///   both of its rules: a block mean beyond its own range, or a window of 52 block means whose
///   histogram matches no earlier one (χ²₀.₉₉). Averaging four points damps the noise that made
///   the raw-point test fire, and the window then spans 208 points, so slower changes of shape
///   show.
///
/// An alert from either scale is an alert (score 1); otherwise the score is the coarse test's
/// (≤ 0.5). The alert threshold is the fixed χ²₀.₉₉ test and the fixed range margin: nothing is
/// learnt from labels. Memory is two fixed windows (about 7 KiB); each point costs a comparison,
/// and each block one histogram test.
#[derive(Debug, Clone)]
pub struct TwoScaleEntropy {
    learn: u64,
    n: u64,
    lo: f64,
    hi: f64,
    /// A value must leave the learnt range by this share of its width to be a fine-scale alert.
    pub widen_margin: f64,
    block: usize,
    sum: f64,
    filled: usize,
    coarse: RelativeEntropy,
    coarse_score: f64,
}

impl TwoScaleEntropy {
    /// The default: blocks of 4 points, the range learnt over 300 points, NAB's window (52) and
    /// bins (5) at the block scale.
    pub fn new() -> Self {
        TwoScaleEntropy::with(4, 300)
    }

    /// Blocks of `block` points (1 = a second test on raw points) and `learn` points of range
    /// learning.
    pub fn with(block: usize, learn: u64) -> Self {
        let block = block.max(1);
        let learn = learn.max(2);
        TwoScaleEntropy {
            learn,
            n: 0,
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
            widen_margin: 0.1,
            block,
            sum: 0.0,
            filled: 0,
            coarse: RelativeEntropy::with(52, 5, (learn / block as u64).max(2), 64),
            coarse_score: 0.0,
        }
    }

    /// The fine scale: learns the range, then reports a value that leaves it by more than the
    /// margin (and widens the range to it).
    fn leaves_range(&mut self, value: f64) -> bool {
        self.n += 1;
        if self.n <= self.learn {
            self.lo = self.lo.min(value);
            self.hi = self.hi.max(value);
            return false;
        }
        if self.hi <= self.lo {
            // A flat learning period: widen the range to the first different value.
            if value != self.lo {
                self.lo = self.lo.min(value);
                self.hi = self.hi.max(value);
            }
            return false;
        }
        let slack = self.widen_margin * (self.hi - self.lo);
        if value < self.lo - slack || value > self.hi + slack {
            self.lo = self.lo.min(value);
            self.hi = self.hi.max(value);
            return true;
        }
        false
    }
}

impl Default for TwoScaleEntropy {
    fn default() -> Self {
        TwoScaleEntropy::new()
    }
}

impl Detector for TwoScaleEntropy {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        if value.is_nan() {
            return Verdict::QUIET;
        }
        let fine = self.leaves_range(value);
        let mut coarse = false;
        self.sum += value;
        self.filled += 1;
        if self.filled == self.block {
            let v = self.coarse.observe(ts_ms, self.sum / self.block as f64);
            self.sum = 0.0;
            self.filled = 0;
            coarse = v.alert;
            self.coarse_score = if v.alert { 0.5 } else { v.score };
        }
        if fine || coarse {
            Verdict {
                score: 1.0,
                alert: true,
            }
        } else {
            Verdict {
                score: self.coarse_score,
                alert: false,
            }
        }
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() - std::mem::size_of::<RelativeEntropy>()
            + self.coarse.memory_bytes()
    }
}

/// Wraps a detector so that after an alert it raises no further alert, and halves its scores,
/// for `points` points: one incident, one alert.
#[derive(Debug, Clone)]
pub struct Suppressed<D> {
    inner: D,
    points: u32,
    quiet_for: u32,
}

impl<D: Detector> Suppressed<D> {
    pub fn new(inner: D, points: u32) -> Self {
        Suppressed {
            inner,
            points,
            quiet_for: 0,
        }
    }
}

impl<D: Detector> Detector for Suppressed<D> {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        let v = self.inner.observe(ts_ms, value);
        if value.is_nan() {
            return v;
        }
        if self.quiet_for > 0 {
            self.quiet_for -= 1;
            return Verdict {
                score: v.score * 0.5,
                alert: false,
            };
        }
        if v.alert {
            self.quiet_for = self.points;
        }
        v
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() - std::mem::size_of::<D>() + self.inner.memory_bytes()
    }
}

/// Gives a detector whose alerts are all alike (score 1) a real score: its alert decisions are
/// kept, and each alert is graded by a second detector's recent evidence, `0.5 + 0.5·m` where
/// `m` is the grader's largest score over the last points (decaying by [`GRADE_DECAY`] per
/// point); a point without an alert scores half the alerting detector's own score (≤ 0.25 for
/// `two-scale-entropy`). So the alerts are still the decision, and a threshold above 0.5 keeps
/// the alerts the grader also saw. The default detector is `two-scale-entropy` graded by
/// `seasonal-cusum`: on NAB the best threshold then beats its own alerts (docs/detect.md).
#[derive(Debug, Clone)]
pub struct Graded<D, G> {
    inner: D,
    grader: G,
    evidence: f64,
}

/// Per-point decay of the grader's evidence in [`Graded`] (about ten points of memory), chosen
/// on NAB from {0.9, 0.99, 0.999}.
pub const GRADE_DECAY: f64 = 0.9;

impl<D: Detector, G: Detector> Graded<D, G> {
    pub fn new(inner: D, grader: G) -> Self {
        Graded {
            inner,
            grader,
            evidence: 0.0,
        }
    }
}

impl<D: Detector, G: Detector> Detector for Graded<D, G> {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        let v = self.inner.observe(ts_ms, value);
        let g = self.grader.observe(ts_ms, value);
        if value.is_nan() {
            return v;
        }
        self.evidence = (self.evidence * GRADE_DECAY).max(g.score);
        let score = if v.alert {
            0.5 + 0.5 * self.evidence.clamp(0.0, 1.0)
        } else {
            0.5 * v.score.clamp(0.0, 1.0)
        };
        Verdict {
            score,
            alert: v.alert,
        }
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<f64>() + self.inner.memory_bytes() + self.grader.memory_bytes()
    }
}

/// Runs two detectors side by side: the score is the larger score, and an alert is raised when
/// either alerts.
#[derive(Debug, Clone)]
pub struct Either<A, B> {
    a: A,
    b: B,
}

impl<A: Detector, B: Detector> Either<A, B> {
    pub fn new(a: A, b: B) -> Self {
        Either { a, b }
    }
}

impl<A: Detector, B: Detector> Detector for Either<A, B> {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        let x = self.a.observe(ts_ms, value);
        let y = self.b.observe(ts_ms, value);
        Verdict {
            score: x.score.max(y.score),
            alert: x.alert || y.alert,
        }
    }

    fn memory_bytes(&self) -> usize {
        self.a.memory_bytes() + self.b.memory_bytes()
    }
}

/// Sliding-window median and inter-quartile range, kept in a sorted buffer.
#[derive(Debug, Clone)]
pub struct RobustZ {
    cap: usize,
    ring: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl RobustZ {
    pub fn new(window: usize) -> Self {
        let cap = window.max(8);
        RobustZ {
            cap,
            ring: VecDeque::with_capacity(cap),
            sorted: Vec::with_capacity(cap),
        }
    }

    fn quantile(&self, q: f64) -> f64 {
        let n = self.sorted.len();
        let pos = q * (n - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = (lo + 1).min(n - 1);
        let f = pos - lo as f64;
        self.sorted[lo] * (1.0 - f) + self.sorted[hi] * f
    }

    fn push(&mut self, v: f64) {
        if self.ring.len() == self.cap {
            if let Some(old) = self.ring.pop_front() {
                let i = self.sorted.partition_point(|&x| x < old);
                self.sorted.remove(i);
            }
        }
        self.ring.push_back(v);
        let i = self.sorted.partition_point(|&x| x < v);
        self.sorted.insert(i, v);
    }
}

impl RawScorer for RobustZ {
    fn z(&mut self, _ts_ms: i64, value: f64) -> Option<f64> {
        let out = if self.sorted.len() >= 16 {
            let med = self.quantile(0.5);
            let iqr = self.quantile(0.75) - self.quantile(0.25);
            let range = self.sorted[self.sorted.len() - 1] - self.sorted[0];
            // Fall back to a fraction of the range, then to the magnitude, for flat windows.
            let scale = (iqr / 1.349)
                .max(range * 0.01)
                .max(med.abs() * 1e-3)
                .max(1e-9);
            Some((value - med) / scale)
        } else {
            None
        };
        self.push(value);
        out
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + (self.ring.capacity() + self.sorted.capacity()) * 8
    }
}

/// Exponentially weighted level and scale with Huber clipping: a residual beyond 3 scales moves
/// the level only as much as one of 3 scales would. After 16 consecutive residuals beyond 3
/// scales on the same side, the level jumps to the new values (a level shift).
#[derive(Debug, Clone)]
pub struct Ewma {
    alpha: f64,
    level: f64,
    scale: f64,
    n: u64,
    run: i32,
}

impl Ewma {
    pub fn new(alpha: f64) -> Self {
        Ewma {
            alpha,
            level: 0.0,
            scale: 0.0,
            n: 0,
            run: 0,
        }
    }

    /// Residual in scale units, then update.
    fn step(&mut self, value: f64) -> Option<f64> {
        self.n += 1;
        if self.n == 1 {
            self.level = value;
            self.scale = value.abs() * 0.01;
            return None;
        }
        let res = value - self.level;
        let scale = self.scale.max(1e-9);
        let z = res / scale;
        let a = self.alpha.max(1.0 / self.n as f64);
        let clipped = res.clamp(-3.0 * scale, 3.0 * scale);
        self.level += a * clipped;
        self.scale += a * (clipped.abs() * 1.25 - self.scale);
        if z.abs() > 3.0 {
            let s = if z > 0.0 { 1 } else { -1 };
            self.run = if self.run.signum() == s {
                self.run + s
            } else {
                s
            };
            if self.run.abs() >= 16 {
                self.level = value;
                self.run = 0;
            }
        } else {
            self.run = 0;
        }
        (self.n > 32).then_some(z)
    }
}

impl RawScorer for Ewma {
    fn z(&mut self, _ts_ms: i64, value: f64) -> Option<f64> {
        self.step(value)
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

/// A time-of-day profile (`bins` per day, each an exponentially weighted mean) removed before an
/// [`Ewma`] on the residual. Until a bin has been seen, its profile value is the overall level.
#[derive(Debug, Clone)]
pub struct Seasonal {
    profile: Vec<(f64, u32)>,
    bin_ms: i64,
    period_ms: i64,
    alpha: f64,
    resid: Ewma,
}

impl Seasonal {
    /// A daily profile of `bins` bins.
    pub fn new(alpha: f64, bins: usize) -> Self {
        Seasonal::with_period(alpha, bins, 86_400_000)
    }

    /// A profile of `bins` bins over a period of `period_ms` (a week is 604,800,000).
    pub fn with_period(alpha: f64, bins: usize, period_ms: i64) -> Self {
        let bins = bins.max(1);
        let period_ms = period_ms.max(bins as i64);
        Seasonal {
            profile: vec![(0.0, 0); bins],
            bin_ms: period_ms / bins as i64,
            period_ms,
            alpha,
            resid: Ewma::new(alpha),
        }
    }
}

impl RawScorer for Seasonal {
    fn z(&mut self, ts_ms: i64, value: f64) -> Option<f64> {
        let bins = self.profile.len() as i64;
        let b = (ts_ms.rem_euclid(self.period_ms) / self.bin_ms).min(bins - 1) as usize;
        let (mean, seen) = self.profile[b];
        let expect = if seen == 0 { value } else { mean };
        // A bin's first value defines it; judge only from its second visit on.
        let z = if seen == 0 {
            None
        } else {
            self.resid.step(value - expect)
        };
        let a = (4.0 * self.alpha).max(1.0 / f64::from(seen + 1));
        let slot = &mut self.profile[b];
        slot.0 = if seen == 0 {
            value
        } else {
            mean + a * (value - mean)
        };
        slot.1 = seen.saturating_add(1);
        z
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.profile.capacity() * std::mem::size_of::<(f64, u32)>()
    }
}

/// Port of NAB's `windowedGaussian` detector (window 1000, step 1, population standard
/// deviation, 1e-6 when it is 0): the score is `1 − Q(|z|)`, so 0.5 at the mean. It never
/// alerts: it exists to check this crate's NAB scorer against NAB's published results.
#[derive(Debug, Clone)]
pub struct WindowedGaussian {
    cap: usize,
    window: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    mean: f64,
    std: f64,
}

impl WindowedGaussian {
    pub fn new(window: usize) -> Self {
        WindowedGaussian {
            cap: window.max(1),
            window: VecDeque::with_capacity(window.max(1)),
            sum: 0.0,
            sum_sq: 0.0,
            mean: 0.0,
            std: 1.0,
        }
    }

    /// `1 − Q(|z|)`: 0.5 at the mean, 1 far from it on either side.
    fn score(&self, x: f64) -> f64 {
        1.0 - normal_tail(((x - self.mean) / self.std).abs())
    }
}

impl Detector for WindowedGaussian {
    fn observe(&mut self, _ts_ms: i64, value: f64) -> Verdict {
        if value.is_nan() {
            return Verdict::QUIET;
        }
        if !value.is_finite() || value.abs() > MAX_MAGNITUDE {
            // As far from any Gaussian as it gets, and not learnt: its square would overflow
            // the sums, and ∞ − ∞ would make every later score NaN.
            return Verdict {
                score: 1.0,
                alert: false,
            };
        }
        let score = if self.window.is_empty() {
            0.0
        } else {
            self.score(value)
        };
        if self.window.len() == self.cap {
            if let Some(o) = self.window.pop_front() {
                if o * o > 0.5 * self.sum_sq {
                    // The value leaving held most of the sum of squares: subtracting it would
                    // leave only rounding error, so the sums are added up again.
                    self.sum = self.window.iter().sum();
                    self.sum_sq = self.window.iter().map(|v| v * v).sum();
                } else {
                    self.sum -= o;
                    self.sum_sq -= o * o;
                }
            }
        }
        self.window.push_back(value);
        self.sum += value;
        self.sum_sq += value * value;
        let n = self.window.len() as f64;
        self.mean = self.sum / n;
        let var = (self.sum_sq / n - self.mean * self.mean).max(0.0);
        self.std = var.sqrt();
        if self.std == 0.0 {
            self.std = 1e-6;
        }
        Verdict {
            // A score that cannot be computed is not a number to print: the point is as
            // unusual as the model can say.
            score: if score.is_nan() {
                1.0
            } else {
                score.clamp(0.0, 1.0)
            },
            alert: false,
        }
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.window.capacity() * 8
    }
}

/// How the default detector combines its two models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Combine {
    /// A point is as unusual as the less surprised model finds it.
    Min,
    /// A point is as unusual as the more surprised model finds it.
    Max,
    /// Geometric mean of the two deviations.
    Geometric,
}

/// Settings of the default detector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BellwetherConfig {
    /// Window of the robust median/IQR model, in points.
    pub window: usize,
    /// Smoothing factor of the seasonal model.
    pub alpha: f64,
    /// Time-of-day bins of the seasonal model.
    pub bins: usize,
    pub combine: Combine,
    /// Alert when the combined |z| reaches this (fixed in advance).
    pub z_alert: f64,
    /// Points after an alert during which no further alert is raised and scores are halved.
    pub suppress: u32,
}

impl Default for BellwetherConfig {
    fn default() -> Self {
        BellwetherConfig {
            window: 256,
            alpha: 0.01,
            bins: 48,
            combine: Combine::Max,
            z_alert: Z_ALERT,
            suppress: SUPPRESS_POINTS,
        }
    }
}

/// The default detector: a robust windowed model and a seasonal model, combined, with alert
/// suppression. See the module docs and docs/detect.md.
#[derive(Debug, Clone)]
pub struct Bellwether {
    cfg: BellwetherConfig,
    robust: RobustZ,
    seasonal: Seasonal,
    quiet_for: u32,
}

impl Bellwether {
    pub fn new(cfg: BellwetherConfig) -> Self {
        Bellwether {
            robust: RobustZ::new(cfg.window),
            seasonal: Seasonal::new(cfg.alpha, cfg.bins),
            quiet_for: 0,
            cfg,
        }
    }
}

impl Detector for Bellwether {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        if value.is_nan() {
            return Verdict::QUIET;
        }
        let zr = self.robust.z(ts_ms, value).map(f64::abs);
        let zs = self.seasonal.z(ts_ms, value).map(f64::abs);
        let z = match (zr, zs) {
            (Some(a), Some(b)) => match self.cfg.combine {
                Combine::Min => a.min(b),
                Combine::Max => a.max(b),
                Combine::Geometric => (a * b).sqrt(),
            },
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return Verdict::QUIET,
        };
        let z = if z.is_finite() { z } else { 1e12 };
        let score = (z / (z + 3.0)).clamp(0.0, 1.0);
        if self.quiet_for > 0 {
            self.quiet_for -= 1;
            return Verdict {
                score: score * 0.5,
                alert: false,
            };
        }
        let alert = z >= self.cfg.z_alert;
        if alert {
            self.quiet_for = self.cfg.suppress;
        }
        Verdict { score, alert }
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            - std::mem::size_of::<RobustZ>()
            - std::mem::size_of::<Seasonal>()
            + self.robust.memory_bytes()
            + self.seasonal.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn erfc_matches_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-7);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-7);
        assert!((normal_tail(1.959_964) - 0.025).abs() < 1e-7);
    }

    fn spike_series(n: usize, spike_at: usize) -> Vec<(i64, f64)> {
        (0..n)
            .map(|i| {
                let base = 10.0 + ((i * 37) % 11) as f64 * 0.1;
                let v = if i == spike_at { 50.0 } else { base };
                (i as i64 * 300_000, v)
            })
            .collect()
    }

    #[test]
    fn every_detector_flags_a_big_spike_above_the_noise() {
        for kind in DetectorKind::ALL {
            let mut d = kind.build();
            let s = spike_series(2000, 1500);
            let v: Vec<Verdict> = s.iter().map(|&(t, x)| d.observe(t, x)).collect();
            let before = v[1000..1500].iter().map(|v| v.score).fold(0.0, f64::max);
            let spike = v[1500].score;
            if kind == DetectorKind::WindowedGaussian {
                // NAB's detector never alerts; it only scores.
                assert!(spike > 0.999_999, "{kind}");
                continue;
            }
            assert!(spike > before, "{kind}: spike {spike} not above {before}");
            assert!(
                v[1500..1510].iter().any(|v| v.alert),
                "{kind} did not alert"
            );
            assert!(
                !v[1000..1500].iter().any(|v| v.alert),
                "{kind} alerted on noise"
            );
        }
    }

    /// Issue 9: one `inf` or `1e300` blinded detectors for good (the entropy detectors' range,
    /// a record, a seasonal bin, windowed-gaussian's sums). Each detector still sees a clear
    /// spike after one, and windowed-gaussian never scores NaN.
    #[test]
    fn one_wild_value_does_not_blind_any_detector() {
        for poison in [
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            -1e300,
            f64::MAX,
            1e200,
            1e12,
        ] {
            for kind in DetectorKind::ALL {
                let mut d = kind.build();
                let mut s = spike_series(2000, 1500);
                s[1100].1 = poison;
                let v: Vec<Verdict> = s.iter().map(|&(t, x)| d.observe(t, x)).collect();
                assert!(
                    v.iter().all(|v| (0.0..=1.0).contains(&v.score)),
                    "{kind} {poison}"
                );
                assert_eq!(v[1100].score, 1.0, "{kind} {poison}");
                if kind == DetectorKind::WindowedGaussian {
                    assert!(v[1500].score > 0.999_999, "{kind} {poison}: {:?}", v[1500]);
                    continue;
                }
                assert!(
                    v[1500..1510].iter().any(|v| v.alert),
                    "{kind} blinded by {poison}: {:?}",
                    &v[1495..1510]
                );
            }
        }
        // Sums of squares that overflowed made every later windowed-gaussian score NaN.
        let mut g = WindowedGaussian::new(10);
        for (i, x) in [
            1.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            1e300,
            2.0,
            1.0,
        ]
        .into_iter()
        .enumerate()
        {
            assert!(!g.observe(i as i64, x).score.is_nan(), "{x}");
        }
    }

    #[test]
    fn a_lasting_change_of_level_is_learnt_after_the_guard() {
        // From a noise of width 1 around 10 to a level of 1e8: wild at first, then learnt.
        let mut d = DetectorKind::RobustZ.build();
        let mut alerts = 0;
        for i in 0..3000i64 {
            let x = if i < 1000 {
                10.0 + (i % 7) as f64 * 0.1
            } else {
                1e8 + (i % 7) as f64 * 1e7
            };
            alerts += usize::from(d.observe(i * 1000, x).alert);
        }
        assert!((1..=3).contains(&alerts), "{alerts} alerts");
    }

    #[test]
    fn relative_entropy_flags_a_change_of_distribution_inside_the_range() {
        let mut d = RelativeEntropy::new();
        // A saw-tooth over 0..10, then values that stay in 4..6: no new extreme, a new shape.
        let v: Vec<Verdict> = (0..3000)
            .map(|i| {
                let x = if i < 2000 {
                    (i % 10) as f64
                } else {
                    4.0 + (i % 3) as f64
                };
                d.observe(i as i64 * 60_000, x)
            })
            .collect();
        assert!(
            !v[500..2000].iter().any(|v| v.alert),
            "alerted on the stable saw-tooth"
        );
        let first = v[2000..]
            .iter()
            .position(|v| v.alert)
            .expect("no alert after the change");
        assert!(first < 52, "alerted {first} points after the change");
    }

    /// Uniform pseudo-random values in [0, 10) from a fixed seed.
    fn uniform(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64 * 10.0
    }

    /// A saw-tooth over 0..10 (period 10) with a little noise, then from row 3000 each fourth
    /// value held for four rows: the rows keep the same range and, bin by bin, about the same
    /// histogram, but the means of four rows now spread from 0 to 8 instead of 1.5 to 7.5.
    fn held_saw_tooth() -> Vec<f64> {
        let mut seed = 7;
        let mut held = 0.0;
        (0..4000)
            .map(|i| {
                let x = (i % 10) as f64 + uniform(&mut seed) * 0.02;
                if i < 3000 {
                    x
                } else {
                    if i % 4 == 0 {
                        held = x;
                    }
                    held
                }
            })
            .collect()
    }

    #[test]
    fn two_scale_sees_a_change_only_block_means_show() {
        let run = || {
            let mut d = DetectorKind::TwoScaleEntropy.build();
            held_saw_tooth()
                .iter()
                .enumerate()
                .map(|(i, &x)| d.observe(i as i64 * 60_000, x))
                .collect::<Vec<Verdict>>()
        };
        let v = run();
        assert_eq!(v, run(), "not deterministic");
        let before: Vec<usize> = (300..3000).filter(|&i| v[i].alert).collect();
        assert!(before.is_empty(), "alerted before the change at {before:?}");
        let first = v[3000..]
            .iter()
            .position(|v| v.alert)
            .expect("no alert after the change");
        assert!(first < 208, "alerted {first} rows after the change");
        assert!(v.iter().all(|v| (0.0..=1.0).contains(&v.score)));
        // The one-scale test on raw rows sees nothing: the change is in how rows group.
        let mut one = DetectorKind::RelativeEntropy.build();
        let alerts: Vec<usize> = held_saw_tooth()
            .iter()
            .enumerate()
            .filter(|&(i, &x)| one.observe(i as i64 * 60_000, x).alert)
            .map(|(i, _)| i)
            .collect();
        assert!(alerts.iter().all(|&i| i < 300), "{alerts:?}");
    }

    #[test]
    fn two_scale_alerts_at_a_range_exit_on_the_point() {
        let mut d = TwoScaleEntropy::new();
        let mut seed = 3;
        let v: Vec<Verdict> = (0..2000)
            .map(|i| {
                let x = if i == 1234 { 12.0 } else { uniform(&mut seed) };
                d.observe(i as i64 * 1000, x)
            })
            .collect();
        // 12 is beyond [0, 10) by more than 10 % of the range's width: alerted on the row itself,
        // whatever the block phase.
        assert!(v[1234].alert && v[1234].score == 1.0);
    }

    #[test]
    fn two_scale_skips_nan_and_stays_quiet_on_constant_input() {
        let values = held_saw_tooth();
        let mut a = TwoScaleEntropy::new();
        let mut b = TwoScaleEntropy::new();
        for (i, &x) in values.iter().enumerate() {
            let t = i as i64 * 1000;
            let nan = b.observe(t, f64::NAN);
            assert_eq!(nan, Verdict::QUIET);
            assert_eq!(a.observe(t, x), b.observe(t, x), "row {i}");
        }
        let mut c = DetectorKind::TwoScaleEntropy.build();
        for i in 0..10_000 {
            let v = c.observe(i * 1000, 42.0);
            assert!(!v.alert && v.score == 0.0, "row {i}: {v:?}");
        }
        // Infinite and huge values neither panic nor leave the unit range.
        for (i, x) in [1e308, 1e308, f64::INFINITY, -1e308, f64::NEG_INFINITY, 0.0]
            .into_iter()
            .enumerate()
        {
            let v = c.observe(20_000_000 + i as i64, x);
            assert!((0.0..=1.0).contains(&v.score), "{x}: {v:?}");
        }
    }

    #[test]
    fn two_scale_memory_is_fixed() {
        let mut d = DetectorKind::TwoScaleEntropy.build();
        let mut seed = 11;
        let mut sizes = Vec::new();
        for i in 0..200_000i64 {
            // A slow drift and noise: new shapes keep coming, so the hypothesis cap is reached.
            d.observe(i * 1000, uniform(&mut seed) + (i / 5000) as f64 * 3.0);
            if i % 50_000 == 49_999 {
                sizes.push(d.memory_bytes());
            }
        }
        assert!(sizes.iter().all(|&m| m <= 16 * 1024), "{sizes:?}");
        assert!(sizes.windows(2).all(|w| w[1] == w[0]), "{sizes:?}");
    }

    #[test]
    fn suppression_and_either() {
        struct Always;
        impl Detector for Always {
            fn observe(&mut self, _: i64, _: f64) -> Verdict {
                Verdict {
                    score: 1.0,
                    alert: true,
                }
            }
            fn memory_bytes(&self) -> usize {
                0
            }
        }
        let mut s = Suppressed::new(Always, 3);
        let alerts: Vec<bool> = (0..9).map(|i| s.observe(i, 1.0).alert).collect();
        assert_eq!(
            alerts,
            [true, false, false, false, true, false, false, false, true]
        );
        let mut e = Either::new(Suppressed::new(Always, 1), WindowedGaussian::new(10));
        let v = e.observe(0, 1.0);
        assert!(v.alert && v.score == 1.0);
        assert!(!e.observe(1, 1.0).alert);
    }

    #[test]
    fn names_round_trip() {
        for k in DetectorKind::ALL {
            assert_eq!(DetectorKind::parse(k.name()), Some(k));
        }
        assert_eq!(DetectorKind::parse("nope"), None);
    }

    #[test]
    fn memory_is_bounded() {
        // `cad` is bounded by its context count, not by 64 KiB (cad::tests has its bound).
        for kind in DetectorKind::ALL
            .into_iter()
            .filter(|&k| k != DetectorKind::Cad)
        {
            let mut d = kind.build();
            for i in 0..20_000 {
                d.observe(i * 60_000, (i % 97) as f64);
            }
            assert!(
                d.memory_bytes() <= 64 * 1024,
                "{kind}: {}",
                d.memory_bytes()
            );
        }
    }

    proptest! {
        #[test]
        fn scores_stay_in_unit_range(values in proptest::collection::vec(prop_oneof![
            -1e12f64..1e12, Just(f64::NAN), Just(0.0), Just(1e300), Just(-1e300),
            Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(f64::MAX)], 1..600)) {
            for kind in DetectorKind::ALL {
                let mut d = kind.build();
                for (i, v) in values.iter().enumerate() {
                    let r = d.observe(i as i64 * 1000, *v);
                    prop_assert!((0.0..=1.0).contains(&r.score), "{} gave {}", kind, r.score);
                }
            }
        }
    }
}
