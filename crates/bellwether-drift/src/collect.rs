//! Host-profile collection from a host root (`/` or a mounted root, as node_exporter's
//! `--path.rootfs`).
//!
//! Collection never aborts and never panics: each file that is missing, unreadable or
//! unparseable leaves its part of the profile absent and adds a note naming the file. It reads
//! only the files listed in docs/drift.md, once each, so that it stays cheap enough to run every
//! few seconds on every host.
//!
//! The metric keys are a contract that other crates rely on; see [`metric`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bellwether_model::profile::{Hardware, Interface, Network, OsInfo, WatchedFile};
use bellwether_model::HostProfile;

use crate::deps::{probe_all, Dependency};
use crate::root::{FsRoot, Root};

/// The metric keys that collection fills in. Every key is a gauge; ratios are in [0, 1] and
/// pressure values are percentages in [0, 100], as the kernel prints them.
pub mod metric {
    /// `proc/loadavg`, the 1, 5 and 15 minute load averages.
    pub const LOAD1: &str = "load1";
    pub const LOAD5: &str = "load5";
    pub const LOAD15: &str = "load15";
    /// `MemAvailable / MemTotal` from `proc/meminfo`.
    pub const MEMORY_AVAILABLE_RATIO: &str = "memory_available_ratio";
    /// `1 - SwapFree / SwapTotal`, only when the host has swap.
    pub const SWAP_USED_RATIO: &str = "swap_used_ratio";
    /// Pressure stall information: `psi_<cpu|memory|io>_<some|full>_<avg10|avg60>`, such as
    /// `psi_cpu_some_avg10`. `full` keys appear only where the kernel prints a `full` line.
    pub const PSI_CPU_SOME_AVG10: &str = "psi_cpu_some_avg10";
    pub const PSI_MEMORY_SOME_AVG10: &str = "psi_memory_some_avg10";
    pub const PSI_IO_SOME_AVG10: &str = "psi_io_some_avg10";
    /// Share of CPU time not idle and not waiting for IO since the previous collection
    /// (needs a [`super::CpuSampler`]).
    pub const CPU_BUSY_RATIO: &str = "cpu_busy_ratio";
    /// Share of CPU time waiting for IO since the previous collection (needs a sampler).
    pub const CPU_IOWAIT_RATIO: &str = "cpu_iowait_ratio";
    /// Bytes per second read from and written to whole disks (needs a sampler).
    pub const DISK_READ_BYTES_PER_S: &str = "disk_read_bytes_per_s";
    pub const DISK_WRITE_BYTES_PER_S: &str = "disk_write_bytes_per_s";
    /// Bytes per second received and sent on all interfaces but `lo` (needs a sampler).
    pub const NET_RX_BYTES_PER_S: &str = "net_rx_bytes_per_s";
    pub const NET_TX_BYTES_PER_S: &str = "net_tx_bytes_per_s";
}

/// What to collect beyond the host's own files.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Dependencies to probe with a TCP connect. See [`crate::deps::read_declared_dependencies`]
    /// for the ones a host declares in its own root.
    pub dependencies: Vec<Dependency>,
    /// The overall deadline for all dependency probes together.
    pub probe_timeout: Duration,
    /// Operator-assigned labels copied into the profile.
    pub labels: BTreeMap<String, String>,
    /// Files to record a content hash of, relative to the root (`--watch-file`), besides the
    /// ones the root lists in [`crate::watch::WATCH_FILES_FILE`]. Each must pass
    /// [`crate::watch::check_watch_path`]; one that does not is skipped with a note.
    pub watch_files: Vec<String>,
}

impl Default for CollectOptions {
    fn default() -> Self {
        CollectOptions {
            dependencies: Vec::new(),
            probe_timeout: Duration::from_millis(500),
            labels: BTreeMap::new(),
            watch_files: Vec::new(),
        }
    }
}

/// Collects a profile of the host whose root is `rootfs` (use `/` for this host), without rates.
pub fn collect(rootfs: &Path, opts: &CollectOptions) -> HostProfile {
    collect_from(&FsRoot::new(rootfs), opts, None)
}

/// Keeps the previous reading of the cumulative counters (`proc/stat`, `proc/diskstats`,
/// `proc/net/dev`) so that repeated collections also report CPU shares and IO rates.
///
/// The time between two readings is taken from the host's own CPU clock (the growth of the
/// `cpu` line of `proc/stat`, in USER_HZ = 100 ticks a second per CPU), so rates need no wall
/// clock and are exact on synthetic roots too. The first collection, the first after a counter
/// went backwards (a reboot), and any collection less than 0.1 s of CPU clock after the reading
/// it would be compared with, omit the rate metrics.
#[derive(Debug, Clone, Default)]
pub struct CpuSampler {
    prev: Option<Counters>,
}

impl CpuSampler {
    pub fn new() -> Self {
        CpuSampler::default()
    }

    /// Collects a profile and, from the second call on, the rate metrics.
    pub fn collect(&mut self, rootfs: &Path, opts: &CollectOptions) -> HostProfile {
        collect_from(&FsRoot::new(rootfs), opts, Some(self))
    }

    /// As [`CpuSampler::collect`], from any [`Root`].
    pub fn collect_from(&mut self, root: &dyn Root, opts: &CollectOptions) -> HostProfile {
        collect_from(root, opts, Some(self))
    }

    fn update(&mut self, now: Counters, metrics: &mut BTreeMap<String, f64>) {
        match &self.prev {
            // Less than a tenth of a second of CPU clock since the kept reading: too short for a
            // meaningful share (the counters tick 100 times a second), so keep the older reading
            // and let the next collection measure over the longer interval.
            Some(prev)
                if now.cpu_total >= prev.cpu_total
                    && now.cpu_total - prev.cpu_total
                        < MIN_TICKS_PER_CPU * u64::from(now.cpus.max(1)) => {}
            Some(prev) => {
                rates(prev, &now, metrics);
                self.prev = Some(now);
            }
            None => self.prev = Some(now),
        }
    }
}

/// The shortest interval, in USER_HZ ticks per CPU (0.1 s), over which rates are reported.
const MIN_TICKS_PER_CPU: u64 = 10;

/// Cumulative counters read for the rate metrics.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counters {
    /// Sum of all fields of the `cpu` line, its idle and iowait fields, and the number of CPUs.
    cpu_total: u64,
    cpu_idle: u64,
    cpu_iowait: u64,
    cpus: u32,
    /// Sectors read and written on whole disks; `None` when diskstats was unreadable.
    disk: Option<(u64, u64)>,
    /// Bytes received and sent on all interfaces but `lo`.
    net: Option<(u64, u64)>,
}

fn rates(prev: &Counters, now: &Counters, metrics: &mut BTreeMap<String, f64>) {
    if now.cpu_total <= prev.cpu_total
        || now.cpu_idle < prev.cpu_idle
        || now.cpu_iowait < prev.cpu_iowait
    {
        return;
    }
    let total = (now.cpu_total - prev.cpu_total) as f64;
    let idle = (now.cpu_idle - prev.cpu_idle) as f64;
    let iowait = (now.cpu_iowait - prev.cpu_iowait) as f64;
    metrics.insert(
        metric::CPU_BUSY_RATIO.into(),
        ((total - idle - iowait) / total).clamp(0.0, 1.0),
    );
    metrics.insert(
        metric::CPU_IOWAIT_RATIO.into(),
        (iowait / total).clamp(0.0, 1.0),
    );
    let seconds = total / (f64::from(now.cpus.max(1)) * 100.0);
    let mut rate = |key: &str, before: u64, after: u64, unit: f64| {
        if after >= before {
            metrics.insert(key.into(), (after - before) as f64 * unit / seconds);
        }
    };
    if let (Some((r0, w0)), Some((r1, w1))) = (prev.disk, now.disk) {
        rate(metric::DISK_READ_BYTES_PER_S, r0, r1, 512.0);
        rate(metric::DISK_WRITE_BYTES_PER_S, w0, w1, 512.0);
    }
    if let (Some((r0, t0)), Some((r1, t1))) = (prev.net, now.net) {
        rate(metric::NET_RX_BYTES_PER_S, r0, r1, 1.0);
        rate(metric::NET_TX_BYTES_PER_S, t0, t1, 1.0);
    }
}

/// Collects from any [`Root`]; `sampler` adds the rate metrics.
pub fn collect_from(
    root: &dyn Root,
    opts: &CollectOptions,
    sampler: Option<&mut CpuSampler>,
) -> HostProfile {
    let mut c = Collector {
        root,
        notes: Vec::new(),
    };
    let mut p = HostProfile {
        collected_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        labels: opts.labels.clone(),
        ..HostProfile::default()
    };

    p.hostname = c.part("etc/hostname", parse_hostname);
    p.os = c.os();
    p.kernel = c.part("proc/sys/kernel/osrelease", |t| {
        let k = t.trim();
        (!k.is_empty()).then(|| k.to_owned()).ok_or("empty")
    });
    p.packages = c.packages();

    let cpuinfo = c.part("proc/cpuinfo", parse_cpuinfo);
    let meminfo = c.part("proc/meminfo", parse_meminfo);
    let diskstats = c.part("proc/diskstats", parse_diskstats);
    if cpuinfo.is_some() || meminfo.is_some() || diskstats.is_some() {
        let (cpu_model, cpu_count) = cpuinfo.clone().unwrap_or((None, None));
        p.hardware = Some(Hardware {
            cpu_model,
            cpu_count,
            memory_total_kb: meminfo.as_ref().and_then(|m| m.get("MemTotal").copied()),
            disks: diskstats
                .as_ref()
                .map(|d| d.disks.clone())
                .unwrap_or_default(),
        });
    }

    let netdev = c.part("proc/net/dev", parse_net_dev);
    p.network = Some(Network {
        interfaces: c.interfaces(netdev.as_ref()),
        dns_resolvers: c
            .part("etc/resolv.conf", |t| Ok::<_, &str>(parse_resolv_conf(t)))
            .unwrap_or_default(),
        hosts: c
            .part("etc/hosts", |t| Ok::<_, &str>(parse_hosts(t)))
            .unwrap_or_default(),
        listening: c.listening(),
    });

    let m = &mut p.metrics;
    if let Some(load) = c.part("proc/loadavg", parse_loadavg) {
        m.insert(metric::LOAD1.into(), load[0]);
        m.insert(metric::LOAD5.into(), load[1]);
        m.insert(metric::LOAD15.into(), load[2]);
    }
    if let Some(mi) = &meminfo {
        match (mi.get("MemTotal"), mi.get("MemAvailable")) {
            (Some(&t), Some(&a)) if t > 0 => {
                m.insert(
                    metric::MEMORY_AVAILABLE_RATIO.into(),
                    (a as f64 / t as f64).clamp(0.0, 1.0),
                );
            }
            _ => c.note("proc/meminfo", "has no MemTotal or MemAvailable"),
        }
        if let (Some(&t), Some(&f)) = (mi.get("SwapTotal"), mi.get("SwapFree")) {
            if t > 0 {
                m.insert(
                    metric::SWAP_USED_RATIO.into(),
                    (1.0 - f as f64 / t as f64).clamp(0.0, 1.0),
                );
            }
        }
    }
    for res in ["cpu", "memory", "io"] {
        let rel = format!("proc/pressure/{res}");
        if let Some(lines) = c.part(&rel, parse_pressure) {
            for (kind, avg10, avg60) in lines {
                m.insert(format!("psi_{res}_{kind}_avg10"), avg10);
                m.insert(format!("psi_{res}_{kind}_avg60"), avg60);
            }
        }
    }

    let stat = c.part("proc/stat", parse_stat);
    if let (Some(sampler), Some(stat)) = (sampler, stat) {
        let now = Counters {
            disk: diskstats
                .as_ref()
                .map(|d| (d.sectors_read, d.sectors_written)),
            net: netdev.as_ref().map(|n| {
                n.iter()
                    .filter(|(name, _, _)| name != "lo")
                    .fold((0u64, 0u64), |(r, t), (_, rx, tx)| {
                        (r.saturating_add(*rx), t.saturating_add(*tx))
                    })
            }),
            ..stat
        };
        sampler.update(now, &mut p.metrics);
    }

    p.files = c.watched(&opts.watch_files);
    p.dependencies = probe_all(&opts.dependencies, opts.probe_timeout);
    p.notes = c.notes;
    p
}

struct Collector<'a> {
    root: &'a dyn Root,
    notes: Vec<String>,
}

impl Collector<'_> {
    fn note(&mut self, rel: &str, what: impl std::fmt::Display) {
        self.notes.push(format!("Skipped {rel}: {what}."));
    }

    fn read(&mut self, rel: &str) -> Option<String> {
        match self.root.read(rel) {
            Ok(t) => Some(t),
            Err(e) => {
                self.note(rel, e);
                None
            }
        }
    }

    /// Reads and parses one file; either failure leaves the part absent with a note.
    fn part<T, E: std::fmt::Display>(
        &mut self,
        rel: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let text = self.read(rel)?;
        match parse(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.note(rel, format_args!("could not parse it ({e})"));
                None
            }
        }
    }

    /// The watched files: the options' paths, then the root's own list. A file that cannot be
    /// read is recorded as absent (no hash) with a note; collection goes on.
    fn watched(&mut self, extra: &[String]) -> BTreeMap<String, WatchedFile> {
        use crate::watch::{check_watch_path, parse_watch_list, MAX_WATCHED, WATCH_FILES_FILE};
        let mut paths: Vec<String> = Vec::new();
        for p in extra {
            match check_watch_path(p) {
                Ok(()) => paths.push(p.clone()),
                Err(e) => self.notes.push(format!("Not watching {p:?}: {e}.")),
            }
        }
        if self.root.exists(WATCH_FILES_FILE) {
            if let Some(text) = self.read(WATCH_FILES_FILE) {
                let (listed, problems) = parse_watch_list(&text);
                for problem in problems {
                    self.notes
                        .push(format!("Not watching a line of {problem}."));
                }
                paths.extend(listed);
            }
        }
        let mut files = BTreeMap::new();
        for rel in paths {
            if files.contains_key(&rel) {
                continue;
            }
            if files.len() == MAX_WATCHED {
                self.notes.push(format!(
                    "Watching only the first {MAX_WATCHED} files; {rel} and any after it are not watched."
                ));
                break;
            }
            let state = match self.root.digest(&rel) {
                Ok((sha256, size)) => WatchedFile {
                    sha256: Some(sha256),
                    size: Some(size),
                },
                Err(e) => {
                    self.notes
                        .push(format!("Watched file {rel} is recorded as absent: {e}."));
                    WatchedFile::default()
                }
            };
            files.insert(rel, state);
        }
        files
    }

    fn os(&mut self) -> Option<OsInfo> {
        // os-release(5): /etc/os-release, falling back to /usr/lib/os-release.
        let rel = if self.root.exists("etc/os-release") || !self.root.exists("usr/lib/os-release") {
            "etc/os-release"
        } else {
            "usr/lib/os-release"
        };
        self.part(rel, parse_os_release)
    }

    fn packages(&mut self) -> Option<BTreeMap<String, String>> {
        const DPKG: &str = "var/lib/dpkg/status";
        let mut found = false;
        let mut pkgs = BTreeMap::new();
        if self.root.exists(DPKG) {
            found = true;
            if let Some(p) = self.part(DPKG, parse_dpkg_status) {
                pkgs = p;
            } else {
                return None;
            }
        }
        const RPMDB: &str = "var/lib/rpm/rpmdb.sqlite";
        if self.root.exists(RPMDB) {
            found = true;
            match self
                .root
                .local_path(RPMDB)
                .map(|p| crate::rpm::read_sqlite(&p))
            {
                Some(Ok((rpms, bad))) => {
                    if bad > 0 {
                        self.note(
                            RPMDB,
                            format_args!(
                                "{bad} package headers could not be parsed and are not listed"
                            ),
                        );
                    }
                    for (name, version) in rpms {
                        let key = if pkgs.contains_key(&name) {
                            format!("{name}:rpm")
                        } else {
                            name
                        };
                        pkgs.insert(key, version);
                    }
                }
                Some(Err(e)) => {
                    self.note(RPMDB, format_args!("could not read the rpm database ({e})"))
                }
                None => self.note(
                    RPMDB,
                    "it cannot be opened by a path that stays inside the root (an in-memory root, or a symbolic link on the way that leads elsewhere)",
                ),
            }
        }
        // Older rpm databases: Berkeley DB (RHEL 7 and 8) and ndb (SUSE).
        for rel in ["var/lib/rpm/Packages", "var/lib/rpm/Packages.db"] {
            if self.root.exists(rel) {
                found = true;
                self.note(rel, "this rpm database format (Berkeley DB or ndb) is not read, so its packages are not listed");
            }
        }
        if !found {
            self.note(
                DPKG,
                "no package database found (neither dpkg status nor an rpm database)",
            );
            return None;
        }
        Some(pkgs)
    }

    fn interfaces(&mut self, netdev: Option<&Vec<(String, u64, u64)>>) -> Vec<Interface> {
        const NET: &str = "sys/class/net";
        match self.root.list(NET) {
            Ok(names) => names
                .into_iter()
                .map(|name| {
                    let field = |f: &str| {
                        self.root
                            .read(&format!("{NET}/{name}/{f}"))
                            .ok()
                            .map(|s| s.trim().to_owned())
                            .filter(|s| !s.is_empty())
                    };
                    Interface {
                        mac: field("address"),
                        mtu: field("mtu").and_then(|s| s.parse().ok()),
                        operstate: field("operstate"),
                        name,
                    }
                })
                .collect(),
            Err(e) => {
                self.note(NET, e);
                // proc/net/dev still names the interfaces, without their details.
                netdev
                    .map(|n| {
                        n.iter()
                            .map(|(name, _, _)| Interface {
                                name: name.clone(),
                                ..Interface::default()
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }
        }
    }

    fn listening(&mut self) -> Vec<String> {
        if self.root.is_own_root() {
            // The same facts as proc/net/tcp{,6}, without the kernel walking every connection.
            if let Ok(v) = crate::sockdiag::listening_tcp() {
                return v;
            }
        }
        let mut out = Vec::new();
        for (rel, v6) in [("proc/net/tcp", false), ("proc/net/tcp6", true)] {
            if let Some(mut socks) = self.part(rel, |t| parse_proc_net_tcp(t, v6)) {
                out.append(&mut socks);
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

fn parse_hostname(text: &str) -> Result<String, &'static str> {
    let name = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    name.map(str::to_owned).ok_or("empty")
}

/// os-release(5): `KEY=value` lines, values optionally quoted.
pub fn parse_os_release(text: &str) -> Result<OsInfo, &'static str> {
    let mut kv = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            kv.insert(k.trim(), v.replace("\\\"", "\""));
        }
    }
    Ok(OsInfo {
        // os-release(5) says a missing ID means "linux".
        id: kv.remove("ID").unwrap_or_else(|| "linux".to_owned()),
        version_id: kv.remove("VERSION_ID"),
        pretty_name: kv.remove("PRETTY_NAME"),
    })
}

/// Installed packages from dpkg's status file: stanzas whose `Status` ends in `installed`.
/// A package installed for a second architecture is keyed `name:arch`.
pub fn parse_dpkg_status(text: &str) -> Result<BTreeMap<String, String>, &'static str> {
    let mut out = BTreeMap::new();
    let (mut name, mut version, mut arch, mut installed) = ("", "", "", false);
    let mut stanzas = 0usize;
    let mut flush = |name: &mut &str, version: &mut &str, arch: &mut &str, installed: &mut bool| {
        if !name.is_empty() && !version.is_empty() && *installed {
            if out.contains_key(*name) {
                out.insert(format!("{name}:{arch}"), (*version).to_owned());
            } else {
                out.insert((*name).to_owned(), (*version).to_owned());
            }
        }
        (*name, *version, *arch, *installed) = ("", "", "", false);
    };
    for line in text.lines() {
        if line.is_empty() {
            flush(&mut name, &mut version, &mut arch, &mut installed);
            continue;
        }
        // Continuation lines (descriptions, conffiles) start with a space; skip them cheaply.
        let first = line.as_bytes()[0];
        if first == b' ' || first == b'\t' {
            continue;
        }
        if let Some(v) = line.strip_prefix("Package:") {
            if !name.is_empty() {
                // A stanza without its blank line: keep what we have.
                flush(&mut name, &mut version, &mut arch, &mut installed);
            }
            name = v.trim();
            stanzas += 1;
        } else if let Some(v) = line.strip_prefix("Version:") {
            version = v.trim();
        } else if let Some(v) = line.strip_prefix("Architecture:") {
            arch = v.trim();
        } else if let Some(v) = line.strip_prefix("Status:") {
            installed = v.split_whitespace().nth(2) == Some("installed");
        }
    }
    flush(&mut name, &mut version, &mut arch, &mut installed);
    if stanzas == 0 && !text.trim().is_empty() {
        return Err("no Package: stanza");
    }
    Ok(out)
}

/// The model name and the number of `processor` entries.
fn parse_cpuinfo(text: &str) -> Result<(Option<String>, Option<u32>), &'static str> {
    let mut model = None;
    let mut count = 0u32;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => count += 1,
            "model name" | "Model" | "cpu model" if model.is_none() => {
                model = Some(v.trim().to_owned())
            }
            _ => {}
        }
    }
    if count == 0 && model.is_none() {
        return Err("no processor entries");
    }
    Ok((model, (count > 0).then_some(count)))
}

/// `Key: value kB` lines, values in kB.
fn parse_meminfo(text: &str) -> Result<BTreeMap<String, u64>, &'static str> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if let Some(n) = v.split_whitespace().next().and_then(|n| n.parse().ok()) {
            out.insert(k.trim().to_owned(), n);
        }
    }
    if out.is_empty() {
        return Err("no Key: value lines");
    }
    Ok(out)
}

fn parse_loadavg(text: &str) -> Result<[f64; 3], &'static str> {
    let mut it = text
        .split_whitespace()
        .map(|f| f.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0));
    match (it.next(), it.next(), it.next()) {
        (Some(Some(a)), Some(Some(b)), Some(Some(c))) => Ok([a, b, c]),
        _ => Err("expected three load averages"),
    }
}

/// `some avg10=… avg60=… avg300=… total=…` and, where present, a `full …` line.
fn parse_pressure(text: &str) -> Result<Vec<(String, f64, f64)>, &'static str> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(kind @ ("some" | "full")) = words.next() else {
            continue;
        };
        let (mut a10, mut a60) = (None, None);
        for w in words {
            if let Some(v) = w.strip_prefix("avg10=") {
                a10 = v.parse::<f64>().ok().filter(|v| v.is_finite());
            } else if let Some(v) = w.strip_prefix("avg60=") {
                a60 = v.parse::<f64>().ok().filter(|v| v.is_finite());
            }
        }
        if let (Some(a10), Some(a60)) = (a10, a60) {
            out.push((kind.to_owned(), a10, a60));
        }
    }
    if out.is_empty() {
        return Err("no some/full line with avg10 and avg60");
    }
    Ok(out)
}

fn parse_stat(text: &str) -> Result<Counters, &'static str> {
    let mut c = Counters::default();
    let mut seen = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("cpu") => {
                let fields: Vec<u64> = words.map(|w| w.parse().unwrap_or(0)).collect();
                if fields.len() < 5 {
                    return Err("the cpu line has fewer than 5 fields");
                }
                // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
                // already counted in user and nice.
                c.cpu_total = fields.iter().take(8).sum();
                c.cpu_idle = fields[3];
                c.cpu_iowait = fields[4];
                seen = true;
            }
            Some(w) if w.starts_with("cpu") => c.cpus += 1,
            _ => {}
        }
    }
    if !seen {
        return Err("no cpu line");
    }
    Ok(c)
}

struct DiskStats {
    disks: Vec<String>,
    sectors_read: u64,
    sectors_written: u64,
}

/// Whether a block device is a whole disk worth listing, rather than a partition or a virtual
/// device (loop, ram, zram, device-mapper, optical).
pub fn is_whole_disk(name: &str) -> bool {
    if ["loop", "ram", "zram", "dm-", "sr", "fd", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return false;
    }
    let ends_digit = name.ends_with(|c: char| c.is_ascii_digit());
    if name.starts_with("nvme") || name.starts_with("mmcblk") || name.starts_with("md") {
        // nvme0n1 and mmcblk0 are disks; nvme0n1p1 and mmcblk0p1 are partitions: a digit, 'p',
        // then digits at the end.
        let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
        let partition = ends_digit
            && trimmed
                .strip_suffix('p')
                .is_some_and(|t| t.ends_with(|c: char| c.is_ascii_digit()));
        return !partition;
    }
    // sda, vda, xvda, hda: a trailing digit marks a partition.
    !ends_digit
}

fn parse_diskstats(text: &str) -> Result<DiskStats, &'static str> {
    let mut d = DiskStats {
        disks: Vec::new(),
        sectors_read: 0,
        sectors_written: 0,
    };
    let mut lines = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        lines += 1;
        let name = f[2];
        if !is_whole_disk(name) {
            continue;
        }
        d.disks.push(name.to_owned());
        d.sectors_read = d.sectors_read.saturating_add(f[5].parse().unwrap_or(0));
        d.sectors_written = d.sectors_written.saturating_add(f[9].parse().unwrap_or(0));
    }
    if lines == 0 && !text.trim().is_empty() {
        return Err("no device lines");
    }
    d.disks.sort();
    Ok(d)
}

/// Interface name, received bytes, sent bytes.
fn parse_net_dev(text: &str) -> Result<Vec<(String, u64, u64)>, &'static str> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 9 {
            continue;
        }
        out.push((
            name.trim().to_owned(),
            f[0].parse().unwrap_or(0),
            f[8].parse().unwrap_or(0),
        ));
    }
    if out.is_empty() {
        return Err("no interface lines");
    }
    Ok(out)
}

/// `nameserver` addresses in order.
pub fn parse_resolv_conf(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .map(str::to_owned)
        })
        .collect()
}

/// `etc/hosts`: each name maps to the address of the first line that lists it.
pub fn parse_hosts(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut w = line.split_whitespace();
        let Some(addr) = w.next() else { continue };
        for name in w {
            out.entry(name.to_owned())
                .or_insert_with(|| addr.to_owned());
        }
    }
    out
}

/// LISTEN sockets (state `0A`) of `proc/net/tcp` or `tcp6` as `addr:port` / `[addr]:port`.
///
/// The kernel prints each 32-bit word of the address in host byte order; this assumes a
/// little-endian host, which every platform Bellwether ships for is.
pub fn parse_proc_net_tcp(text: &str, v6: bool) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Ok(out);
    };
    if !header.contains("local_address") {
        return Err("no header line");
    }
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[3] != "0A" {
            continue;
        }
        let Some((addr, port)) = f[1].split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        let ip = if v6 {
            if addr.len() != 32 {
                continue;
            }
            let mut bytes = [0u8; 16];
            let mut ok = true;
            for i in 0..4 {
                match u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16) {
                    Ok(w) => bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes()),
                    Err(_) => ok = false,
                }
            }
            if !ok {
                continue;
            }
            std::net::IpAddr::V6(Ipv6Addr::from(bytes))
        } else {
            let Ok(w) = u32::from_str_radix(addr, 16) else {
                continue;
            };
            std::net::IpAddr::V4(Ipv4Addr::from(w.to_le_bytes()))
        };
        out.push(SocketAddr::new(ip, port).to_string());
    }
    Ok(out)
}

/// Formats a socket address the way `proc/net/tcp(6)` prints it (for synthetic roots).
pub fn format_proc_net_addr(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            let mut s = String::with_capacity(37);
            for i in 0..4 {
                let w = u32::from_le_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
                s.push_str(&format!("{w:08X}"));
            }
            format!("{s}:{:04X}", a.port())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root::MemRoot;

    #[test]
    fn os_release_handles_quotes_and_defaults() {
        let os = parse_os_release("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=x\nVERSION_ID=\"12\"\nID=debian\n# c\n").unwrap();
        assert_eq!(os.id, "debian");
        assert_eq!(os.version_id.as_deref(), Some("12"));
        assert_eq!(
            os.pretty_name.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(parse_os_release("").unwrap().id, "linux");
    }

    #[test]
    fn dpkg_status_keeps_installed_packages_only() {
        let text = "Package: a\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0-1\nDescription: x\n more\n\n\
                    Package: b\nStatus: deinstall ok config-files\nVersion: 2\n\n\
                    Package: a\nStatus: install ok installed\nArchitecture: i386\nVersion: 1.0-1\n\n\
                    Package: c\nStatus: install ok installed\nVersion: 1:3.2\n";
        let p = parse_dpkg_status(text).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p["a"], "1.0-1");
        assert_eq!(p["a:i386"], "1.0-1");
        assert_eq!(p["c"], "1:3.2");
        assert!(parse_dpkg_status("garbage\n").is_err());
        assert!(parse_dpkg_status("").unwrap().is_empty());
    }

    #[test]
    fn whole_disks_exclude_partitions_and_virtual_devices() {
        for d in [
            "sda", "vdb", "xvda", "nvme0n1", "nvme10n2", "mmcblk0", "md0",
        ] {
            assert!(is_whole_disk(d), "{d}");
        }
        for d in [
            "sda1",
            "vdb12",
            "nvme0n1p1",
            "mmcblk0p2",
            "loop0",
            "ram1",
            "zram0",
            "dm-0",
            "sr0",
        ] {
            assert!(!is_whole_disk(d), "{d}");
        }
    }

    #[test]
    fn proc_net_tcp_round_trips_and_keeps_listeners_only() {
        let v4: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        let v6: SocketAddr = "[::1]:4369".parse().unwrap();
        assert_eq!(format_proc_net_addr(&v4), "0100007F:18EB");
        assert_eq!(
            format_proc_net_addr(&v6),
            "00000000000000000000000001000000:1111"
        );
        let t4 = format!(
            "  sl  local_address rem_address   st\n   0: {} 00000000:0000 0A 0\n   1: 0100007F:0016 0100007F:9999 01 0\n",
            format_proc_net_addr(&v4)
        );
        assert_eq!(
            parse_proc_net_tcp(&t4, false).unwrap(),
            vec!["127.0.0.1:6379"]
        );
        let t6 = format!(
            "  sl  local_address remote\n 0: {} 0 0A\n",
            format_proc_net_addr(&v6)
        );
        assert_eq!(parse_proc_net_tcp(&t6, true).unwrap(), vec!["[::1]:4369"]);
        assert!(parse_proc_net_tcp("nonsense\n", false).is_err());
    }

    #[test]
    fn pressure_loadavg_hosts_and_resolvers() {
        let p = parse_pressure("some avg10=1.50 avg60=0.20 avg300=0.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        assert_eq!(
            p,
            vec![("some".to_owned(), 1.5, 0.2), ("full".to_owned(), 0.0, 0.0)]
        );
        assert_eq!(
            parse_loadavg("0.5 1.25 2.00 1/100 42\n").unwrap(),
            [0.5, 1.25, 2.0]
        );
        assert!(parse_loadavg("0.5 x").is_err());
        let h = parse_hosts(
            "127.0.0.1 localhost\n::1 localhost ip6-localhost # c\n# x\n10.0.0.1 db db.local\n",
        );
        assert_eq!(h["localhost"], "127.0.0.1");
        assert_eq!(h["ip6-localhost"], "::1");
        assert_eq!(h["db.local"], "10.0.0.1");
        assert_eq!(
            parse_resolv_conf("search x\nnameserver 10.0.0.2\nnameserver ::1\n"),
            vec!["10.0.0.2", "::1"]
        );
    }

    #[test]
    fn missing_and_broken_files_leave_notes_and_never_abort() {
        let mut root = MemRoot::default();
        root.insert("proc/loadavg", "not numbers\n");
        root.insert("etc/hostname", "web-1\n");
        let p = collect_from(&root, &CollectOptions::default(), None);
        assert_eq!(p.hostname.as_deref(), Some("web-1"));
        assert!(
            p.os.is_none() && p.kernel.is_none() && p.packages.is_none() && p.hardware.is_none()
        );
        assert!(p.metrics.is_empty());
        let notes = p.notes.join("\n");
        for f in [
            "proc/loadavg: could not parse",
            "etc/os-release",
            "proc/sys/kernel/osrelease",
            "var/lib/dpkg/status",
            "proc/meminfo",
            "proc/net/tcp6",
            "sys/class/net",
            "proc/pressure/io",
        ] {
            assert!(notes.contains(f), "missing note for {f} in:\n{notes}");
        }
    }

    #[test]
    fn watched_files_are_hashed_and_a_missing_one_is_absent_with_a_note() {
        let mut root = MemRoot::default();
        root.insert("etc/websvc.conf", "workers = 4\n");
        root.insert(
            "etc/bellwether/watch-files",
            "etc/app.conf  # not there\n/etc/shadow\n",
        );
        let opts = CollectOptions {
            watch_files: vec!["etc/websvc.conf".into(), "../escape".into()],
            ..CollectOptions::default()
        };
        let p = collect_from(&root, &opts, None);
        let paths: Vec<&str> = p.files.keys().map(String::as_str).collect();
        assert_eq!(paths, vec!["etc/app.conf", "etc/websvc.conf"]);
        let conf = &p.files["etc/websvc.conf"];
        assert_eq!(conf.size, Some(12));
        assert_eq!(
            conf.sha256.as_deref(),
            Some(crate::root::sha256_hex(b"workers = 4\n").as_str())
        );
        assert_eq!(p.files["etc/app.conf"], WatchedFile::default());
        let notes = p.notes.join("\n");
        for want in [
            "Watched file etc/app.conf is recorded as absent",
            "Not watching \"../escape\"",
            "watch-files:2: \"/etc/shadow\"",
        ] {
            assert!(notes.contains(want), "no note {want:?} in:\n{notes}");
        }
        // Without a list or flags nothing is watched, and the profile's JSON has no `files`.
        let p = collect_from(&MemRoot::default(), &CollectOptions::default(), None);
        assert!(p.files.is_empty());
        assert!(!serde_json::to_string(&p).unwrap().contains("\"files\""));
    }

    #[test]
    fn old_rpm_databases_are_reported_not_silently_ignored() {
        let mut root = MemRoot::default();
        root.insert("var/lib/rpm/Packages", "");
        let p = collect_from(&root, &CollectOptions::default(), None);
        assert_eq!(p.packages, Some(BTreeMap::new()));
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("var/lib/rpm/Packages:") && n.contains("not read")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn reads_packages_from_an_rpm_sqlite_database() {
        use crate::rpm::tests::{pkg, write_rpmdb};
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("var/lib/rpm")).unwrap();
        write_rpmdb(
            &dir.path().join("var/lib/rpm/rpmdb.sqlite"),
            &[
                pkg("bash", None, "5.1.8", "9.el9", "x86_64"),
                pkg("openssl-libs", Some(1), "3.0.7", "27.el9", "x86_64"),
            ],
            false,
        );
        let p = collect(dir.path(), &CollectOptions::default());
        let pk = p.packages.unwrap();
        assert_eq!(pk.len(), 2);
        assert_eq!(pk["openssl-libs"], "1:3.0.7-27.el9");
        assert!(!p.notes.iter().any(|n| n.contains("rpm")), "{:?}", p.notes);
        // A file that is not a database leaves a note, not a failure.
        std::fs::write(dir.path().join("var/lib/rpm/rpmdb.sqlite"), "not sqlite").unwrap();
        let p = collect(dir.path(), &CollectOptions::default());
        assert_eq!(p.packages, Some(BTreeMap::new()));
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("could not read the rpm database")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn collecting_this_machine_does_not_fail() {
        let p = collect(Path::new("/"), &CollectOptions::default());
        // Linux always has these, even in a container.
        assert!(p.kernel.is_some(), "notes: {:?}", p.notes);
        assert!(p.metrics.contains_key(metric::LOAD1));
        assert!(p.collected_at_ms > 0);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = collect(Path::new("/"), &CollectOptions::default());
        let listening = p.network.unwrap().listening;
        assert!(
            listening.contains(&listener.local_addr().unwrap().to_string()),
            "{listening:?}"
        );
        let mut s = CpuSampler::new();
        let first = s.collect(Path::new("/"), &CollectOptions::default());
        assert!(!first.metrics.contains_key(metric::CPU_BUSY_RATIO));
    }
}
