//! `bellwether alerts`: the server-wide alert rules (list, add, remove, test) and the delivery
//! log. A plan's own rules are its `alerts:` section (docs/alerts.md).

use std::process::ExitCode;

use bellwether_engine::alerts::AlertRule;
use bellwether_server::alerts::NewRule;

use super::token::{age, client_error, print_table, runtime, ClientArgs};
use super::{OutputFormat, UsageError};

/// Webhooks that receive the server's events, with retries, backoff and a delivery log.
///
/// A rule posts every event whose kind matches one of its globs (and, with --hosts, whose host
/// matches) to its URL, as generic JSON (`{"event", "rule", "summary", "links"}`) or in Slack's
/// incoming-webhook shape (`{"text", "blocks"}`). Kinds are the event log's:
/// `rollout.host.rolled_back`, `rollout.rollout.paused`, `patch.aborted`, `mirror.*`,
/// `shadow.*`, `enrolled`… (`bellwether rollout events` and `GET /api/v1/events` show them);
/// `*` matches any run of characters, dots included.
///
/// Rules added here see every event; a rollout or patch plan may carry its own in its
/// `alerts:` section, which see only that task's events. Only the leading server sends.
/// Failed POSTs are retried with exponential backoff (408, 429, 5xx, timeouts, connection
/// errors; `Retry-After` is honoured); another 4xx fails at once. See docs/alerts.md.
///
/// Examples:
///   bellwether alerts add --name oncall --format slack \
///       --url https://hooks.slack.com/services/T000/B000/XXXX \
///       --events 'rollout.host.rolled_back,rollout.rollout.paused,mirror.*,shadow.*'
///   bellwether alerts test oncall
///   bellwether alerts deliveries --rule oncall
///   bellwether alerts remove oncall
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    cmd: AlertsCmd,
}

#[derive(Debug, clap::Args)]
struct Remote {
    #[command(flatten)]
    client: ClientArgs,
    /// `human` (a table) or `json` (the API's JSON).
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

#[derive(Debug, clap::Subcommand)]
enum AlertsCmd {
    /// List the server-wide rules: id, name, format, events, hosts, URL (without its secrets).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Add a server-wide rule (needs an operator token). The URL must be http:// or https://;
    /// it is stored as given and only ever shown without its user info, path past the first
    /// segment and query.
    Add {
        /// The rule's name: 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.' (not a number).
        #[arg(long)]
        name: String,
        /// Where to POST: an http:// or https:// URL (such as a Slack incoming webhook).
        #[arg(long)]
        url: String,
        /// `generic` (JSON with the event, the rule, a summary and links) or `slack`
        /// (`{"text", "blocks"}` for Slack's, Mattermost's and compatible incoming webhooks).
        #[arg(long, default_value = "generic")]
        format: String,
        /// Event kinds or globs, comma-separated or repeated: `rollout.*`,
        /// `rollout.host.rolled_back`, `*.aborted`, `enrolled`.
        #[arg(long, required = true, value_delimiter = ',')]
        events: Vec<String>,
        /// Only events about these hosts (names or globs such as `web-*`); events without a
        /// host then never match.
        #[arg(long, value_delimiter = ',')]
        hosts: Option<Vec<String>>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a rule by id or name (needs an operator token); its deliveries not yet made are
    /// marked failed, and its log stays.
    Remove {
        /// The rule's id or name (see `bellwether alerts list`).
        rule: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// POST a test alert to a rule's URL now, once, and say what the receiver answered
    /// (needs an operator token). Exits 1 when the receiver did not answer 2xx. The attempt
    /// is in the delivery log as kind `alert.test`.
    Test {
        /// The rule's id or name.
        rule: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// The delivery log, newest first: every attempt with its rule, event, URL (without
    /// secrets), status or error, and when the next attempt is due.
    Deliveries {
        /// Only this rule's (by name; a plan's rules are named as in the plan).
        #[arg(long)]
        rule: Option<String>,
        /// Only the deliveries of this event id.
        #[arg(long)]
        event: Option<i64>,
        /// How many attempts, 1 to 10000.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        remote: Remote,
    },
}

fn printable(s: &str) -> String {
    bellwether_model::text::escape(s).into_owned()
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.cmd {
        AlertsCmd::List { remote } => {
            let client = remote.client.client()?;
            let rules = runtime()?
                .block_on(client.alert_rules())
                .map_err(client_error)?;
            if remote.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&rules)?);
                return Ok(ExitCode::SUCCESS);
            }
            if rules.is_empty() {
                eprintln!("No server-wide alert rules; add one with `bellwether alerts add`.");
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = rules
                .iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        printable(&r.name),
                        r.format.clone(),
                        printable(&r.events.join(",")),
                        r.hosts
                            .as_ref()
                            .map(|h| printable(&h.join(",")))
                            .unwrap_or_else(|| "*".into()),
                        printable(&r.url),
                    ]
                })
                .collect();
            print_table(&["ID", "NAME", "FORMAT", "EVENTS", "HOSTS", "URL"], &rows);
        }
        AlertsCmd::Add {
            name,
            url,
            format,
            events,
            hosts,
            remote,
        } => {
            // The server checks the same; checking first names the flag.
            AlertRule::new(&name, &url, &format, events.clone(), hosts.clone()).map_err(|e| {
                let (field, rest) = e.split_once(": ").unwrap_or(("rule", e.as_str()));
                let flag = field.split('[').next().unwrap_or(field);
                UsageError(format!("--{flag}: {rest}"))
            })?;
            let client = remote.client.client()?;
            let rule = runtime()?
                .block_on(client.alert_add(&NewRule {
                    name,
                    url,
                    format: Some(format),
                    events,
                    hosts,
                }))
                .map_err(client_error)?;
            if remote.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&rule)?);
            } else {
                println!(
                    "Added alert rule {} ({}): {} events {} to {}. Try it: bellwether alerts test {}",
                    rule.id,
                    printable(&rule.name),
                    rule.format,
                    printable(&rule.events.join(",")),
                    printable(&rule.url),
                    printable(&rule.name)
                );
            }
        }
        AlertsCmd::Remove { rule, remote } => {
            let client = remote.client.client()?;
            let r = runtime()?
                .block_on(client.alert_remove(&rule))
                .map_err(client_error)?;
            if remote.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("Removed alert rule {} ({}).", r.id, printable(&r.name));
            }
        }
        AlertsCmd::Test { rule, remote } => {
            let client = remote.client.client()?;
            let t = runtime()?
                .block_on(client.alert_test(&rule))
                .map_err(client_error)?;
            if remote.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else if t.delivered {
                println!(
                    "Delivered a test alert of rule {} to {}: HTTP {}.",
                    printable(&t.rule),
                    printable(&t.url),
                    t.status.map_or_else(|| "-".into(), |s| s.to_string())
                );
            } else {
                println!(
                    "The test alert of rule {} to {} was not delivered: {}.",
                    printable(&t.rule),
                    printable(&t.url),
                    printable(t.error.as_deref().unwrap_or("no answer"))
                );
            }
            return Ok(if t.delivered {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        AlertsCmd::Deliveries {
            rule,
            event,
            limit,
            remote,
        } => {
            if !(1..=10_000).contains(&limit) {
                return Err(UsageError(format!("--limit {limit} is outside 1..=10000")).into());
            }
            if let Some(r) = &rule {
                bellwether_engine::alerts::check_name(r)
                    .map_err(|e| UsageError(format!("--rule: {e}")))?;
            }
            let client = remote.client.client()?;
            let log = runtime()?
                .block_on(client.alert_deliveries(rule.as_deref(), event, limit))
                .map_err(client_error)?;
            if remote.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&log)?);
                return Ok(ExitCode::SUCCESS);
            }
            if log.attempts.is_empty() {
                eprintln!("No delivery attempts yet.");
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = log
                .attempts
                .iter()
                .map(|a| {
                    let result = match (a.status, &a.error) {
                        (Some(s), None) => format!("HTTP {s}"),
                        (_, Some(e)) => printable(e),
                        (None, None) => "-".into(),
                    };
                    let next = match a.next_attempt_ms {
                        Some(ms) => in_time(ms),
                        None => "-".into(),
                    };
                    vec![
                        age(Some(a.at_ms)),
                        printable(&a.rule),
                        a.event_id.map_or_else(|| "test".into(), |e| e.to_string()),
                        printable(&a.event_kind),
                        a.attempt.to_string(),
                        a.outcome.clone(),
                        result,
                        next,
                        printable(&a.url),
                    ]
                })
                .collect();
            print_table(
                &[
                    "WHEN", "RULE", "EVENT", "KIND", "TRY", "OUTCOME", "RESULT", "NEXT", "URL",
                ],
                &rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `in 12s`, `in 5m`, or `now` for a time at or before now.
fn in_time(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let s = (ms - now) / 1000;
    match s {
        i64::MIN..=0 => "now".into(),
        1..60 => format!("in {s}s"),
        60..3600 => format!("in {}m", s / 60),
        _ => format!("in {}h", s / 3600),
    }
}
