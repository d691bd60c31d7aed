//! `bellwether sandbox`: the arguments of a local fleet on loopback. The fleet itself —
//! scenario, host roots, processes, web service, state — is `bellwether-sandbox`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bellwether_drift::version::ChangeLevel;
use bellwether_sandbox::service::{self, ServiceOptions};
use bellwether_sandbox::{scenario, DriftRequest, SandboxError, UpOptions};

use super::{OutputFormat, Unreachable, UsageError};

/// Start, inspect, change or stop a local sandbox fleet on loopback.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Generate N host roots, start a server and one agent per root, and wait until every
    /// agent has reported its profile.
    Up(UpArgs),
    /// Show the sandbox's processes and hosts.
    Status(StatusArgs),
    /// Inject drift into a host root; its agent picks it up on its next collection.
    Drift(DriftArgs),
    /// Stop every process of the sandbox (SIGTERM, then SIGKILL after a grace period).
    Down(DownArgs),
    /// The TCP listener the sandbox hosts declare as their dependency (started by `up`).
    #[command(hide = true)]
    Listen(ListenArgs),
    /// The versioned web service a sandbox host runs (see docs/sandbox.md).
    #[command(hide = true)]
    Service(ServiceArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// The host root: the version and faults are read from <root>/etc/websvc/.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// The address to serve on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Where to write the bound address once listening.
    #[arg(long, value_name = "FILE")]
    addr_file: PathBuf,
    /// Simulated requests per second from the built-in load generator.
    #[arg(long, default_value_t = 50)]
    rps: u32,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// How many hosts: half web, a quarter db, a quarter cache.
    #[arg(long, default_value_t = 20)]
    hosts: usize,
    /// Seed for the generated hosts; the same seed gives the same fleet.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The sandbox's work directory: host roots, server data, logs, tokens, state.json.
    #[arg(long, default_value = ".sandbox")]
    dir: PathBuf,
    /// A scenario file (docs/scenario.md): host groups, fault rules, generated history. Its
    /// groups replace --hosts.
    #[arg(long, value_name = "FILE", conflicts_with = "hosts")]
    scenario: Option<PathBuf>,
    /// The agents' collection interval.
    #[arg(long, default_value = "1s", value_parser = bellwether_model::duration::parse)]
    interval: Duration,
    /// How long to wait for the server and for every agent's first profile.
    #[arg(long, default_value = "30s", value_parser = bellwether_model::duration::parse)]
    timeout: Duration,
    /// Run the fleet over HTTPS: generate a CA and a server certificate for 127.0.0.1 and
    /// localhost in DIR/tls (ca.pem, server.pem, server.key), serve with them, and start
    /// every agent with --ca-file DIR/tls/ca.pem.
    #[arg(long)]
    tls: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The sandbox's work directory, as given to `sandbox up`.
    #[arg(long, default_value = ".sandbox")]
    dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// The sandbox's work directory, as given to `sandbox up`.
    #[arg(long, default_value = ".sandbox")]
    dir: PathBuf,
    /// Also remove the sandbox directory (host roots, server data, logs).
    #[arg(long)]
    purge: bool,
    /// How long to wait after SIGTERM before SIGKILL.
    #[arg(long, default_value = "5s", value_parser = bellwether_model::duration::parse)]
    grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriftKind {
    /// Upgrade a package (default: the role's package, nginx, postgresql-15 or redis-server).
    Package,
    /// Raise the load averages (default: three times the CPU count).
    Metric,
    /// Point the host's declared dependency at a port where nothing listens.
    Dependency,
    /// Change the DNS resolvers in etc/resolv.conf.
    Resolver,
    /// Rewrite a file of the root (default: etc/websvc.conf with `workers = 0`, which breaks
    /// every service version but 1).
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    Major,
    Minor,
    Patch,
}

#[derive(Debug, clap::Args)]
pub struct DriftArgs {
    /// The sandbox's work directory, as given to `sandbox up`.
    #[arg(long, default_value = ".sandbox")]
    dir: PathBuf,
    /// The host to change, such as web-01.
    #[arg(long)]
    host: String,
    /// What to change.
    #[arg(long, value_enum)]
    kind: DriftKind,
    /// With --kind package: the package to upgrade.
    #[arg(long)]
    package: Option<String>,
    /// With --kind package: how large an upgrade.
    #[arg(long, value_enum, default_value_t = Level::Major)]
    level: Level,
    /// With --kind metric: the new 1-minute load average.
    #[arg(long, value_parser = super::finite_f64)]
    load: Option<f64>,
    /// With --kind dependency: the declared dependency to change (default: the role's).
    #[arg(long)]
    dependency: Option<String>,
    /// With --kind dependency: the new HOST:PORT (default: a loopback port nothing listens on).
    #[arg(long)]
    endpoint: Option<String>,
    /// With --kind resolver: the new resolvers; repeat for more (default: 192.0.2.53).
    #[arg(long = "resolver")]
    resolvers: Vec<String>,
    /// With --kind file: the file to rewrite, relative to the host root.
    #[arg(long, default_value = service::CONFIG_FILE)]
    path: String,
    /// With --kind file: the new contents (default: the service configuration with
    /// `workers = 0`).
    #[arg(long)]
    content: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// Where to write the bound address.
    #[arg(long)]
    addr_file: PathBuf,
}

/// A library error as the CLI's error kinds: bad input exits 2, an unreachable server 3.
pub fn sandbox_error(e: SandboxError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(e.to_string()).into()
    } else if e.is_unreachable() {
        let text = bellwether_sandbox::error_chain(&e);
        Unreachable(text).into()
    } else {
        e.into()
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    run_verb(args.verb).map_err(sandbox_error)?;
    Ok(ExitCode::SUCCESS)
}

fn run_verb(verb: Verb) -> Result<(), SandboxError> {
    match verb {
        Verb::Up(a) => {
            let opts = UpOptions {
                hosts: a.hosts,
                seed: a.seed,
                dir: a.dir,
                interval: a.interval,
                timeout: a.timeout,
                progress: std::io::stderr().is_terminal(),
                scenario: match &a.scenario {
                    Some(path) => {
                        let text = std::fs::read_to_string(path).map_err(|e| {
                            SandboxError::Usage(format!("--scenario {}: {e}", path.display()))
                        })?;
                        Some(scenario::parse(&text, &path.display().to_string())?)
                    }
                    None => None,
                },
                tls: a.tls,
            };
            let state = bellwether_sandbox::up(&opts)?;
            bellwether_sandbox::print_up(&state);
            Ok(())
        }
        Verb::Status(a) => bellwether_sandbox::status(
            &a.dir,
            match a.output {
                OutputFormat::Human => bellwether_sandbox::Output::Human,
                OutputFormat::Json => bellwether_sandbox::Output::Json,
            },
        ),
        Verb::Drift(a) => {
            let dir = a.dir.clone();
            let host = a.host.clone();
            let change = drift_from_args(&a)?;
            let what = bellwether_sandbox::inject(&dir, &host, change)?;
            println!("{host}: {what}");
            Ok(())
        }
        Verb::Down(a) => {
            match bellwether_sandbox::down(&a.dir, a.grace, a.purge)? {
                Some(r) => println!(
                    "stopped {}{}{}",
                    bellwether_model::text::count_as(r.stopped, "process", "processes"),
                    if r.killed > 0 {
                        format!(" ({} needed SIGKILL)", r.killed)
                    } else {
                        String::new()
                    },
                    if a.purge {
                        format!("; removed {}", a.dir.display())
                    } else {
                        String::new()
                    }
                ),
                None => println!("no sandbox in {}", a.dir.display()),
            }
            Ok(())
        }
        Verb::Listen(a) => bellwether_sandbox::listen(&a.addr_file),
        Verb::Service(a) => service::serve(ServiceOptions {
            root: a.root,
            listen: a.listen,
            addr_file: a.addr_file,
            rps: a.rps,
        }),
    }
}

fn drift_from_args(a: &DriftArgs) -> Result<DriftRequest, SandboxError> {
    Ok(match a.kind {
        DriftKind::Package => DriftRequest::Package {
            name: a.package.clone(),
            level: match a.level {
                Level::Major => ChangeLevel::Major,
                Level::Minor => ChangeLevel::Minor,
                Level::Patch => ChangeLevel::Patch,
            },
        },
        DriftKind::Metric => {
            if let Some(l) = a.load {
                if !(l.is_finite() && l >= 0.0) {
                    return Err(SandboxError::Usage(format!(
                        "--load {l}: must be a number ≥ 0"
                    )));
                }
            }
            DriftRequest::Load { load1: a.load }
        }
        DriftKind::Dependency => {
            if let Some(e) = &a.endpoint {
                bellwether_drift::parse_dependency(&format!("x={e}"))
                    .map_err(|err| SandboxError::Usage(format!("--endpoint {e:?}: {err}")))?;
            }
            DriftRequest::Dependency {
                name: a.dependency.clone(),
                endpoint: a.endpoint.clone(),
            }
        }
        DriftKind::File => {
            bellwether_drift::watch::check_watch_path(&a.path)
                .map_err(|e| SandboxError::Usage(format!("--path: {e}")))?;
            DriftRequest::File {
                path: a.path.clone(),
                content: a.content.clone(),
            }
        }
        DriftKind::Resolver => {
            for r in &a.resolvers {
                r.parse::<std::net::IpAddr>()
                    .map_err(|e| SandboxError::Usage(format!("--resolver {r:?}: {e}")))?;
            }
            DriftRequest::Resolvers {
                resolvers: a.resolvers.clone(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_flags_are_checked() {
        let args = |kind, f: fn(&mut DriftArgs)| {
            let mut a = DriftArgs {
                dir: ".sandbox".into(),
                host: "web-01".into(),
                kind,
                package: None,
                level: Level::Major,
                load: None,
                dependency: None,
                endpoint: None,
                resolvers: vec![],
                path: service::CONFIG_FILE.into(),
                content: None,
            };
            f(&mut a);
            drift_from_args(&a)
        };
        let e = args(DriftKind::Metric, |a| a.load = Some(-1.0))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--load -1"), "{e}");
        let e = args(DriftKind::Dependency, |a| {
            a.endpoint = Some("nowhere".into())
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--endpoint \"nowhere\""), "{e}");
        let e = args(DriftKind::Resolver, |a| {
            a.resolvers = vec!["dns.example".into()]
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--resolver \"dns.example\""), "{e}");
        assert!(args(DriftKind::Package, |_| {}).is_ok());
        let e = args(DriftKind::File, |a| a.path = "/etc/passwd".into())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--path: \"/etc/passwd\""), "{e}");
        assert!(args(DriftKind::File, |_| {}).is_ok());
    }
}
