//! `bellwether shadow`: data shadows and rollback points on this host (docs/shadow.md).
//!
//! `start` follows a resource in the foreground (a SQLite file, a directory, a PostgreSQL
//! cluster) into a shadow directory and takes points until SIGINT or SIGTERM; `point` takes
//! one now; `points` lists them; `restore` puts one back, beside the live data first;
//! `verify` checks the whole shadow. The kinds are reached through
//! `bellwether_shadow::resource`, one trait for all of them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use bellwether_model::Dur;
use bellwether_shadow::point::{Retention, RunEvent};
use bellwether_shadow::{
    Control, Manifest, PointStore, Reason, ResourceKind, RestoreRequest, ShadowError,
    ShadowOptions, ShadowType, Source, Target, Timestamp,
};
use serde_json::{json, Value};

use super::token::print_table;
use super::{finite_f64, OutputFormat, UsageError};

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Examples:
  bellwether shadow start --path /srv/app.db --type transactional --dir /backup/app --points-every 15m
  bellwether shadow point --dir /backup/app --predicted-by disk-model --failure-at 2026-12-05T18:30:00Z --probability 0.8
  bellwether shadow points --dir /backup/app
  bellwether shadow restore --dir /backup/app --path /srv/app.db --to 2026-12-05T18:14:59Z
  bellwether shadow restore --dir /backup/app --path /srv/app.db --to p42
  bellwether shadow verify --dir /backup/app --deep

Server-managed (kept by an enrolled agent host; paths relative to its root; --server, --token):
  bellwether shadow add orders --host db-1 --path srv/orders.db --type transactional --dir var/shadow/orders \
      --location cell-b=srv/b/orders.db --link srv/current.db
  bellwether shadow start --host db-1 --name uploads --path srv/uploads --kind dir --type differential --dir var/shadow/uploads
  bellwether shadow list
  bellwether shadow show orders
  bellwether shadow predict orders --probability 0.8 --failure-at 2026-12-05T18:30:00Z --source detector
  bellwether shadow rollback orders --to 2026-12-05T18:14:59Z --reason 'bad migration'
  bellwether shadow failure orders --reason 'checksum errors' --failed-at 2026-12-05T18:20:00Z
  bellwether shadow points orders --output json
  bellwether shadow history orders --limit 20
  bellwether shadow remove orders

Times are RFC 3339 (2026-12-05T18:00:00Z, 2026-12-05T19:00:00.25+01:00) or Unix seconds with
a fraction (1796493600.25); a point is p42; `latest` is the newest state the shadow holds.
Exit codes: 0 done, 1 failed (a damaged shadow, a failed check), 2 bad input (a time before
the first point, a shadow of another resource; an unknown shadow, a field out of range), 3 the
source (or the server) could not be reached.
See docs/shadow.md for the concepts (types, points, the shadow directory, retention).")]
pub struct Args {
    // `--server` and `--token`, for the server-managed verbs (add, list, show, rollback,
    // predict, failure, history, points NAME, remove, and start --host).
    #[command(flatten)]
    client: super::token::ClientArgs,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TypeArg {
    /// A complete copy per point.
    Full,
    /// Per point, only what changed since the previous one.
    Differential,
    /// Points plus every commit in between: any commit is a restore target.
    Transactional,
}

impl From<TypeArg> for ShadowType {
    fn from(t: TypeArg) -> ShadowType {
        match t {
            TypeArg::Full => ShadowType::Full,
            TypeArg::Differential => ShadowType::Differential,
            TypeArg::Transactional => ShadowType::Transactional,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClonesArg {
    /// Clones where the file system has them.
    Auto,
    /// Page deltas everywhere.
    Never,
}

impl From<ClonesArg> for bellwether_shadow::Clones {
    fn from(c: ClonesArg) -> bellwether_shadow::Clones {
        match c {
            ClonesArg::Auto => bellwether_shadow::Clones::Auto,
            ClonesArg::Never => bellwether_shadow::Clones::Never,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Follow a resource into a shadow directory, taking points, until SIGINT or SIGTERM.
    ///
    /// A SQLite file (--path FILE) is read while its own writers go on (WAL mode for
    /// transactional shadows); a directory (--path DIR) is stored as content-defined chunks;
    /// a PostgreSQL cluster (--database URL) as a base backup plus its WAL. The first start
    /// writes DIR/shadow.json naming the resource; a later start must name the same one.
    /// Retention thins points as they age and never removes one a restore holds.
    ///
    /// With --host HOST (and --name), the shadow is declared on the server instead and kept
    /// by HOST's agent (`bellwether shadow add`): paths are then relative to the agent's root.
    Start {
        /// Declare a server-managed shadow on this enrolled agent host instead of running
        /// here (see `bellwether shadow add --help`).
        #[arg(long, value_name = "HOST", requires = "name", conflicts_with = "poll")]
        host: Option<String>,
        /// With --host: the shadow's name on the server.
        #[arg(long, requires = "host")]
        name: Option<String>,
        /// With --host and --path: what the path is on the host (sqlite, the default, or dir).
        #[arg(long, value_enum, requires = "host")]
        kind: Option<super::shadow_server::PathKind>,
        /// The SQLite database file or the directory to shadow.
        #[arg(
            long,
            value_name = "FILE|DIR",
            required_unless_present = "database",
            conflicts_with = "database"
        )]
        path: Option<PathBuf>,
        /// The PostgreSQL cluster to shadow (postgres://user@host:port/db; the password
        /// comes from PGPASSWORD or ~/.pgpass and is never stored).
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        #[arg(long = "type", value_enum, value_name = "TYPE")]
        shadow_type: TypeArg,
        /// The shadow directory (created when missing; another disk or host for a real cell).
        #[arg(long, value_name = "SHADOW_DIR")]
        dir: PathBuf,
        /// Take a point this often (`15m`, `1h`); without it, points are taken on request
        /// (`bellwether shadow point`) only.
        #[arg(long, value_name = "DURATION")]
        points_every: Option<Dur>,
        /// How often a transactional shadow looks for new commits (default 10ms).
        #[arg(long, value_name = "DURATION")]
        poll: Option<Dur>,
        /// SQLite: whether a point may be a reflink clone where the shadow directory and the
        /// database share a file system that clones (btrfs, XFS). `auto`: a point costs
        /// milliseconds, and keeps whole every page changed after it (24 hourly points of
        /// 1 % of rows at random take about 2.9 × the data on btrfs). `never`: page deltas,
        /// as on any file system: a point hashes the pages (hundreds of ms for 256 MiB) and
        /// keeps about the bytes that changed (1.29 × for the same points).
        #[arg(long, value_enum, default_value = "auto")]
        clones: ClonesArg,
        /// Keep every point (and every commit) this long.
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        keep_all_for: Dur,
        /// Then the latest point of each hour this long.
        #[arg(long, value_name = "DURATION", default_value = "7d")]
        hourly_for: Dur,
        /// Then the latest point of each day this long; older points go.
        #[arg(long, value_name = "DURATION", default_value = "90d")]
        daily_for: Dur,
    },
    /// Take a point now: asks the running `shadow start`, or takes it itself when none runs.
    Point {
        #[arg(long, value_name = "SHADOW_DIR")]
        dir: PathBuf,
        /// The predictor that expects a failure (marks the point `predicted`).
        #[arg(long, value_name = "NAME", requires_all = ["failure_at", "probability"])]
        predicted_by: Option<String>,
        /// When the failure is expected (RFC 3339 or Unix seconds).
        #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "predicted_by")]
        failure_at: Option<Timestamp>,
        /// How likely the failure is, 0 to 1.
        #[arg(long, value_name = "P", value_parser = finite_f64, requires = "predicted_by")]
        probability: Option<f64>,
        /// How long to wait for the running shadow to take it.
        #[arg(long, value_name = "DURATION", default_value = "60s")]
        timeout: Dur,
        #[arg(long, value_enum, default_value = "human")]
        output: OutputFormat,
    },
    /// List a shadow's points, oldest first: those in a shadow directory here (--dir), or
    /// those a server-managed shadow's agent reported (NAME, from the server).
    Points {
        /// A server-managed shadow's name (asks the server; see `bellwether shadow list`).
        #[arg(conflicts_with = "dir", required_unless_present = "dir")]
        name: Option<String>,
        #[arg(long, value_name = "SHADOW_DIR")]
        dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "human")]
        output: OutputFormat,
    },
    /// Restore the latest consistent state at or before TIME (or point POINT) over the live
    /// data: built beside it, verified (checksums; SQLite's integrity_check), then swapped
    /// in with one rename. Stop the data's writers first. On any error the live data is
    /// untouched.
    Restore {
        #[arg(long, value_name = "SHADOW_DIR")]
        dir: PathBuf,
        /// The live file (or directory) to replace: the one the shadow follows.
        #[arg(long, value_name = "FILE|DIR")]
        path: PathBuf,
        /// A time (RFC 3339 or Unix seconds), a point (`p42`) or `latest`.
        #[arg(long, value_name = "TIME|POINT", value_parser = Target::parse)]
        to: Target,
        /// Restore to a path other than the shadow's source (a copy elsewhere).
        #[arg(long)]
        elsewhere: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: OutputFormat,
    },
    /// Check the whole shadow: every point's checksum, the chain, the commit logs and every
    /// object (with --deep, each object's content is hashed).
    Verify {
        #[arg(long, value_name = "SHADOW_DIR")]
        dir: PathBuf,
        #[arg(long)]
        deep: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: OutputFormat,
    },
    /// Chaos drill: a real writer, a shadow, a fault (corrupt, kill-writer, disk-full), a
    /// restore to the point before it, checked against the writer's log (docs/shadow-drill.md).
    Drill(super::shadow_drill::Args),
    /// Declare a server-managed shadow: the server starts it on HOST's agent, takes points
    /// on schedule and when a failure is predicted, and rolls back on its own.
    ///
    /// Paths are relative to the agent's root. The resource itself is location `primary`;
    /// --location adds cells the data may be restored into and served from, and --link (files)
    /// or --proxy-admin (PostgreSQL) is what a rollback switches. The whole shadow can also
    /// come from a YAML or JSON file (--file; docs/shadow.md shows the shape).
    Add(super::shadow_server::AddArgs),
    /// Every server-managed shadow: host, phase, routed location, points, last rollback.
    List(super::shadow_server::ListArgs),
    /// One server-managed shadow: spec, locations with their merit, predictions, rollbacks.
    Show(super::shadow_server::NameArgs),
    /// Roll a server-managed shadow back now: restore the latest consistent state at or
    /// before --to into the best location by merit (or --location), then switch routing.
    Rollback(super::shadow_server::RollbackArgs),
    /// Tell a server-managed shadow a failure is predicted: at or above the policy's
    /// point_above a point is taken at once; at or above rollback_above it rolls back.
    Predict(super::shadow_server::PredictArgs),
    /// Report a failure of a server-managed shadow's data: its task rolls back on its own
    /// (policy permitting) to the latest point at or before --failed-at, into the best other
    /// location by merit, then switches routing. Repeating it while a rollback runs changes
    /// nothing (it is counted).
    Failure(super::shadow_server::FailureArgs),
    /// A server-managed shadow's rollbacks (oldest first) and its task's events (newest
    /// first): points taken, predictions received, rollbacks started, restored, routed.
    History(super::shadow_server::HistoryArgs),
    /// Stop a server-managed shadow: its task stops it on the agent; the points stay there.
    Remove(super::shadow_server::NameArgs),
}

fn parse_time(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse(s).map_err(|e| e.to_string())
}

/// A shadow error as the CLI reports it: bad input exits 2, an unreadable source 3.
fn shadow_err(e: ShadowError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(e.to_string()).into()
    } else if matches!(e, ShadowError::Source { .. }) {
        super::Unreachable(e.to_string()).into()
    } else {
        e.into()
    }
}

fn resource(kind: ResourceKind) -> anyhow::Result<&'static dyn bellwether_shadow::Resource> {
    bellwether_shadow::resource(kind)
        .ok_or_else(|| anyhow::anyhow!("this build of bellwether has no {kind} shadows"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    use super::shadow_server::{self as server, ServerVerb};
    let client = &args.client;
    match args.verb {
        Verb::Add(a) => server::run(client, ServerVerb::Add(Box::new(a))),
        Verb::List(a) => server::run(client, ServerVerb::List(a)),
        Verb::Show(a) => server::run(client, ServerVerb::Show(a)),
        Verb::Rollback(a) => server::run(client, ServerVerb::Rollback(a)),
        Verb::Predict(a) => server::run(client, ServerVerb::Predict(a)),
        Verb::Remove(a) => server::run(client, ServerVerb::Remove(a)),
        Verb::Failure(a) => server::run(client, ServerVerb::Failure(a)),
        Verb::History(a) => server::run(client, ServerVerb::History(a)),
        Verb::Points {
            name: Some(name),
            output,
            ..
        } => server::run(
            client,
            ServerVerb::Points(server::NameArgs { name, output }),
        ),
        Verb::Start {
            host: Some(host),
            name,
            kind,
            path,
            database,
            shadow_type,
            dir,
            points_every,
            keep_all_for,
            hourly_for,
            daily_for,
            clones,
            ..
        } => {
            let spec = server::spec_from_flags(
                name.as_deref().unwrap_or_default(),
                &server::SpecArgs {
                    host: Some(host),
                    path: path.map(|p| p.display().to_string()),
                    kind,
                    database,
                    shadow_type: Some(shadow_type),
                    dir: Some(dir.display().to_string()),
                    points_every,
                    keep_all: Some(keep_all_for),
                    hourly: Some(hourly_for),
                    daily: Some(daily_for),
                    clones: Some(clones),
                    ..Default::default()
                },
            )?;
            server::declare(client, &spec, OutputFormat::Human)
        }
        Verb::Start {
            path,
            database,
            shadow_type,
            dir,
            points_every,
            poll,
            clones,
            keep_all_for,
            hourly_for,
            daily_for,
            ..
        } => {
            let (kind, source) = match (path, database) {
                (Some(p), _) if p.is_dir() => (ResourceKind::Dir, Source::Path(p)),
                (Some(p), _) => (ResourceKind::Sqlite, Source::Path(p)),
                (None, Some(url)) => (ResourceKind::Postgres, Source::Url(url)),
                (None, None) => return Err(UsageError("give --path or --database".into()).into()),
            };
            if let Some(d) = points_every {
                if d.get() < std::time::Duration::from_secs(1) {
                    return Err(UsageError(format!("--points-every {d} is under 1s")).into());
                }
            }
            if clones == ClonesArg::Never && kind != ResourceKind::Sqlite {
                return Err(UsageError(format!(
                    "--clones applies to SQLite shadows (--path FILE); a {kind} shadow's points are stored as objects either way"
                ))
                .into());
            }
            let opts = ShadowOptions {
                dir: dir.clone(),
                source,
                shadow_type: shadow_type.into(),
                points_every,
                retention: Retention {
                    keep_all_for,
                    hourly_for,
                    daily_for,
                },
                poll,
                clones: clones.into(),
            };
            start(kind, &opts)
        }
        Verb::Point {
            dir,
            predicted_by,
            failure_at,
            probability,
            timeout,
            output,
        } => {
            let reason = match (predicted_by, failure_at, probability) {
                (Some(source), Some(failure_at), Some(probability)) => {
                    if !(0.0..=1.0).contains(&probability) {
                        return Err(UsageError(format!(
                            "--probability {probability} is outside [0, 1]"
                        ))
                        .into());
                    }
                    Reason::Predicted {
                        source,
                        failure_at,
                        probability,
                    }
                }
                _ => Reason::OnDemand,
            };
            point(&dir, reason, timeout, output)
        }
        Verb::Points { dir, output, .. } => match dir {
            Some(dir) => points(&dir, output),
            None => Err(UsageError(
                "give NAME (a server-managed shadow) or --dir SHADOW_DIR".into(),
            )
            .into()),
        },
        Verb::Restore {
            dir,
            path,
            to,
            elsewhere,
            output,
        } => {
            let report = bellwether_shadow::restore(&RestoreRequest {
                dir,
                target: to,
                dest: path,
                elsewhere,
            })
            .map_err(shadow_err)?;
            match output {
                OutputFormat::Json => {
                    let mut v = serde_json::to_value(&report)?;
                    v["restored_to_rfc3339"] = json!(report.restored_to.to_string());
                    v["point_taken_at_rfc3339"] = json!(report.point_taken_at.to_string());
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                OutputFormat::Human => println!(
                    "restored {} to {} (point {} taken {}, {} commits replayed, {} bytes) in {} ms; checked: {}",
                    report.dest.display(),
                    report.restored_to,
                    report.point,
                    report.point_taken_at,
                    report.commits_replayed,
                    report.bytes,
                    report.elapsed_ms,
                    report.checks.join(", ")
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Drill(a) => super::shadow_drill::run(a),
        Verb::Verify { dir, deep, output } => {
            let store = PointStore::open(&dir).map_err(shadow_err)?;
            let report = store.verify(deep).map_err(shadow_err)?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                OutputFormat::Human => println!(
                    "{}: whole: {} points ({} thinned), {} objects ({} bytes{}), {} logged commits",
                    dir.display(),
                    report.points,
                    report.thinned,
                    report.objects,
                    report.bytes,
                    if deep { ", each hashed" } else { "" },
                    report.log_records
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn start(kind: ResourceKind, opts: &ShadowOptions) -> anyhow::Result<ExitCode> {
    let r = resource(kind)?;
    let mut shadow = r.start(opts).map_err(shadow_err)?;
    let points_every = opts.points_every;
    eprintln!(
        "shadowing {} ({kind}, {}) into {}; {}; SIGINT or SIGTERM stops",
        shadow.store().meta().source,
        opts.shadow_type,
        opts.dir.display(),
        match points_every {
            Some(d) => format!("a point every {d}"),
            None => "points on request".into(),
        }
    );
    if let Ok(Some(last)) = shadow.store().points().map(|mut p| p.pop()) {
        print_point_line(&last);
    }
    let ctl = Arc::new(Control::new());
    let runner = {
        let ctl = ctl.clone();
        std::thread::spawn(move || {
            bellwether_shadow::point::run(shadow.as_mut(), points_every, &ctl, &mut |e| match e {
                RunEvent::Point(m) | RunEvent::Image(m) => print_point_line(m),
                RunEvent::Thinned(t) => tracing::info!(
                    removed = t.removed.len(),
                    leased = t.leased.len(),
                    objects_removed = t.gc.objects_removed,
                    "Retention thinned points."
                ),
                RunEvent::Synced(s) => {
                    tracing::debug!(commits = s.commits, bytes = s.bytes, "Synced.")
                }
                RunEvent::Failed(e) => tracing::warn!(error = %e, "Shadow step failed."),
            })
        })
    };
    let rt = super::token::runtime()?;
    let watcher = {
        let ctl = ctl.clone();
        std::thread::spawn(move || {
            rt.block_on(shutdown_signal());
            ctl.stop();
        })
    };
    let result = runner
        .join()
        .map_err(|_| anyhow::anyhow!("the shadow's thread panicked"))?;
    drop(watcher);
    result.map_err(shadow_err)?;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn print_point_line(m: &Manifest) {
    println!(
        "point {} taken {} ({}): {} bytes, {} new, held as {}",
        m.id(),
        m.taken_at,
        m.reason,
        m.bytes,
        m.new_bytes,
        held_as(m)
    );
}

/// How a point's state is held: `objects` (content-addressed, with page deltas), `clone`
/// (copy-on-write), or `log of pN` (taken from the commit log: point N's image and the
/// commits logged since, docs/shadow.md).
fn held_as(m: &Manifest) -> String {
    match &m.from_log {
        Some(f) => format!("log of p{}", f.image),
        None if !m.clones.is_empty() => "clone".into(),
        None => "objects".into(),
    }
}

fn point(
    dir: &std::path::Path,
    reason: Reason,
    timeout: Dur,
    output: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let store = PointStore::open(dir).map_err(shadow_err)?;
    let m = if store.writer_running() {
        let request = store.request_point(&reason).map_err(shadow_err)?;
        store
            .await_request(&request, timeout.get())
            .map_err(shadow_err)?
            .with_context(|| {
                format!(
                    "the running shadow of {} did not take the point within {timeout}",
                    dir.display()
                )
            })?
    } else {
        let meta = store.meta().clone();
        let source = match meta.kind {
            ResourceKind::Postgres => Source::Url(meta.source.clone()),
            _ => Source::Path(PathBuf::from(&meta.source)),
        };
        let mut shadow = resource(meta.kind)?
            .start(&ShadowOptions {
                dir: dir.to_owned(),
                source,
                shadow_type: meta.shadow_type,
                points_every: None,
                retention: meta.retention,
                poll: None,
                clones: bellwether_shadow::point::Clones::Auto,
            })
            .map_err(shadow_err)?;
        shadow.take_point(reason).map_err(shadow_err)?
    };
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&point_json(&m, 0))?),
        OutputFormat::Human => print_point_line(&m),
    }
    Ok(ExitCode::SUCCESS)
}

fn point_json(m: &Manifest, log_bytes: u64) -> Value {
    json!({
        "id": m.id().to_string(),
        "seq": m.seq,
        "taken_at": m.taken_at.to_string(),
        "taken_at_us": m.taken_at.0,
        "consistent_at": m.consistent_at.to_string(),
        "consistent_at_us": m.consistent_at.0,
        "reason": m.reason,
        "position": m.position,
        "bytes": m.bytes,
        "new_bytes": m.new_bytes,
        "log_bytes": log_bytes,
        "held_as": match &m.from_log {
            Some(_) => "log",
            None if !m.clones.is_empty() => "clone",
            None => "objects",
        },
        "from_log": m.from_log,
        "checksum": m.checksum,
    })
}

fn points(dir: &std::path::Path, output: OutputFormat) -> anyhow::Result<ExitCode> {
    let store = PointStore::open(dir).map_err(shadow_err)?;
    let points = store.points().map_err(shadow_err)?;
    let meta = store.meta();
    match output {
        OutputFormat::Json => {
            let v = json!({
                "dir": dir,
                "kind": meta.kind,
                "source": meta.source,
                "type": meta.shadow_type,
                "retention": meta.retention,
                "disk_bytes": store.disk_usage().map_err(shadow_err)?,
                "points": points
                    .iter()
                    .map(|m| point_json(m, store.log_len(m.id())))
                    .collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        OutputFormat::Human => {
            println!(
                "{} shadow of {} ({}), {} points, {} bytes on disk",
                meta.kind,
                meta.source,
                meta.shadow_type,
                points.len(),
                store.disk_usage().map_err(shadow_err)?
            );
            let rows: Vec<Vec<String>> = points
                .iter()
                .map(|m| {
                    vec![
                        m.id().to_string(),
                        m.taken_at.to_string(),
                        m.reason.to_string(),
                        m.bytes.to_string(),
                        m.new_bytes.to_string(),
                        store.log_len(m.id()).to_string(),
                        held_as(m),
                    ]
                })
                .collect();
            print_table(
                &[
                    "POINT",
                    "TAKEN",
                    "REASON",
                    "BYTES",
                    "NEW",
                    "LOG BYTES",
                    "HELD AS",
                ],
                &rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
