//! Exact TreeSHAP (Lundberg, Erion and Lee 2018, "Consistent individualized feature attribution
//! for tree ensembles", Algorithm 2): per-feature contributions of one prediction in
//! O(leaves · depth²) per tree, instead of the exponential enumeration of feature subsets.
//!
//! The value of a feature subset S is the tree's output with the features in S fixed to the
//! row's values and the others averaged over the training rows, following each split by its
//! cover (the "path-dependent" conditional expectation). Contributions plus the tree's expected
//! value equal the tree's output for the row, exactly.

use crate::gbdt::{Node, Tree};

#[derive(Debug, Clone, Copy, Default)]
struct PathElement {
    feature: i64,
    zero_fraction: f64,
    one_fraction: f64,
    pweight: f64,
}

/// Scratch space reused across rows and trees.
#[derive(Debug, Default)]
pub struct ShapBuffer {
    path: Vec<PathElement>,
}

/// `RECIP[k] = 1 / k`: the path weights divide by small integers many times per leaf, and a
/// multiplication is several times cheaper than a division.
const RECIP: [f64; 68] = {
    let mut r = [0.0; 68];
    let mut k = 1;
    while k < 68 {
        r[k] = 1.0 / k as f64;
        k += 1;
    }
    r
};

/// Adds the contributions of `tree` for row `x` to `phi` (one slot per feature).
pub fn tree_shap(tree: &Tree, x: &[f64], phi: &mut [f64], buf: &mut ShapBuffer) {
    tree_shap_with_depth(tree, tree.depth(), x, phi, buf);
}

/// As [`tree_shap`], with the tree's depth (at most 32) already known.
pub fn tree_shap_with_depth(
    tree: &Tree,
    depth: usize,
    x: &[f64],
    phi: &mut [f64],
    buf: &mut ShapBuffer,
) {
    let needed = (depth + 3) * (depth + 4) / 2;
    if buf.path.len() < needed {
        buf.path.resize(needed, PathElement::default());
    }
    recurse(tree, x, phi, 0, &mut buf.path, 0, 0, 1.0, 1.0, -1);
}

#[allow(clippy::too_many_arguments)]
fn recurse(
    tree: &Tree,
    x: &[f64],
    phi: &mut [f64],
    node: usize,
    buf: &mut [PathElement],
    parent_start: usize,
    unique_depth: usize,
    parent_zero: f64,
    parent_one: f64,
    parent_feature: i64,
) {
    let start = parent_start + unique_depth + 1;
    buf.copy_within(parent_start..parent_start + unique_depth + 1, start);
    let path = &mut buf[start..];
    extend_path(path, unique_depth, parent_zero, parent_one, parent_feature);
    match &tree.nodes[node] {
        Node::Leaf { value, .. } => {
            for i in 1..=unique_depth {
                let w = unwound_path_sum(path, unique_depth, i);
                let el = path[i];
                phi[el.feature as usize] += w * (el.one_fraction - el.zero_fraction) * value;
            }
        }
        Node::Split {
            feature,
            rule,
            left,
            right,
            cover,
        } => {
            let (hot, cold) = if rule.goes_left(x[*feature as usize]) {
                (*left, *right)
            } else {
                (*right, *left)
            };
            let (hot, cold) = (hot as usize, cold as usize);
            let hot_zero = tree.nodes[hot].cover() / cover;
            let cold_zero = tree.nodes[cold].cover() / cover;
            let mut incoming_zero = 1.0;
            let mut incoming_one = 1.0;
            let mut ud = unique_depth;
            // If this feature was split on higher up, undo that element and fold it in here,
            // so each feature appears once on the path.
            if let Some(k) = (1..=ud).find(|&k| path[k].feature == *feature as i64) {
                incoming_zero = path[k].zero_fraction;
                incoming_one = path[k].one_fraction;
                unwind_path(path, ud, k);
                ud -= 1;
            }
            let f = *feature as i64;
            recurse(
                tree,
                x,
                phi,
                hot,
                buf,
                start,
                ud + 1,
                hot_zero * incoming_zero,
                incoming_one,
                f,
            );
            recurse(
                tree,
                x,
                phi,
                cold,
                buf,
                start,
                ud + 1,
                cold_zero * incoming_zero,
                0.0,
                f,
            );
        }
    }
}

fn extend_path(path: &mut [PathElement], ud: usize, zero: f64, one: f64, feature: i64) {
    path[ud] = PathElement {
        feature,
        zero_fraction: zero,
        one_fraction: one,
        pweight: if ud == 0 { 1.0 } else { 0.0 },
    };
    let inv_d1 = RECIP[ud + 1];
    for i in (0..ud).rev() {
        path[i + 1].pweight += one * path[i].pweight * (i + 1) as f64 * inv_d1;
        path[i].pweight = zero * path[i].pweight * (ud - i) as f64 * inv_d1;
    }
}

fn unwind_path(path: &mut [PathElement], ud: usize, index: usize) {
    let one = path[index].one_fraction;
    let zero = path[index].zero_fraction;
    let d1 = (ud + 1) as f64;
    let inv_d1 = RECIP[ud + 1];
    let mut next_one = path[ud].pweight;
    if one != 0.0 {
        let inv_one = 1.0 / one;
        for i in (0..ud).rev() {
            let tmp = path[i].pweight;
            path[i].pweight = next_one * d1 * RECIP[i + 1] * inv_one;
            next_one = tmp - path[i].pweight * zero * (ud - i) as f64 * inv_d1;
        }
    } else {
        let inv_zero = 1.0 / zero;
        for i in (0..ud).rev() {
            path[i].pweight = path[i].pweight * d1 * inv_zero * RECIP[ud - i];
        }
    }
    for i in index..ud {
        path[i].feature = path[i + 1].feature;
        path[i].zero_fraction = path[i + 1].zero_fraction;
        path[i].one_fraction = path[i + 1].one_fraction;
    }
}

fn unwound_path_sum(path: &[PathElement], ud: usize, index: usize) -> f64 {
    let one = path[index].one_fraction;
    let zero = path[index].zero_fraction;
    let d1 = (ud + 1) as f64;
    let inv_d1 = RECIP[ud + 1];
    let mut total = 0.0;
    if one != 0.0 {
        let inv_one = 1.0 / one;
        let mut next_one = path[ud].pweight;
        for i in (0..ud).rev() {
            let tmp = next_one * d1 * RECIP[i + 1] * inv_one;
            total += tmp;
            next_one = path[i].pweight - tmp * zero * (ud - i) as f64 * inv_d1;
        }
    } else if zero != 0.0 {
        let inv_zero = 1.0 / zero;
        for i in (0..ud).rev() {
            total += path[i].pweight * inv_zero * d1 * RECIP[ud - i];
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gbdt::Rule;

    fn num(threshold: f64) -> Rule {
        Rule::Numeric {
            threshold,
            missing_left: true,
        }
    }

    /// A small tree that splits on feature 0 twice along one path, so unwinding is exercised.
    fn tiny_tree() -> Tree {
        let split = |feature, rule, left, right| Node::Split {
            feature,
            rule,
            left,
            right,
            cover: 0.0,
        };
        let leaf = |value, cover| Node::Leaf { value, cover };
        let mut nodes = vec![
            split(0, num(0.5), 1, 2), // 0
            split(1, num(1.0), 3, 4), // 1
            split(
                2,
                Rule::Categorical {
                    left: [0b100, 0, 0, 0],
                },
                5,
                6,
            ), // 2
            leaf(0.3, 10.0),          // 3
            split(0, num(0.2), 7, 8), // 4
            leaf(-0.7, 4.0),          // 5
            split(3, num(2.0), 9, 10), // 6
            leaf(1.1, 3.0),           // 7
            leaf(-0.4, 6.0),          // 8
            leaf(0.9, 2.5),           // 9
            leaf(-1.3, 7.5),          // 10
        ];
        for i in (0..nodes.len()).rev() {
            if let Node::Split { left, right, .. } = nodes[i] {
                let c = nodes[left as usize].cover() + nodes[right as usize].cover();
                if let Node::Split { cover, .. } = &mut nodes[i] {
                    *cover = c;
                }
            }
        }
        Tree { nodes }
    }

    /// The tree's expected output with the features in `set` fixed to `x`.
    fn value_of_subset(tree: &Tree, x: &[f64], set: u32, node: usize) -> f64 {
        match &tree.nodes[node] {
            Node::Leaf { value, .. } => *value,
            Node::Split {
                feature,
                rule,
                left,
                right,
                cover,
            } => {
                if set & (1 << feature) != 0 {
                    let next = if rule.goes_left(x[*feature as usize]) {
                        *left
                    } else {
                        *right
                    };
                    value_of_subset(tree, x, set, next as usize)
                } else {
                    let (l, r) = (*left as usize, *right as usize);
                    (tree.nodes[l].cover() * value_of_subset(tree, x, set, l)
                        + tree.nodes[r].cover() * value_of_subset(tree, x, set, r))
                        / cover
                }
            }
        }
    }

    fn brute_force(tree: &Tree, x: &[f64], m: usize) -> Vec<f64> {
        let fact = |n: usize| (1..=n).product::<usize>() as f64;
        let mut phi = vec![0.0; m];
        for (i, p) in phi.iter_mut().enumerate() {
            for set in 0u32..(1 << m) {
                if set & (1 << i) != 0 {
                    continue;
                }
                let s = set.count_ones() as usize;
                let w = fact(s) * fact(m - s - 1) / fact(m);
                *p += w
                    * (value_of_subset(tree, x, set | (1 << i), 0)
                        - value_of_subset(tree, x, set, 0));
            }
        }
        phi
    }

    #[test]
    fn tree_shap_matches_brute_force_shapley_values() {
        let tree = tiny_tree();
        let rows: [[f64; 4]; 6] = [
            [0.1, 0.5, 2.0, 1.0],
            [0.3, 1.5, 2.0, 3.0],
            [0.9, 0.0, 2.0, 3.0],
            [0.9, 0.0, 5.0, 1.0],
            [f64::NAN, 2.0, 0.0, 9.0],
            [0.15, 1.2, 1.0, 2.0],
        ];
        let mut buf = ShapBuffer::default();
        for x in &rows {
            let mut phi = vec![0.0; 4];
            tree_shap(&tree, x, &mut phi, &mut buf);
            let want = brute_force(&tree, x, 4);
            for (a, b) in phi.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-12,
                    "row {x:?}: treeshap {phi:?} vs brute force {want:?}"
                );
            }
            let sum: f64 = phi.iter().sum::<f64>() + tree.expected_value();
            assert!(
                (sum - tree.predict(x)).abs() < 1e-12,
                "row {x:?}: {sum} vs {}",
                tree.predict(x)
            );
        }
    }
}
