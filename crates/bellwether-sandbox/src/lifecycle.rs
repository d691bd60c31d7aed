//! Bringing a sandbox up, showing it and taking it down: the directory, the child processes
//! (dependency listener, server, one web service and one agent per host), the scenario's
//! history import, and the wait for every agent's first profile.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use bellwether_drift::synth::write_host_root;
use bellwether_model::HostName;
use bellwether_server::client::Client;
use bellwether_server::types::HostSummary;

use crate::drift::describe_kind;
use crate::state::{self, write_atomic, write_secret, HostEntry, Proc, State};
use crate::{fleet, procs, scenario, service, Output, Result, SandboxError};

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

/// 32 random bytes as 64 hex characters: a token for the sandbox's server.
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
fn prepare_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| SandboxError::io("create", dir, e))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| SandboxError::io("resolve", dir, e))?;
    match State::load(&dir)? {
        Some(old) => {
            let live = live_pids(&old);
            if !live.is_empty() {
                return Err(SandboxError::Usage(format!(
                    "a sandbox is already running in {} (server {} at {}, {} live processes); stop it with `bellwether sandbox down --dir {}`",
                    dir.display(),
                    old.server.pid,
                    old.server_url,
                    live.len(),
                    dir.display()
                )));
            }
            for sub in ["hosts", "server", "logs", TLS_DIR] {
                let p = dir.join(sub);
                if p.exists() {
                    std::fs::remove_dir_all(&p).map_err(|e| SandboxError::io("clear", &p, e))?;
                }
            }
        }
        None => {
            let mut entries =
                std::fs::read_dir(&dir).map_err(|e| SandboxError::io("read", &dir, e))?;
            if entries.next().is_some() {
                return Err(SandboxError::Usage(format!(
                    "{} is not empty and holds no sandbox (no {}); choose another --dir",
                    dir.display(),
                    state::STATE_FILE
                )));
            }
        }
    }
    for sub in ["hosts", "logs"] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).map_err(|e| SandboxError::io("create", &p, e))?;
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
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            let addr = text.trim();
            if !addr.is_empty() {
                return Ok(addr.to_owned());
            }
        }
        if let Some(status) = exited(child, what)? {
            return Err(SandboxError::Process(format!(
                "the {what} exited ({status}) before it listened; {} ends:\n{}",
                log.display(),
                procs::log_tail(log, 15)
            )));
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::Process(format!(
                "the {what} did not write {} within {}; {} ends:\n{}",
                file.display(),
                bellwether_model::duration::Dur(timeout),
                log.display(),
                procs::log_tail(log, 15)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The child's exit status, once it has exited.
fn exited(child: &mut Child, what: &str) -> Result<Option<std::process::ExitStatus>> {
    child
        .try_wait()
        .map_err(|e| SandboxError::Process(format!("could not wait for the {what}: {e}")))
}

/// Where `up --tls` writes the CA and the server's certificate and key.
pub const TLS_DIR: &str = "tls";

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// Brings up a sandbox and returns its state once every agent has reported its profile. On
/// failure it stops whatever it started, so nothing is left running.
pub fn up(opts: &UpOptions) -> Result<State> {
    if opts.hosts == 0 || opts.hosts > 500 {
        return Err(SandboxError::Usage(format!(
            "--hosts {}: choose 1 to 500",
            opts.hosts
        )));
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

fn up_in(dir: &Path, opts: &UpOptions, started: &mut Vec<u32>) -> Result<State> {
    let exe = std::env::current_exe().map_err(|e| {
        SandboxError::Process(format!("could not find the bellwether executable: {e}"))
    })?;
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
        write_host_root(&root, &spec).map_err(|e| {
            SandboxError::Process(format!(
                "could not write the root of {} under {}: {e}",
                p.name,
                root.display()
            ))
        })?;
        let mut labels = BTreeMap::new();
        if let (Some(sc), Some(sh)) = (&opts.scenario, scenario_hosts.get(&p.name)) {
            let faults = sc.faults_for(sh, &spec.packages);
            let path = root.join(service::FAULTS_FILE);
            let json = serde_json::to_vec(&faults).map_err(|source| SandboxError::BadFile {
                path: path.clone(),
                what: "serialisable",
                source,
            })?;
            state::write_atomic_in(&path, &json)?;
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
            built: p.drifts.len(),
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
        let set = bellwether_tls::generate::ca_and_server("bellwether sandbox CA", &names)?;
        Some(set.write_to(&dir.join(TLS_DIR))?)
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
    let interval = bellwether_model::duration::Dur(opts.interval).to_string();
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
    let client = client(&server_url, &operator_token, ca_file.as_deref())?;
    let rt = runtime()?;
    rt.block_on(wait_profiles(
        &client,
        &state,
        &mut agents,
        wait,
        opts.progress,
    ))?;
    Ok(state)
}

/// The current-thread runtime the sandbox's blocking functions run their calls on.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SandboxError::Process(format!("could not start the async runtime: {e}")))
}

/// The server's client for the sandbox's server: its operator token, and its CA for a
/// sandbox over TLS.
pub(crate) fn client(server_url: &str, token: &str, ca_file: Option<&Path>) -> Result<Client> {
    let tls = bellwether_tls::ClientTls {
        ca_file: ca_file.map(Path::to_owned),
        pins: vec![],
    };
    Client::with_tls(server_url, token, &tls).map_err(|e| SandboxError::Usage(e.to_string()))
}

pub(crate) fn host_name(name: &str) -> Result<HostName> {
    HostName::new(name.to_string()).map_err(|e| SandboxError::Usage(format!("host {name:?}: {e}")))
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
    client: &Client,
    state: &State,
    agents: &mut BTreeMap<String, Child>,
    timeout: Duration,
    progress: bool,
) -> Result<()> {
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
            let got =
                client
                    .host_profile(&host_name(&h.name)?)
                    .await
                    .map_err(SandboxError::server(format!(
                        "could not ask the server for the profile of {}",
                        h.name
                    )))?;
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
                if let Some(status) = exited(child, "agent")? {
                    pb.abandon();
                    return Err(SandboxError::Process(format!(
                        "the agent of {} exited ({status}) before it reported; {} ends:\n{}",
                        h.name,
                        h.agent.log.display(),
                        procs::log_tail(&h.agent.log, 15)
                    )));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            pb.abandon();
            let names: Vec<&str> = pending.iter().map(|h| h.name.as_str()).collect();
            return Err(SandboxError::Process(format!(
                "{} of {} hosts did not report a profile within {}: {}; see their logs in {}",
                names.len(),
                state.hosts.len(),
                bellwether_model::duration::Dur(timeout),
                names.join(", "),
                state.dir.join("logs").display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `sandbox up` prints once the fleet is up: where things are and what to try.
pub fn print_up(state: &State) {
    let bw = command_name();
    println!(
        "sandbox up in {}: {} reporting",
        state.dir.display(),
        bellwether_model::text::count(state.hosts.len(), "host")
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
        "  BELLWETHER_SERVER={}{} BELLWETHER_TOKEN=$(cat {}) {bw} hosts",
        state.server_url,
        ca_env(state),
        state.operator_token_file.display()
    );
    println!(
        "  {bw} sandbox drift --dir {} --host {} --kind package",
        state.dir.display(),
        state.hosts.first().map_or("HOST", |h| h.name.as_str())
    );
    println!("  {bw} sandbox down --dir {}", state.dir.display());
}

/// How to run this executable again from a shell, for the commands printed as hints:
/// `bellwether` when that name on `PATH` is this executable, else its absolute path (a fresh
/// clone run with `cargo run` has no `bellwether` on `PATH`; the README gives `cargo install
/// --path crates/bellwether`), quoted for the shell when it needs to be.
pub fn command_name() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "bellwether".into();
    };
    let same = |p: &Path| {
        let a = p.canonicalize().ok();
        a.is_some() && a == exe.canonicalize().ok()
    };
    // The shell runs the first `bellwether` on PATH; only that one counts.
    let first_on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .filter(|d| d.is_absolute())
            .map(|d| d.join("bellwether"))
            .find(|p| p.is_file())
    });
    if first_on_path.is_some_and(|p| same(&p)) {
        return "bellwether".into();
    }
    shell_word(&exe.display().to_string())
}

/// `s` as one shell word: as it is when it holds only characters no shell treats specially,
/// else in single quotes.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@,%=".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// ` BELLWETHER_CA_FILE=…` for a sandbox over TLS, else nothing.
pub fn ca_env(state: &State) -> String {
    match &state.ca_file {
        Some(ca) => format!(" BELLWETHER_CA_FILE={}", ca.display()),
        None => String::new(),
    }
}

/// What `down` did.
pub struct DownReport {
    /// Processes of the sandbox that were running.
    pub stopped: usize,
    /// Those that needed SIGKILL.
    pub killed: usize,
}

/// Stops the sandbox in `dir`: agents first, then the server and the listener; SIGTERM, then
/// SIGKILL after `grace`. `Ok(None)` when there is no sandbox there. With `purge`, removes the
/// directory too.
pub fn down(dir: &Path, grace: Duration, purge: bool) -> Result<Option<DownReport>> {
    if !dir.exists() {
        return Ok(None);
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| SandboxError::io("resolve", dir, e))?;
    let Some(state) = State::load(&dir)? else {
        if purge {
            return Err(SandboxError::Usage(format!(
                "{} holds no sandbox; not removing it",
                dir.display()
            )));
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
            .map_err(|e| SandboxError::io("remove", &state.dir, e))?;
    }
    Ok(Some(DownReport {
        stopped: live,
        killed,
    }))
}

/// `sandbox status`: prints the sandbox's processes and hosts, with what the server says of
/// each host while it runs.
pub fn status(dir: &Path, output: Output) -> Result<()> {
    let dir = dir
        .canonicalize()
        .map_err(|e| SandboxError::Usage(format!("--dir {}: {e}", dir.display())))?;
    let state = State::load(&dir)?
        .ok_or_else(|| SandboxError::Usage(format!("no sandbox in {}", dir.display())))?;
    let m = marker(&state.dir);
    let token = std::fs::read_to_string(&state.operator_token_file).unwrap_or_default();
    let summaries: Option<Vec<HostSummary>> = if procs::is_ours(state.server.pid, &m) {
        let client = client(&state.server_url, token.trim(), state.ca_file.as_deref())?;
        runtime()?.block_on(client.hosts()).ok()
    } else {
        None
    };
    let by_name: BTreeMap<&str, &HostSummary> = summaries
        .iter()
        .flatten()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let now = now_ms();
    if output == Output::Json {
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
                    "root": h.root, "drifts": h.drifts, "injected": h.injected(),
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
        println!("{v:#}");
        return Ok(());
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
    let w = state
        .hosts
        .iter()
        .map(|h| h.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(10);
    println!(
        "{:<w$} {:<6} {:>7} {:<8} {:>10} {:>8}  DRIFT INJECTED",
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
        // Only what was injected after `up`: the scenario's own packages are the host as
        // built, part of its baseline, not drift.
        let injected: Vec<String> = h.injected().iter().map(describe_kind).collect();
        println!(
            "{:<w$} {:<6} {:>7} {:<8} {:>10} {:>8}  {}",
            h.name,
            h.role,
            h.agent.pid,
            up(h.agent.pid),
            seen,
            drift,
            injected.join("; ")
        );
    }
    Ok(())
}

/// Sends a scenario's generated history to the server (`POST /api/v1/history/import`), so
/// the failure model has outcomes to learn from before the first rollout.
fn import_history(
    server_url: &str,
    ca_file: Option<&Path>,
    operator_token: &str,
    csv: &Path,
) -> Result<()> {
    let body = std::fs::read(csv).map_err(|e| SandboxError::io("read", csv, e))?;
    let client = client(server_url, operator_token, ca_file)?;
    let rt = runtime()?;
    rt.block_on(async {
        let answer = client
            .import_history(body, None)
            .await
            .map_err(SandboxError::server(
                "the server refused the scenario history",
            ))?;
        tracing::info!(
            imported = answer.imported,
            failures = answer.failures,
            "Imported the scenario history."
        );
        // The server trains on an import of at least `retrain_after` rows, in the background;
        // a rollout started before that model exists would be refused. Wait for it, or train
        // now when the import was too small to start a training.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let models = client.models().await.map_err(SandboxError::server(
                "could not ask the server for its models",
            ))?;
            if !models.is_empty() {
                return Ok(());
            }
            if answer.imported < bellwether_server::model_api::DEFAULT_RETRAIN_AFTER {
                client.train_model().await.map_err(SandboxError::server(
                    "the server could not train on the scenario history",
                ))?;
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SandboxError::Process(
                    "the server did not train a model on the scenario history within 120 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// `sandbox listen`: accept and close connections forever, so the hosts' dependency probes
/// find something there. Stopped by SIGTERM from `sandbox down`.
pub fn listen(addr_file: &Path) -> Result<()> {
    let bind = |e| SandboxError::Process(format!("could not bind a loopback port: {e}"));
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(bind)?;
    let addr = l.local_addr().map_err(bind)?.to_string();
    write_atomic(addr_file, addr.as_bytes())?;
    tracing::info!(addr = %addr, "Dependency listener ready.");
    for conn in l.incoming() {
        // A probe only needs the connect to succeed; close at once.
        drop(conn);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_a_command_the_shell_can_run() {
        assert_eq!(
            shell_word("/usr/local/bin/bellwether"),
            "/usr/local/bin/bellwether"
        );
        assert_eq!(shell_word("/home/a b/bellwether"), "'/home/a b/bellwether'");
        assert_eq!(shell_word("/x/it's/bw"), "'/x/it'\\''s/bw'");
        // A test binary is not `bellwether` on PATH: its absolute path is printed.
        let name = command_name();
        assert!(name.starts_with('/') || name.starts_with("'/"), "{name}");
    }

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
}
