//! Synthetic host roots: realistic, deterministic file trees that `collect` reads as it reads a
//! real host, for the sandbox fleet, tests and benchmarks.
//!
//! A [`HostSpec`] describes a host (OS, kernel, packages, hardware, load, network, declared
//! dependencies); [`HostSpec::generate`] makes a plausible one from a seed, [`HostSpec::apply`]
//! injects drift into it, [`write_host_root`] writes its files under a directory and
//! [`profile_of`] returns the profile that collecting those files gives, without the disk.
//!
//! Files are written atomically (a temporary file renamed into place), so an agent reading a
//! root while the sandbox rewrites it never sees half a file.
//!
//! This module must never depend on the machine it runs on: the same spec and seed give the
//! same bytes everywhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use bellwether_model::HostProfile;

use crate::collect::{collect_from, format_proc_net_addr, CollectOptions};
use crate::deps::DEPENDENCIES_FILE;
use crate::root::MemRoot;
use crate::version::ChangeLevel;

/// Real Debian package names; generated hosts draw their package sets from these.
const PACKAGE_NAMES: &str = include_str!("package_names.txt");

/// The package-name pool, in a fixed order.
pub fn package_names() -> impl Iterator<Item = &'static str> {
    PACKAGE_NAMES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
}

/// Everything a synthetic host root says about its host. Every field is public so that a test
/// or the sandbox can set exactly what it wants, or inject drift with [`HostSpec::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    pub hostname: String,
    /// os-release `ID`, such as `debian` or `ubuntu`.
    pub os_id: String,
    /// os-release `VERSION_ID`, such as `12` or `24.04`.
    pub os_version_id: String,
    pub os_pretty_name: String,
    /// `proc/sys/kernel/osrelease`, such as `6.1.0-18-amd64`.
    pub kernel: String,
    /// Installed packages, name to version, written to `var/lib/dpkg/status`.
    pub packages: BTreeMap<String, String>,
    pub cpu_model: String,
    pub cpu_count: u32,
    pub memory_total_kb: u64,
    pub memory_available_kb: u64,
    pub swap_total_kb: u64,
    pub swap_free_kb: u64,
    /// The 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    /// Pressure `some` averages (percent) for cpu, memory and io; written as avg10, avg60 and
    /// avg300 alike.
    pub psi_some: [f64; 3],
    /// Pressure `full` averages (percent) for cpu, memory and io.
    pub psi_full: [f64; 3],
    /// Seconds since boot: the cumulative counters of `proc/stat`, `proc/diskstats` and
    /// `proc/net/dev` are the rates below times this. Raise it and rewrite the root to make a
    /// [`crate::collect::CpuSampler`] see exactly these rates.
    pub uptime_s: u64,
    /// Share of CPU time busy and waiting for IO, in [0, 1], summing to at most 1.
    pub cpu_busy_ratio: f64,
    pub cpu_iowait_ratio: f64,
    /// Whole disks, such as `sda` or `nvme0n1`; each gets one partition and traffic.
    pub disks: Vec<String>,
    pub disk_read_bytes_per_s: u64,
    pub disk_write_bytes_per_s: u64,
    /// Network interfaces besides `lo`, which is always written.
    pub interfaces: Vec<InterfaceSpec>,
    pub net_rx_bytes_per_s: u64,
    pub net_tx_bytes_per_s: u64,
    /// `nameserver` lines of `etc/resolv.conf`, in order.
    pub dns_resolvers: Vec<String>,
    /// Extra `etc/hosts` entries, name to address (localhost lines are always written).
    pub hosts: BTreeMap<String, String>,
    /// Listening TCP sockets, written to `proc/net/tcp` or `tcp6` by address family.
    pub listening: Vec<SocketAddr>,
    /// Declared dependencies `(name, host:port)`, written to `etc/bellwether/dependencies`
    /// when not empty.
    pub dependencies: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// `up`, `down` or `unknown`.
    pub operstate: String,
}

/// A change to inject into a spec, as the sandbox does to a few hosts.
#[derive(Debug, Clone, PartialEq)]
pub enum Drift {
    /// Install `name` at `version`, or change its version.
    SetPackage {
        name: String,
        version: String,
    },
    /// Raise the version of an installed package at the given level (no effect when the
    /// package is absent).
    UpgradePackage {
        name: String,
        level: ChangeLevel,
    },
    RemovePackage {
        name: String,
    },
    Kernel(String),
    /// New 1, 5 and 15 minute load averages.
    Load([f64; 3]),
    /// New available memory in kB.
    MemoryAvailableKb(u64),
    /// New pressure `some` averages for cpu, memory and io.
    PressureSome([f64; 3]),
    Resolvers(Vec<String>),
    OpenPort(SocketAddr),
    ClosePort(SocketAddr),
    /// Declare a dependency, or change its endpoint.
    SetDependency {
        name: String,
        endpoint: String,
    },
    RemoveDependency {
        name: String,
    },
}

/// The seeded generator: the one of [`bellwether_model::rng`], so that a seed gives the same
/// host on every platform and with every version of every crate.
pub use bellwether_model::rng::SplitMix64;

fn hash_str(s: &str, salt: u64) -> u64 {
    let mut h = SplitMix64::new(salt);
    let mut acc = h.next_u64();
    for b in s.bytes() {
        acc = (acc ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
    }
    SplitMix64::new(acc).next_u64()
}

struct Release {
    id: &'static str,
    version_id: &'static str,
    pretty: &'static str,
    kernel: &'static str,
    /// Appended to some package revisions, as distributions do for stable updates.
    stable_suffix: &'static str,
}

const RELEASES: [Release; 4] = [
    Release {
        id: "debian",
        version_id: "12",
        pretty: "Debian GNU/Linux 12 (bookworm)",
        kernel: "6.1.0-18-amd64",
        stable_suffix: "+deb12u",
    },
    Release {
        id: "debian",
        version_id: "11",
        pretty: "Debian GNU/Linux 11 (bullseye)",
        kernel: "5.10.0-28-amd64",
        stable_suffix: "+deb11u",
    },
    Release {
        id: "ubuntu",
        version_id: "22.04",
        pretty: "Ubuntu 22.04.4 LTS",
        kernel: "5.15.0-101-generic",
        stable_suffix: "ubuntu0.22.04.",
    },
    Release {
        id: "ubuntu",
        version_id: "24.04",
        pretty: "Ubuntu 24.04 LTS",
        kernel: "6.8.0-31-generic",
        stable_suffix: "ubuntu0.24.04.",
    },
];

const CPU_MODELS: [&str; 3] = [
    "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz",
    "AMD EPYC 7763 64-Core Processor",
    "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
];

/// The version a release ships for a package: the same for every host on that release.
fn release_version(name: &str, rel: &Release) -> String {
    let mut r = SplitMix64::new(hash_str(name, hash_str(rel.version_id, 7)));
    let major = r.below(12);
    let minor = r.below(30);
    let patch = r.below(20);
    let rev = 1 + r.below(6);
    let epoch = if r.below(12) == 0 { "1:" } else { "" };
    let suffix = if r.below(4) == 0 {
        format!("{}{}", rel.stable_suffix, 1 + r.below(5))
    } else {
        String::new()
    };
    format!("{epoch}{major}.{minor}.{patch}-{rev}{suffix}")
}

impl HostSpec {
    /// A plausible host from `seed`: one of four Debian and Ubuntu releases, about
    /// `package_count` packages (a common base plus a seed-dependent share), 2 to 16 CPUs,
    /// 4 to 64 GiB, one or two disks, one or two interfaces, and a light load. Hosts on the same
    /// release share package versions, except a few that lag one patch behind, as real fleets do.
    pub fn generate(seed: u64, hostname: &str, package_count: usize) -> HostSpec {
        let mut r = SplitMix64::new(seed ^ 0xB311_3E7E);
        let rel = &RELEASES[r.below(RELEASES.len() as u64) as usize];
        let pool: Vec<&str> = package_names().collect();
        let count = package_count.min(pool.len());
        // The first 60 % of the wanted count is the base every host has; the rest is drawn.
        let base = count * 6 / 10;
        let mut packages = BTreeMap::new();
        for name in &pool[..base] {
            packages.insert((*name).to_owned(), release_version(name, rel));
        }
        let mut extra: Vec<&str> = pool[base..].to_vec();
        while packages.len() < count && !extra.is_empty() {
            let i = r.below(extra.len() as u64) as usize;
            let name = extra.swap_remove(i);
            packages.insert(name.to_owned(), release_version(name, rel));
        }
        // A few packages one patch level behind.
        for v in packages.values_mut() {
            if r.below(40) == 0 {
                *v = crate::version::bump(v, ChangeLevel::Patch, false);
            }
        }
        let cpu_count = *r.pick(&[2u32, 4, 4, 8, 8, 16]);
        let memory_total_kb = *r.pick(&[4u64, 8, 16, 16, 32, 64]) * 1024 * 1024 - 180_000;
        let memory_available_kb = (memory_total_kb as f64 * (0.35 + 0.5 * r.unit())) as u64;
        let base_load = f64::from(cpu_count) * (0.05 + 0.4 * r.unit());
        let round2 = |v: f64| (v * 100.0).round() / 100.0;
        let disks = if r.below(2) == 0 {
            vec!["sda".to_owned()]
        } else {
            vec!["nvme0n1".to_owned(), "nvme1n1".to_owned()]
        };
        let mac = |r: &mut SplitMix64| {
            let b = r.next_u64().to_le_bytes();
            format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
        };
        let mut interfaces = vec![InterfaceSpec {
            name: "eth0".into(),
            mac: mac(&mut r),
            mtu: 1500,
            operstate: "up".into(),
        }];
        if r.below(3) == 0 {
            interfaces.push(InterfaceSpec {
                name: "eth1".into(),
                mac: mac(&mut r),
                mtu: 9000,
                operstate: "up".into(),
            });
        }
        let subnet = 1 + r.below(250);
        let mut listening: Vec<SocketAddr> = vec![
            "0.0.0.0:22".parse().expect("literal"),
            "[::]:22".parse().expect("literal"),
        ];
        for port in [80u16, 443, 5432, 6379, 9100] {
            if r.below(3) == 0 {
                listening.push(SocketAddr::from(([0, 0, 0, 0], port)));
            }
        }
        HostSpec {
            hostname: hostname.to_owned(),
            os_id: rel.id.to_owned(),
            os_version_id: rel.version_id.to_owned(),
            os_pretty_name: rel.pretty.to_owned(),
            kernel: rel.kernel.to_owned(),
            packages,
            cpu_model: (*r.pick(&CPU_MODELS)).to_owned(),
            cpu_count,
            memory_total_kb,
            memory_available_kb,
            swap_total_kb: 2 * 1024 * 1024,
            swap_free_kb: 2 * 1024 * 1024 - r.below(50_000),
            load: [
                round2(base_load * (0.8 + 0.4 * r.unit())),
                round2(base_load),
                round2(base_load * 0.95),
            ],
            psi_some: [
                round2(r.unit() * 2.0),
                round2(r.unit()),
                round2(r.unit() * 1.5),
            ],
            psi_full: [0.0, 0.0, round2(r.unit() * 0.5)],
            uptime_s: 86_400 + r.below(30 * 86_400),
            cpu_busy_ratio: round2(0.05 + 0.3 * r.unit()),
            cpu_iowait_ratio: round2(0.02 * r.unit()),
            disks,
            disk_read_bytes_per_s: 100_000 + r.below(5_000_000),
            disk_write_bytes_per_s: 100_000 + r.below(2_000_000),
            interfaces,
            net_rx_bytes_per_s: 10_000 + r.below(10_000_000),
            net_tx_bytes_per_s: 10_000 + r.below(10_000_000),
            dns_resolvers: vec![format!("10.{subnet}.0.2"), format!("10.{subnet}.0.3")],
            hosts: BTreeMap::from([(
                format!("gateway.{subnet}.internal"),
                format!("10.{subnet}.0.1"),
            )]),
            listening,
            dependencies: Vec::new(),
        }
    }

    /// Injects one change.
    pub fn apply(&mut self, drift: &Drift) {
        match drift {
            Drift::SetPackage { name, version } => {
                self.packages.insert(name.clone(), version.clone());
            }
            Drift::UpgradePackage { name, level } => {
                if let Some(v) = self.packages.get_mut(name) {
                    *v = crate::version::bump(v, *level, true);
                }
            }
            Drift::RemovePackage { name } => {
                self.packages.remove(name);
            }
            Drift::Kernel(k) => self.kernel = k.clone(),
            Drift::Load(l) => self.load = *l,
            Drift::MemoryAvailableKb(kb) => {
                self.memory_available_kb = (*kb).min(self.memory_total_kb)
            }
            Drift::PressureSome(p) => self.psi_some = *p,
            Drift::Resolvers(r) => self.dns_resolvers = r.clone(),
            Drift::OpenPort(a) => {
                if !self.listening.contains(a) {
                    self.listening.push(*a);
                }
            }
            Drift::ClosePort(a) => self.listening.retain(|x| x != a),
            Drift::SetDependency { name, endpoint } => {
                match self.dependencies.iter_mut().find(|(n, _)| n == name) {
                    Some(d) => d.1 = endpoint.clone(),
                    None => self.dependencies.push((name.clone(), endpoint.clone())),
                }
            }
            Drift::RemoveDependency { name } => self.dependencies.retain(|(n, _)| n != name),
        }
    }

    /// The host root's files, path relative to the root to contents.
    pub fn render(&self) -> MemRoot {
        let mut root = MemRoot::default();
        let mut f = |path: &str, text: String| root.insert(path, text);

        f("etc/hostname", format!("{}\n", self.hostname));
        f(
            "etc/os-release",
            format!(
                "PRETTY_NAME=\"{}\"\nNAME=\"{}\"\nVERSION_ID=\"{}\"\nID={}\nHOME_URL=\"https://example.invalid/\"\n",
                self.os_pretty_name,
                if self.os_id == "ubuntu" { "Ubuntu" } else { "Debian GNU/Linux" },
                self.os_version_id,
                self.os_id
            ),
        );
        f("proc/sys/kernel/osrelease", format!("{}\n", self.kernel));
        f("var/lib/dpkg/status", self.dpkg_status());

        let mut cpuinfo = String::new();
        for i in 0..self.cpu_count {
            let _ = write!(
                cpuinfo,
                "processor\t: {i}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel name\t: {}\ncpu MHz\t\t: 2900.000\n\
                 cache size\t: 36608 KB\ncpu cores\t: {}\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep\n\n",
                self.cpu_model, self.cpu_count
            );
        }
        f("proc/cpuinfo", cpuinfo);
        f(
            "proc/meminfo",
            format!(
                "MemTotal:       {} kB\nMemFree:        {} kB\nMemAvailable:   {} kB\nBuffers:          102400 kB\n\
                 Cached:         {} kB\nSwapTotal:      {} kB\nSwapFree:       {} kB\n",
                self.memory_total_kb,
                self.memory_available_kb / 2,
                self.memory_available_kb,
                self.memory_available_kb / 3,
                self.swap_total_kb,
                self.swap_free_kb
            ),
        );
        f(
            "proc/loadavg",
            format!(
                "{:.2} {:.2} {:.2} 2/{} 41234\n",
                self.load[0],
                self.load[1],
                self.load[2],
                200 + self.packages.len() / 2
            ),
        );
        f("proc/stat", self.stat());
        for (i, res) in ["cpu", "memory", "io"].iter().enumerate() {
            let (s, fu) = (self.psi_some[i], self.psi_full[i]);
            f(
                &format!("proc/pressure/{res}"),
                format!(
                    "some avg10={s:.2} avg60={s:.2} avg300={s:.2} total={}\nfull avg10={fu:.2} avg60={fu:.2} avg300={fu:.2} total={}\n",
                    (s * 1e4) as u64 * self.uptime_s,
                    (fu * 1e4) as u64 * self.uptime_s
                ),
            );
        }
        f("proc/diskstats", self.diskstats());
        f("proc/net/dev", self.net_dev());
        for i in std::iter::once(InterfaceSpec {
            name: "lo".into(),
            mac: "00:00:00:00:00:00".into(),
            mtu: 65536,
            operstate: "unknown".into(),
        })
        .chain(self.interfaces.iter().cloned())
        {
            f(
                &format!("sys/class/net/{}/address", i.name),
                format!("{}\n", i.mac),
            );
            f(
                &format!("sys/class/net/{}/mtu", i.name),
                format!("{}\n", i.mtu),
            );
            f(
                &format!("sys/class/net/{}/operstate", i.name),
                format!("{}\n", i.operstate),
            );
        }
        let mut resolv = String::from("# Generated by bellwether sandbox.\nsearch internal\n");
        for r in &self.dns_resolvers {
            let _ = writeln!(resolv, "nameserver {r}");
        }
        f("etc/resolv.conf", resolv);
        let mut hosts = format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\n",
            self.hostname
        );
        for (name, addr) in &self.hosts {
            let _ = writeln!(hosts, "{addr}\t{name}");
        }
        f("etc/hosts", hosts);
        let (t4, t6) = self.proc_net_tcp();
        f("proc/net/tcp", t4);
        f("proc/net/tcp6", t6);
        if !self.dependencies.is_empty() {
            let mut d = String::from("# NAME=HOST:PORT, one a line.\n");
            for (n, e) in &self.dependencies {
                let _ = writeln!(d, "{n}={e}");
            }
            f(DEPENDENCIES_FILE, d);
        }
        root
    }

    fn dpkg_status(&self) -> String {
        let mut s = String::with_capacity(self.packages.len() * 420);
        for (name, version) in &self.packages {
            let h = hash_str(name, 3);
            let _ = write!(
                s,
                "Package: {name}\nStatus: install ok installed\nPriority: optional\nSection: {}\n\
                 Installed-Size: {}\nMaintainer: Debian Maintainers <maintainers@example.invalid>\n\
                 Architecture: amd64\nMulti-Arch: same\nVersion: {version}\nDepends: libc6 (>= 2.34)\n\
                 Description: {name} for the synthetic host\n This package stands in for the real {name}.\n \
                 It is generated by bellwether's sandbox.\n .\n Its files are not installed.\n\n",
                ["libs", "utils", "admin", "net", "devel"][(h % 5) as usize],
                100 + h % 5000
            );
        }
        // A removed package whose configuration files remain: not installed, not listed.
        s.push_str("Package: old-removed-tool\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 0.9-1\n\n");
        s
    }

    /// Ticks per CPU since boot at USER_HZ = 100.
    fn ticks(&self) -> u64 {
        self.uptime_s * 100
    }

    fn stat(&self) -> String {
        let per_cpu = self.ticks();
        let split = |total: u64| {
            let busy = (total as f64 * self.cpu_busy_ratio) as u64;
            let iowait = (total as f64 * self.cpu_iowait_ratio) as u64;
            let user = busy * 7 / 10;
            let system = busy - user;
            let idle = total.saturating_sub(busy + iowait);
            format!("{user} 0 {system} {idle} {iowait} 0 0 0 0 0")
        };
        let mut s = format!("cpu  {}\n", split(per_cpu * u64::from(self.cpu_count)));
        for i in 0..self.cpu_count {
            let _ = writeln!(s, "cpu{i} {}", split(per_cpu));
        }
        let _ = write!(
            s,
            "intr 123456 0 0\nctxt 987654\nbtime 1700000000\nprocesses 43210\nprocs_running 2\nprocs_blocked 0\nsoftirq 1 2 3\n"
        );
        s
    }

    fn diskstats(&self) -> String {
        let n = self.disks.len().max(1) as u64;
        let read = self.disk_read_bytes_per_s * self.uptime_s / 512 / n;
        let written = self.disk_write_bytes_per_s * self.uptime_s / 512 / n;
        let mut s = String::from("   7       0 loop0 12 0 24 0 0 0 0 0 0 4 0 0 0 0 0 0 0\n");
        for (i, d) in self.disks.iter().enumerate() {
            let part = if d.ends_with(|c: char| c.is_ascii_digit()) {
                format!("{d}p1")
            } else {
                format!("{d}1")
            };
            let major = if d.starts_with("nvme") { 259 } else { 8 };
            let _ = writeln!(s, "{major:4} {:7} {d} {} 10 {read} 3000 {} 20 {written} 9000 0 4000 12000 0 0 0 0 0 0", i * 16, read / 8, written / 8);
            let _ = writeln!(s, "{major:4} {:7} {part} {} 10 {read} 3000 {} 20 {written} 9000 0 4000 12000 0 0 0 0 0 0", i * 16 + 1, read / 8, written / 8);
        }
        s
    }

    fn net_dev(&self) -> String {
        let mut s = String::from(
            "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n",
        );
        let lo = 1000 * self.uptime_s;
        let _ = writeln!(
            s,
            "    lo: {lo} {} 0 0 0 0 0 0 {lo} {} 0 0 0 0 0 0",
            lo / 100,
            lo / 100
        );
        let n = self.interfaces.len().max(1) as u64;
        for i in &self.interfaces {
            let rx = self.net_rx_bytes_per_s * self.uptime_s / n;
            let tx = self.net_tx_bytes_per_s * self.uptime_s / n;
            let _ = writeln!(
                s,
                "{:>6}: {rx} {} 0 0 0 0 0 0 {tx} {} 0 0 0 0 0 0",
                i.name,
                rx / 900,
                tx / 900
            );
        }
        s
    }

    fn proc_net_tcp(&self) -> (String, String) {
        let mut t4 = String::from(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
        );
        let mut t6 = String::from(
            "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
        );
        let (mut n4, mut n6) = (0, 0);
        for a in &self.listening {
            let (t, n, zero) = match a {
                SocketAddr::V4(_) => (&mut t4, &mut n4, "00000000:0000"),
                SocketAddr::V6(_) => (&mut t6, &mut n6, "00000000000000000000000000000000:0000"),
            };
            let _ = writeln!(t, "{:4}: {} {zero} 0A 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 100 0 0 10 0", n, format_proc_net_addr(a), 10_000 + *n);
            *n += 1;
        }
        // One established connection, which is not a listener.
        let _ = writeln!(t4, "{n4:4}: 0100007F:A0B2 0100007F:0016 01 00000000:00000000 00:00000000 00000000  1000        0 99999 1 0000000000000000 20 4 30 10 -1");
        (t4, t6)
    }
}

/// Writes the host root of `spec` under `dir`, creating directories as needed. Each file is
/// written to a temporary name and renamed into place.
pub fn write_host_root(dir: &Path, spec: &HostSpec) -> std::io::Result<()> {
    write_files(dir, &spec.render())
}

/// Rewrites only the files that change while a host runs (load, memory, CPU and IO counters,
/// pressure), as the sandbox does between agent collections.
pub fn write_dynamic_files(dir: &Path, spec: &HostSpec) -> std::io::Result<()> {
    let mut root = spec.render();
    root.files.retain(|k, _| {
        matches!(
            k.as_str(),
            "proc/loadavg" | "proc/meminfo" | "proc/stat" | "proc/diskstats" | "proc/net/dev"
        ) || k.starts_with("proc/pressure/")
    });
    write_files(dir, &root)
}

fn write_files(dir: &Path, root: &MemRoot) -> std::io::Result<()> {
    for (rel, text) in &root.files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("bellwether-tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// The profile that collecting the root of `spec` gives (without dependency probes, so
/// `dependencies` is empty, and with `collected_at_ms` of the call).
pub fn profile_of(spec: &HostSpec) -> HostProfile {
    collect_from(&spec.render(), &CollectOptions::default(), None)
}

/// A copy of `p` with a few random, realistic changes, for benchmarks and property tests: up to
/// five package version changes of every size, sometimes a package added or removed, every
/// metric moved by up to ±60 %, and now and then a slower or unreachable dependency or a new
/// DNS resolver.
pub fn perturb(p: &HostProfile, r: &mut SplitMix64) -> HostProfile {
    let mut c = p.clone();
    if let Some(pkgs) = c.packages.as_mut() {
        let n = pkgs.len() as u64;
        for _ in 0..r.below(6) {
            if n == 0 {
                break;
            }
            let i = r.below(n) as usize;
            if let Some(v) = pkgs.values_mut().nth(i) {
                let level = [
                    ChangeLevel::Revision,
                    ChangeLevel::Patch,
                    ChangeLevel::Patch,
                    ChangeLevel::Minor,
                    ChangeLevel::Major,
                ][r.below(5) as usize];
                *v = crate::version::bump(v, level, r.below(8) != 0);
            }
        }
        match r.below(10) {
            0 => {
                pkgs.insert(format!("extra-tool-{}", r.below(100)), "1.0.0-1".to_owned());
            }
            1 if n > 0 => {
                let i = r.below(n) as usize;
                if let Some(k) = pkgs.keys().nth(i).cloned() {
                    pkgs.remove(&k);
                }
            }
            _ => {}
        }
    }
    for v in c.metrics.values_mut() {
        *v = (*v * (0.4 + 1.2 * r.unit())).max(0.0);
    }
    for d in &mut c.dependencies {
        match r.below(10) {
            0 => {
                d.reachable = false;
                d.latency_ms = None;
            }
            1 | 2 => d.latency_ms = d.latency_ms.map(|l| l * (1.0 + 5.0 * r.unit())),
            _ => {}
        }
    }
    if r.below(20) == 0 {
        if let Some(net) = c.network.as_mut() {
            net.dns_resolvers.push("192.0.2.53".to_owned());
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::{collect, metric, CpuSampler};

    #[test]
    fn generation_is_deterministic_and_varied() {
        let a = HostSpec::generate(7, "web-1", 300);
        assert_eq!(a, HostSpec::generate(7, "web-1", 300));
        assert_eq!(a.packages.len(), 300);
        let specs: Vec<HostSpec> = (0..20).map(|s| HostSpec::generate(s, "h", 300)).collect();
        let releases: std::collections::BTreeSet<_> =
            specs.iter().map(|s| s.os_version_id.clone()).collect();
        let cpus: std::collections::BTreeSet<_> = specs.iter().map(|s| s.cpu_count).collect();
        assert!(releases.len() >= 3, "{releases:?}");
        assert!(cpus.len() >= 3, "{cpus:?}");
        assert_eq!(a.render(), HostSpec::generate(7, "web-1", 300).render());
    }

    #[test]
    fn written_root_collects_to_profile_of() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = HostSpec::generate(42, "db-3", 250);
        spec.dependencies
            .push(("db".into(), "127.0.0.1:5432".into()));
        write_host_root(dir.path(), &spec).unwrap();
        let mut from_disk = collect(dir.path(), &CollectOptions::default());
        let mut expected = profile_of(&spec);
        from_disk.collected_at_ms = 0;
        expected.collected_at_ms = 0;
        assert_eq!(from_disk, expected);
        assert!(from_disk.notes.is_empty(), "{:?}", from_disk.notes);
        let deps = crate::deps::read_declared_dependencies(dir.path()).unwrap();
        assert_eq!(deps.len(), 1);
    }

    #[test]
    fn profile_reflects_the_spec() {
        let spec = HostSpec::generate(3, "app-9", 200);
        let p = profile_of(&spec);
        assert_eq!(p.hostname.as_deref(), Some("app-9"));
        let os = p.os.as_ref().unwrap();
        assert_eq!(
            (os.id.as_str(), os.version_id.as_deref()),
            (spec.os_id.as_str(), Some(spec.os_version_id.as_str()))
        );
        assert_eq!(p.kernel.as_deref(), Some(spec.kernel.as_str()));
        assert_eq!(p.packages.as_ref().unwrap(), &spec.packages);
        let hw = p.hardware.as_ref().unwrap();
        assert_eq!(hw.cpu_count, Some(spec.cpu_count));
        assert_eq!(hw.memory_total_kb, Some(spec.memory_total_kb));
        assert_eq!(hw.disks, spec.disks);
        let net = p.network.as_ref().unwrap();
        assert_eq!(net.dns_resolvers, spec.dns_resolvers);
        assert_eq!(net.interfaces.len(), spec.interfaces.len() + 1);
        let mut listening: Vec<String> = spec.listening.iter().map(|a| a.to_string()).collect();
        listening.sort();
        assert_eq!(net.listening, listening);
        assert_eq!(p.metrics[metric::LOAD1], spec.load[0]);
        assert_eq!(p.metrics[metric::PSI_IO_SOME_AVG10], spec.psi_some[2]);
        assert!(p.metrics.contains_key("psi_cpu_full_avg10"));
        let ratio = spec.memory_available_kb as f64 / spec.memory_total_kb as f64;
        assert!((p.metrics[metric::MEMORY_AVAILABLE_RATIO] - ratio).abs() < 1e-12);
    }

    #[test]
    fn sampler_sees_the_spec_rates_when_uptime_advances() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = HostSpec::generate(11, "h", 50);
        write_host_root(dir.path(), &spec).unwrap();
        let mut s = CpuSampler::new();
        let first = s.collect(dir.path(), &CollectOptions::default());
        assert!(!first.metrics.contains_key(metric::CPU_BUSY_RATIO));
        // No time passed: no rates, and the first reading is kept.
        let again = s.collect(dir.path(), &CollectOptions::default());
        assert!(!again.metrics.contains_key(metric::CPU_BUSY_RATIO));
        spec.uptime_s += 10;
        write_dynamic_files(dir.path(), &spec).unwrap();
        let second = s.collect(dir.path(), &CollectOptions::default());
        let m = &second.metrics;
        assert!(
            (m[metric::CPU_BUSY_RATIO] - spec.cpu_busy_ratio).abs() < 0.01,
            "{m:?}"
        );
        assert!(
            (m[metric::CPU_IOWAIT_RATIO] - spec.cpu_iowait_ratio).abs() < 0.01,
            "{m:?}"
        );
        let rel = |k: &str, want: u64| (m[k] - want as f64).abs() / want as f64;
        assert!(
            rel(metric::DISK_READ_BYTES_PER_S, spec.disk_read_bytes_per_s) < 0.01,
            "{m:?}"
        );
        assert!(
            rel(metric::DISK_WRITE_BYTES_PER_S, spec.disk_write_bytes_per_s) < 0.01,
            "{m:?}"
        );
        assert!(
            rel(metric::NET_RX_BYTES_PER_S, spec.net_rx_bytes_per_s) < 0.01,
            "{m:?}"
        );
        assert!(
            rel(metric::NET_TX_BYTES_PER_S, spec.net_tx_bytes_per_s) < 0.01,
            "{m:?}"
        );
    }

    #[test]
    fn drift_injection_changes_the_profile() {
        let mut spec = HostSpec::generate(5, "h", 100);
        let name = spec.packages.keys().next().unwrap().clone();
        let before = spec.packages[&name].clone();
        spec.apply(&Drift::UpgradePackage {
            name: name.clone(),
            level: ChangeLevel::Major,
        });
        assert_ne!(spec.packages[&name], before);
        spec.apply(&Drift::Resolvers(vec!["192.0.2.53".into()]));
        spec.apply(&Drift::Load([9.0, 8.0, 7.0]));
        spec.apply(&Drift::SetDependency {
            name: "db".into(),
            endpoint: "127.0.0.1:1".into(),
        });
        spec.apply(&Drift::SetDependency {
            name: "db".into(),
            endpoint: "127.0.0.1:2".into(),
        });
        let p = profile_of(&spec);
        assert_eq!(p.network.unwrap().dns_resolvers, vec!["192.0.2.53"]);
        assert_eq!(p.metrics[metric::LOAD5], 8.0);
        assert_eq!(
            spec.dependencies,
            vec![("db".to_owned(), "127.0.0.1:2".to_owned())]
        );
    }
}
