//! Gradient-boosted decision trees for a binary outcome, trained on feature histograms.
//!
//! Each feature is cut into at most 256 bins (bin 0 holds missing cells). A tree grows leaf by
//! leaf, always splitting the leaf whose best split lowers the regularised log loss most; a
//! child's histogram is the parent's minus its sibling's, so only the smaller child is counted.
//! Numeric splits learn which side missing cells take; categorical splits send a set of
//! categories left, found by ordering categories by their gradient ratio (the LightGBM method),
//! so "other" (rare or unseen) and "missing" are categories like any other.
//!
//! Training stops early when the log loss on held-out rows has not improved for a while, and
//! keeps the best number of trees.

use serde::{Deserialize, Serialize};

use crate::error::PredictError;
use crate::features::{Feature, FeatureKind, Prepared};
use crate::metrics::{log_loss, sigmoid};

/// Hyperparameters. The defaults were chosen on the deploy-history training split and on
/// synthetic histories of several shapes (see BENCHMARKS.md), not on any test file. The
/// learning rate and the tree size go with the number of averaged fits
/// ([`GbdtParams::for_folds`]); the default is that of the default four fits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GbdtParams {
    pub learning_rate: f64,
    pub max_rounds: usize,
    pub max_depth: usize,
    pub max_leaves: usize,
    /// Least hessian sum in a child.
    pub min_child_weight: f64,
    /// Least number of rows in a child.
    pub min_samples_leaf: usize,
    /// L2 penalty on leaf values.
    pub l2: f64,
    /// Share of rows each tree sees.
    pub subsample: f64,
    /// Share of features each tree may split on.
    pub colsample: f64,
    /// Stop after this many rounds without a better held-out log loss.
    pub early_stopping_rounds: usize,
    /// Added to the hessian when ordering categories, so rare categories do not lead.
    pub cat_smooth: f64,
    pub seed: u64,
}

impl Default for GbdtParams {
    fn default() -> Self {
        GbdtParams::for_folds(crate::model::FOLDS)
    }
}

impl GbdtParams {
    /// The defaults for a model that is the mean of `folds` fits (`TrainOptions::folds`). One
    /// fit: learning rate 0.12 and trees of at most 4 leaves (shallower trees calibrate
    /// better on categories training never saw; BENCHMARKS.md, issue 10). Several: trees of at most 4 leaves
    /// and a learning rate of 0.125 per fit (0.5 for four, at most 1), so each fit
    /// stops after about 1/`folds` of the trees and the mean costs about what one fit does to
    /// train and to predict, with less of one fit's estimation noise (BENCHMARKS.md, issue 10).
    pub fn for_folds(folds: usize) -> GbdtParams {
        let (learning_rate, max_leaves) = if folds <= 1 {
            (0.12, 4)
        } else {
            ((0.125 * folds as f64).min(1.0), 4)
        };
        GbdtParams {
            learning_rate,
            max_rounds: 2000,
            max_depth: 4,
            max_leaves,
            min_child_weight: 2.0,
            min_samples_leaf: 20,
            l2: 2.0,
            subsample: 0.8,
            colsample: 0.9,
            early_stopping_rounds: 30,
            cat_smooth: 10.0,
            seed: 7,
        }
    }

    pub fn validate(&self) -> Result<(), PredictError> {
        let bad = |m: &str| Err(PredictError::BadParameter(m.to_string()));
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return bad("learning_rate must be in (0, 1]");
        }
        if self.max_depth == 0 || self.max_depth > 32 {
            return bad("max_depth must be between 1 and 32");
        }
        if self.max_leaves < 2 {
            return bad("max_leaves must be at least 2");
        }
        let share = |v: f64| v > 0.0 && v <= 1.0;
        if !share(self.subsample) || !share(self.colsample) {
            return bad("subsample and colsample must be in (0, 1]");
        }
        if self.l2 < 0.0 || self.min_child_weight < 0.0 || self.cat_smooth < 0.0 {
            return bad("l2, min_child_weight and cat_smooth must not be negative");
        }
        if self.max_rounds == 0 {
            return bad("max_rounds must be at least 1");
        }
        Ok(())
    }
}

/// How a split sends a prepared value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rule {
    /// Left when `value <= threshold`; a missing value goes left when `missing_left`.
    Numeric { threshold: f64, missing_left: bool },
    /// Left when the category code's bit is set.
    Categorical { left: [u64; 4] },
}

impl Rule {
    #[inline]
    pub fn goes_left(&self, v: f64) -> bool {
        match self {
            Rule::Numeric {
                threshold,
                missing_left,
            } => {
                if v.is_nan() {
                    *missing_left
                } else {
                    v <= *threshold
                }
            }
            Rule::Categorical { left } => {
                let b = (v as usize).min(255);
                (left[b >> 6] >> (b & 63)) & 1 == 1
            }
        }
    }
}

/// A tree node. `cover` is the number of training rows that reached the node (the hessian sum
/// in files of builds before issue 10 part 3); it weighs the branches when explaining a
/// prediction and when averaging over a feature whose value training never learnt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "node", rename_all = "snake_case")]
pub enum Node {
    Leaf {
        value: f64,
        cover: f64,
    },
    Split {
        feature: u32,
        rule: Rule,
        left: u32,
        right: u32,
        cover: f64,
    },
}

impl Node {
    pub fn cover(&self) -> f64 {
        match self {
            Node::Leaf { cover, .. } | Node::Split { cover, .. } => *cover,
        }
    }
}

/// One regression tree; node 0 is the root and children come after their parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    #[inline]
    pub fn predict(&self, x: &[f64]) -> f64 {
        let mut i = 0usize;
        loop {
            match &self.nodes[i] {
                Node::Leaf { value, .. } => return *value,
                Node::Split {
                    feature,
                    rule,
                    left,
                    right,
                    ..
                } => {
                    i = if rule.goes_left(x[*feature as usize]) {
                        *left as usize
                    } else {
                        *right as usize
                    };
                }
            }
        }
    }

    /// Multiplies every leaf value by `k`.
    pub fn scale_leaves(&mut self, k: f64) {
        for n in &mut self.nodes {
            if let Node::Leaf { value, .. } = n {
                *value *= k;
            }
        }
    }

    /// The cover-weighted mean of the leaves: the tree's output when nothing is known.
    pub fn expected_value(&self) -> f64 {
        self.expected_at(0)
    }

    fn expected_at(&self, i: usize) -> f64 {
        match &self.nodes[i] {
            Node::Leaf { value, .. } => *value,
            Node::Split {
                left, right, cover, ..
            } => {
                let (l, r) = (*left as usize, *right as usize);
                (self.nodes[l].cover() * self.expected_at(l)
                    + self.nodes[r].cover() * self.expected_at(r))
                    / cover
            }
        }
    }

    pub fn depth(&self) -> usize {
        fn d(t: &Tree, i: usize) -> usize {
            match &t.nodes[i] {
                Node::Leaf { .. } => 0,
                Node::Split { left, right, .. } => {
                    1 + d(t, *left as usize).max(d(t, *right as usize))
                }
            }
        }
        d(self, 0)
    }

    /// Checks the structure of a tree read from a file: children after parents, in range,
    /// features in range, positive covers.
    pub(crate) fn check(&self, features: usize) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("a tree has no nodes".into());
        }
        if self.nodes.len() > 1 << 20 {
            return Err(format!("a tree has {} nodes", self.nodes.len()));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.cover().is_nan() || n.cover() <= 0.0 {
                return Err(format!("node {i} has cover {}", n.cover()));
            }
            if let Node::Split {
                feature,
                left,
                right,
                ..
            } = n
            {
                let ok = |c: u32| (c as usize) > i && (c as usize) < self.nodes.len();
                if !ok(*left) || !ok(*right) || *right != *left + 1 {
                    return Err(format!("node {i} has children {left} and {right}"));
                }
                if *feature as usize >= features {
                    return Err(format!(
                        "node {i} splits on feature {feature} of {features}"
                    ));
                }
            }
        }
        // Children come after parents, so one forward pass gives every node's depth (without
        // recursion, which a hostile file could make overflow the stack). Explanations support
        // depths up to 32.
        let mut depth = vec![0usize; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            if let Node::Split { left, right, .. } = n {
                depth[*left as usize] = depth[i] + 1;
                depth[*right as usize] = depth[i] + 1;
                if depth[i] + 1 > 32 {
                    return Err("a tree is deeper than 32".into());
                }
            }
        }
        Ok(())
    }
}

/// A trained ensemble: `init` plus the sum of the trees is the log-odds of failure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gbdt {
    pub init: f64,
    pub trees: Vec<Tree>,
    /// The trees flattened for fast prediction; rebuilt by [`Gbdt::compile`].
    #[serde(skip)]
    flat: Flat,
}

impl Gbdt {
    pub fn new(init: f64, trees: Vec<Tree>) -> Gbdt {
        let mut g = Gbdt {
            init,
            trees,
            flat: Flat::default(),
        };
        g.compile();
        g
    }

    /// Rebuilds the flat form (after deserialisation).
    pub fn compile(&mut self) {
        let mut flat = Flat::default();
        for t in &self.trees {
            flat.push(t);
        }
        self.flat = flat;
    }

    #[inline]
    pub fn margin(&self, x: &[f64]) -> f64 {
        self.init
            + (0..self.flat.roots.len())
                .map(|t| self.flat.predict(t, x))
                .sum::<f64>()
    }

    /// Margins of many rows. Works tree by tree over blocks of rows, which keeps each tree in
    /// cache, and walks eight rows through a tree together, so the CPU overlaps their
    /// independent memory loads.
    pub fn margins(&self, x: &Prepared, out: &mut [f64]) {
        const BLOCK: usize = 512;
        const LANES: usize = 8;
        let n = x.rows();
        let mut start = 0;
        while start < n {
            let end = (start + BLOCK).min(n);
            out[start..end].iter_mut().for_each(|m| *m = self.init);
            for (t, &root) in self.flat.roots.iter().enumerate() {
                let depth = self.flat.depths[t];
                let mut i = start;
                while i + LANES <= end {
                    let rows: [&[f64]; LANES] = std::array::from_fn(|k| x.row(i + k));
                    let mut at = [root as usize; LANES];
                    for _ in 0..depth {
                        for k in 0..LANES {
                            at[k] = self.flat.step(at[k], rows[k]);
                        }
                    }
                    for k in 0..LANES {
                        out[i + k] += self.flat.values[at[k]];
                    }
                    i += LANES;
                }
                for (r, m) in (i..end).zip(out[i..end].iter_mut()) {
                    *m += self.flat.predict(t, x.row(r));
                }
            }
            start = end;
        }
    }

    /// The depth of each tree.
    pub fn depths(&self) -> &[usize] {
        &self.flat.depths
    }

    /// The margin when nothing is known: the base of the explanations.
    pub fn expected_margin(&self) -> f64 {
        self.init + self.trees.iter().map(Tree::expected_value).sum::<f64>()
    }
}

const FLAT_MISSING_LEFT: u8 = 1;
const FLAT_CATEGORICAL: u8 = 2;

/// A node of the flat form. A leaf is a split that always goes "left" to itself, so a walk
/// of exactly the tree's depth ends on the leaf without a test for leaves, and the step
/// itself is branch-free (the right child is always `left + 1`).
#[derive(Debug, Clone, Copy, Default)]
struct FlatNode {
    threshold: f64,
    left: u32,
    set: u32,
    feature: u32,
    flags: u8,
}

/// All trees in one array.
#[derive(Debug, Clone, Default)]
struct Flat {
    nodes: Vec<FlatNode>,
    /// Leaf values by node index (0 for splits).
    values: Vec<f64>,
    roots: Vec<u32>,
    depths: Vec<usize>,
    sets: Vec<[u64; 4]>,
}

impl Flat {
    fn push(&mut self, t: &Tree) {
        if self.sets.is_empty() {
            self.sets.push([0; 4]);
        }
        let base = self.nodes.len() as u32;
        self.roots.push(base);
        self.depths.push(t.depth());
        for (i, n) in t.nodes.iter().enumerate() {
            let (node, value) = match n {
                Node::Leaf { value, .. } => (
                    FlatNode {
                        threshold: f64::INFINITY,
                        left: base + i as u32,
                        set: 0,
                        feature: 0,
                        flags: FLAT_MISSING_LEFT,
                    },
                    *value,
                ),
                Node::Split {
                    feature,
                    rule,
                    left,
                    ..
                } => {
                    let mut f = FlatNode {
                        left: base + left,
                        feature: *feature,
                        ..FlatNode::default()
                    };
                    match rule {
                        Rule::Numeric {
                            threshold,
                            missing_left,
                        } => {
                            f.threshold = *threshold;
                            if *missing_left {
                                f.flags |= FLAT_MISSING_LEFT;
                            }
                        }
                        Rule::Categorical { left } => {
                            f.flags |= FLAT_CATEGORICAL;
                            f.set = self.sets.len() as u32;
                            self.sets.push(*left);
                        }
                    }
                    (f, 0.0)
                }
            };
            self.nodes.push(node);
            self.values.push(value);
        }
    }

    /// One step down from node `i`; a leaf stays where it is.
    #[inline(always)]
    fn step(&self, i: usize, x: &[f64]) -> usize {
        let n = &self.nodes[i];
        let v = x[n.feature as usize];
        let num_left = (v <= n.threshold) | (v.is_nan() & (n.flags & FLAT_MISSING_LEFT != 0));
        let b = (v as usize).min(255);
        let cat_left = (self.sets[n.set as usize][b >> 6] >> (b & 63)) & 1 == 1;
        let left = if n.flags & FLAT_CATEGORICAL != 0 {
            cat_left
        } else {
            num_left
        };
        n.left as usize + (!left) as usize
    }

    #[inline]
    fn predict(&self, tree: usize, x: &[f64]) -> f64 {
        let mut i = self.roots[tree] as usize;
        for _ in 0..self.depths[tree] {
            i = self.step(i, x);
        }
        self.values[i]
    }
}

/// What happened during training. For a model averaged over several fits (see
/// `TrainOptions::folds`), rounds and trees are summed over the fits and the log loss is
/// their held-out rows' mean.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GbdtLog {
    pub rounds_trained: usize,
    /// Trees kept.
    pub best_rounds: usize,
    /// Log loss of the raw margins on the held-out rows.
    pub valid_log_loss: f64,
}

/// A split as found on bins, before it becomes a [`Rule`].
#[derive(Debug, Clone)]
enum BinRule {
    Threshold { bin: u8, missing_left: bool },
    Set([u64; 4]),
}

impl BinRule {
    #[inline]
    fn goes_left(&self, b: u8) -> bool {
        match self {
            BinRule::Threshold { bin, missing_left } => {
                if b == 0 {
                    *missing_left
                } else {
                    b <= *bin
                }
            }
            BinRule::Set(set) => (set[(b >> 6) as usize] >> (b & 63)) & 1 == 1,
        }
    }
}

#[derive(Debug, Clone)]
struct Candidate {
    gain: f64,
    feature: usize,
    rule: BinRule,
}

#[derive(Debug, Clone, Copy, Default)]
struct Stat {
    g: f64,
    h: f64,
    n: f64,
}

impl Stat {
    fn add(&mut self, o: &Stat) {
        self.g += o.g;
        self.h += o.h;
        self.n += o.n;
    }
    fn sub(&self, o: &Stat) -> Stat {
        Stat {
            g: self.g - o.g,
            h: self.h - o.h,
            n: self.n - o.n,
        }
    }
}

struct Open {
    node: usize,
    start: usize,
    end: usize,
    depth: usize,
    total: Stat,
    hist: Vec<Stat>,
    best: Option<Candidate>,
}

struct Binned<'a> {
    nf: usize,
    bins: Vec<u8>,
    offsets: Vec<usize>,
    nbins: Vec<usize>,
    total_bins: usize,
    features: &'a [Feature],
}

impl<'a> Binned<'a> {
    fn new(features: &'a [Feature], x: &Prepared) -> Binned<'a> {
        let nf = features.len();
        let mut bins = vec![0u8; x.values.len()];
        for (i, row) in x.values.chunks(nf).enumerate() {
            for (j, f) in features.iter().enumerate() {
                bins[i * nf + j] = f.bin(row[j]);
            }
        }
        let nbins: Vec<usize> = features.iter().map(Feature::bins).collect();
        let mut offsets = Vec::with_capacity(nf);
        let mut acc = 0;
        for &b in &nbins {
            offsets.push(acc);
            acc += b;
        }
        Binned {
            nf,
            bins,
            offsets,
            nbins,
            total_bins: acc,
            features,
        }
    }

    fn build_hist(&self, rows: &[u32], gh: &[(f64, f64)], hist: &mut [Stat]) {
        hist.iter_mut().for_each(|s| *s = Stat::default());
        let nf = self.nf;
        for &r in rows {
            let r = r as usize;
            let (g, h) = gh[r];
            let row = &self.bins[r * nf..r * nf + nf];
            for (j, &b) in row.iter().enumerate() {
                let s = &mut hist[self.offsets[j] + b as usize];
                s.g += g;
                s.h += h;
                s.n += 1.0;
            }
        }
    }
}

/// Trains on `train`, stopping early on `valid`.
pub fn train(
    features: &[Feature],
    train: (&Prepared, &[bool]),
    valid: (&Prepared, &[bool]),
    params: &GbdtParams,
) -> Result<(Gbdt, GbdtLog), PredictError> {
    params.validate()?;
    let (x, y) = train;
    let (vx, vy) = valid;
    let n = x.rows();
    let binned = Binned::new(features, x);
    // The held-out rows as bins too: the trees are walked on bins while training.
    let vbins = Binned::new(features, vx).bins;
    let mut rng = crate::rng::seeded(params.seed);

    let rate = (y.iter().filter(|v| **v).count() as f64 / n as f64).clamp(1e-6, 1.0 - 1e-6);
    let init = (rate / (1.0 - rate)).ln();
    let mut margin = vec![init; n];
    let mut vmargin = vec![init; vx.rows()];
    let mut gh = vec![(0.0, 0.0); n];
    let mut trees: Vec<Tree> = Vec::new();
    let mut best_loss = f64::INFINITY;
    let mut best_rounds = 0;
    let mut rounds_trained = 0;
    let mut vprob = vec![0.0; vx.rows()];
    let mut done = vec![false; n];

    for round in 0..params.max_rounds {
        let rows: Vec<u32> = if params.subsample < 1.0 {
            (0..n as u32)
                .filter(|_| rng.unit() < params.subsample)
                .collect()
        } else {
            (0..n as u32).collect()
        };
        // Only the rows this tree sees need their gradients.
        for &r in &rows {
            let i = r as usize;
            let p = sigmoid(margin[i]);
            let t = if y[i] { 1.0 } else { 0.0 };
            gh[i] = (p - t, (p * (1.0 - p)).max(1e-16));
        }
        let allowed: Vec<bool> = if params.colsample < 1.0 {
            let mut a: Vec<bool> = (0..features.len())
                .map(|_| rng.unit() < params.colsample)
                .collect();
            if !a.iter().any(|v| *v) {
                a[rng.index(features.len())] = true;
            }
            a
        } else {
            vec![true; features.len()]
        };
        let (tree, splits, leaves) = grow(&binned, rows, &gh, &allowed, params);
        done.iter_mut().for_each(|d| *d = false);
        for (rows, value) in &leaves {
            for &r in rows {
                margin[r as usize] += value;
                done[r as usize] = true;
            }
        }
        let nf = binned.nf;
        for (i, m) in margin.iter_mut().enumerate() {
            if !done[i] {
                *m += predict_bins(&tree, &splits, &binned.bins[i * nf..(i + 1) * nf]);
            }
        }
        for (i, m) in vmargin.iter_mut().enumerate() {
            *m += predict_bins(&tree, &splits, &vbins[i * nf..(i + 1) * nf]);
        }
        trees.push(tree);
        rounds_trained = round + 1;
        for (p, m) in vprob.iter_mut().zip(&vmargin) {
            *p = sigmoid(*m);
        }
        let loss = log_loss(&vprob, vy);
        if loss < best_loss - 1e-9 {
            best_loss = loss;
            best_rounds = round + 1;
        } else if round + 1 - best_rounds >= params.early_stopping_rounds {
            break;
        }
    }
    trees.truncate(best_rounds.max(1));
    Ok((
        Gbdt::new(init, trees),
        GbdtLog {
            rounds_trained,
            best_rounds: best_rounds.max(1),
            valid_log_loss: best_loss,
        },
    ))
}

fn leaf_value(s: &Stat, params: &GbdtParams) -> f64 {
    -params.learning_rate * s.g / (s.h + params.l2)
}

fn score(g: f64, h: f64, l2: f64) -> f64 {
    g * g / (h + l2)
}

/// A grown tree's splits on bins (`None` at leaves), to walk binned rows during training.
type BinSplits = Vec<Option<(usize, BinRule)>>;

/// The value of a grown tree for a binned row; equal to [`Tree::predict`] on the row, since
/// `v <= edges[b - 1]` exactly when the bin of `v` is at most `b`.
fn predict_bins(tree: &Tree, splits: &BinSplits, row: &[u8]) -> f64 {
    let mut i = 0usize;
    loop {
        match &tree.nodes[i] {
            Node::Leaf { value, .. } => return *value,
            Node::Split { left, right, .. } => {
                let (f, rule) = splits[i].as_ref().expect("every split has its bin rule");
                i = if rule.goes_left(row[*f]) {
                    *left as usize
                } else {
                    *right as usize
                };
            }
        }
    }
}

/// Grows one tree; also returns its splits on bins and each leaf's rows and value, to update
/// the margins cheaply.
fn grow(
    b: &Binned,
    mut rows: Vec<u32>,
    gh: &[(f64, f64)],
    allowed: &[bool],
    params: &GbdtParams,
) -> (Tree, BinSplits, Vec<(Vec<u32>, f64)>) {
    let mut nodes: Vec<Node> = vec![Node::Leaf {
        value: 0.0,
        cover: 0.0,
    }];
    let mut splits: BinSplits = vec![None];
    let mut hist = vec![Stat::default(); b.total_bins];
    b.build_hist(&rows, gh, &mut hist);
    let mut total = Stat::default();
    // Every row falls in exactly one bin of feature 0.
    for s in &hist[0..b.nbins[0]] {
        total.add(s);
    }
    let mut root = Open {
        node: 0,
        start: 0,
        end: rows.len(),
        depth: 0,
        total,
        hist,
        best: None,
    };
    root.best = best_split(b, &root, allowed, params);
    let mut open = vec![root];
    let mut leaves = 1;
    while leaves < params.max_leaves {
        let Some(k) = open
            .iter()
            .enumerate()
            .filter_map(|(k, o)| o.best.as_ref().map(|c| (k, c.gain)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(k, _)| k)
        else {
            break;
        };
        let parent = open.swap_remove(k);
        let cand = parent.best.clone().expect("chosen for its split");
        // Partition the parent's rows in place: left rows first.
        let nf = b.nf;
        let slice = &mut rows[parent.start..parent.end];
        let mut mid = 0;
        for i in 0..slice.len() {
            let r = slice[i] as usize;
            if cand.rule.goes_left(b.bins[r * nf + cand.feature]) {
                slice.swap(i, mid);
                mid += 1;
            }
        }
        let mid = parent.start + mid;
        let (ls, le, rs, re) = (parent.start, mid, mid, parent.end);
        let left_id = nodes.len();
        nodes.push(Node::Leaf {
            value: 0.0,
            cover: 0.0,
        });
        nodes.push(Node::Leaf {
            value: 0.0,
            cover: 0.0,
        });
        splits.push(None);
        splits.push(None);
        splits[parent.node] = Some((cand.feature, cand.rule.clone()));
        let rule = to_rule(&b.features[cand.feature], &cand.rule);
        nodes[parent.node] = Node::Split {
            feature: cand.feature as u32,
            rule,
            left: left_id as u32,
            right: left_id as u32 + 1,
            cover: parent.total.n,
        };
        let mut small = vec![Stat::default(); b.total_bins];
        let left_smaller = le - ls <= re - rs;
        if left_smaller {
            b.build_hist(&rows[ls..le], gh, &mut small);
        } else {
            b.build_hist(&rows[rs..re], gh, &mut small);
        }
        let mut large = parent.hist;
        for (l, s) in large.iter_mut().zip(&small) {
            *l = l.sub(s);
        }
        let (lh, rh) = if left_smaller {
            (small, large)
        } else {
            (large, small)
        };
        let sum = |h: &[Stat]| {
            let mut t = Stat::default();
            for s in &h[0..b.nbins[0]] {
                t.add(s);
            }
            t
        };
        for (node, start, end, h) in [(left_id, ls, le, lh), (left_id + 1, rs, re, rh)] {
            let total = sum(&h);
            let mut o = Open {
                node,
                start,
                end,
                depth: parent.depth + 1,
                total,
                hist: h,
                best: None,
            };
            if o.depth < params.max_depth {
                o.best = best_split(b, &o, allowed, params);
            }
            open.push(o);
        }
        leaves += 1;
    }
    let mut leaf_rows = Vec::with_capacity(open.len());
    for o in &open {
        let value = leaf_value(&o.total, params);
        nodes[o.node] = Node::Leaf {
            value,
            cover: o.total.n,
        };
        leaf_rows.push((rows[o.start..o.end].to_vec(), value));
    }
    // Make each cover exactly the sum of its children's, so explanations add up exactly.
    for i in (0..nodes.len()).rev() {
        if let Node::Split { left, right, .. } = nodes[i] {
            let c = nodes[left as usize].cover() + nodes[right as usize].cover();
            if let Node::Split { cover, .. } = &mut nodes[i] {
                *cover = c;
            }
        }
    }
    (Tree { nodes }, splits, leaf_rows)
}

fn to_rule(f: &Feature, r: &BinRule) -> Rule {
    match (r, &f.kind) {
        (BinRule::Threshold { bin, missing_left }, FeatureKind::Numeric { edges, .. }) => {
            Rule::Numeric {
                threshold: edges[*bin as usize - 1],
                missing_left: *missing_left,
            }
        }
        (BinRule::Set(set), _) => Rule::Categorical { left: *set },
        (BinRule::Threshold { .. }, FeatureKind::Categorical { .. }) => {
            unreachable!("categorical features are split by sets")
        }
    }
}

fn best_split(b: &Binned, o: &Open, allowed: &[bool], params: &GbdtParams) -> Option<Candidate> {
    let t = o.total;
    if t.n < 2.0 * params.min_samples_leaf as f64 || t.h < 2.0 * params.min_child_weight {
        return None;
    }
    let parent_score = score(t.g, t.h, params.l2);
    let ok = |l: &Stat, r: &Stat| {
        l.h >= params.min_child_weight
            && r.h >= params.min_child_weight
            && l.n >= params.min_samples_leaf as f64
            && r.n >= params.min_samples_leaf as f64
    };
    let gain =
        |l: &Stat, r: &Stat| score(l.g, l.h, params.l2) + score(r.g, r.h, params.l2) - parent_score;
    let mut best: Option<Candidate> = None;
    let mut consider = |c: Candidate| {
        if c.gain > 1e-12 && best.as_ref().is_none_or(|b| c.gain > b.gain) {
            best = Some(c);
        }
    };
    for (j, f) in b.features.iter().enumerate() {
        if !allowed[j] {
            continue;
        }
        let h = &o.hist[b.offsets[j]..b.offsets[j] + b.nbins[j]];
        if f.is_categorical() {
            let mut cats: Vec<(usize, f64)> = (0..h.len())
                .filter(|&k| h[k].n > 0.0)
                .map(|k| (k, h[k].g / (h[k].h + params.cat_smooth)))
                .collect();
            if cats.len() < 2 {
                continue;
            }
            cats.sort_by(|a, b| a.1.total_cmp(&b.1));
            let mut left = Stat::default();
            let mut best_k = None;
            let mut best_gain = 0.0;
            for k in 0..cats.len() - 1 {
                left.add(&h[cats[k].0]);
                let right = t.sub(&left);
                if ok(&left, &right) {
                    let g = gain(&left, &right);
                    if g > best_gain {
                        best_gain = g;
                        best_k = Some((k, left));
                    }
                }
            }
            if let Some((k, left)) = best_k {
                let mut set = [0u64; 4];
                // Categories with no rows here go with the heavier side.
                if left.h >= t.h - left.h {
                    for (c, s) in h.iter().enumerate() {
                        if s.n == 0.0 {
                            set[c >> 6] |= 1 << (c & 63);
                        }
                    }
                }
                for &(c, _) in &cats[..=k] {
                    set[c >> 6] |= 1 << (c & 63);
                }
                consider(Candidate {
                    gain: best_gain,
                    feature: j,
                    rule: BinRule::Set(set),
                });
            }
        } else {
            let miss = h[0];
            let mut acc = Stat::default();
            let last = h.len().saturating_sub(1);
            for (bin, hb) in h.iter().enumerate().take(last).skip(1) {
                acc.add(hb);
                if hb.n == 0.0 {
                    continue;
                }
                // Missing right.
                let r = t.sub(&acc);
                if ok(&acc, &r) {
                    let missing_left = miss.n == 0.0 && acc.h >= r.h;
                    consider(Candidate {
                        gain: gain(&acc, &r),
                        feature: j,
                        rule: BinRule::Threshold {
                            bin: bin as u8,
                            missing_left,
                        },
                    });
                }
                if miss.n > 0.0 {
                    let mut l = acc;
                    l.add(&miss);
                    let r = t.sub(&l);
                    if ok(&l, &r) {
                        consider(Candidate {
                            gain: gain(&l, &r),
                            feature: j,
                            rule: BinRule::Threshold {
                                bin: bin as u8,
                                missing_left: true,
                            },
                        });
                    }
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{infer_features, prepare_frame, SchemaOptions};
    use crate::synth::{Shape, World};

    #[test]
    fn walking_bins_gives_the_trees_values_and_covers_count_rows() {
        let world = World::new(4, &Shape::default());
        let s = world.sample(3000, 2, 0.0);
        let schema = SchemaOptions {
            label: "outcome".into(),
            ignore: vec!["run_id".into(), "_p".into()],
            min_category_rows: 10,
        };
        let (features, _) = infer_features(&s.frame, &schema).unwrap();
        let (x, _) = prepare_frame(&features, &s.frame).unwrap();
        let binned = Binned::new(&features, &x);
        let params = GbdtParams::default();
        let rate = s.failed.iter().filter(|v| **v).count() as f64 / s.failed.len() as f64;
        let gh: Vec<(f64, f64)> = s
            .failed
            .iter()
            .map(|&y| (rate - y as u8 as f64, rate * (1.0 - rate)))
            .collect();
        let rows: Vec<u32> = (0..x.rows() as u32).filter(|r| r % 5 != 0).collect();
        let seen = rows.len() as f64;
        let (tree, splits, leaves) = grow(&binned, rows, &gh, &vec![true; features.len()], &params);
        assert!(tree.nodes.len() > 1, "the tree split");
        let nf = features.len();
        for i in 0..x.rows() {
            let b = predict_bins(&tree, &splits, &binned.bins[i * nf..(i + 1) * nf]);
            assert_eq!(b, tree.predict(x.row(i)), "row {i}");
        }
        // A node's cover is the number of rows the tree saw there.
        assert_eq!(tree.nodes[0].cover(), seen);
        for (rows, value) in &leaves {
            let at = tree
                .nodes
                .iter()
                .position(|n| matches!(n, Node::Leaf { value: v, .. } if v == value))
                .unwrap();
            assert_eq!(tree.nodes[at].cover(), rows.len() as f64);
        }
    }
}
