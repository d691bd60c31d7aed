//! `bellwether bench profile`: the time to collect one host profile, as the agent does every
//! interval, with `dpkg-query -W` timed as the peer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bellwether_drift::collect::{CollectOptions, CpuSampler};
use bellwether_drift::deps::{merge_dependencies, read_declared_dependencies};

use crate::{BenchError, Context as _, Result, Verdict};

/// Time the collection of one profile, as the agent does it every few seconds.
#[derive(Debug, Clone)]
pub struct Options {
    /// The host root to collect; `/` is this machine.
    pub rootfs: PathBuf,
    /// Collect from a synthetic host root with this many packages (written to a temporary
    /// directory and removed afterwards) instead of --rootfs.
    pub synthetic_packages: Option<usize>,
    /// How many collections to time, after 5 untimed warm-up runs.
    pub iterations: usize,
    /// Also watch this file (relative to the root), as the agent does with --watch-file or
    /// --protect; repeatable. With --synthetic-packages, the file is written into the
    /// synthetic root first (a 4 KiB configuration file).
    pub watch_files: Vec<String>,
    /// How many `dpkg-query -W` runs to time as the peer (0 to skip).
    pub peer_iterations: usize,
}

pub fn run(args: &Options) -> Result<Verdict> {
    if args.iterations == 0 {
        return Err(BenchError::Usage("--iterations must be at least 1".into()));
    }
    let tmp;
    let rootfs = match args.synthetic_packages {
        Some(n) => {
            tmp = TempRoot::new()?;
            let spec = bellwether_drift::synth::HostSpec::generate(1, "bench-1", n);
            bellwether_drift::synth::write_host_root(&tmp.0, &spec)
                .context("writing the synthetic host root")?;
            for rel in &args.watch_files {
                let path = tmp.0.join(rel);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let conf = "# a configuration file of 4 KiB\n".repeat(128);
                std::fs::write(&path, conf)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            tmp.0.clone()
        }
        None => args.rootfs.clone(),
    };
    let mut opts = options(&rootfs, Duration::from_millis(500))?;
    opts.watch_files = args.watch_files.clone();
    // The agent keeps a sampler, so the benchmark does too: the figures include the rates.
    let mut sampler = CpuSampler::new();
    let mut last = None;
    for _ in 0..5 {
        last = Some(sampler.collect(&rootfs, &opts));
    }
    let mut times = Vec::with_capacity(args.iterations);
    let cpu0 = crate::drift::thread_cpu_time();
    for _ in 0..args.iterations {
        let t = Instant::now();
        let p = sampler.collect(&rootfs, &opts);
        times.push(t.elapsed());
        last = Some(p);
    }
    let cpu = match (cpu0, crate::drift::thread_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let p = last.expect("at least one collection ran");
    println!(
        "collected {} from {}: {} packages, {} metrics, {} watched files, {} notes",
        args.iterations,
        rootfs.display(),
        p.packages.as_ref().map_or(0, |m| m.len()),
        p.metrics.len(),
        p.files.len(),
        p.notes.len()
    );
    println!("profile collection: {}", stats(&mut times));
    if let Some(cpu) = cpu {
        println!(
            "CPU time a collection: mean {:.3} ms (user and kernel, this thread)",
            cpu.as_secs_f64() * 1000.0 / args.iterations as f64
        );
    }
    let status = rootfs.join("var/lib/dpkg/status");
    if args.peer_iterations > 0 && status.exists() {
        let admindir = rootfs.join("var/lib/dpkg");
        let mut peer = Vec::new();
        for _ in 0..args.peer_iterations {
            let t = Instant::now();
            let out = std::process::Command::new("dpkg-query")
                .arg(format!("--admindir={}", admindir.display()))
                .args(["-W", "-f", "${Package} ${Version}\n"])
                .output();
            match out {
                Ok(o) if o.status.success() => peer.push(t.elapsed()),
                Ok(o) => {
                    println!("peer dpkg-query -W: failed ({})", o.status);
                    break;
                }
                Err(e) => {
                    println!("peer dpkg-query -W: not run ({e})");
                    break;
                }
            }
        }
        if !peer.is_empty() {
            println!(
                "peer `dpkg-query -W` (packages only, one process each): {}",
                stats(&mut peer)
            );
        }
    }
    let osquery = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("osqueryi").is_file()))
        .unwrap_or(false);
    if !osquery {
        println!("peer osqueryi: not installed on this machine");
    }
    Ok(Verdict::Met)
}

/// `mean … p50 … p99 … max …` in milliseconds; sorts `times`.
pub fn stats(times: &mut [Duration]) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = times.len();
    let mean = times.iter().map(|d| ms(*d)).sum::<f64>() / n as f64;
    let pct = |q: f64| ms(times[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]);
    format!(
        "mean {mean:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n={n})",
        pct(0.5),
        pct(0.99),
        ms(times[n - 1])
    )
}

/// A directory under the system's temporary directory, removed on drop.
struct TempRoot(PathBuf);

impl TempRoot {
    fn new() -> Result<TempRoot> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("bellwether-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempRoot(dir))
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the agent collects with: the root's declared dependencies, no labels.
fn options(rootfs: &Path, timeout: Duration) -> Result<CollectOptions> {
    let declared =
        read_declared_dependencies(rootfs).map_err(|e| BenchError::Usage(e.to_string()))?;
    Ok(CollectOptions {
        dependencies: merge_dependencies(&[&declared]),
        probe_timeout: timeout,
        labels: BTreeMap::new(),
        watch_files: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_percentiles() {
        let mut t: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(
            stats(&mut t),
            "mean 50.500 ms, p50 50.000 ms, p99 99.000 ms, max 100.000 ms (n=100)"
        );
    }
}
