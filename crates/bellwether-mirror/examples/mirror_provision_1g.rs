//! Benchmark: time to provision a mirror of a 1 GiB dataset through the local process driver
//! (`LocalProcess`), against the plain tools on the same primary in the same run.
//!
//! - Redis: a primary filled with `DEBUG POPULATE` (`SIZE_MIB` MiB of values, default 1024, in
//!   1 KiB values). Timed: `LocalProcess::provision` (returns once `master_link_status:up`)
//!   and a plain `redis-server --replicaof` polled every 20 ms for the same condition. Both
//!   include the primary's `repl-diskless-sync-delay` (5 s by default, left as it is).
//! - PostgreSQL: a primary with one table of rows of 992 bytes of text (not compressible by
//!   TOAST at that size) until the database holds about `SIZE_MIB` MiB, then `CHECKPOINT`.
//!   Timed: `LocalProcess::provision` (`pg_basebackup -R -X stream -c fast --no-sync`, then
//!   `pg_ctl start`, returns once the standby streams), a plain `pg_basebackup -X stream -c
//!   fast` (it syncs the copy at the end, its default), and the same with `--no-sync` (the
//!   copy the driver makes, without the standby's start).
//!
//! `ROUNDS` rounds (default 2), the order of the timed steps reversed every other round. `KIND`
//! = `redis`, `postgres` or both (default).
//!
//! ```sh
//! cargo run --release -p bellwether-mirror --features drill --example mirror_provision_1g
//! ```

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bellwether_mirror::resp::Conn;
use bellwether_mirror::testing::TestRedis;
use bellwether_mirror::{DepKind, LocalProcess, ProvisionRequest, Provisioner};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> Result<u16, String> {
    bellwether_pg::listen_port().map_err(|e| e.to_string())
}

async fn info(endpoint: &str, section: &str) -> Result<String, String> {
    let mut c = Conn::connect(endpoint, Duration::from_secs(5))
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let v = c
        .cmd_within(&["INFO", section], Duration::from_secs(30))
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    v.as_text().ok_or_else(|| format!("INFO answered {v:?}"))
}

fn field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
}

async fn driver_mirror(
    p: &LocalProcess,
    kind: DepKind,
    primary: &str,
    id: &str,
) -> Result<f64, String> {
    let req = ProvisionRequest {
        dependency: "bench".into(),
        kind,
        primary: primary.to_string(),
        instance_id: id.to_string(),
        port: None,
    };
    let t = Instant::now();
    let inst = p.provision(&req).await.map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    p.retire(&inst).await.map_err(|e| e.to_string())?;
    Ok(secs)
}

/// A plain `redis-server --replicaof`, timed until its link is up with the sync done.
async fn plain_redis_replica(primary_port: u16, dir: &Path) -> Result<f64, String> {
    let port = free_port()?;
    let t = Instant::now();
    let mut child = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--replicaof", "127.0.0.1", &primary_port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("redis-server: {e}"))?;
    let ep = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(600);
    let secs = loop {
        if let Ok(text) = info(&ep, "replication").await {
            if field(&text, "master_link_status").as_deref() == Some("up")
                && field(&text, "master_sync_in_progress").as_deref() == Some("0")
            {
                break t.elapsed().as_secs_f64();
            }
        }
        if Instant::now() > deadline {
            return Err("the plain replica did not sync within 600 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.kill().await;
    Ok(secs)
}

async fn redis(rounds: u64, mib: u64) -> Result<serde_json::Value, String> {
    let primary =
        tokio::task::spawn_blocking(|| TestRedis::try_start(&["--enable-debug-command", "yes"]))
            .await
            .map_err(|e| e.to_string())??;
    let ep = primary.endpoint();
    let keys = mib * 1024;
    let t = Instant::now();
    {
        let mut c = Conn::connect(&ep, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        c.cmd_within(
            &["DEBUG", "POPULATE", &keys.to_string(), "bench", "1024"],
            Duration::from_secs(600),
        )
        .await
        .map_err(|e| format!("DEBUG POPULATE: {e}"))?;
    }
    let fill_s = t.elapsed().as_secs_f64();
    let mem = info(&ep, "memory").await?;
    let used = field(&mem, "used_memory").unwrap_or_default();
    let dataset = field(&mem, "used_memory_dataset").unwrap_or_default();
    let work = tempfile::Builder::new()
        .prefix("bw-prov-redis-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let _cleanup = support::KillUnder(work.path().to_path_buf());
    let p =
        LocalProcess::new(work.path().join("mirrors")).with_ready_timeout(Duration::from_secs(600));
    let mut driver = Vec::new();
    let mut plain = Vec::new();
    for r in 0..rounds {
        let pd = work.path().join(format!("plain{r}"));
        std::fs::create_dir_all(&pd).map_err(|e| e.to_string())?;
        let id = format!("m{r}");
        if r % 2 == 0 {
            driver.push(driver_mirror(&p, DepKind::Redis, &ep, &id).await?);
            plain.push(plain_redis_replica(primary.port, &pd).await?);
        } else {
            plain.push(plain_redis_replica(primary.port, &pd).await?);
            driver.push(driver_mirror(&p, DepKind::Redis, &ep, &id).await?);
        }
        println!(
            "  redis round {}: driver {:.2} s, plain --replicaof {:.2} s",
            r + 1,
            driver[r as usize],
            plain[r as usize]
        );
        let _ = std::fs::remove_dir_all(&pd);
    }
    Ok(serde_json::json!({
        "kind": "redis", "keys": keys, "value_bytes": 1024, "fill_s": fill_s,
        "used_memory": used, "used_memory_dataset": dataset,
        "local_process_s": driver, "plain_replicaof_s": plain,
    }))
}

fn chown_pg(path: &Path) -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    let u = nix::unistd::User::from_name("postgres")
        .map_err(|e| e.to_string())?
        .ok_or("no postgres user")?;
    nix::unistd::chown(path, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())
}

fn pg_argv(bin: &Path, args: &[String]) -> Vec<String> {
    let mut argv = Vec::new();
    if nix::unistd::Uid::effective().is_root() {
        argv.extend(["runuser", "-u", "postgres", "--"].map(String::from));
    }
    argv.push(bin.display().to_string());
    argv.extend(args.iter().cloned());
    argv
}

fn plain_basebackup(bindir: &Path, port: u16, dir: &Path, no_sync: bool) -> Result<f64, String> {
    let mut args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-D",
        &dir.display().to_string(),
        "-X",
        "stream",
        "-c",
        "fast",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if no_sync {
        args.push("--no-sync".into());
    }
    let argv = pg_argv(&bindir.join("pg_basebackup"), &args);
    let t = Instant::now();
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| format!("pg_basebackup: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(secs)
}

async fn postgres(rounds: u64, mib: u64) -> Result<serde_json::Value, String> {
    let primary = tokio::task::spawn_blocking(|| {
        bellwether_pg::testing::TestCluster::try_start(bellwether_pg::testing::TestClusterOptions {
            conf: vec![
                ("wal_level".into(), "replica".into()),
                ("max_wal_size".into(), "'2GB'".into()),
            ],
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let ep = format!("127.0.0.1:{}", primary.port);
    let c = support::pg_connect(&ep).await?;
    // 7 rows of ~1 KiB a page: rows for `mib` MiB.
    let rows = mib * 1024 * 1024 / 8192 * 7;
    let t = Instant::now();
    c.batch_execute(&format!(
        "CREATE TABLE bench AS SELECT g AS id, repeat(md5(g::text), 31) AS pad FROM generate_series(1, {rows}) g; CHECKPOINT"
    ))
    .await
    .map_err(|e| format!("filling the primary: {e}"))?;
    let fill_s = t.elapsed().as_secs_f64();
    let size: i64 = c
        .query_one(
            "SELECT sum(pg_database_size(datname))::bigint FROM pg_database",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let work = tempfile::Builder::new()
        .prefix("bw-prov-pg-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let _cleanup = support::KillUnder(work.path().to_path_buf());
    chown_pg(work.path())?;
    let p =
        LocalProcess::new(work.path().join("mirrors")).with_ready_timeout(Duration::from_secs(600));
    let (mut driver, mut plain, mut plain_nosync) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let id = format!("m{r}");
        let d1 = work.path().join(format!("plain{r}"));
        let d2 = work.path().join(format!("plainns{r}"));
        let bindir = primary.bindir.clone();
        let port = primary.port;
        if r % 2 == 0 {
            driver.push(driver_mirror(&p, DepKind::Postgres, &ep, &id).await?);
            plain.push(plain_basebackup(&bindir, port, &d1, false)?);
            plain_nosync.push(plain_basebackup(&bindir, port, &d2, true)?);
        } else {
            plain_nosync.push(plain_basebackup(&bindir, port, &d2, true)?);
            plain.push(plain_basebackup(&bindir, port, &d1, false)?);
            driver.push(driver_mirror(&p, DepKind::Postgres, &ep, &id).await?);
        }
        let i = r as usize;
        println!(
            "  postgres round {}: driver {:.2} s, plain pg_basebackup {:.2} s, with --no-sync {:.2} s",
            r + 1,
            driver[i],
            plain[i],
            plain_nosync[i]
        );
    }
    drop(c);
    Ok(serde_json::json!({
        "kind": "postgres", "rows": rows, "database_bytes": size, "fill_s": fill_s,
        "local_process_s": driver, "plain_pg_basebackup_s": plain,
        "plain_pg_basebackup_no_sync_s": plain_nosync,
    }))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (rounds, mib) = (env("ROUNDS", 2), env("SIZE_MIB", 1024));
    let kind = std::env::var("KIND").unwrap_or_default();
    let mut failed = false;
    if kind.is_empty() || kind == "redis" {
        match rt.block_on(redis(rounds, mib)) {
            Ok(r) => println!("{}", serde_json::to_string(&r).unwrap_or_default()),
            Err(e) => {
                eprintln!("redis: {e}");
                failed = true;
            }
        }
    }
    if kind.is_empty() || kind == "postgres" {
        match rt.block_on(postgres(rounds, mib)) {
            Ok(r) => println!("{}", serde_json::to_string(&r).unwrap_or_default()),
            Err(e) => {
                eprintln!("postgres: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
