//! CAD OSE: the Contextual Anomaly Detector, open-source edition (Mikhail Smirnov and Fedorov,
//! 2016; NAB's `context_ose` detector), written anew in Rust from the published algorithm.
//!
//! Each value is encoded as the bits of its bin (3 bits, 8 bins over the value range) and
//! becomes a set of *sensor facts*. The detector learns *contexts*: pairs (left facts, right
//! facts) where the left side is the previous step's facts (sensor facts plus up to 15 active
//! "neurons", which are the contexts that fired) and the right side the current sensor facts.
//! Contexts that are seen to fire predict the next sensor facts; a point whose facts were not
//! predicted gets a score from the share of selected contexts that did not fire and the share
//! of new contexts created. After a score of at least `base_threshold` (0.75), the detector
//! returns 0 for `rest_period` points.
//!
//! Faithfulness to NAB's Python 2 implementation, which the NAB figures depend on:
//! - the order in which new contexts are created follows the iteration order of Python 2's
//!   `dict` keyed by small integers (emulated by [`PyIntDict`]), and active contexts are ranked
//!   by (activations, Python 2 hash of the left facts tuple, hash of the right facts tuple), so
//!   the context numbering and the choice of the 15 active neurons are the same;
//! - the quirk that context 0 is never updated while no new context was created this step
//!   (Python's `False == 0`) is kept;
//! - the rest window starts as `[1.0]`, so the first `rest_period` points return 0.
//!
//! Memory: the context memory grows with what the series shows. `max_contexts` bounds it: once
//! that many contexts exist, no new contexts (and so no new semi-contexts) are created and the
//! detector keeps predicting with what it has. The default, [`CAD_MAX_CONTEXTS`], is far above
//! 64 KiB per series (a context with its semi-contexts and index entries costs about 0.5 KiB):
//! CAD needs thousands of contexts on NAB's series, and bounds of 250, 1000 and 4000 contexts
//! cost it most of its score (docs/detect.md).

use std::collections::{HashMap, HashSet};

use crate::anomaly::{Detector, Verdict};

/// Settings of [`Cad`]; the defaults are the published CAD OSE ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CadConfig {
    /// A score at or above this starts a rest period, and is the alert decision (0.75).
    pub base_threshold: f64,
    /// Points after a score ≥ `base_threshold` during which the returned score is 0. NAB uses
    /// `probation / 5` (150 for files of 5000 points or more).
    pub rest_period: usize,
    /// Longest left semi-context built by crossing (7).
    pub max_left_semi_contexts_len: usize,
    /// Active neurons carried into the next left facts group (15).
    pub max_active_neurons: usize,
    /// Bits of the value encoding (3, i.e. 8 bins).
    pub num_norm_value_bits: u32,
    /// Upper bound on the number of contexts (memory bound).
    pub max_contexts: usize,
}

impl Default for CadConfig {
    fn default() -> Self {
        CadConfig {
            base_threshold: 0.75,
            rest_period: 150,
            max_left_semi_contexts_len: 7,
            max_active_neurons: 15,
            num_norm_value_bits: 3,
            max_contexts: CAD_MAX_CONTEXTS,
        }
    }
}

/// How the value range for the encoding is obtained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CadRange {
    /// Known in advance (NAB's harness passes the whole file's minimum and maximum).
    Fixed { min: f64, max: f64 },
    /// Learnt online: the running minimum and maximum of the values seen so far, including the
    /// current one (the encoding shifts whenever the range grows).
    Online,
    /// Learnt from the first `points` values: they are buffered (score 0, no alert), then the
    /// range is their minimum and maximum widened by `margin` of its width on each side, the
    /// buffered values are replayed through the detector, and the range stays fixed; a later
    /// value above it takes more bits than the range's 3 (so facts never seen before), one
    /// below it gets a sign fact.
    Learn { points: usize, margin: f64 },
}

/// The range rule of the `cad` detector: the minimum and maximum of the first 750 points (NAB's
/// longest probation), no margin.
pub const CAD_ONLINE_RANGE: CadRange = CadRange::Learn {
    points: 750,
    margin: 0.0,
};

/// The context bound of the `cad` detector (see [`CadConfig::max_contexts`]).
pub const CAD_MAX_CONTEXTS: usize = 32_768;

/// Python 2's hash of a tuple of non-negative ints (64-bit `long`).
fn py2_tuple_hash(items: &[u64]) -> i64 {
    let mut x: i64 = 0x345678;
    let mut mult: i64 = 1_000_003;
    let mut len = items.len() as i64;
    for &item in items {
        len -= 1;
        let mut y = item as i64;
        if y == -1 {
            y = -2;
        }
        x = (x ^ y).wrapping_mul(mult);
        mult = mult.wrapping_add(82_520 + len + len);
    }
    x = x.wrapping_add(97_531);
    if x == -1 {
        x = -2;
    }
    x
}

/// A map from small non-negative ints to ints whose iteration order is that of a Python 2
/// `dict` built by the same insertions (open addressing with perturbation, resized at 2/3).
#[derive(Debug, Clone, Default)]
struct PyIntDict {
    /// Slots: (key, value); `u32::MAX` key is empty.
    table: Vec<(u32, u32)>,
    used: usize,
}

const EMPTY: u32 = u32::MAX;

impl PyIntDict {
    fn slot_for(table: &[(u32, u32)], key: u32) -> usize {
        let mask = table.len() as u64 - 1;
        let hash = u64::from(key);
        let mut i = hash & mask;
        if table[i as usize].0 == EMPTY || table[i as usize].0 == key {
            return i as usize;
        }
        let mut perturb = hash;
        loop {
            i = (i << 2)
                .wrapping_add(i)
                .wrapping_add(perturb)
                .wrapping_add(1);
            let s = (i & mask) as usize;
            if table[s].0 == EMPTY || table[s].0 == key {
                return s;
            }
            perturb >>= 5;
        }
    }

    /// `dict.setdefault(key, value)`: the stored value, inserting `value` if absent.
    fn setdefault(&mut self, key: u32, value: u32) -> u32 {
        if self.table.is_empty() {
            self.table = vec![(EMPTY, 0); 8];
        }
        let s = Self::slot_for(&self.table, key);
        if self.table[s].0 == key {
            return self.table[s].1;
        }
        self.table[s] = (key, value);
        self.used += 1;
        if self.used * 3 >= self.table.len() * 2 {
            let minused = if self.used > 50_000 { 2 } else { 4 } * self.used;
            let mut size = 8;
            while size <= minused {
                size <<= 1;
            }
            let old = std::mem::replace(&mut self.table, vec![(EMPTY, 0); size]);
            for (k, v) in old.into_iter().filter(|e| e.0 != EMPTY) {
                let s = Self::slot_for(&self.table, k);
                self.table[s] = (k, v);
            }
        }
        value
    }

    fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.table.iter().copied().filter(|e| e.0 != EMPTY)
    }
}

#[derive(Debug, Clone)]
struct SemiContext {
    /// The facts of this semi-context present in the last crossing (in the crossing's order).
    crossed: Vec<u64>,
    /// Number of facts of the semi-context.
    len: usize,
    /// `crossed.len()` as of the last crossing.
    crossed_len: usize,
    /// Left semi-contexts only: right semi-context id -> context id.
    contexts: PyIntDict,
}

#[derive(Debug, Clone)]
struct Context {
    selected: u64,
    predicted: u64,
    activated: u64,
    right: u32,
    zero_level: bool,
    left_hash: i64,
    right_hash: i64,
}

type Pair = (Vec<u64>, Vec<u64>);

/// An active context: (id, activations, left facts hash, right facts hash).
type Active = (u32, u64, i64, i64);

/// The context memory (NAB's `ContextOperator`).
#[derive(Debug, Clone, Default)]
struct ContextOperator {
    max_left_len: usize,
    max_contexts: usize,
    facts: [HashMap<u64, Vec<u32>>; 2],
    ids: [HashMap<Vec<u64>, u32>; 2],
    semis: [Vec<SemiContext>; 2],
    crossed: [Vec<u32>; 2],
    contexts: Vec<Context>,
    /// Python's `newContextID`; `False` is 0.
    new_context_id: usize,
    /// Heap bytes of the fact vectors held as keys (for `memory_bytes`).
    key_bytes: usize,
    /// The facts of each right semi-context, by id (to read predictions back).
    right_facts: Vec<Vec<u64>>,
}

impl ContextOperator {
    fn semi_id(&mut self, side: usize, facts: &[u64]) -> u32 {
        if let Some(&id) = self.ids[side].get(facts) {
            return id;
        }
        let id = self.semis[side].len() as u32;
        self.ids[side].insert(facts.to_vec(), id);
        self.key_bytes += facts.len() * 8;
        self.semis[side].push(SemiContext {
            crossed: Vec::new(),
            len: facts.len(),
            crossed_len: 0,
            contexts: PyIntDict::default(),
        });
        for &f in facts {
            self.facts[side].entry(f).or_default().push(id);
        }
        if side == 1 {
            self.right_facts.push(facts.to_vec());
            self.key_bytes += facts.len() * 8 + 24;
        }
        id
    }

    /// `getContextByFacts`: for a zero-level pair, whether it was new; otherwise the number
    /// of contexts added.
    fn context_by_facts(&mut self, pairs: &[Pair], zero_level: bool) -> usize {
        let mut added = 0;
        for (left, right) in pairs {
            if self.contexts.len() >= self.max_contexts {
                // Memory bound reached: no new semi-contexts or contexts; an existing context
                // is still marked zero-level as the unbounded detector would.
                let l = self.ids[0].get(left.as_slice());
                let r = self.ids[1].get(right.as_slice());
                let found = match (l, r) {
                    (Some(&l), Some(&r)) => self.semis[0][l as usize]
                        .contexts
                        .iter()
                        .find(|e| e.0 == r)
                        .map(|e| e.1),
                    _ => None,
                };
                if zero_level {
                    if let Some(id) = found {
                        self.contexts[id as usize].zero_level = true;
                    }
                    return 0;
                }
                continue;
            }
            let l = self.semi_id(0, left);
            let r = self.semi_id(1, right);
            let next = self.contexts.len() as u32;
            let id = self.semis[0][l as usize].contexts.setdefault(r, next);
            if id == next {
                added += 1;
                self.contexts.push(Context {
                    selected: 0,
                    predicted: 0,
                    activated: 0,
                    right: r,
                    zero_level,
                    left_hash: py2_tuple_hash(left),
                    right_hash: py2_tuple_hash(right),
                });
                if zero_level {
                    self.new_context_id = id as usize;
                    return 1;
                }
            } else if zero_level {
                self.contexts[id as usize].zero_level = true;
                return 0;
            }
        }
        added
    }

    /// Marks which semi-contexts of `side` the facts cross, in semi-context order.
    fn cross(&mut self, side: usize, facts: &[u64]) {
        let old = std::mem::take(&mut self.crossed[side]);
        for &id in &old {
            let s = &mut self.semis[side][id as usize];
            s.crossed.clear();
            s.crossed_len = 0;
        }
        let mut touched = old;
        touched.clear();
        for &f in facts {
            if let Some(list) = self.facts[side].get(&f) {
                for &id in list {
                    let s = &mut self.semis[side][id as usize];
                    if s.crossed.is_empty() {
                        touched.push(id);
                    }
                    s.crossed.push(f);
                }
            }
        }
        touched.sort_unstable();
        for &id in &touched {
            let s = &mut self.semis[side][id as usize];
            s.crossed_len = s.crossed.len();
        }
        self.crossed[side] = touched;
    }

    /// The right crossing and `updateContextsAndGetActive`.
    fn cross_right(
        &mut self,
        facts: &[u64],
        new_context_flag: bool,
    ) -> (Vec<Active>, usize, Vec<Pair>) {
        self.cross(1, facts);
        let mut active = Vec::new();
        let mut selected = 0usize;
        let mut potential = Vec::new();
        for &lid in &self.crossed[0] {
            let left = &self.semis[0][lid as usize];
            let full = left.len == left.crossed_len;
            for (rid, cid) in left.contexts.iter() {
                if self.new_context_id == cid as usize {
                    continue;
                }
                let ctx = &mut self.contexts[cid as usize];
                let right = &self.semis[1][rid as usize];
                if full {
                    selected += 1;
                    ctx.selected += right.len as u64;
                    if right.crossed_len > 0 {
                        ctx.predicted += right.crossed_len as u64;
                        if right.len == right.crossed_len {
                            ctx.activated += 1;
                            active.push((cid, ctx.activated, ctx.left_hash, ctx.right_hash));
                        } else if ctx.zero_level
                            && new_context_flag
                            && left.crossed_len <= self.max_left_len
                        {
                            potential.push((left.crossed.clone(), right.crossed.clone()));
                        }
                    }
                } else if ctx.zero_level
                    && new_context_flag
                    && right.crossed_len > 0
                    && left.crossed_len <= self.max_left_len
                {
                    potential.push((left.crossed.clone(), right.crossed.clone()));
                }
            }
        }
        self.new_context_id = 0;
        (active, selected, potential)
    }

    /// The left crossing: adds the potential contexts, crosses, and predicts.
    fn cross_left(&mut self, facts: &[u64], potential: &[Pair]) -> (usize, Vec<u64>) {
        let added = if potential.is_empty() {
            0
        } else {
            self.context_by_facts(potential, false)
        };
        self.cross(0, facts);
        let mut best = 0.0f64;
        let mut predicting: Vec<u32> = Vec::new();
        for &lid in &self.crossed[0] {
            let left = &self.semis[0][lid as usize];
            if left.len != left.crossed_len {
                continue;
            }
            for (_, cid) in left.contexts.iter() {
                let c = &self.contexts[cid as usize];
                let w = if c.selected > 0 {
                    c.predicted as f64 / c.selected as f64
                } else {
                    0.0
                };
                if w > best {
                    best = w;
                    predicting.clear();
                    predicting.push(cid);
                } else if w == best {
                    predicting.push(cid);
                }
            }
        }
        let mut predictions: Vec<u64> = Vec::new();
        for cid in predicting {
            let r = self.contexts[cid as usize].right;
            predictions.extend_from_slice(&self.right_facts[r as usize]);
        }
        predictions.sort_unstable();
        predictions.dedup();
        (added, predictions)
    }
}

/// The CAD OSE detector. See the module documentation.
#[derive(Debug, Clone)]
pub struct Cad {
    cfg: CadConfig,
    range: CadRange,
    min: f64,
    max: f64,
    left_facts: Vec<u64>,
    ops: ContextOperator,
    /// The sensor facts predicted for the next point (sorted).
    last_predicted: Vec<u64>,
    /// The last `rest_period` raw scores (ring buffer), starting as `[1.0]`.
    history: Vec<f64>,
    history_pos: usize,
    seen: usize,
    /// Values held while the range is being learnt ([`CadRange::Learn`]).
    pending: Vec<f64>,
}

impl Cad {
    pub fn new(cfg: CadConfig, range: CadRange) -> Self {
        let (min, max) = match range {
            CadRange::Fixed { min, max } => (min, max),
            CadRange::Online | CadRange::Learn { .. } => (f64::INFINITY, f64::NEG_INFINITY),
        };
        Cad {
            cfg,
            range,
            min,
            max,
            left_facts: Vec::new(),
            ops: ContextOperator {
                max_left_len: cfg.max_left_semi_contexts_len,
                max_contexts: cfg.max_contexts,
                ..ContextOperator::default()
            },
            last_predicted: Vec::new(),
            history: vec![1.0],
            history_pos: 0,
            seen: 0,
            pending: Vec::new(),
        }
    }

    /// Scores one finite value with the range in place and applies the rest period.
    fn judge(&mut self, value: f64) -> Verdict {
        let current = self.raw_score(value);
        let k = self.cfg.rest_period.max(1);
        let resting = self.history.iter().any(|&s| s >= self.cfg.base_threshold);
        let score = if resting { 0.0 } else { current };
        if self.history.len() < k {
            self.history.push(current);
        } else {
            self.history[self.history_pos] = current;
            self.history_pos = (self.history_pos + 1) % k;
        }
        self.seen += 1;
        Verdict {
            score,
            alert: score >= self.cfg.base_threshold,
        }
    }

    /// The number of contexts learnt so far.
    pub fn contexts(&self) -> usize {
        self.ops.contexts.len()
    }

    /// One CAD step: returns (share of selected contexts active, share of new contexts).
    fn step(&mut self, sensors: &[u64]) -> (f64, f64) {
        let mut uniq: HashSet<Pair> = HashSet::new();
        let new_flag = if !self.left_facts.is_empty() && !sensors.is_empty() {
            let pair = (self.left_facts.clone(), sensors.to_vec());
            let flag = self.ops.context_by_facts(std::slice::from_ref(&pair), true) == 1;
            uniq.insert(pair);
            flag
        } else {
            false
        };
        let (mut active, selected, potential) = self.ops.cross_right(sensors, new_flag);
        uniq.extend(potential.iter().cloned());
        let uniq_n = uniq.len();
        let pct_active = if selected > 0 {
            active.len() as f64 / selected as f64
        } else {
            0.0
        };
        active.sort_by_key(|a| (a.1, a.2, a.3));
        let skip = active.len().saturating_sub(self.cfg.max_active_neurons);
        let mut left: Vec<u64> = sensors.to_vec();
        left.extend(active[skip..].iter().map(|a| (1u64 << 31) + u64::from(a.0)));
        left.sort_unstable();
        left.dedup();
        self.left_facts = left;
        let facts = self.left_facts.clone();
        let (mut added, predictions) = self.ops.cross_left(&facts, &potential);
        added += usize::from(new_flag);
        let pct_added = if new_flag && uniq_n > 0 {
            added as f64 / uniq_n as f64
        } else {
            0.0
        };
        self.last_predicted = predictions;
        (pct_active, pct_added)
    }

    fn raw_score(&mut self, value: f64) -> f64 {
        if self.range == CadRange::Online {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        let max_bin = f64::from((1u32 << self.cfg.num_norm_value_bits) - 1);
        let mut full = self.max - self.min;
        if full == 0.0 {
            full = max_bin;
        }
        let step = full / max_bin;
        // Python's int() truncates towards zero. A value above the range has more bits than
        // `num_norm_value_bits`, as in CAD's own encoding; one below it is encoded by its
        // magnitude plus a sign fact (CAD's Python would encode the characters of `-0b…`).
        let scaled = ((value - self.min) / step).trunc();
        let below = scaled < 0.0;
        let norm = scaled.abs().min(1e18) as u64;
        let bits = self.cfg.num_norm_value_bits.max(64 - norm.leading_zeros());
        let mut sensors: Vec<u64> = (0..bits)
            .map(|s| 65_536 + u64::from(s) * 2 + ((norm >> s) & 1))
            .collect();
        if below {
            sensors.push(65_536 + 2 * 64);
        }
        let mut delta = 0.0;
        for &f in &sensors {
            if self.last_predicted.binary_search(&f).is_err() {
                delta += 2f64.powi(((f - 65_536) / 2) as i32);
            }
        }
        let (a1, a2) = self.step(&sensors);
        if delta > 0.0 {
            (1.0 - a1 + a2) / 2.0
        } else {
            0.0
        }
    }
}

impl Detector for Cad {
    fn observe(&mut self, _ts_ms: i64, value: f64) -> Verdict {
        if !value.is_finite() {
            return Verdict {
                score: 0.0,
                alert: false,
            };
        }
        if let CadRange::Learn { points, margin } = self.range {
            if self.pending.len() + 1 < points {
                self.pending.push(value);
                return Verdict {
                    score: 0.0,
                    alert: false,
                };
            }
            if !self.pending.is_empty() || points <= 1 {
                self.pending.push(value);
                let (lo, hi) = self
                    .pending
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                        (a.min(v), b.max(v))
                    });
                let pad = (hi - lo) * margin;
                self.min = lo - pad;
                self.max = hi + pad;
                self.range = CadRange::Fixed {
                    min: self.min,
                    max: self.max,
                };
                let held = std::mem::take(&mut self.pending);
                let mut last = Verdict {
                    score: 0.0,
                    alert: false,
                };
                for v in held {
                    last = self.judge(v);
                }
                // The replayed values were reported already (as 0); only the current one is
                // new, and it was the last replayed.
                return last;
            }
        }
        self.judge(value)
    }

    fn memory_bytes(&self) -> usize {
        let ops = &self.ops;
        let semis: usize = ops
            .semis
            .iter()
            .flatten()
            .map(|s| {
                std::mem::size_of::<SemiContext>()
                    + s.crossed.capacity() * 8
                    + s.contexts.table.capacity() * 8
            })
            .sum();
        let facts: usize = ops
            .facts
            .iter()
            .flat_map(|m| m.values())
            .map(|v| 8 + 24 + v.capacity() * 4)
            .sum();
        let ids: usize = ops.ids.iter().map(|m| m.capacity() * (24 + 4 + 8)).sum();
        std::mem::size_of::<Self>()
            + semis
            + facts
            + ids
            + ops.key_bytes
            + ops.contexts.capacity() * std::mem::size_of::<Context>()
            + (ops.crossed[0].capacity() + ops.crossed[1].capacity()) * 4
            + (self.left_facts.capacity() + self.last_predicted.capacity()) * 8
            + self.history.capacity() * 8
            + self.pending.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py2_tuple_hash_matches_python2() {
        // Printed by Python 2.7.18 on x86-64.
        assert_eq!(py2_tuple_hash(&[]), 3_527_539);
        assert_eq!(py2_tuple_hash(&[1]), 3_430_019_387_558);
        assert_eq!(py2_tuple_hash(&[1, 2]), 3_713_081_631_934_410_656);
        assert_eq!(
            py2_tuple_hash(&[65_536, 65_539, 65_540]),
            -4_455_755_628_413_524_508
        );
    }

    #[test]
    fn py_int_dict_iterates_like_python2() {
        // Python 2.7: d = {}; for k in [9, 1, 17, 3, 25, 2, 8]: d.setdefault(k, 0)
        // keys() == [1, 2, 3, 8, 9, 17, 25] after the resize to 32 slots.
        let mut d = PyIntDict::default();
        for k in [9, 1, 17, 3, 25, 2, 8] {
            d.setdefault(k, k * 10);
        }
        let keys: Vec<u32> = d.iter().map(|e| e.0).collect();
        assert_eq!(keys, vec![1, 2, 3, 8, 9, 17, 25]);
        assert_eq!(d.setdefault(17, 0), 170);
        // Before a resize, colliding keys take probed slots: 9 & 7 == 1 is taken by 1.
        let mut d = PyIntDict::default();
        for k in [1, 9, 2] {
            d.setdefault(k, 0);
        }
        let keys: Vec<u32> = d.iter().map(|e| e.0).collect();
        // 9: i = 1 taken -> i = 5*1 + 9 + 1 = 15 -> slot 7.
        assert_eq!(keys, vec![1, 2, 9]);
        // Python 2.7.18: keys() == [260, 37, 7, 999, 12, 100, 5].
        let mut d = PyIntDict::default();
        for k in [100, 37, 5, 260, 12, 7, 999] {
            d.setdefault(k, 0);
        }
        let keys: Vec<u32> = d.iter().map(|e| e.0).collect();
        assert_eq!(keys, vec![260, 37, 7, 999, 12, 100, 5]);
    }

    #[test]
    fn repeating_pattern_becomes_quiet_and_a_break_scores_high() {
        let mut d = Cad::new(
            CadConfig {
                rest_period: 10,
                ..CadConfig::default()
            },
            CadRange::Fixed { min: 0.0, max: 7.0 },
        );
        let pattern = [0.0, 3.0, 7.0, 5.0, 1.0];
        let mut late = Vec::new();
        for i in 0..2000 {
            let v = d.observe(i, pattern[i as usize % pattern.len()]);
            if i >= 1500 {
                late.push(v.score);
            }
        }
        assert!(late.iter().all(|&s| s < 0.5), "{late:?}");
        let v = d.observe(2000, 6.0);
        assert!(v.score >= 0.5, "{v:?}");
        assert!(d.memory_bytes() > 0);
    }

    #[test]
    fn max_contexts_bounds_memory() {
        let cfg = CadConfig {
            max_contexts: 200,
            ..CadConfig::default()
        };
        let mut d = Cad::new(cfg, CadRange::Online);
        let mut x: u64 = 12345;
        for i in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (x >> 33) as f64 / (1u64 << 31) as f64;
            let out = d.observe(i, v);
            assert!((0.0..=1.0).contains(&out.score));
        }
        assert!(d.contexts() <= 200);
        let at_cap = d.memory_bytes();
        for i in 5000..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            d.observe(i, (x >> 33) as f64 / (1u64 << 31) as f64);
        }
        assert!(d.contexts() <= 200);
        assert_eq!(d.memory_bytes(), at_cap, "memory grew after the cap");
    }

    #[test]
    fn learnt_range_replays_the_first_points() {
        let values: Vec<f64> = (0..400).map(|i| ((i * 7) % 11) as f64).collect();
        let mut learnt = Cad::new(
            CadConfig::default(),
            CadRange::Learn {
                points: 100,
                margin: 0.0,
            },
        );
        let mut fixed = Cad::new(
            CadConfig::default(),
            CadRange::Fixed {
                min: 0.0,
                max: 10.0,
            },
        );
        for (i, &v) in values.iter().enumerate() {
            let a = learnt.observe(i as i64, v);
            let b = fixed.observe(i as i64, v);
            if i < 99 {
                assert_eq!(a.score, 0.0);
            } else {
                assert_eq!(a, b, "point {i}");
            }
        }
    }
}
