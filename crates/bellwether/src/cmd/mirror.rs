//! `bellwether mirror`: dependency mirroring on a server (docs/mirror.md).
//!
//! A dependency (a Redis, a PostgreSQL, any TCP service other services need) is declared
//! once; the server then keeps it mirrored in proportion to its weight and health, switches
//! its traffic to the best caught-up mirror when its primary fails, and records every switch.
//! These verbs declare, read, tune, switch and remove dependencies over the server's API.

use std::path::PathBuf;
use std::process::ExitCode;

use bellwether_model::mirror::{DepKind, DependencySpec, ModeSetting, ProxyRef, Tier};
use bellwether_model::text::Escaped;
use bellwether_server::client::ClientError;
use bellwether_server::mirror::{DependencyDetail, DependencySummary, FailoverRequest};
use serde_json::{json, Map, Value};

use super::model_server::api_error;
use super::token::{age, print_table, runtime, ClientArgs};
use super::{finite_f64, OutputFormat, UsageError};

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Examples:
  bellwether mirror add --name cache --kind redis --primary 10.0.0.5:6379 --host db-1 --tier critical
  bellwether mirror add --file cache.yaml
  bellwether mirror list
  bellwether mirror show cache
  bellwether mirror set cache --max-mirrors 2 --mode active-passive
  bellwether mirror failover cache --reason 'primary disk failing'
  bellwether mirror history cache
  bellwether mirror remove cache
  bellwether mirror drill --kind redis --fault kill

See docs/mirror.md for the concepts (weight, health, replication factor, mode, switchover).")]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    verb: Verb,
}

/// The policy flags shared by `add` and `set`: each one given overrides the default (add) or
/// the current value (set).
#[derive(Debug, Clone, Default, clap::Args)]
struct PolicyArgs {
    /// Fewest mirrors kept besides the primary, whatever the weight.
    #[arg(long, value_name = "N")]
    min_mirrors: Option<u32>,
    /// Most mirrors kept, whatever the weight (at most 16).
    #[arg(long, value_name = "N")]
    max_mirrors: Option<u32>,
    /// auto (chosen from the weight against the cost), active-active (mirrors serve reads),
    /// or active-passive (mirrors stand by).
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// How often health is measured (`250ms`, `1s`).
    #[arg(long, value_name = "DURATION")]
    health_interval: Option<String>,
    /// Switch away from the primary when its health stays below this (0 to 1)...
    #[arg(long, value_name = "SCORE", value_parser = finite_f64)]
    switch_below: Option<f64>,
    /// ...for this many consecutive intervals.
    #[arg(long, value_name = "N")]
    switch_after: Option<u32>,
    /// Switch back to the old primary only when its health stays above this (above
    /// --switch-below)...
    #[arg(long, value_name = "SCORE", value_parser = finite_f64)]
    failback_above: Option<f64>,
    /// ...for this long.
    #[arg(long, value_name = "DURATION")]
    failback_after: Option<String>,
    /// At most one health-driven switch per this window (a dead primary is switched from
    /// regardless).
    #[arg(long, value_name = "DURATION")]
    min_switch_gap: Option<String>,
    /// The mirror count's dead band: it changes only when the target moves this far past it.
    #[arg(long, value_name = "COUNT", value_parser = finite_f64)]
    hysteresis: Option<f64>,
    /// How long a promotion waits for the mirror to hold every acknowledged write.
    #[arg(long, value_name = "DURATION")]
    catch_up_timeout: Option<String>,
}

impl PolicyArgs {
    /// The fields given, as a `MirrorPolicy` JSON fragment.
    fn fields(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put("min_mirrors", self.min_mirrors.map(|v| json!(v)));
        put("max_mirrors", self.max_mirrors.map(|v| json!(v)));
        put("mode", self.mode.map(|m| json!(ModeSetting::from(m))));
        put(
            "health_interval",
            self.health_interval.clone().map(Value::String),
        );
        put("switch_below", self.switch_below.map(|v| json!(v)));
        put("switch_after", self.switch_after.map(|v| json!(v)));
        put("failback_above", self.failback_above.map(|v| json!(v)));
        put(
            "failback_after",
            self.failback_after.clone().map(Value::String),
        );
        put(
            "min_switch_gap",
            self.min_switch_gap.clone().map(Value::String),
        );
        put("hysteresis", self.hysteresis.map(|v| json!(v)));
        put(
            "catch_up_timeout",
            self.catch_up_timeout.clone().map(Value::String),
        );
        m
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    Auto,
    ActiveActive,
    ActivePassive,
}

impl From<ModeArg> for ModeSetting {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Auto => ModeSetting::Auto,
            ModeArg::ActiveActive => ModeSetting::ActiveActive,
            ModeArg::ActivePassive => ModeSetting::ActivePassive,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KindArg {
    Redis,
    Postgres,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TierArg {
    Critical,
    High,
    Medium,
    Low,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Declare a dependency: the server checks that its primary answers, then keeps it
    /// mirrored from now on.
    ///
    /// From flags, or from a YAML (or JSON) file with the same fields (`--file`; flags given
    /// beside it override the file's policy). The file's shape, with the defaults:
    ///
    ///   name: cache
    ///   kind: redis            # redis | postgres | tcp
    ///   primary: 10.0.0.5:6379
    ///   host: db-1             # the agent host mirrors are made on (optional)
    ///   tier: critical         # critical | high | medium | low
    ///   impact: 0.5            # 0..1, how bad its failure is
    ///   mirror_cost: 0.1       # one mirror's cost against an hour of outage
    ///   proxy: {admin_url: http://127.0.0.1:9901, token: edge}   # optional
    ///   policy: {min_mirrors: 1, max_mirrors: 3, mode: auto, health_interval: 250ms,
    ///            switch_below: 0.5, switch_after: 2, failback_above: 0.9,
    ///            failback_after: 5m, min_switch_gap: 5m, hysteresis: 0.5,
    ///            catch_up_timeout: 5s}
    Add {
        /// A YAML or JSON file holding the dependency.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["name", "kind", "primary", "tier"])]
        file: Option<PathBuf>,
        /// Its name: lower-case letters, digits and '-'.
        #[arg(long, required_unless_present = "file")]
        name: Option<String>,
        #[arg(long, value_enum, required_unless_present = "file")]
        kind: Option<KindArg>,
        /// The primary's HOST:PORT.
        #[arg(long, value_name = "HOST:PORT", required_unless_present = "file")]
        primary: Option<String>,
        /// The enrolled agent host that makes its mirrors (local processes).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        #[arg(long, value_enum, required_unless_present = "file")]
        tier: Option<TierArg>,
        /// How bad its failure is, 0 to 1 (default 0.5).
        #[arg(long, value_parser = finite_f64)]
        impact: Option<f64>,
        /// One mirror's cost against an hour of outage of a weight-1 dependency (default 0.1).
        #[arg(long, value_parser = finite_f64)]
        mirror_cost: Option<f64>,
        /// The admin API of the `bellwether proxy` in front of it.
        #[arg(long, value_name = "URL", requires = "proxy_token")]
        proxy_admin: Option<String>,
        /// The server's name for that proxy's token file (`--proxy-token-file NAME=FILE`).
        #[arg(long, value_name = "NAME", requires = "proxy_admin")]
        proxy_token: Option<String>,
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Every dependency: weight, health, mode, mirrors and the last switch.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// One dependency: its spec, instances (role, state, health, lag) and switch history.
    Show {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Change a dependency's policy (bounds, thresholds, mode); the fields not given stay.
    Set {
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Switch the dependency's traffic now, to the best caught-up mirror or to --to. The
    /// mirror is promoted only once it holds every acknowledged write.
    Failover {
        name: String,
        /// Why: recorded with the switch.
        #[arg(long)]
        reason: String,
        /// The mirror (instance id, see `show`) to switch to.
        #[arg(long, value_name = "INSTANCE")]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// The dependency's switches (cause, detect and switch times) and its decisions.
    History {
        name: String,
        /// The most events shown, newest first.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Stop mirroring a dependency: routing goes to the primary only and the mirrors
    /// Bellwether made are retired.
    Remove {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// A failover drill on this machine, without a server: a real primary and its mirrors
    /// behind the proxy, under load, with a fault injected; prints the detection and switch
    /// times and the acknowledged writes lost (helper mirror-engine's
    /// crates/bellwether/src/cmd/mirror_drill.rs).
    Drill(super::mirror_drill::Args),
}

/// 422 (a value out of range, an unreachable primary) is bad input: exit 2 like a 400.
fn mirror_error(err: ClientError) -> anyhow::Error {
    match err {
        ClientError::Api {
            status: 422,
            message,
            ..
        } => UsageError(message).into(),
        other => api_error(other),
    }
}

fn spec_from_file(path: &PathBuf) -> anyhow::Result<DependencySpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?;
    let spec: DependencySpec = serde_saphyr::from_str(&text)
        .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    Ok(spec)
}

#[allow(clippy::too_many_arguments)]
fn spec_from_flags(
    name: Option<String>,
    kind: Option<KindArg>,
    primary: Option<String>,
    host: Option<String>,
    tier: Option<TierArg>,
    impact: Option<f64>,
    mirror_cost: Option<f64>,
    proxy: Option<ProxyRef>,
) -> anyhow::Result<DependencySpec> {
    let missing = |f: &str| UsageError(format!("--{f} is required without --file"));
    let kind = match kind.ok_or_else(|| missing("kind"))? {
        KindArg::Redis => DepKind::Redis,
        KindArg::Postgres => DepKind::Postgres,
        KindArg::Tcp => DepKind::Tcp,
    };
    let tier = match tier.ok_or_else(|| missing("tier"))? {
        TierArg::Critical => Tier::Critical,
        TierArg::High => Tier::High,
        TierArg::Medium => Tier::Medium,
        TierArg::Low => Tier::Low,
    };
    let mut v = json!({
        "name": name.ok_or_else(|| missing("name"))?,
        "kind": kind,
        "primary": primary.ok_or_else(|| missing("primary"))?,
        "tier": tier,
    });
    if let Some(h) = host {
        v["host"] = json!(h);
    }
    if let Some(i) = impact {
        v["impact"] = json!(i);
    }
    if let Some(c) = mirror_cost {
        v["mirror_cost"] = json!(c);
    }
    if let Some(p) = proxy {
        v["proxy"] = json!(p);
    }
    Ok(serde_json::from_value(v)?)
}

/// `spec` with the policy flags given laid over its policy, validated here so a mistake is
/// named before anything is sent.
fn with_policy(spec: DependencySpec, fields: Map<String, Value>) -> anyhow::Result<DependencySpec> {
    let mut v = serde_json::to_value(&spec)?;
    for (k, f) in fields {
        v["policy"][k] = f;
    }
    let spec: DependencySpec =
        serde_json::from_value(v).map_err(|e| UsageError(format!("policy: {e}")))?;
    spec.validate().map_err(|e| UsageError(e.to_string()))?;
    Ok(spec)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Verb::Drill(a) = args.verb {
        return super::mirror_drill::run(a);
    }
    let rt = runtime()?;
    let client = || args.client.client();
    match args.verb {
        Verb::Add {
            file,
            name,
            kind,
            primary,
            host,
            tier,
            impact,
            mirror_cost,
            proxy_admin,
            proxy_token,
            policy,
            output,
        } => {
            let proxy = match (proxy_admin, proxy_token) {
                (Some(admin_url), Some(token)) => Some(ProxyRef { admin_url, token }),
                _ => None,
            };
            let spec = match &file {
                Some(f) => {
                    let mut s = spec_from_file(f)?;
                    if let Some(h) = host {
                        s.host = Some(h);
                    }
                    if let Some(i) = impact {
                        s.impact = i;
                    }
                    if let Some(c) = mirror_cost {
                        s.mirror_cost = c;
                    }
                    if proxy.is_some() {
                        s.proxy = proxy;
                    }
                    s
                }
                None => {
                    spec_from_flags(name, kind, primary, host, tier, impact, mirror_cost, proxy)?
                }
            };
            let spec = with_policy(spec, policy.fields())?;
            let d = rt
                .block_on(client()?.mirror_add(&spec))
                .map_err(mirror_error)?;
            print_detail(&d, output, "declared")
        }
        Verb::List { output } => {
            let list = rt.block_on(client()?.mirror_list()).map_err(mirror_error)?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                OutputFormat::Human => print_list(&list),
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Show { name, output } => {
            let d = rt
                .block_on(client()?.mirror_show(&name))
                .map_err(mirror_error)?;
            print_detail(&d, output, "")
        }
        Verb::Set {
            name,
            policy,
            output,
        } => {
            let fields = policy.fields();
            if fields.is_empty() {
                return Err(UsageError(
                    "give at least one policy flag to change (--max-mirrors, --mode, --switch-below…; see --help)".into(),
                )
                .into());
            }
            let d = rt
                .block_on(client()?.mirror_set(&name, &fields))
                .map_err(mirror_error)?;
            print_detail(&d, output, "policy changed")
        }
        Verb::Failover {
            name,
            reason,
            to,
            output,
        } => {
            let req = FailoverRequest {
                reason: Some(reason),
                to,
            };
            let d = rt
                .block_on(client()?.mirror_failover(&name, &req))
                .map_err(mirror_error)?;
            print_detail(&d, output, "failover asked")
        }
        Verb::History {
            name,
            limit,
            output,
        } => {
            let h = rt
                .block_on(client()?.mirror_history(&name, Some(limit)))
                .map_err(mirror_error)?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&h)?),
                OutputFormat::Human => {
                    println!("{} (task {})", Escaped(&h.name), Escaped(&h.task));
                    print_switches(&h.switches);
                    println!("\nEvents (newest first):");
                    for e in &h.events {
                        println!(
                            "  {:<8} {:<28} {}",
                            age(Some(e.ts_ms)),
                            Escaped(&e.kind),
                            Escaped(&e.reason)
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Drill(_) => unreachable!("run above"),
        Verb::Remove { name, output } => {
            let d = rt
                .block_on(client()?.mirror_remove(&name))
                .map_err(mirror_error)?;
            print_detail(
                &d,
                output,
                "removing: its mirrors are retired, then it is gone",
            )
        }
    }
}

/// A value as its JSON word (`critical`, `active-passive`).
fn word<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => "?".into(),
    }
}

fn score(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.2}"))
}

fn mode(m: bellwether_model::mirror::Mode) -> &'static str {
    match m {
        bellwether_model::mirror::Mode::ActiveActive => "active-active",
        bellwether_model::mirror::Mode::ActivePassive => "active-passive",
    }
}

fn last_switch(d: &DependencySummary) -> String {
    match &d.last_switch {
        Some(s) => format!(
            "{} {} -> {} ({})",
            age(Some(s.routed_ms)),
            s.from,
            s.to,
            s.trigger
        ),
        None => "never".into(),
    }
}

fn print_list(list: &[DependencySummary]) {
    if list.is_empty() {
        println!("No dependencies. Declare one with `bellwether mirror add` (see --help).");
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            // Mirrors that exist now (not failed, retired or a fenced old primary).
            let mirrors = d
                .instances
                .iter()
                .filter(|i| {
                    i.role == bellwether_engine::mirror::Role::Mirror
                        && !matches!(
                            i.state,
                            bellwether_engine::mirror::InstanceState::Failed
                                | bellwether_engine::mirror::InstanceState::Retired
                        )
                })
                .count();
            vec![
                d.name.clone(),
                d.kind.as_str().into(),
                d.phase.clone(),
                format!("{:.2}", d.weight),
                score(d.health),
                mode(d.mode).into(),
                format!("{mirrors}/{}", d.target_mirrors),
                d.primary_endpoint
                    .clone()
                    .unwrap_or_else(|| d.primary.clone()),
                last_switch(d),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "KIND",
            "PHASE",
            "WEIGHT",
            "HEALTH",
            "MODE",
            "MIRRORS",
            "PRIMARY",
            "LAST SWITCH",
        ],
        &rows,
    );
}

fn print_switches(switches: &[bellwether_engine::mirror::SwitchRecord]) {
    if switches.is_empty() {
        println!("No switch yet.");
        return;
    }
    println!("Switches (oldest first):");
    for s in switches {
        let f = |k: &str| {
            s.figures
                .get(k)
                .and_then(Value::as_f64)
                .map(|v| format!("{v:.0} ms"))
        };
        println!(
            "  {:<8} {} -> {} ({}): {}; detect {}, switch {}",
            age(Some(s.routed_ms)),
            Escaped(&s.from),
            Escaped(&s.to),
            Escaped(&s.trigger),
            Escaped(&s.cause),
            f("detect_ms").unwrap_or_else(|| "-".into()),
            f("switch_ms").unwrap_or_else(|| "-".into()),
        );
    }
}

fn print_detail(
    d: &DependencyDetail,
    output: OutputFormat,
    what: &str,
) -> anyhow::Result<ExitCode> {
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(d)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = &d.summary;
    if !what.is_empty() {
        println!("{}: {what}.", Escaped(&s.name));
    }
    println!(
        "{} ({}, tier {}), task {}, phase {}{}",
        Escaped(&s.name),
        s.kind.as_str(),
        word(&s.tier),
        Escaped(&s.task),
        s.phase,
        s.switching
            .as_ref()
            .map(|w| format!(", switching: {}", Escaped(w)))
            .unwrap_or_default()
    );
    println!(
        "  weight {:.2}, primary health {}, mode {}, mirrors target {} (raw {:.2})",
        s.weight,
        score(s.health),
        mode(s.mode),
        s.target_mirrors,
        d.target_raw
    );
    let p = &d.spec.policy;
    println!(
        "  policy: {}..{} mirrors, mode {}, switch below {} for {} x {}, failback above {} for {}",
        p.min_mirrors,
        p.max_mirrors,
        word(&p.mode),
        p.switch_below,
        p.switch_after,
        p.health_interval,
        p.failback_above,
        p.failback_after
    );
    let rows: Vec<Vec<String>> = s
        .instances
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.endpoint.clone().unwrap_or_else(|| "-".into()),
                word(&i.role),
                word(&i.state),
                score(i.health),
                i.lag_ms.map_or_else(|| "-".into(), |l| format!("{l} ms")),
                i.sessions.map_or_else(|| "-".into(), |n| n.to_string()),
            ]
        })
        .collect();
    print_table(
        &[
            "INSTANCE", "ENDPOINT", "ROLE", "STATE", "HEALTH", "LAG", "SESSIONS",
        ],
        &rows,
    );
    print_switches(&d.history);
    if let Some(at) = s.removed_at_ms {
        println!("Removed {}.", age(Some(at)));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_a_spec_and_bad_policy_is_named_before_sending() {
        let spec = spec_from_flags(
            Some("cache".into()),
            Some(KindArg::Redis),
            Some("10.0.0.5:6379".into()),
            Some("db-1".into()),
            Some(TierArg::Critical),
            Some(0.9),
            None,
            None,
        )
        .unwrap();
        let fields = PolicyArgs {
            max_mirrors: Some(2),
            mode: Some(ModeArg::ActivePassive),
            health_interval: Some("500ms".into()),
            ..Default::default()
        }
        .fields();
        let spec = with_policy(spec, fields).unwrap();
        assert_eq!(spec.policy.max_mirrors, 2);
        assert_eq!(spec.policy.mode, ModeSetting::ActivePassive);
        assert_eq!(spec.policy.health_interval.get().as_millis(), 500);
        assert_eq!(spec.host.as_deref(), Some("db-1"));

        let bad = PolicyArgs {
            min_mirrors: Some(5),
            ..Default::default()
        };
        let err = with_policy(spec.clone(), bad.fields()).unwrap_err();
        assert!(
            err.to_string()
                .contains("min_mirrors 5 is more than max_mirrors 2"),
            "{err}"
        );
        let bad = PolicyArgs {
            health_interval: Some("soon".into()),
            ..Default::default()
        };
        let err = with_policy(spec, bad.fields()).unwrap_err();
        assert!(err.to_string().contains("policy"), "{err}");
    }

    #[test]
    fn a_file_names_the_line_of_a_mistake() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("dep.yaml");
        std::fs::write(
            &f,
            "name: cache\nkind: redis\nprimary: 127.0.0.1:6379\ntier: critical\npolicy:\n  max_mirors: 2\n",
        )
        .unwrap();
        let err = spec_from_file(&f).unwrap_err().to_string();
        assert!(err.contains("max_mirors"), "{err}");
        assert!(err.contains("dep.yaml"), "{err}");
        std::fs::write(
            &f,
            "name: cache\nkind: redis\nprimary: 127.0.0.1:6379\ntier: critical\npolicy:\n  max_mirrors: 2\n",
        )
        .unwrap();
        assert_eq!(spec_from_file(&f).unwrap().policy.max_mirrors, 2);
    }
}
