//! Drift scoring: how far a current profile has moved from its baseline.
//!
//! Pure: no IO, no clock. The formula, which docs/drift.md explains with worked examples:
//!
//! - Every difference is a [`Finding`] with a weight `w` in [0, 1], from the tables in
//!   [`weights`] (configuration and dependency changes) or from a ramp over the relative
//!   deviation of a metric (performance).
//! - A category's score is the noisy-OR of its findings' weights: `1 − Π(1 − wᵢ)`. It is 0 with
//!   no findings, never leaves [0, 1], and never falls when a finding is added or grows.
//! - `overall` is the noisy-OR of the three categories, `1 − (1 − c)(1 − p)(1 − d)`, which
//!   equals the noisy-OR of all findings.
//!
//! Products are taken in the order the findings are generated (which does not depend on their
//! weights), so that floating-point rounding cannot make a larger finding score lower.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use bellwether_model::profile::{DependencyStatus, Hardware, Network, OsInfo, WatchedFile};
use bellwether_model::{DriftCategory, DriftScore, Finding, HostProfile, Unit};

use crate::prepared::Digests;
use crate::version::{classify, ChangeLevel};

/// The weights of configuration and dependency findings. docs/drift.md lists them as a table.
pub mod weights {
    use crate::version::ChangeLevel;

    /// A package's version changed, by the size of the change. A downgrade weighs
    /// [`DOWNGRADE_FACTOR`] times as much (at most 1).
    pub fn package_change(level: ChangeLevel) -> f64 {
        match level {
            ChangeLevel::Major => 0.30,
            ChangeLevel::Minor => 0.12,
            ChangeLevel::Patch => 0.05,
            ChangeLevel::Revision => 0.02,
        }
    }
    pub const DOWNGRADE_FACTOR: f64 = 1.5;
    pub const PACKAGE_ADDED: f64 = 0.05;
    pub const PACKAGE_REMOVED: f64 = 0.08;

    /// The kernel release changed, by the size of the change.
    pub fn kernel_change(level: ChangeLevel) -> f64 {
        match level {
            ChangeLevel::Major => 0.60,
            ChangeLevel::Minor => 0.40,
            ChangeLevel::Patch => 0.20,
            ChangeLevel::Revision => 0.10,
        }
    }
    pub const OS_ID: f64 = 0.80;
    /// `VERSION_ID` changed, by the size of the change.
    pub fn os_version_change(level: ChangeLevel) -> f64 {
        match level {
            ChangeLevel::Major => 0.50,
            ChangeLevel::Minor => 0.30,
            ChangeLevel::Patch | ChangeLevel::Revision => 0.15,
        }
    }
    /// A part of the profile (packages, hardware, network, OS, kernel) is present on one side
    /// only, usually because a file could not be read.
    pub const PART_ABSENT: f64 = 0.10;

    pub const CPU_COUNT: f64 = 0.40;
    pub const CPU_MODEL: f64 = 0.30;
    /// Total memory: a ramp over `|Δ| / baseline` (dead band, span, cap).
    pub const MEMORY_RAMP: (f64, f64, f64) = (0.02, 0.50, 0.50);
    pub const DISK_ADDED: f64 = 0.20;
    pub const DISK_REMOVED: f64 = 0.40;

    pub const INTERFACE_ADDED: f64 = 0.10;
    pub const INTERFACE_REMOVED: f64 = 0.30;
    pub const INTERFACE_MAC: f64 = 0.20;
    pub const INTERFACE_MTU: f64 = 0.20;
    pub const INTERFACE_OPERSTATE: f64 = 0.30;
    pub const PORT_OPENED: f64 = 0.15;
    pub const PORT_CLOSED: f64 = 0.25;
    pub const HOSTS_ADDED: f64 = 0.10;
    pub const HOSTS_REMOVED: f64 = 0.10;
    pub const HOSTS_CHANGED: f64 = 0.20;

    /// A watched file's contents changed (its SHA-256 differs): as much as a major package
    /// upgrade, since a configuration file changes what the service does as surely.
    pub const FILE_CHANGED: f64 = 0.30;
    /// A watched file that was there is gone.
    pub const FILE_REMOVED: f64 = 0.40;
    /// A watched file that was absent appeared.
    pub const FILE_ADDED: f64 = 0.20;

    pub const DEPENDENCY_UNREACHABLE: f64 = 0.90;
    pub const DEPENDENCY_RECOVERED: f64 = 0.05;
    pub const DEPENDENCY_ENDPOINT: f64 = 0.30;
    pub const DEPENDENCY_ADDED: f64 = 0.10;
    pub const DEPENDENCY_REMOVED: f64 = 0.20;
    /// Connect latency: a ramp over `(current − baseline) / max(baseline, 1 ms)`; only increases
    /// count.
    pub const LATENCY_RAMP: (f64, f64, f64) = (0.50, 4.0, 0.60);
    pub const LATENCY_FLOOR_MS: f64 = 1.0;
    pub const RESOLVER_ADDED: f64 = 0.30;
    pub const RESOLVER_REMOVED: f64 = 0.40;
    pub const RESOLVER_ORDER: f64 = 0.10;
}

/// How a metric's deviation becomes a weight: `d = |current − baseline| / max(|baseline|, floor)`,
/// then `w = cap × min(1, max(0, d − dead) / span)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricScale {
    /// Below this baseline magnitude the deviation is measured against `floor` instead, so a
    /// baseline near zero does not turn noise into infinite relative change.
    pub floor: f64,
    /// Relative deviations up to this are noise and weigh nothing.
    pub dead: f64,
    /// How much relative deviation beyond the dead band reaches the cap.
    pub span: f64,
    /// The largest weight this metric can give.
    pub cap: f64,
}

/// The scale of a metric by name; unknown metrics get a cautious default.
pub fn metric_scale(name: &str) -> MetricScale {
    let s = |floor, dead, span, cap| MetricScale {
        floor,
        dead,
        span,
        cap,
    };
    match name {
        "load1" => s(1.0, 0.5, 3.0, 0.4),
        "load5" => s(1.0, 0.3, 2.0, 0.5),
        "load15" => s(1.0, 0.2, 2.0, 0.5),
        "memory_available_ratio" => s(0.1, 0.1, 0.8, 0.6),
        "swap_used_ratio" => s(0.1, 0.2, 2.0, 0.4),
        "cpu_busy_ratio" => s(0.1, 0.3, 2.0, 0.5),
        "cpu_iowait_ratio" => s(0.05, 0.5, 3.0, 0.4),
        n if n.starts_with("psi_") && n.ends_with("_avg10") => s(5.0, 0.5, 3.0, 0.4),
        n if n.starts_with("psi_") => s(5.0, 0.3, 2.0, 0.5),
        n if n.ends_with("_bytes_per_s") => s(1e6, 0.5, 5.0, 0.3),
        _ => s(1.0, 0.25, 3.0, 0.3),
    }
}

/// `cap × min(1, max(0, d − dead) / span)`: 0 inside the dead band, rising linearly, flat at cap.
pub fn ramp(d: f64, (dead, span, cap): (f64, f64, f64)) -> f64 {
    if !d.is_finite() {
        return if d == f64::INFINITY { cap } else { 0.0 };
    }
    cap * ((d - dead).max(0.0) / span).min(1.0)
}

/// The weight of a metric moving from `baseline` to `current`.
pub fn metric_weight(name: &str, baseline: f64, current: f64) -> f64 {
    if !baseline.is_finite() || !current.is_finite() {
        return 0.0;
    }
    let s = metric_scale(name);
    let d = (current - baseline).abs() / baseline.abs().max(s.floor);
    ramp(d, (s.dead, s.span, s.cap))
}

/// `1 − Π(1 − wᵢ)`, rounded to 12 decimals so that one finding of 0.02 scores 0.02 and not
/// 0.020000000000000018 (rounding is monotone, so the guarantees hold).
pub fn noisy_or(weights: impl IntoIterator<Item = f64>) -> f64 {
    let v = 1.0
        - weights
            .into_iter()
            .fold(1.0, |p, w| p * (1.0 - w.clamp(0.0, 1.0)));
    (v * 1e12).round() / 1e12
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriftError {
    #[error(
        "the baseline profile is of host {baseline:?} and the current one of host {current:?}"
    )]
    DifferentHosts { baseline: String, current: String },
}

/// As [`score`], but refuses profiles of different hostnames unless `force` is set. A profile
/// without a hostname matches any.
pub fn score_checked(
    baseline: &HostProfile,
    current: &HostProfile,
    force: bool,
) -> Result<DriftScore, DriftError> {
    check_hosts(baseline, current, force)?;
    Ok(score(baseline, current))
}

pub(crate) fn check_hosts(
    baseline: &HostProfile,
    current: &HostProfile,
    force: bool,
) -> Result<(), DriftError> {
    if let (Some(b), Some(c), false) = (&baseline.hostname, &current.hostname, force) {
        if !b.eq_ignore_ascii_case(c) {
            return Err(DriftError::DifferentHosts {
                baseline: b.clone(),
                current: c.clone(),
            });
        }
    }
    Ok(())
}

/// Scores how far `current` has drifted from `baseline`.
///
/// This walks both profiles whole. To score many hosts, prepare each profile once with
/// [`PreparedProfile::new`](crate::prepared::PreparedProfile::new) and use
/// [`score_prepared`](crate::prepared::score_prepared), which gives the same score.
pub fn score(baseline: &HostProfile, current: &HostProfile) -> DriftScore {
    score_with(baseline, current, None)
}

/// The scoring itself. With digests, parts whose digests match are skipped and packages are
/// compared through their indexes; the findings, and so the scores, are the same.
pub(crate) fn score_with(
    baseline: &HostProfile,
    current: &HostProfile,
    digests: Option<(&Digests, &Digests)>,
) -> DriftScore {
    let mut f = Findings::default();
    configuration(baseline, current, digests, &mut f);
    performance(&baseline.metrics, &current.metrics, &mut f);
    dependency(baseline, current, digests, &mut f);
    f.finish()
}

#[derive(Default)]
pub(crate) struct Findings {
    list: Vec<Finding>,
}

impl Findings {
    fn push(
        &mut self,
        category: DriftCategory,
        attribute: String,
        baseline: Option<String>,
        current: Option<String>,
        weight: f64,
    ) {
        if weight > 0.0 {
            self.list.push(Finding {
                category,
                attribute,
                baseline,
                current,
                weight: Unit::saturating(weight),
            });
        }
    }

    fn config(
        &mut self,
        attribute: impl Into<String>,
        baseline: Option<&str>,
        current: Option<&str>,
        weight: f64,
    ) {
        self.push(
            DriftCategory::Configuration,
            attribute.into(),
            baseline.map(str::to_owned),
            current.map(str::to_owned),
            weight,
        );
    }

    fn finish(mut self) -> DriftScore {
        let category = |c: DriftCategory| {
            noisy_or(
                self.list
                    .iter()
                    .filter(|f| f.category == c)
                    .map(|f| f.weight.get()),
            )
        };
        let (c, p, d) = (
            category(DriftCategory::Configuration),
            category(DriftCategory::Performance),
            category(DriftCategory::Dependency),
        );
        let overall = noisy_or([c, p, d]);
        self.list.sort_by(|a, b| {
            b.weight
                .partial_cmp(&a.weight)
                .unwrap_or(Ordering::Equal)
                .then_with(|| a.category.cmp(&b.category))
                .then_with(|| a.attribute.cmp(&b.attribute))
        });
        DriftScore {
            configuration: Unit::saturating(c),
            performance: Unit::saturating(p),
            dependency: Unit::saturating(d),
            overall: Unit::saturating(overall),
            findings: self.list,
        }
    }
}

/// A number as people read it: at most four decimals, no trailing zeros.
pub fn fmt_num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// Both present: compare; one present: a `PART_ABSENT` finding; neither: nothing.
fn both<'a, T>(
    f: &mut Findings,
    part: &str,
    b: Option<&'a T>,
    c: Option<&'a T>,
    summary: impl Fn(&T) -> String,
) -> Option<(&'a T, &'a T)> {
    match (b, c) {
        (Some(b), Some(c)) => Some((b, c)),
        (None, None) => None,
        (b, c) => {
            let (bs, cs) = (b.map(&summary), c.map(&summary));
            f.config(part, bs.as_deref(), cs.as_deref(), weights::PART_ABSENT);
            None
        }
    }
}

fn level(from: &str, to: &str) -> Option<(ChangeLevel, Ordering)> {
    if from == to {
        return None;
    }
    // Strings that differ but compare equal ("1.0" and "1.00") are the smallest change.
    Some(classify(from, to).unwrap_or((ChangeLevel::Revision, Ordering::Equal)))
}

fn configuration(
    b: &HostProfile,
    c: &HostProfile,
    digests: Option<(&Digests, &Digests)>,
    f: &mut Findings,
) {
    if let Some((bo, co)) = both(f, "os", b.os.as_ref(), c.os.as_ref(), os_summary) {
        if bo.id != co.id {
            f.config("os.id", Some(&bo.id), Some(&co.id), weights::OS_ID);
        } else if bo.version_id != co.version_id {
            let w = match (&bo.version_id, &co.version_id) {
                (Some(x), Some(y)) => {
                    level(x, y).map_or(0.0, |(l, _)| weights::os_version_change(l))
                }
                _ => weights::os_version_change(ChangeLevel::Major),
            };
            f.config(
                "os.version_id",
                bo.version_id.as_deref(),
                co.version_id.as_deref(),
                w,
            );
        }
    }
    if let Some((bk, ck)) = both(
        f,
        "kernel",
        b.kernel.as_ref(),
        c.kernel.as_ref(),
        String::clone,
    ) {
        if let Some((l, _)) = level(bk, ck) {
            f.config("kernel", Some(bk), Some(ck), weights::kernel_change(l));
        }
    }
    if let Some((bp, cp)) = both(
        f,
        "packages",
        b.packages.as_ref(),
        c.packages.as_ref(),
        |p| format!("{} packages", p.len()),
    ) {
        match digests.and_then(|(bd, cd)| Some((bd.packages.as_ref()?, cd.packages.as_ref()?))) {
            Some((bi, ci)) => crate::prepared::packages(bi, ci, bp, cp, f),
            None => packages(bp, cp, f),
        }
    }
    // Equal parts (the common case) are skipped before any per-item work; equal digests say
    // they are equal without reading them.
    let same = |part: fn(&Digests) -> Option<u128>| {
        digests.is_some_and(|(bd, cd)| part(bd).is_some() && part(bd) == part(cd))
    };
    if let Some((bh, ch)) = both(
        f,
        "hardware",
        b.hardware.as_ref(),
        c.hardware.as_ref(),
        |_| "present".to_owned(),
    ) {
        if !same(|d| d.hardware) && bh != ch {
            hardware(bh, ch, f);
        }
    }
    if let Some((bn, cn)) = both(f, "network", b.network.as_ref(), c.network.as_ref(), |_| {
        "present".to_owned()
    }) {
        if !same(|d| d.network) && bn != cn {
            network(bn, cn, f);
        }
    }
    if b.files != c.files {
        files(&b.files, &c.files, f);
    }
}

/// `file:PATH` findings. A file watched on one side only is not compared: a change of the
/// watch list is not drift of the host (and a baseline from before files were watched must
/// not make every watched file look new).
fn files(b: &BTreeMap<String, WatchedFile>, c: &BTreeMap<String, WatchedFile>, f: &mut Findings) {
    merge(b, c, |path, x, y| {
        let (Some(x), Some(y)) = (x, y) else { return };
        let w = match (&x.sha256, &y.sha256) {
            (Some(h1), Some(h2)) if h1 != h2 => weights::FILE_CHANGED,
            (Some(_), None) => weights::FILE_REMOVED,
            (None, Some(_)) => weights::FILE_ADDED,
            _ => 0.0,
        };
        if w > 0.0 {
            f.config(
                format!("file:{path}"),
                Some(&x.summary()),
                Some(&y.summary()),
                w,
            );
        }
    });
}

fn os_summary(o: &OsInfo) -> String {
    match &o.version_id {
        Some(v) => format!("{} {v}", o.id),
        None => o.id.clone(),
    }
}

/// Walks two sorted maps together, calling `each(key, baseline, current)` for every key that
/// differs.
fn merge<'a, V: PartialEq>(
    b: &'a BTreeMap<String, V>,
    c: &'a BTreeMap<String, V>,
    mut each: impl FnMut(&'a str, Option<&'a V>, Option<&'a V>),
) {
    let (mut bi, mut ci) = (b.iter().peekable(), c.iter().peekable());
    loop {
        match (bi.peek(), ci.peek()) {
            (None, None) => break,
            (Some((bk, bv)), Some((ck, cv))) => match bk.as_str().cmp(ck.as_str()) {
                Ordering::Equal => {
                    if bv != cv {
                        each(bk, Some(bv), Some(cv));
                    }
                    bi.next();
                    ci.next();
                }
                Ordering::Less => {
                    each(bk, Some(bv), None);
                    bi.next();
                }
                Ordering::Greater => {
                    each(ck, None, Some(cv));
                    ci.next();
                }
            },
            (Some((bk, bv)), None) => {
                each(bk, Some(bv), None);
                bi.next();
            }
            (None, Some((ck, cv))) => {
                each(ck, None, Some(cv));
                ci.next();
            }
        }
    }
}

pub(crate) fn packages(
    b: &BTreeMap<String, String>,
    c: &BTreeMap<String, String>,
    f: &mut Findings,
) {
    // Fast path for the common case: the same package names, a few versions changed. A lockstep
    // walk costs one comparison of names and one of versions per package; on the first name
    // that differs, undo and take the general merge.
    if b.len() == c.len() {
        let start = f.list.len();
        let mut same_names = true;
        for ((bk, bv), (ck, cv)) in b.iter().zip(c.iter()) {
            if bk != ck {
                same_names = false;
                break;
            }
            if bv != cv {
                package_finding(f, bk, Some(bv.as_str()), Some(cv.as_str()));
            }
        }
        if same_names {
            return;
        }
        f.list.truncate(start);
    }
    merge(b, c, |name, bv, cv| {
        package_finding(f, name, bv.map(String::as_str), cv.map(String::as_str))
    });
}

pub(crate) fn package_finding(f: &mut Findings, name: &str, bv: Option<&str>, cv: Option<&str>) {
    let w = match (bv, cv) {
        (Some(x), Some(y)) => match level(x, y) {
            Some((l, Ordering::Less)) => {
                (weights::package_change(l) * weights::DOWNGRADE_FACTOR).min(1.0)
            }
            Some((l, _)) => weights::package_change(l),
            None => 0.0,
        },
        (None, Some(_)) => weights::PACKAGE_ADDED,
        (Some(_), None) => weights::PACKAGE_REMOVED,
        (None, None) => 0.0,
    };
    f.config(format!("package:{name}"), bv, cv, w);
}

fn hardware(b: &Hardware, c: &Hardware, f: &mut Findings) {
    if b.cpu_count != c.cpu_count {
        let s = |v: Option<u32>| v.map(|n| n.to_string());
        f.config(
            "hardware.cpu_count",
            s(b.cpu_count).as_deref(),
            s(c.cpu_count).as_deref(),
            weights::CPU_COUNT,
        );
    }
    if b.cpu_model != c.cpu_model {
        f.config(
            "hardware.cpu_model",
            b.cpu_model.as_deref(),
            c.cpu_model.as_deref(),
            weights::CPU_MODEL,
        );
    }
    if b.memory_total_kb != c.memory_total_kb {
        let w = match (b.memory_total_kb, c.memory_total_kb) {
            (Some(x), Some(y)) => ramp(
                x.abs_diff(y) as f64 / (x.max(1)) as f64,
                weights::MEMORY_RAMP,
            ),
            _ => weights::PART_ABSENT,
        };
        let s = |v: Option<u64>| v.map(|n| n.to_string());
        f.config(
            "hardware.memory_total_kb",
            s(b.memory_total_kb).as_deref(),
            s(c.memory_total_kb).as_deref(),
            w,
        );
    }
    set_diff(&b.disks, &c.disks, |d, added| {
        let (bv, cv, w) = if added {
            (None, Some("present"), weights::DISK_ADDED)
        } else {
            (Some("present"), None, weights::DISK_REMOVED)
        };
        f.config(format!("hardware.disk:{d}"), bv, cv, w);
    });
}

/// Calls `each(item, added)` for every item in one list and not the other, in sorted order.
fn set_diff<'a>(b: &'a [String], c: &'a [String], mut each: impl FnMut(&'a str, bool)) {
    let bs: BTreeSet<&str> = b.iter().map(String::as_str).collect();
    let cs: BTreeSet<&str> = c.iter().map(String::as_str).collect();
    for x in bs.difference(&cs) {
        each(x, false);
    }
    for x in cs.difference(&bs) {
        each(x, true);
    }
}

fn network(b: &Network, c: &Network, f: &mut Findings) {
    let bi: BTreeMap<String, _> = b.interfaces.iter().map(|i| (i.name.clone(), i)).collect();
    let ci: BTreeMap<String, _> = c.interfaces.iter().map(|i| (i.name.clone(), i)).collect();
    merge(&bi, &ci, |name, x, y| match (x, y) {
        (Some(x), Some(y)) => {
            let attr = |what: &str| format!("network.interface:{name}.{what}");
            if x.mac != y.mac {
                f.config(
                    attr("mac"),
                    x.mac.as_deref(),
                    y.mac.as_deref(),
                    weights::INTERFACE_MAC,
                );
            }
            if x.mtu != y.mtu {
                let s = |v: Option<u32>| v.map(|n| n.to_string());
                f.config(
                    attr("mtu"),
                    s(x.mtu).as_deref(),
                    s(y.mtu).as_deref(),
                    weights::INTERFACE_MTU,
                );
            }
            if x.operstate != y.operstate {
                f.config(
                    attr("operstate"),
                    x.operstate.as_deref(),
                    y.operstate.as_deref(),
                    weights::INTERFACE_OPERSTATE,
                );
            }
        }
        (None, Some(_)) => f.config(
            format!("network.interface:{name}"),
            None,
            Some("present"),
            weights::INTERFACE_ADDED,
        ),
        (Some(_), None) => f.config(
            format!("network.interface:{name}"),
            Some("present"),
            None,
            weights::INTERFACE_REMOVED,
        ),
        (None, None) => {}
    });
    set_diff(&b.listening, &c.listening, |addr, opened| {
        let (bv, cv, w) = if opened {
            (None, Some("listening"), weights::PORT_OPENED)
        } else {
            (Some("listening"), None, weights::PORT_CLOSED)
        };
        f.config(format!("network.listening:{addr}"), bv, cv, w);
    });
    merge(&b.hosts, &c.hosts, |name, x, y| {
        let w = match (x, y) {
            (Some(_), Some(_)) => weights::HOSTS_CHANGED,
            (None, _) => weights::HOSTS_ADDED,
            (_, None) => weights::HOSTS_REMOVED,
        };
        f.config(
            format!("network.hosts:{name}"),
            x.map(String::as_str),
            y.map(String::as_str),
            w,
        );
    });
}

fn performance(b: &BTreeMap<String, f64>, c: &BTreeMap<String, f64>, f: &mut Findings) {
    // A metric missing on either side is not compared: no data is not drift.
    merge(b, c, |name, x, y| {
        if let (Some(&x), Some(&y)) = (x, y) {
            let w = metric_weight(name, x, y);
            // Most metrics move inside their dead band: format only the ones that count.
            if w > 0.0 {
                f.push(
                    DriftCategory::Performance,
                    format!("metric:{name}"),
                    Some(fmt_num(x)),
                    Some(fmt_num(y)),
                    w,
                );
            }
        }
    });
}

fn dep_state(d: &DependencyStatus) -> String {
    match (d.reachable, d.latency_ms) {
        (true, Some(ms)) => format!("reachable ({} ms)", fmt_num(ms)),
        (true, None) => "reachable".to_owned(),
        (false, _) => "unreachable".to_owned(),
    }
}

fn dependency(
    b: &HostProfile,
    c: &HostProfile,
    digests: Option<(&Digests, &Digests)>,
    f: &mut Findings,
) {
    let dep = |f: &mut Findings, attr: String, x: Option<String>, y: Option<String>, w: f64| {
        f.push(DriftCategory::Dependency, attr, x, y, w)
    };
    if b.dependencies != c.dependencies {
        dependencies(&b.dependencies, &c.dependencies, f, dep);
    }
    // Equal network digests mean equal resolvers.
    let same_network =
        digests.is_some_and(|(bd, cd)| bd.network.is_some() && bd.network == cd.network);
    if let (Some(bn), Some(cn), false) = (&b.network, &c.network, same_network) {
        let (br, cr) = (&bn.dns_resolvers, &cn.dns_resolvers);
        if br != cr {
            let before = br.len();
            let mut any = false;
            set_diff(br, cr, |r, added| {
                any = true;
                let (x, y, w) = if added {
                    (None, Some("resolver"), weights::RESOLVER_ADDED)
                } else {
                    (Some("resolver"), None, weights::RESOLVER_REMOVED)
                };
                dep(
                    f,
                    format!("dns.resolver:{r}"),
                    x.map(str::to_owned),
                    y.map(str::to_owned),
                    w,
                );
            });
            if !any && before > 0 {
                dep(
                    f,
                    "dns.resolvers".to_owned(),
                    Some(br.join(" ")),
                    Some(cr.join(" ")),
                    weights::RESOLVER_ORDER,
                );
            }
        }
    }
}

type DepPush = fn(&mut Findings, String, Option<String>, Option<String>, f64);

fn dependencies(b: &[DependencyStatus], c: &[DependencyStatus], f: &mut Findings, dep: DepPush) {
    let bd: BTreeMap<String, &DependencyStatus> = b.iter().map(|d| (d.name.clone(), d)).collect();
    let cd: BTreeMap<String, &DependencyStatus> = c.iter().map(|d| (d.name.clone(), d)).collect();
    merge(&bd, &cd, |name, x, y| match (x, y) {
        (Some(x), Some(y)) => {
            if x.endpoint != y.endpoint {
                dep(
                    f,
                    format!("dependency:{name}.endpoint"),
                    Some(x.endpoint.clone()),
                    Some(y.endpoint.clone()),
                    weights::DEPENDENCY_ENDPOINT,
                );
            }
            match (x.reachable, y.reachable) {
                (true, false) => dep(
                    f,
                    format!("dependency:{name}"),
                    Some(dep_state(x)),
                    Some(dep_state(y)),
                    weights::DEPENDENCY_UNREACHABLE,
                ),
                (false, true) => dep(
                    f,
                    format!("dependency:{name}"),
                    Some(dep_state(x)),
                    Some(dep_state(y)),
                    weights::DEPENDENCY_RECOVERED,
                ),
                (true, true) => {
                    if let (Some(bl), Some(cl)) = (x.latency_ms, y.latency_ms) {
                        if bl.is_finite() && cl.is_finite() && cl > bl {
                            let rel = (cl - bl) / bl.max(weights::LATENCY_FLOOR_MS);
                            let w = ramp(rel, weights::LATENCY_RAMP);
                            dep(
                                f,
                                format!("dependency:{name}.latency_ms"),
                                Some(fmt_num(bl)),
                                Some(fmt_num(cl)),
                                w,
                            );
                        }
                    }
                }
                (false, false) => {}
            }
        }
        (None, Some(y)) => {
            let w = if y.reachable {
                weights::DEPENDENCY_ADDED
            } else {
                weights::DEPENDENCY_UNREACHABLE
            };
            dep(f, format!("dependency:{name}"), None, Some(dep_state(y)), w);
        }
        (Some(x), None) => dep(
            f,
            format!("dependency:{name}"),
            Some(dep_state(x)),
            None,
            weights::DEPENDENCY_REMOVED,
        ),
        (None, None) => {}
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{profile_of, Drift, HostSpec};
    use bellwether_model::profile::DependencyStatus;
    use proptest::prelude::*;

    fn base() -> HostProfile {
        profile_of(&HostSpec::generate(1, "web-1", 200))
    }

    fn find<'a>(s: &'a DriftScore, attr: &str) -> &'a Finding {
        s.findings
            .iter()
            .find(|f| f.attribute == attr)
            .unwrap_or_else(|| panic!("no finding {attr} in {:#?}", s.findings))
    }

    #[test]
    fn identical_profiles_score_zero() {
        let p = base();
        let s = score(&p, &p);
        assert_eq!(s, DriftScore::default());
        let empty = HostProfile::default();
        assert_eq!(score(&empty, &empty), DriftScore::default());
    }

    #[test]
    fn major_version_change_weighs_more_than_minor_than_patch() {
        let spec = HostSpec::generate(1, "web-1", 200);
        let name = spec.packages.keys().nth(3).unwrap().clone();
        let b = profile_of(&spec);
        let mut w = Vec::new();
        for level in [
            ChangeLevel::Revision,
            ChangeLevel::Patch,
            ChangeLevel::Minor,
            ChangeLevel::Major,
        ] {
            let mut s2 = spec.clone();
            s2.apply(&Drift::UpgradePackage {
                name: name.clone(),
                level,
            });
            let s = score(&b, &profile_of(&s2));
            assert_eq!(s.findings.len(), 1, "{:#?}", s.findings);
            let f = find(&s, &format!("package:{name}"));
            assert_eq!(f.weight.get(), weights::package_change(level));
            assert_eq!(s.configuration, f.weight);
            assert_eq!(s.overall, f.weight);
            w.push(f.weight.get());
        }
        assert!(w.windows(2).all(|p| p[0] < p[1]), "{w:?}");
    }

    #[test]
    fn same_count_of_different_packages_takes_the_general_path() {
        let pk = |v: &[(&str, &str)]| {
            Some(
                v.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let b = HostProfile {
            packages: pk(&[("a", "1.0"), ("b", "1.0"), ("d", "1.0")]),
            ..HostProfile::default()
        };
        let c = HostProfile {
            packages: pk(&[("a", "2.0"), ("c", "1.0"), ("d", "1.0")]),
            ..HostProfile::default()
        };
        let s = score(&b, &c);
        let attrs: Vec<&str> = s.findings.iter().map(|f| f.attribute.as_str()).collect();
        assert_eq!(attrs, vec!["package:a", "package:b", "package:c"]);
        assert_eq!(s.findings[1].weight.get(), weights::PACKAGE_REMOVED);
        assert_eq!(s.findings[2].weight.get(), weights::PACKAGE_ADDED);
    }

    #[test]
    fn downgrades_weigh_more_than_upgrades() {
        let b = HostProfile {
            packages: Some(BTreeMap::from([(
                "openssl".to_owned(),
                "3.0.11-1".to_owned(),
            )])),
            ..HostProfile::default()
        };
        let mut c = b.clone();
        c.packages
            .as_mut()
            .unwrap()
            .insert("openssl".into(), "3.0.10-1".into());
        let s = score(&b, &c);
        assert!((s.configuration.get() - 0.075).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn categories_combine_by_noisy_or() {
        let spec = HostSpec::generate(2, "db-1", 100);
        let b = profile_of(&spec);
        let mut s2 = spec.clone();
        s2.apply(&Drift::Kernel("6.5.0-1-amd64".into()));
        s2.apply(&Drift::Load([
            spec.load[0] + 20.0,
            spec.load[1] + 20.0,
            spec.load[2] + 20.0,
        ]));
        s2.apply(&Drift::Resolvers(vec!["192.0.2.53".into()]));
        let s = score(&b, &profile_of(&s2));
        assert!(
            s.configuration.get() > 0.0 && s.performance.get() > 0.0 && s.dependency.get() > 0.0,
            "{s:#?}"
        );
        let want = 1.0
            - (1.0 - s.configuration.get())
                * (1.0 - s.performance.get())
                * (1.0 - s.dependency.get());
        assert!((s.overall.get() - want).abs() < 1e-12);
        let all = noisy_or(s.findings.iter().map(|f| f.weight.get()));
        assert!((s.overall.get() - all).abs() < 1e-9);
        assert!(s.findings.windows(2).all(|w| w[0].weight >= w[1].weight));
        // Two resolvers removed (0.4 each) and one added (0.3).
        assert!(
            (s.dependency.get() - (1.0 - 0.6 * 0.6 * 0.7)).abs() < 1e-12,
            "{s:#?}"
        );
    }

    #[test]
    fn metric_mapping_has_a_dead_band_and_a_cap() {
        assert_eq!(metric_weight("load5", 1.0, 1.2), 0.0);
        assert!((metric_weight("load5", 2.0, 6.0) - 0.5 * (2.0 - 0.3) / 2.0).abs() < 1e-12);
        assert_eq!(metric_weight("load5", 1.0, 100.0), 0.5);
        assert_eq!(metric_weight("psi_io_some_avg10", 0.0, 1.0), 0.0);
        assert!(metric_weight("psi_io_some_avg10", 0.0, 20.0) > 0.0);
        assert_eq!(metric_weight("x", f64::NAN, 1.0), 0.0);
    }

    #[test]
    fn dependency_drift() {
        let st = |name: &str, reachable: bool, ms: Option<f64>| DependencyStatus {
            name: name.into(),
            endpoint: "10.0.0.1:5432".into(),
            reachable,
            latency_ms: ms,
        };
        let b = HostProfile {
            dependencies: vec![
                st("db", true, Some(2.0)),
                st("cache", true, Some(0.5)),
                st("old", true, Some(1.0)),
            ],
            ..HostProfile::default()
        };
        let c = HostProfile {
            dependencies: vec![
                st("db", false, None),
                st("cache", true, Some(10.0)),
                st("new", true, Some(1.0)),
            ],
            ..HostProfile::default()
        };
        let s = score(&b, &c);
        assert_eq!(
            find(&s, "dependency:db").weight.get(),
            weights::DEPENDENCY_UNREACHABLE
        );
        assert_eq!(
            find(&s, "dependency:db").current.as_deref(),
            Some("unreachable")
        );
        // (10 − 0.5) / max(0.5, 1) = 9.5, beyond the ramp: the cap.
        assert_eq!(find(&s, "dependency:cache.latency_ms").weight.get(), 0.6);
        assert_eq!(
            find(&s, "dependency:old").weight.get(),
            weights::DEPENDENCY_REMOVED
        );
        assert_eq!(
            find(&s, "dependency:new").weight.get(),
            weights::DEPENDENCY_ADDED
        );
        assert_eq!(s.findings[0].attribute, "dependency:db");
        // Faster is not drift.
        let s2 = score(&c, &b);
        assert!(s2
            .findings
            .iter()
            .all(|f| f.attribute != "dependency:cache.latency_ms"));
    }

    #[test]
    fn absent_parts_give_a_small_finding() {
        let b = base();
        let mut c = b.clone();
        c.packages = None;
        let s = score(&b, &c);
        assert_eq!(s.findings.len(), 1);
        assert_eq!(s.findings[0].attribute, "packages");
        assert_eq!(s.findings[0].current, None);
        assert_eq!(s.findings[0].weight.get(), weights::PART_ABSENT);
    }

    #[test]
    fn watched_files_drift_by_hash_and_only_when_watched_on_both_sides() {
        let file = |text: Option<&str>| WatchedFile {
            sha256: text.map(|t| crate::root::sha256_hex(t.as_bytes())),
            size: text.map(|t| t.len() as u64),
        };
        let mut b = base();
        b.files
            .insert("etc/websvc.conf".into(), file(Some("workers = 4\n")));
        b.files.insert("etc/gone.conf".into(), file(Some("x\n")));
        b.files.insert("etc/new.conf".into(), file(None));
        b.files.insert("etc/same.conf".into(), file(Some("same\n")));
        let mut c = b.clone();
        c.files
            .insert("etc/websvc.conf".into(), file(Some("workers = 0\n")));
        c.files.insert("etc/gone.conf".into(), file(None));
        c.files.insert("etc/new.conf".into(), file(Some("y\n")));
        // Watched now but not in the baseline: not compared.
        c.files.insert("etc/later.conf".into(), file(Some("z\n")));
        let s = score(&b, &c);
        let attrs: Vec<&str> = s.findings.iter().map(|f| f.attribute.as_str()).collect();
        assert_eq!(
            attrs,
            vec![
                "file:etc/gone.conf",
                "file:etc/websvc.conf",
                "file:etc/new.conf"
            ]
        );
        let conf = find(&s, "file:etc/websvc.conf");
        assert_eq!(conf.category, DriftCategory::Configuration);
        assert_eq!(conf.weight.get(), weights::FILE_CHANGED);
        assert_eq!(
            conf.baseline.as_deref(),
            Some(
                format!(
                    "12 bytes, sha256 {}…",
                    &file(Some("workers = 4\n")).sha256.unwrap()[..12]
                )
                .as_str()
            )
        );
        assert_eq!(
            find(&s, "file:etc/gone.conf").current.as_deref(),
            Some("absent")
        );
        assert_eq!(
            find(&s, "file:etc/gone.conf").weight.get(),
            weights::FILE_REMOVED
        );
        assert_eq!(
            find(&s, "file:etc/new.conf").weight.get(),
            weights::FILE_ADDED
        );
        // A baseline from before files were watched: no file findings at all.
        let old = base();
        assert_eq!(
            score(&old, &c).findings.len(),
            score(&old, &base()).findings.len()
        );
    }

    #[test]
    fn different_hosts_are_refused_unless_forced() {
        let b = base();
        let mut c = b.clone();
        c.hostname = Some("web-2".into());
        let err = score_checked(&b, &c, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the baseline profile is of host \"web-1\" and the current one of host \"web-2\""
        );
        assert!(score_checked(&b, &c, true).is_ok());
        c.hostname = None;
        assert!(score_checked(&b, &c, false).is_ok());
    }

    /// The worked examples of docs/drift.md, so the document cannot drift from the code.
    #[test]
    fn worked_examples_of_the_docs() {
        let pk = |v: &[(&str, &str)]| {
            Some(
                v.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let close = |a: Unit, b: f64| assert!((a.get() - b).abs() < 5e-4, "{} != {b}", a.get());
        // 1.
        let b = HostProfile {
            packages: pk(&[("openssl", "3.0.11-1")]),
            ..HostProfile::default()
        };
        let c = HostProfile {
            packages: pk(&[("openssl", "3.0.13-1")]),
            ..HostProfile::default()
        };
        close(score(&b, &c).overall, 0.05);
        // 2.
        let names: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
        let b = HostProfile {
            packages: Some(
                names
                    .iter()
                    .map(|n| (n.clone(), "1.2.3-1".to_owned()))
                    .collect(),
            ),
            ..HostProfile::default()
        };
        let c = HostProfile {
            packages: Some(
                names
                    .iter()
                    .map(|n| (n.clone(), "1.2.3-1+deb12u1".to_owned()))
                    .collect(),
            ),
            ..HostProfile::default()
        };
        close(score(&b, &c).configuration, 0.183);
        // 3 and 5.
        let mut b = HostProfile {
            kernel: Some("6.1.0-18-amd64".into()),
            packages: pk(&[("a", "1.0.0-1"), ("b", "2.1.3-1"), ("c", "0.9.1")]),
            ..HostProfile::default()
        };
        let mut c = HostProfile {
            kernel: Some("6.1.0-20-amd64".into()),
            packages: pk(&[("a", "1.0.1-1"), ("b", "2.1.4-1"), ("c", "0.9.2")]),
            ..HostProfile::default()
        };
        close(score(&b, &c).configuration, 0.314);
        let db = |reachable: bool| DependencyStatus {
            name: "db".into(),
            endpoint: "h:1".into(),
            reachable,
            latency_ms: reachable.then_some(1.0),
        };
        b.dependencies = vec![db(true)];
        c.dependencies = vec![db(false)];
        let s = score(&b, &c);
        close(s.dependency, 0.9);
        close(s.overall, 0.931);
        // 4.
        let m = |l: f64, r: f64| HostProfile {
            metrics: BTreeMap::from([
                ("load5".to_owned(), l),
                ("memory_available_ratio".to_owned(), r),
            ]),
            ..HostProfile::default()
        };
        let s = score(&m(2.0, 0.5), &m(6.0, 0.2));
        close(find(&s, "metric:load5").weight, 0.425);
        close(find(&s, "metric:memory_available_ratio").weight, 0.375);
        close(s.performance, 0.641);
        // 6.
        let lat = |ms: f64| HostProfile {
            dependencies: vec![DependencyStatus {
                name: "db".into(),
                endpoint: "h:1".into(),
                reachable: true,
                latency_ms: Some(ms),
            }],
            ..HostProfile::default()
        };
        close(score(&lat(2.0), &lat(6.0)).dependency, 0.225);
        // 8.
        let conf = |text: &str, packages| HostProfile {
            packages,
            files: BTreeMap::from([(
                "etc/websvc.conf".to_owned(),
                WatchedFile {
                    sha256: Some(crate::root::sha256_hex(text.as_bytes())),
                    size: Some(text.len() as u64),
                },
            )]),
            ..HostProfile::default()
        };
        let b = conf(
            "workers = 4\nlisten = 127.0.0.1\n",
            pk(&[("openssl", "3.0.11-1")]),
        );
        let c = conf(
            "workers = 0\nlisten = 127.0.0.1\n",
            pk(&[("openssl", "3.0.13-1")]),
        );
        let s = score(&b, &c);
        close(find(&s, "file:etc/websvc.conf").weight, 0.30);
        close(s.configuration, 0.335);
        close(s.overall, 0.335);
    }

    fn arb_profile() -> impl Strategy<Value = HostProfile> {
        (
            0u64..1000,
            prop::collection::btree_map(
                "[a-f]{1,3}",
                "[0-9]{1,2}(\\.[0-9]{1,2}){0,2}(-[0-9])?",
                0..8,
            ),
            prop::collection::btree_map(
                prop_oneof![
                    Just("load1"),
                    Just("load5"),
                    Just("psi_io_some_avg10"),
                    Just("zz")
                ],
                0.0f64..50.0,
                0..4,
            ),
            prop::collection::vec(
                ("[a-c]", any::<bool>(), prop::option::of(0.0f64..100.0)),
                0..3,
            ),
            prop::collection::btree_map(
                "etc/[a-d]\\.conf",
                prop::option::of("[0-9a-f]{1,2}"),
                0..4,
            ),
        )
            .prop_map(|(seed, pk, metrics, deps, files)| {
                let mut p = profile_of(&HostSpec::generate(seed % 4, "h", 10));
                p.packages.as_mut().unwrap().extend(pk);
                p.metrics
                    .extend(metrics.into_iter().map(|(k, v)| (k.to_owned(), v)));
                let mut seen = BTreeSet::new();
                p.dependencies = deps
                    .into_iter()
                    .filter(|(n, _, _)| seen.insert(n.clone()))
                    .map(|(name, reachable, ms)| DependencyStatus {
                        name,
                        endpoint: "h:1".into(),
                        reachable,
                        latency_ms: ms.filter(|_| reachable),
                    })
                    .collect();
                p.files = files
                    .into_iter()
                    .map(|(path, hash)| {
                        let size = hash.as_ref().map(|h| h.len() as u64);
                        (path, WatchedFile { sha256: hash, size })
                    })
                    .collect();
                p
            })
    }

    fn all(s: &DriftScore) -> [f64; 4] {
        [
            s.configuration.get(),
            s.performance.get(),
            s.dependency.get(),
            s.overall.get(),
        ]
    }

    proptest! {
        #[test]
        fn scores_stay_in_range_and_identity_is_zero(b in arb_profile(), c in arb_profile()) {
            let s = score(&b, &c);
            for v in all(&s) {
                prop_assert!((0.0..=1.0).contains(&v));
            }
            prop_assert_eq!(score(&b, &b), DriftScore::default());
            prop_assert_eq!(score(&c, &c), DriftScore::default());
        }

        #[test]
        fn adding_a_finding_never_lowers_a_score(b in arb_profile(), c in arb_profile(), extra in "[g-k]{1,4}", port in 1u16..9, metric in 0.0f64..1e6) {
            let s0 = score(&b, &c);
            let mut c1 = c.clone();
            c1.packages.as_mut().unwrap().insert(extra, "1.0".into());
            c1.network.as_mut().unwrap().listening.push(format!("10.9.9.9:{port}"));
            c1.kernel = Some("99.0".into());
            // A watched file on both sides whose contents differ.
            c1.files.insert("var/zz.conf".into(), WatchedFile { sha256: Some("ff".into()), size: Some(1) });
            let mut b1 = b.clone();
            b1.files.insert("var/zz.conf".into(), WatchedFile { sha256: Some("00".into()), size: Some(1) });
            b1.metrics.insert("only_in_both".into(), 1.0);
            c1.metrics.insert("only_in_both".into(), metric);
            let s1 = score(&b1, &c1);
            for (x, y) in all(&s0).iter().zip(all(&s1)) {
                prop_assert!(y >= *x, "{:?} -> {:?}", all(&s0), all(&s1));
            }
        }

        #[test]
        fn enlarging_a_finding_never_lowers_a_score(b in arb_profile(), c in arb_profile(), k in "[a-z]{1,3}", m0 in 0.0f64..100.0, d1 in 0.0f64..100.0, d2 in 0.0f64..100.0, l0 in 0.0f64..50.0) {
            // A metric moving further, and a dependency getting slower.
            let mut b = b;
            b.metrics.insert(format!("m_{k}"), m0);
            b.dependencies.retain(|d| d.name != "zdep");
            b.dependencies.push(DependencyStatus { name: "zdep".into(), endpoint: "h:1".into(), reachable: true, latency_ms: Some(l0) });
            let mut c = c;
            c.dependencies.retain(|d| d.name != "zdep");
            let with = |dev: f64, lat: f64| {
                let mut c = c.clone();
                c.metrics.insert(format!("m_{k}"), m0 + dev);
                c.dependencies.push(DependencyStatus { name: "zdep".into(), endpoint: "h:1".into(), reachable: true, latency_ms: Some(l0 + lat) });
                score(&b, &c)
            };
            let small = with(d1, d1);
            let large = with(d1 + d2, d1 + d2);
            for (x, y) in all(&small).iter().zip(all(&large)) {
                prop_assert!(y >= *x, "{:?} -> {:?}", all(&small), all(&large));
            }
        }

        #[test]
        fn noisy_or_is_monotone(ws in prop::collection::vec(0.0f64..=1.0, 0..20), i in 0usize..20, more in 0.0f64..=1.0) {
            let base = noisy_or(ws.iter().copied());
            prop_assert!((0.0..=1.0).contains(&base));
            let mut grown = ws.clone();
            if let Some(w) = grown.get_mut(i) {
                *w = (*w + more).min(1.0);
            }
            prop_assert!(noisy_or(grown.iter().copied()) >= base);
            let mut added = ws.clone();
            added.push(more);
            prop_assert!(noisy_or(added) >= base);
        }
    }
}
