//! `bellwether shadow add|list|show|rollback|predict|failure|points NAME|history|remove` (and
//! `shadow start --host`):
//! server-managed shadows (docs/shadow.md, "Server-managed shadows").
//!
//! A shadow declared on the server lives on an enrolled agent host: the server's `shadow`
//! task starts it there, takes rollback points on schedule and when a failure is predicted,
//! and rolls back (restore, then routing switched) on a failure or a prediction above the
//! policy's threshold. These verbs talk to the server's API the way `bellwether mirror` does:
//! `--server`/BELLWETHER_SERVER, the operator token, `--output human|json`, exit 2 for bad
//! input (400, 404, 422), 3 for an unreachable server, 1 otherwise.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bellwether_engine::shadow::RiskSource;
use bellwether_model::shadow::ShadowSpec;
use bellwether_model::text::Escaped;
use bellwether_model::Dur;
use bellwether_server::client::ClientError;
use bellwether_server::shadow::{
    FailureRequest, PredictRequest, RollbackRequest, ShadowDetail, ShadowHistory, ShadowPoints,
    ShadowSummary,
};
use serde_json::{json, Value};

use super::model_server::api_error;
use super::shadow::TypeArg;
use super::token::{age, print_table, runtime, ClientArgs};
use super::{finite_f64, OutputFormat, UsageError};

/// What a `--path` holds on the agent's host (the server cannot look).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PathKind {
    /// A SQLite database file.
    Sqlite,
    /// A plain directory.
    Dir,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceArg {
    /// The failure-probability model (`bellwether risk`).
    FailureModel,
    /// An anomaly detector watching the resource or its host.
    Detector,
    /// A rollout in progress on the host.
    Rollout,
    /// A person or another system.
    External,
}

impl From<SourceArg> for RiskSource {
    fn from(s: SourceArg) -> RiskSource {
        match s {
            SourceArg::FailureModel => RiskSource::FailureModel,
            SourceArg::Detector => RiskSource::Detector,
            SourceArg::Rollout => RiskSource::Rollout,
            SourceArg::External => RiskSource::External,
        }
    }
}

/// `bellwether shadow add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The shadow's name: lower-case letters, digits and '-' (required without --file).
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// A YAML or JSON file holding the whole shadow (docs/shadow.md shows its shape); flags
    /// given beside it are refused.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["name", "host", "path", "database", "shadow_type", "dir"])]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// The flags that make a shadow's spec (`add`, and `start --host`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SpecArgs {
    /// The enrolled agent host that holds the data and does the IO.
    #[arg(long, value_name = "HOST", required_unless_present = "file")]
    pub host: Option<String>,
    /// The SQLite file or directory to shadow, relative to the agent's root.
    #[arg(long, value_name = "FILE|DIR", conflicts_with = "database")]
    pub path: Option<String>,
    /// With --path: what it is (sqlite, the default, or dir).
    #[arg(long, value_enum, value_name = "KIND", requires = "path")]
    pub kind: Option<PathKind>,
    /// The PostgreSQL cluster to shadow (postgres://USER@HOST:PORT/DB, no password: the
    /// agent's own configuration supplies it).
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// full, differential or transactional (every commit a restore target).
    #[arg(
        long = "type",
        value_enum,
        value_name = "TYPE",
        required_unless_present = "file"
    )]
    pub shadow_type: Option<TypeArg>,
    /// The shadow directory (point store) on the host, relative to the agent's root.
    #[arg(long, value_name = "SHADOW_DIR", required_unless_present = "file")]
    pub dir: Option<String>,
    /// A scheduled point this often (default 1m; 1s to 7d).
    #[arg(long, value_name = "DURATION")]
    pub points_every: Option<Dur>,
    /// Another location the data may be served from: ID=PATH for a file or directory
    /// (relative to the agent's root), ID=BACKEND[:DATA_DIR] for PostgreSQL (a proxy backend
    /// id, and the data directory of the instance behind it, relative to the agent's root:
    /// without it the location is routed to but never restored into). Repeat for several;
    /// the resource itself is the first location, `primary`.
    #[arg(long = "location", value_name = "ID=PATH|BACKEND[:DATA_DIR]")]
    pub locations: Vec<String>,
    /// File-based data with several locations: the path the service opens, a link switched
    /// atomically between the locations.
    #[arg(long, value_name = "PATH")]
    pub link: Option<String>,
    /// PostgreSQL: the proxy backend id of the resource itself (location `primary`), and
    /// optionally its data directory (relative to the agent's root) to restore it in place.
    #[arg(long, value_name = "BACKEND[:DATA_DIR]", requires = "database")]
    pub backend: Option<String>,
    /// PostgreSQL with several locations: the admin API of the `bellwether proxy` in front.
    #[arg(long, value_name = "URL", requires = "proxy_token")]
    pub proxy_admin: Option<String>,
    /// The server's name for that proxy's token file (`--proxy-token-file NAME=FILE`).
    #[arg(long, value_name = "NAME", requires = "proxy_admin")]
    pub proxy_token: Option<String>,
    /// A prediction at or above this probability takes a point at once (default 0.5).
    #[arg(long, value_name = "P", value_parser = finite_f64)]
    pub point_above: Option<f64>,
    /// A prediction at or above this probability rolls back on its own (default 0.9).
    #[arg(long, value_name = "P", value_parser = finite_f64)]
    pub rollback_above: Option<f64>,
    /// Never roll back on its own: only `bellwether shadow rollback` restores.
    #[arg(long)]
    pub no_auto_rollback: bool,
    /// SQLite: `never` stores page deltas where the host's file system clones, instead of
    /// clone points (see `bellwether shadow start --help`, --clones).
    #[arg(long, value_enum, value_name = "auto|never")]
    pub clones: Option<super::shadow::ClonesArg>,
    /// Keep every point this long (default 24h)...
    #[arg(long, value_name = "DURATION")]
    pub keep_all: Option<Dur>,
    /// ...then one per hour this long (default 7d)...
    #[arg(long, value_name = "DURATION")]
    pub hourly: Option<Dur>,
    /// ...then one per day this long (default 30d).
    #[arg(long, value_name = "DURATION")]
    pub daily: Option<Dur>,
    /// POSTed a JSON body when a rollback starts, completes or fails.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
}

/// `bellwether shadow rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    pub name: String,
    /// A time (RFC 3339 or Unix seconds), a point (`p42`) or `latest` (the default).
    #[arg(long, value_name = "TIME|POINT", value_parser = check_target)]
    pub to: Option<String>,
    /// Why: recorded with the rollback.
    #[arg(long)]
    pub reason: String,
    /// The location to restore and route to; by merit when absent.
    #[arg(long, value_name = "ID")]
    pub location: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// `bellwether shadow predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    pub name: String,
    /// How likely the failure is, 0 to 1.
    #[arg(long, value_name = "P", value_parser = finite_f64)]
    pub probability: f64,
    /// When the failure is expected: RFC 3339 or Unix seconds.
    #[arg(long, value_name = "TIME", value_parser = check_time)]
    pub failure_at: String,
    /// Which risk source predicts it.
    #[arg(long, value_enum)]
    pub source: SourceArg,
    /// What made it (a model version, a detector and metric).
    #[arg(long)]
    pub detail: Option<String>,
    /// The location expected to fail (the routed one when absent).
    #[arg(long, value_name = "ID")]
    pub location: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// `bellwether shadow failure`.
#[derive(Debug, clap::Args)]
pub struct FailureArgs {
    pub name: String,
    /// What failed: recorded with the rollback it starts.
    #[arg(long)]
    pub reason: String,
    /// When it failed (RFC 3339 or Unix seconds); now when absent. The rollback goes to
    /// the latest point at or before it.
    #[arg(long, value_name = "TIME", value_parser = check_time)]
    pub failed_at: Option<String>,
    /// The location that failed (the routed one when absent); the rollback goes elsewhere.
    #[arg(long, value_name = "ID")]
    pub location: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// `bellwether shadow history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    pub name: String,
    /// The newest events to show, 1 to 10000 (default 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub limit: Option<i64>,
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// `bellwether shadow list|show|remove`: a name (show, remove) and the output.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    pub name: String,
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// The server verbs, as `cmd::shadow` hands them over.
pub enum ServerVerb {
    Add(Box<AddArgs>),
    List(ListArgs),
    Show(NameArgs),
    Rollback(RollbackArgs),
    Predict(PredictArgs),
    Failure(FailureArgs),
    Points(NameArgs),
    History(HistoryArgs),
    Remove(NameArgs),
}

fn check_target(s: &str) -> Result<String, String> {
    bellwether_shadow::Target::parse(s)
        .map(|_| s.trim().to_string())
        .map_err(|e| e.to_string())
}

fn check_time(s: &str) -> Result<String, String> {
    bellwether_shadow::Timestamp::parse(s)
        .map(|_| s.trim().to_string())
        .map_err(|e| e.to_string())
}

/// 422 (a value out of range, a host that never enrolled) is bad input: exit 2 like 400/404.
fn shadow_error(err: ClientError) -> anyhow::Error {
    match err {
        ClientError::Api {
            status: 422,
            message,
            ..
        } => UsageError(message).into(),
        other => api_error(other),
    }
}

fn spec_from_file(path: &Path) -> anyhow::Result<ShadowSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?;
    let spec: ShadowSpec = serde_saphyr::from_str(&text)
        .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    spec.validate()
        .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    Ok(spec)
}

/// A PostgreSQL location from `BACKEND[:DATA_DIR]` (a backend id holds no `:`).
fn pg_location(id: &str, at: &str) -> serde_json::Value {
    match at.split_once(':') {
        Some((backend, data)) => json!({"id": id, "backend": backend, "path": data}),
        None => json!({"id": id, "backend": at}),
    }
}

/// The spec the flags describe, validated here so a mistake is named before anything is sent.
pub fn spec_from_flags(name: &str, a: &SpecArgs) -> anyhow::Result<ShadowSpec> {
    let missing = |f: &str| UsageError(format!("--{f} is required without --file"));
    let host = a.host.clone().ok_or_else(|| missing("host"))?;
    let shadow_type = match a.shadow_type.ok_or_else(|| missing("type"))? {
        TypeArg::Full => "full",
        TypeArg::Differential => "differential",
        TypeArg::Transactional => "transactional",
    };
    let dir = a.dir.clone().ok_or_else(|| missing("dir"))?;
    let (resource, primary) = match (&a.path, &a.database) {
        (Some(p), None) => {
            let kind = match a.kind.unwrap_or(PathKind::Sqlite) {
                PathKind::Sqlite => "sqlite",
                PathKind::Dir => "dir",
            };
            (
                json!({"kind": kind, "path": p}),
                json!({"id": "primary", "path": p}),
            )
        }
        (None, Some(url)) => {
            let backend = a.backend.clone().ok_or_else(|| {
                UsageError(
                    "--database needs --backend ID: the proxy backend that serves the cluster itself"
                        .into(),
                )
            })?;
            (
                json!({"kind": "postgres", "url": url}),
                pg_location("primary", &backend),
            )
        }
        _ => return Err(UsageError("give --path FILE|DIR or --database URL".into()).into()),
    };
    let file_based = a.path.is_some();
    let mut locations = vec![primary];
    for l in &a.locations {
        let Some((id, at)) = l.split_once('=') else {
            return Err(UsageError(format!(
                "--location {l}: give ID=PATH (a file or directory) or ID=BACKEND (PostgreSQL)"
            ))
            .into());
        };
        if file_based {
            locations.push(json!({"id": id, "path": at}));
        } else {
            locations.push(pg_location(id, at));
        }
    }
    let mut v = json!({
        "name": name,
        "host": host,
        "resource": resource,
        "type": shadow_type,
        "dir": dir,
        "locations": locations,
    });
    if let Some(d) = a.points_every {
        v["points_every"] = json!(d);
    }
    if let Some(link) = &a.link {
        v["routing"]["link"] = json!(link);
    }
    if let (Some(admin_url), Some(token)) = (&a.proxy_admin, &a.proxy_token) {
        v["routing"]["proxy"] = json!({"admin_url": admin_url, "token": token});
    }
    if let Some(p) = a.point_above {
        v["policy"]["point_above"] = json!(p);
    }
    if let Some(p) = a.rollback_above {
        v["policy"]["rollback_above"] = json!(p);
    }
    if a.no_auto_rollback {
        v["policy"]["auto_rollback"] = json!(false);
    }
    for (k, d) in [
        ("keep_all", a.keep_all),
        ("hourly", a.hourly),
        ("daily", a.daily),
    ] {
        if let Some(d) = d {
            v["retention"][k] = json!(d);
        }
    }
    if let Some(w) = &a.webhook {
        v["webhook"] = json!(w);
    }
    if let Some(c) = a.clones {
        v["clones"] = json!(bellwether_shadow::Clones::from(c).as_str());
    }
    let spec: ShadowSpec = serde_json::from_value(v).map_err(|e| UsageError(e.to_string()))?;
    spec.validate().map_err(|e| UsageError(e.to_string()))?;
    Ok(spec)
}

/// Declares `spec` on the server and prints what it answers.
pub fn declare(
    client: &ClientArgs,
    spec: &ShadowSpec,
    output: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let d = rt
        .block_on(client.client()?.shadow_add(spec))
        .map_err(shadow_error)?;
    print_detail(
        &d,
        output,
        "declared; the server starts it on the host's agent",
    )
}

pub fn run(client: &ClientArgs, verb: ServerVerb) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    match verb {
        ServerVerb::Add(a) => {
            let spec = match (&a.file, &a.name) {
                (Some(f), _) => spec_from_file(f)?,
                (None, Some(name)) => spec_from_flags(name, &a.spec)?,
                (None, None) => return Err(UsageError("give NAME or --file".into()).into()),
            };
            declare(client, &spec, a.output)
        }
        ServerVerb::List(a) => {
            let list = rt
                .block_on(client.client()?.shadow_list())
                .map_err(shadow_error)?;
            match a.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                OutputFormat::Human => print_list(&list),
            }
            Ok(ExitCode::SUCCESS)
        }
        ServerVerb::Show(a) => {
            let d = rt
                .block_on(client.client()?.shadow_show(&a.name))
                .map_err(shadow_error)?;
            print_detail(&d, a.output, "")
        }
        ServerVerb::Rollback(a) => {
            let req = RollbackRequest {
                reason: Some(a.reason),
                to: a.to,
                location: a.location,
            };
            let d = rt
                .block_on(client.client()?.shadow_rollback(&a.name, &req))
                .map_err(shadow_error)?;
            print_detail(&d, a.output, "rollback asked")
        }
        ServerVerb::Predict(a) => {
            if !(0.0..=1.0).contains(&a.probability) {
                return Err(UsageError(format!(
                    "--probability {} is outside [0, 1]",
                    a.probability
                ))
                .into());
            }
            let req = PredictRequest {
                source: a.source.into(),
                probability: a.probability,
                expected_failure: a.failure_at,
                detail: a.detail,
                location: a.location,
            };
            let d = rt
                .block_on(client.client()?.shadow_predict(&a.name, &req))
                .map_err(shadow_error)?;
            print_detail(&d, a.output, "prediction handed to its task")
        }
        ServerVerb::Failure(a) => {
            let req = FailureRequest {
                failed_at: a.failed_at,
                reason: a.reason,
                location: a.location,
            };
            let d = rt
                .block_on(client.client()?.shadow_failure(&a.name, &req))
                .map_err(shadow_error)?;
            print_detail(&d, a.output, "failure handed to its task")
        }
        ServerVerb::Points(a) => {
            let p = rt
                .block_on(client.client()?.shadow_points(&a.name))
                .map_err(shadow_error)?;
            match a.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&p)?),
                OutputFormat::Human => print_points(&p),
            }
            Ok(ExitCode::SUCCESS)
        }
        ServerVerb::History(a) => {
            let h = rt
                .block_on(client.client()?.shadow_history(&a.name, a.limit))
                .map_err(shadow_error)?;
            match a.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&h)?),
                OutputFormat::Human => print_history(&h),
            }
            Ok(ExitCode::SUCCESS)
        }
        ServerVerb::Remove(a) => {
            let d = rt
                .block_on(client.client()?.shadow_remove(&a.name))
                .map_err(shadow_error)?;
            print_detail(
                &d,
                a.output,
                "removing: its task stops it on the agent (the points stay on the host)",
            )
        }
    }
}

/// A value as its JSON word (`running`, `operator`).
fn word<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => "?".into(),
    }
}

fn point_text(p: Option<&bellwether_engine::shadow::PointInfo>) -> String {
    match p {
        Some(p) => format!("{} {} ({})", p.id, age(Some(p.consistent_at_ms)), p.reason),
        None => "none".into(),
    }
}

fn rollback_text(r: &bellwether_engine::shadow::RollbackRecord) -> String {
    format!(
        "{} {} ({}): {}; {} -> {}, point {}{}",
        age(Some(r.done_ms)),
        if r.ok { "done" } else { "FAILED" },
        word(&r.trigger),
        Escaped(&r.cause),
        Escaped(&r.from),
        r.location
            .as_deref()
            .map(Escaped)
            .map_or_else(|| "-".into(), |l| l.to_string()),
        r.point.as_ref().map_or("-", |p| p.id.as_str()),
        r.error
            .as_deref()
            .map(|e| format!(": {}", Escaped(e)))
            .unwrap_or_default()
    )
}

fn when(ms: i64) -> String {
    bellwether_shadow::Timestamp::from_micros(ms.saturating_mul(1000)).to_string()
}

fn print_points(p: &ShadowPoints) {
    if p.points.is_empty() {
        println!(
            "{} has no point yet{}.",
            Escaped(&p.name),
            if p.point_in_flight {
                " (the first is being taken)"
            } else {
                ""
            }
        );
        return;
    }
    let rows: Vec<Vec<String>> = p
        .points
        .iter()
        .map(|x| {
            vec![
                x.id.clone(),
                when(x.consistent_at_ms),
                age(Some(x.consistent_at_ms)),
                Escaped(&x.reason).to_string(),
            ]
        })
        .collect();
    print_table(&["POINT", "CONSISTENT AT", "AGE", "REASON"], &rows);
    if p.point_in_flight {
        println!("One more is being taken.");
    }
}

fn print_history(h: &ShadowHistory) {
    if h.rollbacks.is_empty() {
        println!(
            "{} (task {}): no rollback yet.",
            Escaped(&h.name),
            Escaped(&h.task)
        );
    } else {
        println!(
            "{} (task {}): rollbacks, oldest first:",
            Escaped(&h.name),
            Escaped(&h.task)
        );
        for r in &h.rollbacks {
            println!("  {}", rollback_text(r));
        }
    }
    if h.events.is_empty() {
        return;
    }
    println!("Events, newest first:");
    let rows: Vec<Vec<String>> = h
        .events
        .iter()
        .map(|e| {
            vec![
                when(e.ts_ms),
                Escaped(&e.kind).to_string(),
                Escaped(&e.reason).to_string(),
            ]
        })
        .collect();
    print_table(&["AT", "EVENT", "REASON"], &rows);
}

fn print_list(list: &[ShadowSummary]) {
    if list.is_empty() {
        println!("No shadows. Declare one with `bellwether shadow add` (see --help).");
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.host.clone(),
                s.kind.clone(),
                s.shadow_type.clone(),
                s.phase.clone(),
                s.routed.clone(),
                s.points.to_string(),
                point_text(s.latest_point.as_ref()),
                s.last_rollback
                    .as_ref()
                    .map_or_else(|| "never".into(), |r| age(Some(r.done_ms))),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "HOST",
            "KIND",
            "TYPE",
            "PHASE",
            "ROUTED",
            "POINTS",
            "LATEST POINT",
            "LAST ROLLBACK",
        ],
        &rows,
    );
}

fn print_detail(d: &ShadowDetail, output: OutputFormat, what: &str) -> anyhow::Result<ExitCode> {
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(d)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = &d.summary;
    if !what.is_empty() {
        println!("{}: {what}.", Escaped(&s.name));
    }
    let resource = d
        .spec
        .resource
        .path
        .as_deref()
        .or(d.spec.resource.url.as_deref())
        .unwrap_or("?");
    println!(
        "{} ({} {}, {} shadow) on {}, task {}, phase {}{}",
        Escaped(&s.name),
        s.kind,
        Escaped(resource),
        s.shadow_type,
        Escaped(&s.host),
        Escaped(&s.task),
        s.phase,
        s.pause_reason
            .as_deref()
            .map(|r| format!(" ({})", Escaped(r)))
            .unwrap_or_default()
    );
    let p = &d.spec.policy;
    println!(
        "  dir {}, a point every {}; point above {}, roll back above {}{}",
        Escaped(&d.spec.dir),
        d.spec.points_every,
        p.point_above,
        p.rollback_above,
        if p.auto_rollback {
            ""
        } else {
            " (automatic rollback off)"
        }
    );
    println!(
        "  {} points{}, latest {}",
        s.points,
        if d.status.point_in_flight {
            " (one being taken)"
        } else {
            ""
        },
        point_text(s.latest_point.as_ref())
    );
    if let Some(step) = &s.rolling_back {
        println!("  rolling back: {}", Escaped(step));
    }
    let rows: Vec<Vec<String>> = d
        .status
        .locations
        .iter()
        .map(|l| {
            vec![
                l.id.clone(),
                if l.routed { "yes".into() } else { "".into() },
                l.up.map_or_else(|| "-".into(), |u| if u { "up" } else { "down" }.into()),
                l.merit.map_or_else(|| "-".into(), |m| format!("{m:.2}")),
                format!("{:.1}", l.errors),
            ]
        })
        .collect();
    print_table(&["LOCATION", "ROUTED", "STATE", "MERIT", "ERRORS"], &rows);
    for (at, pr) in &d.status.predictions {
        println!(
            "  prediction {} by {}: p={:.2}, failure expected {}{}",
            age(Some(*at)),
            word(&pr.source),
            pr.probability,
            bellwether_shadow::Timestamp::from_micros(pr.expected_failure_ms.saturating_mul(1000)),
            if pr.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", Escaped(&pr.detail))
            }
        );
    }
    if d.status.history.is_empty() {
        println!("No rollback yet.");
    } else {
        println!("Rollbacks (oldest first):");
        for r in &d.status.history {
            println!("  {}", rollback_text(r));
        }
    }
    if let Some(at) = s.removed_at_ms {
        println!("Removed {}.", age(Some(at)));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite() -> SpecArgs {
        SpecArgs {
            host: Some("db-1".into()),
            path: Some("srv/app.db".into()),
            shadow_type: Some(TypeArg::Full),
            dir: Some("var/shadow/app".into()),
            ..Default::default()
        }
    }

    #[test]
    fn flags_make_a_spec_and_mistakes_are_named_before_sending() {
        let mut a = sqlite();
        a.locations = vec!["cell-b=srv/b/app.db".into()];
        a.link = Some("srv/current.db".into());
        a.no_auto_rollback = true;
        a.daily = Some(Dur::from_secs(86_400));
        let spec = spec_from_flags("app", &a).unwrap();
        assert_eq!(spec.locations.len(), 2);
        assert_eq!(spec.locations[0].path.as_deref(), Some("srv/app.db"));
        assert_eq!(spec.locations[1].id, "cell-b");
        assert!(!spec.policy.auto_rollback);
        assert_eq!(spec.retention.daily, Dur::from_secs(86_400));

        // Two locations and no link: named.
        a.link = None;
        let err = spec_from_flags("app", &a).unwrap_err().to_string();
        assert!(err.contains("routing.link"), "{err}");

        // PostgreSQL needs the proxy backend of the cluster itself.
        let pg = SpecArgs {
            path: None,
            database: Some("postgres://app@127.0.0.1:5432/app".into()),
            ..sqlite()
        };
        let err = spec_from_flags("pg", &pg).unwrap_err().to_string();
        assert!(err.contains("--backend"), "{err}");
        let spec = spec_from_flags(
            "pg",
            &SpecArgs {
                backend: Some("pg-a".into()),
                ..pg.clone()
            },
        )
        .unwrap();
        assert_eq!(spec.locations[0].backend.as_deref(), Some("pg-a"));
        assert_eq!(spec.locations[0].path, None);
        // With the instances' data directories: restorable locations.
        let spec = spec_from_flags(
            "pg",
            &SpecArgs {
                backend: Some("pg-a:srv/pg-a/data".into()),
                locations: vec!["cell-b=pg-b:srv/pg-b/data".into()],
                proxy_admin: Some("http://127.0.0.1:9901".into()),
                proxy_token: Some("edge".into()),
                ..pg.clone()
            },
        )
        .unwrap();
        assert_eq!(spec.locations[0].path.as_deref(), Some("srv/pg-a/data"));
        assert_eq!(spec.locations[1].backend.as_deref(), Some("pg-b"));
        assert_eq!(spec.locations[1].path.as_deref(), Some("srv/pg-b/data"));
        let err = spec_from_flags(
            "pg",
            &SpecArgs {
                backend: Some("pg-a:/var/lib/postgresql/data".into()),
                ..pg.clone()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("locations[0].path"), "{err}");

        let err = spec_from_flags("App", &sqlite()).unwrap_err().to_string();
        assert!(err.contains("not a shadow name"), "{err}");
        let bad = SpecArgs {
            point_above: Some(0.95),
            ..sqlite()
        };
        let err = spec_from_flags("app", &bad).unwrap_err().to_string();
        assert!(err.contains("policy.rollback_above"), "{err}");

        // `--clones never`: carried for SQLite, refused for PostgreSQL naming the field.
        let never = SpecArgs {
            clones: Some(crate::cmd::shadow::ClonesArg::Never),
            ..sqlite()
        };
        let spec = spec_from_flags("app", &never).unwrap();
        assert_eq!(spec.clones, bellwether_model::shadow::Clones::Never);
        let err = spec_from_flags(
            "pg",
            &SpecArgs {
                clones: Some(crate::cmd::shadow::ClonesArg::Never),
                backend: Some("pg-a".into()),
                ..pg.clone()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("clones"), "{err}");
    }

    #[test]
    fn a_file_names_the_mistake() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("app.yaml");
        std::fs::write(
            &f,
            "name: app\nhost: db-1\nresource: {kind: sqlite, path: srv/app.db}\ntype: full\ndir: var/s\nlocations: [{id: primary, path: srv/app.db}]\npolcy: {}\n",
        )
        .unwrap();
        let err = spec_from_file(&f).unwrap_err().to_string();
        assert!(err.contains("polcy") && err.contains("app.yaml"), "{err}");
        std::fs::write(
            &f,
            "name: app\nhost: db-1\nresource: {kind: sqlite, path: srv/app.db}\ntype: full\ndir: var/s\nlocations: [{id: primary, path: srv/app.db}]\n",
        )
        .unwrap();
        assert_eq!(spec_from_file(&f).unwrap().name, "app");
    }
}
