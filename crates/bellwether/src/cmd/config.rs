//! `bellwether config`: configuration changes on live PostgreSQL instances (docs/config.md).
//!
//! Two modes, one engine:
//! - **local** (`--database URL`, no server): `graph` learns the instance's dependency graph
//!   then and there (shipped rules plus probing scratch clusters started from the instance's
//!   own binaries), `simulate` runs the simulator with a scratch trial start, `apply` runs the
//!   change through `bellwether_pg::local`, stepping the same engine as the server;
//! - **server** (`--host H`, the default for `apply`, `status`, `snapshots`…): the server
//!   holds the graph, the snapshots and the change stream its agents report, and runs every
//!   change as a durable `config` task (canary first, watched, reverted on a traced anomaly).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bellwether_config::graph::Graph;
use bellwether_config::simulate::{SimReport, Verdict};
use bellwether_model::text::Escaped;
use serde_json::{json, Value};

use super::model_server::api_error;
use super::token::{print_table, runtime, ClientArgs};
use super::{OutputFormat, UsageError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    verb: Verb,
}

/// Where the instance is: a database URL here (local mode), or an enrolled host's agent
/// (server mode).
#[derive(Debug, Clone, clap::Args)]
struct InstanceArgs {
    /// Local mode: the instance's URL (`postgres://USER@HOST:PORT/DB`, or `@FILE` to read it
    /// from a file and keep a password out of the process list). No server is involved.
    #[arg(long, value_name = "URL", conflicts_with = "host")]
    database: Option<String>,
    /// Server mode: the enrolled host whose agent watches the instance.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Server mode: the agent's name for the instance (`bellwether agent --database
    /// NAME=URL`); needed when the host's agent watches more than one.
    #[arg(long, value_name = "NAME", requires = "host")]
    source: Option<String>,
    /// Local mode: the directory of the instance's binaries (initdb, postgres) for scratch
    /// clusters, when not found from its version.
    #[arg(long, value_name = "DIR", requires = "database")]
    pg_bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GraphFormat {
    /// One line per edge.
    Text,
    /// `{"nodes": [...], "edges": [{"from", "to", "kind", "confidence", "evidence"}]}`.
    Json,
    /// GraphML (yEd, Gephi, networkx).
    Graphml,
    /// Cypher MERGE statements (load into Neo4j with cypher-shell).
    Cypher,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Probe {
    /// Shipped rules only.
    None,
    /// Probe the settings around `--around` (or the changed settings), about a second each.
    Around,
    /// Probe every changeable setting (minutes; see BENCHMARKS.md).
    All,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// The dependency graph of an instance's settings: `requires`, `conflicts_with` and
    /// `influences` edges, each with a confidence and its evidence.
    ///
    /// With --database it is learned here and now (shipped rules, then trial starts of scratch
    /// clusters from the instance's own binaries); with --host it is the server's stored graph
    /// (learned by the agent, kept current from the change history).
    Graph {
        #[command(flatten)]
        instance: InstanceArgs,
        /// Only the settings within --depth edges of this one.
        #[arg(long, value_name = "KEY")]
        around: Option<String>,
        #[arg(long, default_value_t = 2)]
        depth: usize,
        /// Local mode: how much to probe (default: around when --around is given, else none).
        #[arg(long, value_enum)]
        probe: Option<Probe>,
        #[arg(long, value_enum, default_value = "text")]
        output: GraphFormat,
    },
    /// What a proposed change would do, without touching the instance: the verdict
    /// (refuse / restart / reload / session), the settings it impacts with the graph paths,
    /// the predicted effect on throughput and latency, and its risk. Exits 1 on refuse.
    ///
    /// With --database, the proposed configuration is also trial-started on a scratch cluster
    /// from the instance's own binaries.
    Simulate {
        #[command(flatten)]
        instance: InstanceArgs,
        /// A proposed value (repeatable): `work_mem=64kB`.
        #[arg(
            long = "set",
            value_name = "KEY=VALUE",
            required_unless_present = "reset"
        )]
        set: Vec<String>,
        /// Reset a setting to its default (repeatable).
        #[arg(long, value_name = "KEY")]
        reset: Vec<String>,
        /// Local mode: skip the scratch trial start.
        #[arg(long)]
        no_trial: bool,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Apply a change as a durable task in the server: trial, snapshot, apply (reload or
    /// restart), watch against the baseline, and revert to the snapshot when an anomaly is
    /// traced to the change. Several --host flags: the first is the canary.
    ///
    /// Give a plan file (YAML, docs/config-apply.md) or --host/--source/--set.
    Apply {
        /// A plan file (YAML).
        plan: Option<PathBuf>,
        /// A target host (repeatable; the first is the canary).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// The agent's name for the instance on every target host.
        #[arg(long, value_name = "NAME")]
        source: Option<String>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long, value_name = "KEY")]
        reset: Vec<String>,
        /// Why: stored with every change event.
        #[arg(long, default_value = "")]
        description: String,
        /// Follow the change's events until it settles. Exits 0 when it completed, 1 when it
        /// was refused, rolled back, aborted or failed.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// The server's configuration tasks, or one task's report.
    Status {
        id: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Stop a configuration task after what is in flight (applied targets stay).
    Abort {
        id: String,
        #[arg(long, default_value = "aborted by an operator")]
        reason: String,
    },
    /// Revert every target a configuration task applied to its snapshot, now.
    Revert {
        id: String,
        #[arg(long, default_value = "reverted by an operator")]
        reason: String,
    },
    /// The sources the agents report (databases and files), with their graph versions.
    Sources {
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// The change stream: every changed key with old and new value, author, time, source.
    Changes {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        source: Option<String>,
        /// Only changes after this event id.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// List the snapshots of a host's sources.
    Snapshots {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        source: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Take a snapshot of a source's whole configuration now.
    Snapshot {
        #[arg(long)]
        host: String,
        #[arg(long)]
        source: String,
        #[arg(long, default_value = "on demand")]
        reason: String,
    },
    /// Put a snapshot's configuration back (a configuration task: trial, apply, watch).
    Restore {
        snapshot: String,
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    match args.verb {
        Verb::Graph {
            instance,
            around,
            depth,
            probe,
            output,
        } => {
            let graph = if let Some(url) = &instance.database {
                let probe = probe.unwrap_or(if around.is_some() {
                    Probe::Around
                } else {
                    Probe::None
                });
                let url = read_url(url)?;
                rt.block_on(local::learn_graph(
                    &url,
                    instance.pg_bin.clone(),
                    probe,
                    around.as_deref(),
                ))?
            } else {
                let (host, source) = server_instance(&instance)?;
                let client = args.client.client()?;
                let source = rt.block_on(resolve_source(&client, &host, source))?;
                let mut q = format!(
                    "/api/v1/config/graph?host={}&source={}&depth={depth}",
                    enc(&host),
                    enc(&source)
                );
                if let Some(k) = &around {
                    q.push_str(&format!("&around={}", enc(k)));
                }
                let v = rt.block_on(client.get_json(&q)).map_err(api_error)?;
                serde_json::from_value(v["graph"].clone())
                    .or_else(|_| serde_json::from_value(v))
                    .map_err(|e| anyhow::anyhow!("the server's graph does not parse: {e}"))?
            };
            let graph = match &around {
                Some(k) if instance.database.is_some() => graph.around(k, depth),
                _ => graph,
            };
            print_graph(&graph, output)?;
            Ok(ExitCode::SUCCESS)
        }
        Verb::Simulate {
            instance,
            set,
            reset,
            no_trial,
            output,
        } => {
            let proposed = proposed(&set, &reset)?;
            let report: SimReport = if let Some(url) = &instance.database {
                let url = read_url(url)?;
                rt.block_on(local::simulate(
                    &url,
                    instance.pg_bin.clone(),
                    &proposed,
                    !no_trial,
                ))?
            } else {
                let (host, source) = server_instance(&instance)?;
                let client = args.client.client()?;
                let source = rt.block_on(resolve_source(&client, &host, source))?;
                let body = json!({"host": host, "source": source, "set": proposed});
                let v = rt
                    .block_on(client.post_json("/api/v1/config/simulate", Some(&body)))
                    .map_err(api_error)?;
                serde_json::from_value(v)
                    .map_err(|e| anyhow::anyhow!("the server's report does not parse: {e}"))?
            };
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                OutputFormat::Human => print_simulation(&report),
            }
            Ok(if report.verdict == Verdict::Refuse {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Verb::Apply {
            plan,
            hosts,
            source,
            set,
            reset,
            description,
            wait,
            output,
        } => {
            let body = match plan {
                Some(path) => {
                    if !hosts.is_empty() || !set.is_empty() || !reset.is_empty() {
                        return Err(UsageError(
                            "give a plan file or --host/--set, not both".into(),
                        )
                        .into());
                    }
                    let yaml = std::fs::read_to_string(&path)
                        .map_err(|e| UsageError(format!("{}: cannot read: {e}", path.display())))?;
                    json!({"plan": yaml, "file": path.display().to_string()})
                }
                None => {
                    if hosts.is_empty() {
                        return Err(UsageError(
                            "name the instances with --host H --source NAME (or give a plan file)"
                                .into(),
                        )
                        .into());
                    }
                    let source = source.ok_or_else(|| {
                        UsageError("--source NAME: the agent's name for the database".into())
                    })?;
                    let targets: Vec<Value> = hosts
                        .iter()
                        .map(|h| json!({"host": h, "database": source}))
                        .collect();
                    json!({
                        "targets": targets,
                        "set": proposed(&set, &reset)?,
                        "description": description,
                    })
                }
            };
            let client = args.client.client()?;
            let v = rt
                .block_on(client.post_json("/api/v1/config/tasks", Some(&body)))
                .map_err(api_error)?;
            let id = v["id"].as_str().unwrap_or_default().to_string();
            finish_task(&rt, &client, &id, wait, output)
        }
        Verb::Status { id, output } => {
            let client = args.client.client()?;
            match id {
                Some(id) => {
                    let v = rt
                        .block_on(client.get_json(&format!("/api/v1/config/tasks/{}", enc(&id))))
                        .map_err(api_error)?;
                    match output {
                        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                        OutputFormat::Human => print_task(&v),
                    }
                }
                None => {
                    let v = rt
                        .block_on(client.get_json("/api/v1/config/tasks"))
                        .map_err(api_error)?;
                    match output {
                        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                        OutputFormat::Human => {
                            let rows: Vec<Vec<String>> = list(&v)
                                .iter()
                                .map(|t| {
                                    vec![
                                        text(&t["id"]),
                                        text(&t["phase"]),
                                        text(&t["created_at_ms"]),
                                        text(&t["description"]),
                                    ]
                                })
                                .collect();
                            print_table(&["ID", "PHASE", "CREATED_AT_MS", "DESCRIPTION"], &rows);
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Abort { id, reason } => steer(&rt, &args.client, &id, "abort", &reason),
        Verb::Revert { id, reason } => steer(&rt, &args.client, &id, "revert", &reason),
        Verb::Sources { output } => {
            let client = args.client.client()?;
            let v = rt
                .block_on(client.get_json("/api/v1/config/sources"))
                .map_err(api_error)?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                OutputFormat::Human => {
                    let rows: Vec<Vec<String>> = list(&v)
                        .iter()
                        .map(|s| {
                            vec![
                                text(&s["host"]),
                                text(&s["source"]),
                                text(&s["kind"]),
                                text(&s["keys"]),
                                text(&s["graph_version"]),
                                text(&s["updated_ms"]),
                            ]
                        })
                        .collect();
                    print_table(
                        &["HOST", "SOURCE", "KIND", "KEYS", "GRAPH", "UPDATED_MS"],
                        &rows,
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Changes {
            host,
            source,
            after,
            limit,
            output,
        } => {
            let client = args.client.client()?;
            let mut q = format!("/api/v1/config/changes?after={after}&limit={limit}");
            if let Some(h) = &host {
                q.push_str(&format!("&host={}", enc(h)));
            }
            if let Some(s) = &source {
                q.push_str(&format!("&source={}", enc(s)));
            }
            let v = rt.block_on(client.get_json(&q)).map_err(api_error)?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                OutputFormat::Human => {
                    let rows: Vec<Vec<String>> = list(&v)
                        .iter()
                        .map(|c| {
                            // An event: the change is its figures.
                            let c = if c["figures"].is_object() {
                                &c["figures"]
                            } else {
                                c
                            };
                            vec![
                                text(&c["time_ms"]),
                                text(&c["host"]),
                                text(&c["source_name"]),
                                text(&c["key"]),
                                text(&c["old"]),
                                text(&c["new"]),
                                text(&c["source"]),
                                text(&c["author"]),
                            ]
                        })
                        .collect();
                    print_table(
                        &[
                            "TIME_MS", "HOST", "SOURCE", "KEY", "OLD", "NEW", "BY", "AUTHOR",
                        ],
                        &rows,
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Snapshots {
            host,
            source,
            output,
        } => {
            let client = args.client.client()?;
            let mut q = String::from("/api/v1/config/snapshots?");
            if let Some(h) = &host {
                q.push_str(&format!("host={}&", enc(h)));
            }
            if let Some(s) = &source {
                q.push_str(&format!("source={}&", enc(s)));
            }
            let v = rt
                .block_on(client.get_json(q.trim_end_matches(['&', '?'])))
                .map_err(api_error)?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                OutputFormat::Human => {
                    let rows: Vec<Vec<String>> = list(&v)
                        .iter()
                        .map(|s| {
                            vec![
                                text(&s["id"]),
                                text(&s["host"]),
                                text(&s["source"]),
                                text(&s["taken_at_ms"]),
                                text(&s["keys"]),
                                if s["whole"] == Value::Bool(false) {
                                    "DAMAGED".to_string()
                                } else {
                                    text(&s["reason"])
                                },
                            ]
                        })
                        .collect();
                    print_table(
                        &["ID", "HOST", "SOURCE", "TAKEN_MS", "KEYS", "REASON"],
                        &rows,
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Snapshot {
            host,
            source,
            reason,
        } => {
            let client = args.client.client()?;
            let v = rt
                .block_on(client.post_json(
                    "/api/v1/config/snapshots",
                    Some(&json!({"host": host, "source": source, "reason": reason})),
                ))
                .map_err(api_error)?;
            println!("{}", text(&v["id"]));
            Ok(ExitCode::SUCCESS)
        }
        Verb::Restore {
            snapshot,
            wait,
            output,
        } => {
            let client = args.client.client()?;
            let v = rt
                .block_on(client.post_json(
                    &format!("/api/v1/config/snapshots/{}/restore", enc(&snapshot)),
                    Some(&json!({})),
                ))
                .map_err(api_error)?;
            let id = v["id"].as_str().unwrap_or_default().to_string();
            finish_task(&rt, &client, &id, wait, output)
        }
    }
}

/// Sends an operator's command to a task.
fn steer(
    rt: &tokio::runtime::Runtime,
    client: &ClientArgs,
    id: &str,
    verb: &str,
    reason: &str,
) -> anyhow::Result<ExitCode> {
    let client = client.client()?;
    let v = rt
        .block_on(client.post_json(
            &format!("/api/v1/config/tasks/{}/{verb}", enc(id)),
            Some(&json!({"reason": reason})),
        ))
        .map_err(api_error)?;
    println!("config task {id}: {verb} requested ({})", text(&v["phase"]));
    Ok(ExitCode::SUCCESS)
}

/// Prints the task id, or follows it to the end with `--wait`.
fn finish_task(
    rt: &tokio::runtime::Runtime,
    client: &bellwether_server::client::Client,
    id: &str,
    wait: bool,
    output: OutputFormat,
) -> anyhow::Result<ExitCode> {
    if !wait {
        println!("{id}");
        eprintln!(
            "config task {id} runs in the server at {}; follow it with `bellwether config status {id}`",
            client.base()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let human = output == OutputFormat::Human;
    if human {
        println!(
            "config task {id}: started in the server at {}",
            client.base()
        );
    }
    let v = rt.block_on(follow(client, id, human))?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&v)?),
        OutputFormat::Human => print_task(&v),
    }
    Ok(if v["phase"] == "completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Follows the task's events until it is settled; returns its final status.
async fn follow(
    client: &bellwether_server::client::Client,
    id: &str,
    human: bool,
) -> anyhow::Result<Value> {
    use std::io::Write as _;
    let mut after = 0i64;
    let mut origin: Option<i64> = None;
    let mut trouble_since: Option<tokio::time::Instant> = None;
    loop {
        let step = async {
            let events = client
                .get_json(&format!(
                    "/api/v1/events?task={}&after={after}&limit=500",
                    enc(id)
                ))
                .await?;
            let mut out = std::io::stdout().lock();
            for e in list(&events) {
                after = after.max(e["id"].as_i64().unwrap_or(after));
                if human {
                    let ts = e["ts_ms"].as_i64().unwrap_or(0);
                    let t0 = *origin.get_or_insert(ts);
                    let kind = e["kind"].as_str().unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "[{:>7.2}s] {:<20} {}",
                        (ts - t0) as f64 / 1000.0,
                        Escaped(kind.strip_prefix("config.").unwrap_or(kind)),
                        Escaped(e["reason"].as_str().unwrap_or_default())
                    );
                } else if let Ok(line) = serde_json::to_string(&e) {
                    let _ = writeln!(out, "{line}");
                }
            }
            let _ = out.flush();
            let v = client
                .get_json(&format!("/api/v1/config/tasks/{}", enc(id)))
                .await?;
            Ok::<_, bellwether_server::client::ClientError>(
                (v["settled"] == Value::Bool(true)).then_some(v),
            )
        };
        match step.await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => trouble_since = None,
            Err(e) if retryable(&e) => {
                let since = *trouble_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > Duration::from_secs(60) {
                    anyhow::bail!("no server has answered for a minute: {e}");
                }
                eprintln!("config task {id}: {e}; retrying");
            }
            Err(e) => return Err(api_error(e)),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn retryable(e: &bellwether_server::client::ClientError) -> bool {
    use bellwether_server::client::ClientError as E;
    matches!(
        e,
        E::Unreachable { .. }
            | E::NoServer { .. }
            | E::Api {
                status: 502..=504,
                ..
            }
    )
}

/// `KEY=VALUE` flags and `--reset KEY` flags as the proposed change (in the order given, sets
/// first). A key set twice is refused.
fn proposed(set: &[String], reset: &[String]) -> Result<Vec<(String, Option<String>)>, UsageError> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for s in set {
        let (k, v) = s.split_once('=').ok_or_else(|| {
            UsageError(format!(
                "--set {}: expected KEY=VALUE, such as work_mem=64MB",
                bellwether_model::text::quote(s)
            ))
        })?;
        out.push((k.trim().to_ascii_lowercase(), Some(v.trim().to_string())));
    }
    for k in reset {
        out.push((k.trim().to_ascii_lowercase(), None));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (k, _) in &out {
        if k.is_empty() {
            return Err(UsageError("--set/--reset: an empty setting name".into()));
        }
        if !seen.insert(k.clone()) {
            return Err(UsageError(format!("{k} is given twice")));
        }
    }
    Ok(out)
}

/// A URL flag, or the first line of `@FILE`.
fn read_url(arg: &str) -> anyhow::Result<String> {
    match arg.strip_prefix('@') {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| UsageError(format!("--database @{path}: cannot read: {e}")))?;
            let line = text.lines().next().unwrap_or_default().trim().to_string();
            if line.is_empty() {
                return Err(UsageError(format!("--database @{path}: the file is empty")).into());
            }
            Ok(line)
        }
        None => Ok(arg.to_string()),
    }
}

/// The source named, or the host's only PostgreSQL source.
async fn resolve_source(
    client: &bellwether_server::client::Client,
    host: &str,
    source: Option<String>,
) -> anyhow::Result<String> {
    if let Some(s) = source {
        return Ok(s);
    }
    let v = client
        .get_json("/api/v1/config/sources")
        .await
        .map_err(api_error)?;
    let names: Vec<String> = list(&v)
        .iter()
        .filter(|s| s["host"] == host && s["kind"] == "postgres")
        .filter_map(|s| s["source"].as_str().map(str::to_string))
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(UsageError(format!(
            "host {} reports no PostgreSQL instance; start its agent with --database NAME=URL \
             (see `bellwether config sources`)",
            Escaped(host)
        ))
        .into()),
        many => Err(UsageError(format!(
            "host {} reports several instances ({}); name one with --source",
            Escaped(host),
            many.join(", ")
        ))
        .into()),
    }
}

fn server_instance(i: &InstanceArgs) -> Result<(String, Option<String>), UsageError> {
    match &i.host {
        Some(h) => Ok((h.clone(), i.source.clone())),
        None => Err(UsageError(
            "name the instance: --database URL (here, no server) or --host H [--source NAME] \
             (the server's view of an agent's instance)"
                .into(),
        )),
    }
}

fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Object(o) => o
            .values()
            .find_map(|x| x.as_array().cloned())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => Escaped(s).to_string(),
        other => other.to_string(),
    }
}

fn print_graph(graph: &Graph, format: GraphFormat) -> anyhow::Result<()> {
    match format {
        GraphFormat::Json => println!("{}", serde_json::to_string_pretty(graph)?),
        GraphFormat::Graphml => print!("{}", graph.to_graphml()),
        GraphFormat::Cypher => print!("{}", graph.to_cypher()),
        GraphFormat::Text => {
            println!(
                "{} settings, {} edges (version {})",
                graph.nodes.len(),
                graph.edges.len(),
                graph.version
            );
            let mut edges: Vec<_> = graph.edges.iter().collect();
            edges.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
            for e in edges {
                let ev = e
                    .evidence
                    .first()
                    .map(|v| format!("{:?}: {}", v.source, v.detail))
                    .unwrap_or_default();
                println!(
                    "{} -[{:?} {:.2}]-> {}  ({})",
                    Escaped(&e.from),
                    e.kind,
                    e.confidence,
                    Escaped(&e.to),
                    Escaped(&ev)
                );
            }
        }
    }
    Ok(())
}

fn print_simulation(r: &SimReport) {
    let verdict = serde_json::to_value(r.verdict)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    println!("verdict: {verdict}");
    for reason in &r.reasons {
        println!("  {}", Escaped(reason));
    }
    for c in &r.changes {
        println!(
            "  {} {} -> {}{}",
            Escaped(&c.key),
            c.old
                .as_deref()
                .map(|s| Escaped(s).to_string())
                .unwrap_or("-".into()),
            c.new
                .as_deref()
                .map(|s| Escaped(s).to_string())
                .unwrap_or("DEFAULT".into()),
            c.error
                .as_deref()
                .map(|e| format!("  ({})", Escaped(e)))
                .unwrap_or_default()
        );
    }
    for v in &r.violations {
        println!("  violates {}: {}", Escaped(&v.rule), Escaped(&v.message));
    }
    if let Some(t) = &r.scratch {
        if t.started {
            println!("scratch trial: started in {} ms", t.ms);
        } else {
            println!(
                "scratch trial: refused to start in {} ms: {}",
                t.ms,
                Escaped(&t.message)
            );
        }
    }
    if !r.impacted.is_empty() {
        println!("impacts:");
        for i in r.impacted.iter().take(20) {
            println!(
                "  {} via {} (confidence {:.2})",
                Escaped(&i.setting),
                Escaped(&i.path.join(" -> ")),
                i.confidence
            );
        }
        if r.impacted.len() > 20 {
            println!("  … {} more (--output json)", r.impacted.len() - 20);
        }
    }
    match &r.performance {
        Some(p) => println!(
            "performance: throughput {:+.1}% (model error ±{:.1}%), latency {:+.1}% (±{:.1}%)",
            p.tps_change * 100.0,
            p.tps_rel_error * 100.0,
            p.latency_change * 100.0,
            p.latency_rel_error * 100.0
        ),
        None => println!("performance: no model for this instance yet"),
    }
    println!("risk: {:.3}", r.risk.score);
    for f in &r.risk.factors {
        println!(
            "  {:+.3} {}: {}",
            f.log_odds,
            Escaped(&f.name),
            Escaped(&f.detail)
        );
    }
}

fn print_task(v: &Value) {
    println!(
        "config task {}: {}{}",
        text(&v["id"]),
        text(&v["phase"]),
        if v["settled"] == Value::Bool(true) {
            ""
        } else {
            " (in flight)"
        }
    );
    let report = if v["report"].is_object() {
        &v["report"]
    } else {
        v
    };
    if let Some(targets) = report["targets"].as_array() {
        for t in targets {
            println!(
                "  {}{} {}: {}{}",
                text(&t["host"]),
                if t["canary"] == Value::Bool(true) {
                    " (canary)"
                } else {
                    ""
                },
                text(&t["database"]),
                text(&t["stage"]),
                t["note"]
                    .as_str()
                    .or(t["revert_cause"].as_str())
                    .map(|r| format!(" — {}", Escaped(r)))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(r) = report["reason"].as_str() {
        println!("  {}", Escaped(r));
    }
    if let Some(rc) = report.get("root_cause").filter(|r| !r.is_null()) {
        println!("  root cause: {}", Escaped(&rc.to_string()));
    }
}

/// Local mode: the instance is reached from here; nothing goes through a server.
mod local {
    use super::*;

    /// Connects, reads the catalog, and learns the graph: shipped rules, plus probing when
    /// asked (scratch clusters from the instance's own binaries).
    pub async fn learn_graph(
        url: &str,
        pg_bin: Option<PathBuf>,
        probe: Probe,
        around: Option<&str>,
    ) -> anyhow::Result<Graph> {
        let inst = bellwether_pg::connect(url).await?;
        let catalog = bellwether_pg::read_settings(&inst).await?;
        if let Some(k) = around {
            if catalog.get(k).is_none() {
                catalog
                    .validate(k, "")
                    .map_err(|e| UsageError(e.to_string()))?;
            }
        }
        let keys: Vec<String> = match (probe, around) {
            (Probe::None, _) => return Ok(rules_graph(&catalog)),
            (Probe::Around, Some(k)) => vec![k.to_string()],
            (Probe::Around, None) => {
                return Err(UsageError("--probe around needs --around KEY".into()).into())
            }
            (Probe::All, _) => Vec::new(),
        };
        let bindir = bellwether_pg::find_bindir(catalog.server_version_num, pg_bin)?;
        let (graph, stats) = tokio::task::spawn_blocking(move || {
            let scratch = bellwether_pg::scratch::Scratch::init(bindir)?;
            bellwether_pg::probe::learn(
                &scratch,
                &catalog,
                &bellwether_pg::probe::ProbeOptions {
                    keys,
                    parallel: std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1),
                },
            )
        })
        .await??;
        eprintln!(
            "probed {} settings with {} trial starts ({} refused) in {:.1} s",
            stats.settings,
            stats.trials,
            stats.refused,
            stats.elapsed_ms as f64 / 1000.0
        );
        Ok(graph)
    }

    /// The graph of the shipped rules for this instance's version, with its settings as nodes.
    fn rules_graph(catalog: &bellwether_config::setting::Catalog) -> Graph {
        let mut g = Graph::default();
        for (name, s) in &catalog.settings {
            g.upsert_node(bellwether_config::graph::Node {
                name: name.clone(),
                value: Some(s.value.clone()),
                time_ms: None,
                author: None,
                context: Some(s.context),
            });
        }
        for r in bellwether_config::rules::shipped_rules(catalog.server_version_num) {
            g.add_edge(r.edge);
        }
        g
    }

    /// The simulator with this instance's catalog, the shipped rules plus probing around the
    /// changed settings, and (when asked) a scratch trial start of the proposed configuration.
    pub async fn simulate(
        url: &str,
        pg_bin: Option<PathBuf>,
        proposed: &[(String, Option<String>)],
        trial: bool,
    ) -> anyhow::Result<SimReport> {
        let inst = bellwether_pg::connect(url).await?;
        let catalog = bellwether_pg::read_settings(&inst).await?;
        let mut graph = rules_graph(&catalog);
        let mut scratch_trial = None;
        let known: Vec<String> = proposed
            .iter()
            .filter(|(k, _)| catalog.get(k).is_some())
            .map(|(k, _)| k.clone())
            .collect();
        if trial && !known.is_empty() {
            let bindir = bellwether_pg::find_bindir(catalog.server_version_num, pg_bin)?;
            let cat = catalog.clone();
            let prop = proposed.to_vec();
            let (learned, t) = tokio::task::spawn_blocking(move || {
                let scratch = bellwether_pg::scratch::Scratch::init(bindir)?;
                let (g, _) = bellwether_pg::probe::learn(
                    &scratch,
                    &cat,
                    &bellwether_pg::probe::ProbeOptions {
                        keys: known,
                        parallel: 1,
                    },
                )?;
                let values = bellwether_pg::trial_values(&cat, &prop);
                let t = scratch.try_start(&values)?;
                Ok::<_, bellwether_pg::PgError>((g, t))
            })
            .await??;
            for e in learned.edges {
                graph.add_edge(e);
            }
            scratch_trial = Some(t);
        }
        let input = bellwether_config::simulate::SimInput {
            catalog: &catalog,
            graph: &graph,
            perf: None,
            history: &[],
            trial: scratch_trial,
        };
        Ok(bellwether_config::simulate::simulate(&input, proposed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposed_changes_parse_and_refuse_bad_flags() {
        let p = proposed(&["Work_Mem = 64kB".into()], &["jit".into()]).unwrap();
        assert_eq!(
            p,
            vec![
                ("work_mem".to_string(), Some("64kB".to_string())),
                ("jit".to_string(), None)
            ]
        );
        let e = proposed(&["work_mem".into()], &[]).unwrap_err();
        assert!(e.0.contains("KEY=VALUE"), "{e}");
        let e = proposed(&["a=1".into()], &["a".into()]).unwrap_err();
        assert!(e.0.contains("twice"), "{e}");
        let e = proposed(&["=1".into()], &[]).unwrap_err();
        assert!(e.0.contains("empty"), "{e}");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(enc("db-1"), "db-1");
        assert_eq!(enc("file:/etc/a b&c"), "file%3A%2Fetc%2Fa%20b%26c");
    }
}
