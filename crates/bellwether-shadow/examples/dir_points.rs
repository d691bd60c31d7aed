//! Directory shadow figures for BENCHMARKS.md: the cost of a point in time and space per GB
//! changed, the deduplication of 24 hourly points under a given churn, and the shadow's size
//! against the data's.
//!
//!     cargo run --release -p bellwether-shadow --example dir_points -- [SIZE_MIB] [HOURS] [CHURN_PCT] [MIX] [SEED]
//!
//! Defaults: 1024 MiB, 24 "hours", 1 % of the data's bytes changed per hour, mix `mixed`
//! (by bytes changed: 40 % appends, 30 % whole files rewritten, 30 % small in-place edits of
//! 4–32 KiB), seed 7. `files` churns by appends and whole-file rewrites only, `edits` by small
//! in-place edits only (the worst case for chunking: each edit re-stores the chunk(s) it
//! touches). A full shadow is measured over 3 hours only (each of its points reads every
//! file). Hours are simulated: the churn of an hour is applied, then a point is taken.
//! The data is incompressible random bytes in files of 64 KiB to 8 MiB.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bellwether_shadow::dir::DirShadow;
use bellwether_shadow::drill::rng::{noise, Rng};
use bellwether_shadow::point::{Retention, Source};
use bellwether_shadow::{Reason, RestoreRequest, Shadow, ShadowOptions, ShadowType, Target};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size_mib: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let hours: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(24);
    let churn_pct: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let mix = args.get(3).cloned().unwrap_or_else(|| "mixed".into());
    let seed: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(7);
    if !["mixed", "files", "edits"].contains(&mix.as_str()) {
        eprintln!("MIX is mixed, files or edits");
        std::process::exit(2);
    }
    let work = std::env::temp_dir().join(format!("bw-dir-points-{}", std::process::id()));
    let data = work.join("data");
    fs::create_dir_all(&data).expect("work dir");
    let mut rng = Rng::new(seed);
    let size = size_mib << 20;

    // The data.
    let t = Instant::now();
    let mut files: Vec<(PathBuf, u64)> = Vec::new();
    let mut total = 0u64;
    let mut n = 0;
    while total < size {
        // Log-uniform between 64 KiB and 8 MiB.
        let len = (65536f64 * 128f64.powf(rng.below(1_000_000) as f64 / 1e6)) as u64;
        let len = len.min(size - total).max(1);
        let p = data.join(format!("d{:02}/f{n:05}.bin", n % 16));
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, noise(rng.next_u64(), len as usize)).expect("write");
        files.push((p, len));
        total += len;
        n += 1;
    }
    println!(
        "data: {} files, {:.1} MiB, written in {:.1} s; churn {churn_pct} %/h ({mix}), {hours} hours, seed {seed}",
        files.len(),
        total as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );

    // A full point reads the whole tree every time: three of them show its cost.
    for (stype, h) in [
        (ShadowType::Differential, hours),
        (ShadowType::Full, hours.min(3)),
    ] {
        bench(
            &work, &data, &mut files, stype, h, churn_pct, &mix, &mut rng,
        );
    }
    let _ = fs::remove_dir_all(&work);
}

#[allow(clippy::too_many_arguments)]
fn bench(
    work: &Path,
    data: &Path,
    files: &mut [(PathBuf, u64)],
    stype: ShadowType,
    hours: u32,
    churn_pct: f64,
    mix: &str,
    rng: &mut Rng,
) {
    let shadow = work.join(format!("shadow-{stype}"));
    let t = Instant::now();
    let mut sh = DirShadow::start(&ShadowOptions {
        dir: shadow.clone(),
        source: Source::Path(data.to_path_buf()),
        shadow_type: stype,
        points_every: None,
        retention: Retention::default(),
        poll: None,
        clones: bellwether_shadow::point::Clones::Auto,
    })
    .expect("start");
    let base_s = t.elapsed().as_secs_f64();
    let data_bytes: u64 = files.iter().map(|f| f.1).sum();
    let base_usage = sh.store().disk_usage().expect("usage");
    println!(
        "\n{stype}: base point {:.2} s ({:.0} MB/s), shadow {:.1} MiB",
        base_s,
        data_bytes as f64 / 1e6 / base_s,
        base_usage as f64 / 1048576.0
    );
    println!("hour  changed_MiB  point_ms  files_read  read_MiB  new_MiB  shadow/data");
    let mut changed_total = 0u64;
    let mut new_total = 0u64;
    let mut point_s = Vec::new();
    let mut logical = 0u64;
    let mut read_total = 0u64;
    for h in 1..=hours {
        let target = (data_bytes as f64 * churn_pct / 100.0) as u64;
        let changed = churn(files, target, mix, rng);
        let t = Instant::now();
        let m = sh.take_point(Reason::Schedule).expect("point");
        let dt = t.elapsed().as_secs_f64();
        let usage = sh.store().disk_usage().expect("usage");
        let now_data: u64 = files.iter().map(|f| f.1).sum();
        changed_total += changed;
        new_total += m.new_bytes;
        point_s.push(dt);
        logical += m.bytes;
        let walk = sh.last_walk.clone().unwrap_or_default();
        read_total += walk.bytes_read;
        println!(
            "{h:>4}  {:>11.1}  {:>8.0}  {:>10}  {:>8.1}  {:>7.1}  {:>11.3}",
            changed as f64 / 1048576.0,
            dt * 1e3,
            walk.files_read,
            walk.bytes_read as f64 / 1048576.0,
            m.new_bytes as f64 / 1048576.0,
            usage as f64 / now_data as f64
        );
    }
    let usage = sh.store().disk_usage().expect("usage");
    let now_data: u64 = files.iter().map(|f| f.1).sum();
    point_s.sort_by(f64::total_cmp);
    let median = point_s[point_s.len() / 2];
    println!(
        "{stype} summary: point median {:.0} ms, max {:.0} ms, for {:.1} MiB changed and {:.1} MiB read per point; new bytes stored {:.2} GB per GB changed; \
         after {hours} points the shadow is {:.3} × the data ({:.1} MiB for {:.1} MiB); dedup ratio (logical bytes of the {hours} points / bytes stored) {:.1}",
        median * 1e3,
        point_s.last().copied().unwrap_or(0.0) * 1e3,
        changed_total as f64 / 1048576.0 / hours as f64,
        read_total as f64 / 1048576.0 / hours as f64,
        new_total as f64 / changed_total as f64,
        usage as f64 / now_data as f64,
        usage as f64 / 1048576.0,
        now_data as f64 / 1048576.0,
        logical as f64 / usage as f64,
    );
    if stype == ShadowType::Differential {
        // Restores: the base point, then the last one (each of its chunks rebuilt from up to
        // CHUNK_CHAIN other objects), which leaves the data as it is now for the next run.
        let points = sh.store().points().expect("points");
        drop(sh);
        for (label, m) in [("base", points.first()), ("last", points.last())] {
            let m = m.expect("a point");
            let t = Instant::now();
            let r = bellwether_shadow::restore(&RestoreRequest {
                dir: shadow.clone(),
                target: Target::Point(m.id()),
                dest: data.to_path_buf(),
                elsewhere: false,
            })
            .expect("restore");
            println!(
                "restore of the {label} point (p{}): {:.2} s for {:.1} MiB",
                m.seq,
                t.elapsed().as_secs_f64(),
                r.bytes as f64 / 1048576.0
            );
        }
    }
}

/// Changes about `target` bytes; returns the bytes changed.
fn churn(files: &mut [(PathBuf, u64)], target: u64, mix: &str, rng: &mut Rng) -> u64 {
    let mut changed = 0;
    while changed < target {
        let i = rng.below(files.len() as u64) as usize;
        let (path, len) = files[i].clone();
        let roll = rng.below(100);
        let op = match mix {
            "edits" => 2,
            "files" => {
                if roll < 57 {
                    0
                } else {
                    1
                }
            }
            _ => {
                if roll < 40 {
                    0
                } else if roll < 70 {
                    1
                } else {
                    2
                }
            }
        };
        match op {
            0 => {
                let n = rng.range(16 << 10, 256 << 10);
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .expect("open");
                f.write_all(&noise(rng.next_u64(), n as usize))
                    .expect("append");
                files[i].1 += n;
                changed += n;
            }
            1 => {
                if len > 2 * (target - changed) + (1 << 20) {
                    continue;
                }
                let tmp = path.with_extension("tmp");
                fs::write(&tmp, noise(rng.next_u64(), len as usize)).expect("write");
                fs::rename(&tmp, &path).expect("rename");
                changed += len;
            }
            _ => {
                let n = rng.range(4 << 10, 32 << 10).min(len);
                let at = rng.below(len - n + 1);
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open");
                f.seek(SeekFrom::Start(at)).expect("seek");
                f.write_all(&noise(rng.next_u64(), n as usize))
                    .expect("edit");
                changed += n;
            }
        }
    }
    changed
}
