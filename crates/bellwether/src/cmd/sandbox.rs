//! `bellwether sandbox`: a local fleet of distinct hosts on loopback — generated host roots, a
//! server, one agent per root and a small TCP listener the hosts depend on — all detached child
//! processes of the current executable, recorded in `DIR/state.json` so that `status`, `drift`
//! and `down` can find them again. `quickstart` is built on the functions here.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bellwether_drift::synth::write_host_root;
use bellwether_drift::version::ChangeLevel;

use super::{OutputFormat, UsageError};

pub mod api;
pub mod fleet;
pub mod procs;
pub mod scenario;
pub mod service;
pub mod state;

use api::{Api, HostSummary};
use state::{write_atomic, write_secret, HostEntry, Injected, Proc, State};

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
    Service(service::ServiceArgs),
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
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long to wait for the server and for every agent's first profile.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
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
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
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

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.verb {
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
                            UsageError(format!("--scenario {}: {e}", path.display()))
                        })?;
                        Some(
                            scenario::parse(&text, &path.display().to_string())
                                .map_err(UsageError)?,
                        )
                    }
                    None => None,
                },
                tls: a.tls,
            };
            let state = up(&opts)?;
            print_up(&state);
            Ok(ExitCode::SUCCESS)
        }
        Verb::Status(a) => status(&a.dir, a.output),
        Verb::Drift(a) => {
            let dir = a.dir.clone();
            let host = a.host.clone();
            let change = drift_from_args(&a)?;
            let what = inject(&dir, &host, change)?;
            println!("{host}: {what}");
            Ok(ExitCode::SUCCESS)
        }
        Verb::Down(a) => {
            match down(&a.dir, a.grace, a.purge)? {
                Some(r) => println!(
                    "stopped {} processes{}{}",
                    r.stopped,
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
            Ok(ExitCode::SUCCESS)
        }
        Verb::Listen(a) => listen(&a.addr_file),
        Verb::Service(a) => service::run(a),
    }
}

/// What `up` needs; `quickstart` fills it in too.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub hosts: usize,
    pub seed: u64,
    pub dir: PathBuf,
    pub interval: Duration,
    pub timeout: Duration,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// A parsed scenario (docs/scenario.md): its groups replace `hosts`.
    pub scenario: Option<scenario::Scenario>,
    /// Serve over HTTPS with a CA and certificate generated in `dir/tls`.
    pub tls: bool,
}

pub fn random_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The string that marks a process as belonging to the sandbox in `dir`: every child's
/// command line contains it.
fn marker(dir: &Path) -> String {
    dir.display().to_string()
}

fn live_pids(state: &State) -> Vec<u32> {
    let m = marker(&state.dir);
    state
        .processes()
        .iter()
        .map(|(_, p)| p.pid)
        .filter(|p| procs::is_ours(*p, &m))
        .collect()
}

/// Makes `dir` ready for a new sandbox: refuses a running sandbox or a directory that is not
/// a sandbox's, and clears what a stopped sandbox left.
fn prepare_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("could not resolve {}", dir.display()))?;
    match State::load(&dir)? {
        Some(old) => {
            let live = live_pids(&old);
            if !live.is_empty() {
                return Err(UsageError(format!(
                    "a sandbox is already running in {} (server {} at {}, {} live processes); stop it with `bellwether sandbox down --dir {}`",
                    dir.display(),
                    old.server.pid,
                    old.server_url,
                    live.len(),
                    dir.display()
                ))
                .into());
            }
            for sub in ["hosts", "server", "logs", TLS_DIR] {
                let p = dir.join(sub);
                if p.exists() {
                    std::fs::remove_dir_all(&p)
                        .with_context(|| format!("could not clear {}", p.display()))?;
                }
            }
        }
        None => {
            let mut entries = std::fs::read_dir(&dir)
                .with_context(|| format!("could not read {}", dir.display()))?;
            if entries.next().is_some() {
                return Err(UsageError(format!(
                    "{} is not empty and holds no sandbox (no {}); choose another --dir",
                    dir.display(),
                    state::STATE_FILE
                ))
                .into());
            }
        }
    }
    for sub in ["hosts", "logs"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    Ok(dir)
}

/// Polls for a file the child writes its bound address to.
fn wait_addr(
    file: &Path,
    child: &mut Child,
    what: &str,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            let addr = text.trim();
            if !addr.is_empty() {
                return Ok(addr.to_owned());
            }
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the {what} exited ({status}) before it listened; {} ends:\n{}",
                log.display(),
                procs::log_tail(log, 15)
            );
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the {what} did not write {} within {}; {} ends:\n{}",
                file.display(),
                humantime::format_duration(timeout),
                log.display(),
                procs::log_tail(log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where `up --tls` writes the CA and the server's certificate and key.
pub const TLS_DIR: &str = "tls";

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// Brings up a sandbox and returns its state once every agent has reported its profile. On
/// failure it stops whatever it started, so nothing is left running.
pub fn up(opts: &UpOptions) -> anyhow::Result<State> {
    if opts.hosts == 0 || opts.hosts > 500 {
        return Err(UsageError(format!("--hosts {}: choose 1 to 500", opts.hosts)).into());
    }
    let dir = prepare_dir(&opts.dir)?;
    let mut started: Vec<u32> = Vec::new();
    let result = up_in(&dir, opts, &mut started);
    if result.is_err() {
        let _ = procs::stop(&started, &marker(&dir), Duration::from_secs(3));
        let _ = std::fs::remove_file(State::path(&dir));
    }
    result
}

fn up_in(dir: &Path, opts: &UpOptions, started: &mut Vec<u32>) -> anyhow::Result<State> {
    let exe = std::env::current_exe().context("could not find the bellwether executable")?;
    let logs = dir.join("logs");
    let wait = opts.timeout;

    // 1. The dependency every host declares.
    let listener_log = logs.join("listener.log");
    let listener_addr_file = dir.join("listener.addr");
    let _ = std::fs::remove_file(&listener_addr_file);
    let mut listener = procs::spawn_detached(
        &exe,
        &[
            os("sandbox"),
            os("listen"),
            os("--addr-file"),
            os(&listener_addr_file),
        ],
        &[],
        &listener_log,
    )?;
    started.push(listener.id());
    let listener_addr = wait_addr(
        &listener_addr_file,
        &mut listener,
        "dependency listener",
        &listener_log,
        wait,
    )?;

    // 2. The host roots.
    let scenario_hosts: BTreeMap<String, scenario::ScenarioHost> = opts
        .scenario
        .iter()
        .flat_map(|s| s.hosts())
        .map(|h| (h.name.clone(), h))
        .collect();
    let plan = match &opts.scenario {
        Some(s) => s.plan(),
        None => fleet::plan(opts.hosts, opts.seed),
    };
    if let Some(csv) = opts.scenario.as_ref().and_then(|s| s.history_csv()) {
        write_atomic(&dir.join("history.csv"), csv.as_bytes())?;
    }
    let mut hosts = Vec::with_capacity(plan.len());
    for p in plan {
        let root = dir.join("hosts").join(&p.name);
        let spec = fleet::spec_from(
            &p.name,
            &p.role,
            p.seed,
            p.packages_seed,
            &p.drifts,
            &listener_addr,
        );
        write_host_root(&root, &spec).with_context(|| {
            format!(
                "could not write the root of {} under {}",
                p.name,
                root.display()
            )
        })?;
        let mut labels = BTreeMap::new();
        if let (Some(sc), Some(sh)) = (&opts.scenario, scenario_hosts.get(&p.name)) {
            let faults = sc.faults_for(sh, &spec.packages);
            state::write_atomic_in(
                &root.join(service::FAULTS_FILE),
                &serde_json::to_vec(&faults).expect("faults serialise"),
            )?;
            labels = sh.labels.clone();
            labels.insert("group".into(), sh.group.clone());
            labels.insert("disk_free_pct".into(), format!("{}", sh.disk_free_pct));
        }
        hosts.push(HostEntry {
            agent: Proc {
                pid: 0,
                addr: None,
                log: logs.join(format!("agent-{}.log", p.name)),
            },
            service: None,
            labels,
            name: p.name,
            role: p.role,
            seed: p.seed,
            packages_seed: p.packages_seed,
            root,
            drifts: p.drifts,
        });
    }

    // 3. The server, with tokens made here.
    let operator_token = random_token();
    let enrol_token = random_token();
    let operator_token_file = dir.join("operator.token");
    let enrol_token_file = dir.join("enrol.token");
    write_secret(&operator_token_file, &operator_token)?;
    write_secret(&enrol_token_file, &enrol_token)?;
    let server_log = logs.join("server.log");
    let server_addr_file = dir.join("server.addr");
    let _ = std::fs::remove_file(&server_addr_file);
    let tls = if opts.tls {
        let names = ["127.0.0.1".to_string(), "localhost".to_string()];
        let set = bellwether_tls::generate::ca_and_server("bellwether sandbox CA", &names)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Some(
            set.write_to(&dir.join(TLS_DIR))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        )
    } else {
        None
    };
    let mut server_args = vec![
        os("--log"),
        os("info"),
        os("server"),
        os("--listen"),
        os("127.0.0.1:0"),
        os("--data-dir"),
        os(dir.join("server")),
        os("--addr-file"),
        os(&server_addr_file),
    ];
    if let Some(t) = &tls {
        server_args.extend([
            os("--tls-cert"),
            os(&t.server_cert),
            os("--tls-key"),
            os(&t.server_key),
        ]);
    }
    let ca_file = tls.as_ref().map(|t| t.ca_file.clone());
    let mut server = procs::spawn_detached(
        &exe,
        &server_args,
        &[
            ("BELLWETHER_OPERATOR_TOKEN", &operator_token),
            ("BELLWETHER_ENROL_TOKEN", &enrol_token),
        ],
        &server_log,
    )?;
    started.push(server.id());
    let server_addr = wait_addr(&server_addr_file, &mut server, "server", &server_log, wait)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server_url = format!("{scheme}://{server_addr}");
    if opts.scenario.as_ref().is_some_and(|s| s.history.is_some()) {
        import_history(
            &server_url,
            ca_file.as_deref(),
            &operator_token,
            &dir.join("history.csv"),
        )?;
    }

    // 4. One agent per root.
    let interval = humantime::format_duration(opts.interval).to_string();
    let mut agents: BTreeMap<String, Child> = BTreeMap::new();
    for h in &mut hosts {
        // The host's web service first: its agent scrapes it.
        let service_log = logs.join(format!("service-{}.log", h.name));
        let service_addr_file = dir.join("hosts").join(format!("{}.service.addr", h.name));
        let _ = std::fs::remove_file(&service_addr_file);
        let version_file = h.root.join(bellwether_agent::exec::VERSION_FILE);
        if !version_file.exists() {
            state::write_atomic_in(&version_file, b"1\n")?;
        }
        // The service's configuration: the agent snapshots it (--protect) so a rollout's
        // remediation can restore it after drift.
        let conf = h.root.join(service::CONFIG_FILE);
        if !conf.exists() {
            state::write_atomic_in(&conf, service::DEFAULT_CONFIG.as_bytes())?;
        }
        let mut svc = procs::spawn_detached(
            &exe,
            &[
                os("sandbox"),
                os("service"),
                os("--root"),
                os(&h.root),
                os("--addr-file"),
                os(&service_addr_file),
            ],
            &[],
            &service_log,
        )?;
        started.push(svc.id());
        let service_addr = wait_addr(&service_addr_file, &mut svc, "service", &service_log, wait)?;
        h.service = Some(Proc {
            pid: svc.id(),
            addr: Some(service_addr.clone()),
            log: service_log,
        });
        let child = procs::spawn_detached(
            &exe,
            &[
                os("--log"),
                os("info"),
                os("agent"),
                os("--server"),
                os(&server_url),
                os("--token-file"),
                os(&enrol_token_file),
                os("--rootfs"),
                os(&h.root),
                os("--name"),
                os(&h.name),
                os("--label"),
                os(format!("role={}", h.role)),
                os("--interval"),
                os(&interval),
                os("--max-backoff"),
                os("2s"),
                os("--state-dir"),
                os(dir.join("agent-state").join(&h.name)),
                os("--action-wait"),
                os("2s"),
                os("--protect"),
                os(service::CONFIG_FILE),
                os("--scrape"),
                os(format!("http://{service_addr}/metrics")),
            ]
            .into_iter()
            .chain(ca_file.iter().flat_map(|ca| [os("--ca-file"), os(ca)]))
            .chain(
                h.labels
                    .iter()
                    .flat_map(|(k, v)| [os("--label"), os(format!("{k}={v}"))]),
            )
            .collect::<Vec<_>>(),
            &[],
            &h.agent.log,
        )?;
        h.agent.pid = child.id();
        started.push(child.id());
        agents.insert(h.name.clone(), child);
    }

    let state = State {
        dir: dir.to_owned(),
        seed: opts.seed,
        created_at_ms: now_ms(),
        server_url: server_url.clone(),
        ca_file: ca_file.clone(),
        operator_token_file,
        enrol_token_file,
        server: Proc {
            pid: server.id(),
            addr: Some(server_addr),
            log: server_log,
        },
        listener: Proc {
            pid: listener.id(),
            addr: Some(listener_addr),
            log: listener_log,
        },
        hosts,
    };
    state.save()?;

    // 5. Every agent's first profile.
    let api = Api::new(&server_url, &operator_token, ca_file.as_deref())?;
    let rt = runtime()?;
    rt.block_on(wait_profiles(
        &api,
        &state,
        &mut agents,
        wait,
        opts.progress,
    ))?;
    Ok(state)
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

fn progress_bar(len: u64, enabled: bool, msg: &'static str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

/// Waits until the server holds a profile for every host; fails naming the hosts that did
/// not report in time, or the agent that exited.
async fn wait_profiles(
    api: &Api,
    state: &State,
    agents: &mut BTreeMap<String, Child>,
    timeout: Duration,
    progress: bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending: Vec<&HostEntry> = state.hosts.iter().collect();
    let pb = progress_bar(
        pending.len() as u64,
        progress,
        "waiting for agents' profiles",
    );
    loop {
        let mut still = Vec::new();
        for h in pending {
            let got: Option<serde_json::Value> = api
                .get(&format!("/api/v1/hosts/{}/profile", h.name))
                .await?;
            if got.is_some() {
                pb.inc(1);
            } else {
                still.push(h);
            }
        }
        pending = still;
        if pending.is_empty() {
            pb.finish_and_clear();
            return Ok(());
        }
        for h in &pending {
            if let Some(child) = agents.get_mut(&h.name) {
                if let Some(status) = child.try_wait()? {
                    pb.abandon();
                    anyhow::bail!(
                        "the agent of {} exited ({status}) before it reported; {} ends:\n{}",
                        h.name,
                        h.agent.log.display(),
                        procs::log_tail(&h.agent.log, 15)
                    );
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            pb.abandon();
            let names: Vec<&str> = pending.iter().map(|h| h.name.as_str()).collect();
            anyhow::bail!(
                "{} of {} hosts did not report a profile within {}: {}; see their logs in {}",
                names.len(),
                state.hosts.len(),
                humantime::format_duration(timeout),
                names.join(", "),
                state.dir.join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_up(state: &State) {
    println!(
        "sandbox up in {}: {} hosts reporting",
        state.dir.display(),
        state.hosts.len()
    );
    println!("  server      {}", state.server_url);
    if let Some(ca) = &state.ca_file {
        println!("  CA          {} (--ca-file)", ca.display());
    }
    println!(
        "  token       {} (operator)",
        state.operator_token_file.display()
    );
    println!("  logs        {}", state.dir.join("logs").display());
    println!();
    println!(
        "  BELLWETHER_SERVER={}{} BELLWETHER_TOKEN=$(cat {}) bellwether hosts",
        state.server_url,
        ca_env(state),
        state.operator_token_file.display()
    );
    println!(
        "  bellwether sandbox drift --dir {} --host {} --kind package",
        state.dir.display(),
        state.hosts[0].name
    );
    println!("  bellwether sandbox down --dir {}", state.dir.display());
}

/// ` BELLWETHER_CA_FILE=…` for a sandbox over TLS, else nothing.
pub fn ca_env(state: &State) -> String {
    match &state.ca_file {
        Some(ca) => format!(" BELLWETHER_CA_FILE={}", ca.display()),
        None => String::new(),
    }
}

pub struct DownReport {
    pub stopped: usize,
    pub killed: usize,
}

/// Stops the sandbox in `dir`: agents first, then the server and the listener; SIGTERM, then
/// SIGKILL after `grace`. `Ok(None)` when there is no sandbox there. With `purge`, removes the
/// directory too.
pub fn down(dir: &Path, grace: Duration, purge: bool) -> anyhow::Result<Option<DownReport>> {
    if !dir.exists() {
        return Ok(None);
    }
    let dir = dir
        .canonicalize()
        .with_context(|| format!("could not resolve {}", dir.display()))?;
    let Some(state) = State::load(&dir)? else {
        if purge {
            return Err(UsageError(format!(
                "{} holds no sandbox; not removing it",
                dir.display()
            ))
            .into());
        }
        return Ok(None);
    };
    let m = marker(&state.dir);
    let agents: Vec<u32> = state
        .hosts
        .iter()
        .flat_map(|h| std::iter::once(h.agent.pid).chain(h.service.as_ref().map(|s| s.pid)))
        .collect();
    let rest = [state.server.pid, state.listener.pid];
    let live = live_pids(&state).len();
    let mut killed = procs::stop(&agents, &m, grace)?;
    killed += procs::stop(&rest, &m, grace)?;
    // state.json stays (a stopped sandbox can still be inspected and purged); `up` clears it.
    if purge {
        std::fs::remove_dir_all(&state.dir)
            .with_context(|| format!("could not remove {}", state.dir.display()))?;
    }
    Ok(Some(DownReport {
        stopped: live,
        killed,
    }))
}

fn status(dir: &Path, output: OutputFormat) -> anyhow::Result<ExitCode> {
    let dir = dir
        .canonicalize()
        .map_err(|e| UsageError(format!("--dir {}: {e}", dir.display())))?;
    let state =
        State::load(&dir)?.ok_or_else(|| UsageError(format!("no sandbox in {}", dir.display())))?;
    let m = marker(&state.dir);
    let token = std::fs::read_to_string(&state.operator_token_file).unwrap_or_default();
    let summaries: Option<Vec<HostSummary>> = if procs::is_ours(state.server.pid, &m) {
        let api = Api::new(&state.server_url, token.trim(), state.ca_file.as_deref())?;
        runtime()?.block_on(api.get("/api/v1/hosts")).ok().flatten()
    } else {
        None
    };
    let by_name: BTreeMap<&str, &HostSummary> = summaries
        .iter()
        .flatten()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let now = now_ms();
    if output == OutputFormat::Json {
        let hosts: Vec<serde_json::Value> = state
            .hosts
            .iter()
            .map(|h| {
                let s = by_name.get(h.name.as_str());
                serde_json::json!({
                    "name": h.name, "role": h.role, "agent_pid": h.agent.pid,
                    "agent_running": procs::is_ours(h.agent.pid, &m),
                    "service_addr": h.service.as_ref().and_then(|p| p.addr.clone()),
                    "service_running": h.service.as_ref().is_some_and(|p| procs::is_ours(p.pid, &m)),
                    "root": h.root, "drifts": h.drifts,
                    "last_seen_ms": s.and_then(|s| s.last_seen_ms),
                    "has_baseline": s.map(|s| s.has_baseline),
                    "overall_drift": s.and_then(|s| s.overall_drift),
                })
            })
            .collect();
        let v = serde_json::json!({
            "dir": state.dir, "server_url": state.server_url,
            "server_pid": state.server.pid, "server_running": procs::is_ours(state.server.pid, &m),
            "listener_pid": state.listener.pid, "listener_running": procs::is_ours(state.listener.pid, &m),
            "operator_token_file": state.operator_token_file, "hosts": hosts,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let up = |pid: u32| {
        if procs::is_ours(pid, &m) {
            "running"
        } else {
            "stopped"
        }
    };
    println!("sandbox in {}", state.dir.display());
    println!(
        "  server    {} pid {} {}",
        state.server_url,
        state.server.pid,
        up(state.server.pid)
    );
    println!(
        "  listener  {} pid {} {}",
        state.listener.addr.as_deref().unwrap_or("-"),
        state.listener.pid,
        up(state.listener.pid)
    );
    println!("  token     {}", state.operator_token_file.display());
    println!();
    println!(
        "{:<10} {:<6} {:>7} {:<8} {:>10} {:>8}  DRIFT INJECTED",
        "HOST", "ROLE", "PID", "AGENT", "LAST SEEN", "OVERALL"
    );
    for h in &state.hosts {
        let s = by_name.get(h.name.as_str());
        let seen = s
            .and_then(|s| s.last_seen_ms)
            .map(|t| format!("{:.1}s ago", (now - t).max(0) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let drift = s
            .and_then(|s| s.overall_drift)
            .map(|d| format!("{d:.3}"))
            .unwrap_or_else(|| "-".into());
        let injected: Vec<String> = h.drifts.iter().map(describe_kind).collect();
        println!(
            "{:<10} {:<6} {:>7} {:<8} {:>10} {:>8}  {}",
            h.name,
            h.role,
            h.agent.pid,
            up(h.agent.pid),
            seen,
            drift,
            injected.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_kind(d: &Injected) -> String {
    match d {
        Injected::Package { name, level } => format!("{name} {level} upgrade"),
        Injected::SetPackage { name, version } => format!("{name}={version}"),
        Injected::Load { load } => format!("load {:.2}", load[0]),
        Injected::Dependency { name, endpoint } => format!("{name} -> {endpoint}"),
        Injected::Resolvers { resolvers } => format!("resolvers {}", resolvers.join(",")),
    }
}

/// A loopback port where nothing listens: bound, then released.
fn closed_port() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .context("could not find a free loopback port")?;
    Ok(l.local_addr()?.to_string())
}

fn drift_from_args(a: &DriftArgs) -> anyhow::Result<DriftRequest> {
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
                    return Err(UsageError(format!("--load {l}: must be a number ≥ 0")).into());
                }
            }
            DriftRequest::Load { load1: a.load }
        }
        DriftKind::Dependency => {
            if let Some(e) = &a.endpoint {
                bellwether_drift::parse_dependency(&format!("x={e}"))
                    .map_err(|err| UsageError(format!("--endpoint {e:?}: {err}")))?;
            }
            DriftRequest::Dependency {
                name: a.dependency.clone(),
                endpoint: a.endpoint.clone(),
            }
        }
        DriftKind::File => {
            bellwether_drift::watch::check_watch_path(&a.path)
                .map_err(|e| UsageError(format!("--path: {e}")))?;
            DriftRequest::File {
                path: a.path.clone(),
                content: a.content.clone(),
            }
        }
        DriftKind::Resolver => {
            for r in &a.resolvers {
                r.parse::<std::net::IpAddr>()
                    .map_err(|e| UsageError(format!("--resolver {r:?}: {e}")))?;
            }
            DriftRequest::Resolvers {
                resolvers: a.resolvers.clone(),
            }
        }
    })
}

/// A drift to inject, with the defaults not yet filled in (they depend on the host).
#[derive(Debug, Clone)]
pub enum DriftRequest {
    Package {
        name: Option<String>,
        level: ChangeLevel,
    },
    Load {
        load1: Option<f64>,
    },
    Dependency {
        name: Option<String>,
        endpoint: Option<String>,
    },
    Resolvers {
        resolvers: Vec<String>,
    },
    /// Rewrite a file of the root, such as the service configuration.
    File {
        path: String,
        content: Option<String>,
    },
}

/// What `sandbox drift --kind file` writes by default: the service configuration with no
/// workers, which every version but 1 fails on (see `sandbox service`).
pub const DRIFTED_CONFIG: &str = "workers = 0\nlisten = 127.0.0.1\n";

/// Rewrites one file of a host root, outside the generated spec: the agent sees it on its
/// next collection (a `file:PATH` finding when the file is watched), and a `restore_file`
/// puts the agent's snapshot back. Returns "etc/websvc.conf: 31 bytes, sha256 … → …".
fn drift_file(root: &Path, path: &str, content: Option<String>) -> anyhow::Result<String> {
    let target = root.join(path);
    let summary = |bytes: Option<&[u8]>| match bytes {
        Some(b) => format!(
            "{} bytes, sha256 {}…",
            b.len(),
            &bellwether_drift::root::sha256_hex(b)[..12]
        ),
        None => "absent".to_owned(),
    };
    let before = std::fs::read(&target).ok();
    let content = content.unwrap_or_else(|| DRIFTED_CONFIG.to_owned());
    state::write_atomic_in(&target, content.as_bytes())
        .with_context(|| format!("could not write {}", target.display()))?;
    Ok(format!(
        "{path}: {} → {}",
        summary(before.as_deref()),
        summary(Some(content.as_bytes()))
    ))
}

/// Injects drift into `host`'s root and records it in the state; returns what changed, as
/// "nginx 1.22.1-9 → 2.0.0-1 (major upgrade)".
pub fn inject(dir: &Path, host: &str, req: DriftRequest) -> anyhow::Result<String> {
    let dir = dir
        .canonicalize()
        .map_err(|e| UsageError(format!("--dir {}: {e}", dir.display())))?;
    let mut state =
        State::load(&dir)?.ok_or_else(|| UsageError(format!("no sandbox in {}", dir.display())))?;
    let listener = state.listener.addr.clone().unwrap_or_default();
    let entry = state.host(host)?.clone();
    if let DriftRequest::File { path, content } = req {
        // A file is not part of the generated spec, so it is written as it is and not
        // recorded for rebuilds: the file on disk is the record.
        return drift_file(&entry.root, &path, content);
    }
    let before = fleet::spec_of(&entry, &listener);
    let (change, what) = match req {
        DriftRequest::Package { name, level } => {
            let name = name.unwrap_or_else(|| fleet::role_package(&entry.role).0.to_owned());
            let Some(old) = before.packages.get(&name) else {
                return Err(
                    UsageError(format!("--package {name:?}: not installed on {host}")).into(),
                );
            };
            let change = Injected::Package {
                name: name.clone(),
                level,
            };
            let mut after = before.clone();
            after.apply(&change.to_synth());
            let what = format!("{name} {old} → {} ({level} upgrade)", after.packages[&name]);
            (change, what)
        }
        DriftRequest::Load { load1 } => {
            let l = load1.unwrap_or(f64::from(before.cpu_count) * 3.0);
            let l = (l * 100.0).round() / 100.0;
            let change = Injected::Load {
                load: [
                    l,
                    (l * 0.9 * 100.0).round() / 100.0,
                    (l * 0.8 * 100.0).round() / 100.0,
                ],
            };
            (change, format!("load1 {:.2} → {l:.2}", before.load[0]))
        }
        DriftRequest::Dependency { name, endpoint } => {
            let name = name.unwrap_or_else(|| fleet::role_dependency(&entry.role).to_owned());
            let Some((_, old)) = before.dependencies.iter().find(|(n, _)| *n == name) else {
                return Err(UsageError(format!(
                    "--dependency {name:?}: {host} declares no such dependency"
                ))
                .into());
            };
            let (endpoint, note) = match endpoint {
                Some(e) => (e, String::new()),
                None => (closed_port()?, " (nothing listens there)".to_owned()),
            };
            let what = format!("{name} {old} → {endpoint}{note}");
            (Injected::Dependency { name, endpoint }, what)
        }
        DriftRequest::Resolvers { resolvers } => {
            let resolvers = if resolvers.is_empty() {
                vec!["192.0.2.53".to_owned()]
            } else {
                resolvers
            };
            let what = format!(
                "{} → {}",
                before.dns_resolvers.join(", "),
                resolvers.join(", ")
            );
            (Injected::Resolvers { resolvers }, what)
        }
        DriftRequest::File { .. } => unreachable!("handled above"),
    };
    let mut after = before;
    after.apply(&change.to_synth());
    write_host_root(&entry.root, &after)
        .with_context(|| format!("could not rewrite {}", entry.root.display()))?;
    let e = state
        .hosts
        .iter_mut()
        .find(|h| h.name == host)
        .expect("found above");
    e.drifts.push(change);
    state.save()?;
    Ok(what)
}

/// Sends a scenario's generated history to the server (`POST /api/v1/history/import`), so
/// the failure model has outcomes to learn from before the first rollout.
fn import_history(
    server_url: &str,
    ca_file: Option<&Path>,
    operator_token: &str,
    csv: &Path,
) -> anyhow::Result<()> {
    let body = std::fs::read(csv).with_context(|| format!("could not read {}", csv.display()))?;
    let client = api::http_client(server_url, ca_file)?;
    let rt = runtime()?;
    rt.block_on(async {
        let resp = client
            .post(format!("{server_url}/api/v1/history/import"))
            .bearer_auth(operator_token)
            .header("content-type", "text/csv")
            .body(body)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .context("could not send the scenario history to the server")?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!("the server refused the scenario history ({status}): {text}");
        }
        tracing::info!(answer = %text, "Imported the scenario history.");
        // The server trains on an import of at least `retrain_after` rows, in the background;
        // a rollout started before that model exists would be refused. Wait for it, or train
        // now when the import was too small to start a training.
        let imported = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["imported"].as_u64())
            .unwrap_or(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let models: Vec<serde_json::Value> = client
                .get(format!("{server_url}/api/v1/models"))
                .bearer_auth(operator_token)
                .send()
                .await
                .context("could not ask the server for its models")?
                .json()
                .await
                .context("the server's model list is not JSON")?;
            if !models.is_empty() {
                return Ok(());
            }
            if imported < bellwether_server::model_api::DEFAULT_RETRAIN_AFTER {
                let resp = client
                    .post(format!("{server_url}/api/v1/model/train"))
                    .bearer_auth(operator_token)
                    .timeout(Duration::from_secs(120))
                    .send()
                    .await
                    .context("could not ask the server to train")?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    anyhow::bail!(
                        "the server could not train on the scenario history ({status}): {text}"
                    );
                }
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "the server did not train a model on the scenario history within 120 s"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// `sandbox listen`: accept and close connections forever, so the hosts' dependency probes
/// find something there. Stopped by SIGTERM from `sandbox down`.
fn listen(addr_file: &Path) -> anyhow::Result<ExitCode> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("could not bind a loopback port")?;
    let addr = l.local_addr()?.to_string();
    write_atomic(addr_file, addr.as_bytes())?;
    tracing::info!(addr = %addr, "Dependency listener ready.");
    for conn in l.incoming() {
        // A probe only needs the connect to succeed; close at once.
        drop(conn);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_a_sandbox_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
        let err = prepare_dir(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("is not empty and holds no sandbox"), "{err}");
        assert!(tmp.path().join("notes.txt").exists());
    }

    #[test]
    fn a_stopped_sandbox_is_cleared_for_a_new_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = prepare_dir(&tmp.path().join("sbx")).unwrap();
        assert!(dir.join("hosts").is_dir() && dir.join("logs").is_dir());
        std::fs::create_dir_all(dir.join("hosts/web-01")).unwrap();
        // A state whose processes are gone (PID 0 is never a live process of ours).
        let gone = Proc {
            pid: 0,
            addr: None,
            log: dir.join("logs/x.log"),
        };
        let state = State {
            dir: dir.clone(),
            seed: 1,
            created_at_ms: 0,
            server_url: "http://127.0.0.1:1".into(),
            ca_file: None,
            operator_token_file: dir.join("operator.token"),
            enrol_token_file: dir.join("enrol.token"),
            server: gone.clone(),
            listener: gone,
            hosts: vec![],
        };
        state.save().unwrap();
        let again = prepare_dir(&dir).unwrap();
        assert_eq!(again, dir);
        assert!(
            !dir.join("hosts/web-01").exists(),
            "old host roots are cleared"
        );
    }

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

    #[test]
    fn a_file_drift_rewrites_the_file_and_says_what_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let what = drift_file(tmp.path(), service::CONFIG_FILE, None).unwrap();
        assert!(
            what.starts_with("etc/websvc.conf: absent → 31 bytes, sha256 "),
            "{what}"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(service::CONFIG_FILE)).unwrap(),
            DRIFTED_CONFIG
        );
        let what = drift_file(
            tmp.path(),
            service::CONFIG_FILE,
            Some("workers = 1\n".into()),
        )
        .unwrap();
        assert!(
            what.contains("31 bytes") && what.contains("→ 12 bytes"),
            "{what}"
        );
    }
}
