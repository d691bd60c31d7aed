//! `bellwether proxy`: run the L4 traffic manager from a YAML file or from flags.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bellwether_proxy::config::{
    self, AdminState, CheckKind, HostPort, Protocol, RawBackend, RawConfig, RawListener,
};
use bellwether_proxy::ProxyHandle;

use super::UsageError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file (see docs/proxy.md): YAML, or TOML when its name ends in .toml
    /// (the same keys; packaging/etc/bellwether/proxy.toml). Flags given beside it add
    /// listeners and backends and override the admin address.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to accept clients on, as IP:PORT (port 0 picks a free one). Repeatable.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// How the flag listeners treat traffic: `tcp` copies bytes; `postgres` follows the
    /// protocol (transaction boundaries, query timing, re-homing).
    #[arg(long, value_enum, default_value = "tcp")]
    protocol: ProtocolArg,
    /// A backend as NAME=HOST:PORT, optionally followed by `,weight=N` (default 100),
    /// `,admin=ready|drain|maintenance`, `,password=P` (used when re-homing a session to it,
    /// and by the redis check's AUTH) and `,role=primary|replica`. Repeatable.
    #[arg(long, value_name = "NAME=HOST:PORT")]
    backend: Vec<String>,
    /// Address of the admin HTTP API (backends, connections, /metrics), as IP:PORT. Plain
    /// HTTP only on loopback, unless --insecure-admin; see also --admin-tls-cert.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    #[command(flatten)]
    admin_security: AdminArgs,
    /// Active health check for flag configurations: tcp, postgres or none.
    #[arg(long, value_enum)]
    health_check: Option<CheckArg>,
    /// Data-plane threads, each with its own event loop (default: one per core; see
    /// docs/proxy.md). Overrides `workers` in the file.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

/// How the admin API is protected (docs/proxy.md, "Securing the admin API").
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AdminArgs {
    /// The admin API's bearer token: read from FILE (mode 0600 or 0640), or generated into it
    /// (created with mode 0600) when FILE does not exist. Without it a token is generated into
    /// a private temporary file, named at start and removed at stop.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// PEM certificate chain: the admin API speaks HTTPS. Needs --admin-tls-key.
    #[arg(long, value_name = "FILE", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key of --admin-tls-cert.
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    /// A host name the admin API answers to besides IP addresses and `localhost` (the `Host`
    /// header is checked against DNS rebinding). Repeatable.
    #[arg(long, value_name = "NAME")]
    pub admin_allow_host: Vec<String>,
    /// Serve the admin API in plain HTTP on an address that is not loopback.
    #[arg(long)]
    pub insecure_admin: bool,
}

impl AdminArgs {
    /// Sets what was given on the configuration (flags override the file).
    pub fn apply(&self, raw: &mut RawConfig) {
        if let Some(f) = &self.admin_token_file {
            raw.admin_token_file = Some(f.clone());
        }
        if let (Some(c), Some(k)) = (&self.admin_tls_cert, &self.admin_tls_key) {
            raw.admin_tls_cert = Some(c.clone());
            raw.admin_tls_key = Some(k.clone());
        }
        raw.admin_allow_hosts
            .extend(self.admin_allow_host.iter().cloned());
        raw.insecure_admin |= self.insecure_admin;
    }

    /// The same flags as arguments, to pass them on to a child process.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut out: Vec<std::ffi::OsString> = Vec::new();
        for (flag, v) in [
            ("--admin-token-file", &self.admin_token_file),
            ("--admin-tls-cert", &self.admin_tls_cert),
            ("--admin-tls-key", &self.admin_tls_key),
        ] {
            if let Some(v) = v {
                out.push(flag.into());
                out.push(v.into());
            }
        }
        for h in &self.admin_allow_host {
            out.push("--admin-allow-host".into());
            out.push(h.into());
        }
        if self.insecure_admin {
            out.push("--insecure-admin".into());
        }
        out
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ProtocolArg {
    Tcp,
    Postgres,
    Redis,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CheckArg {
    Tcp,
    Postgres,
    Redis,
    None,
}

/// Parses `NAME=HOST:PORT[,weight=N][,admin=STATE][,password=P][,role=ROLE]`.
fn parse_backend(s: &str) -> Result<RawBackend, String> {
    let mut parts = s.split(',');
    let first = parts.next().unwrap_or_default();
    let (name, addr) = first
        .split_once('=')
        .ok_or_else(|| format!("--backend `{s}`: expected NAME=HOST:PORT"))?;
    let address = HostPort::parse(addr).map_err(|e| format!("--backend `{s}`: {e}"))?;
    let mut b = RawBackend {
        name: name.to_string(),
        address,
        weight: 100,
        admin: AdminState::Ready,
        password: None,
        role: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("weight", w)) => {
                b.weight = w
                    .parse()
                    .map_err(|_| format!("--backend `{s}`: bad weight `{w}`"))?
            }
            Some(("admin", a)) => {
                b.admin = a.parse().map_err(|e| format!("--backend `{s}`: {e}"))?
            }
            Some(("password", p)) => b.password = Some(p.to_string()),
            Some(("role", r)) => {
                b.role = Some(r.parse().map_err(|e| format!("--backend `{s}`: {e}"))?)
            }
            _ => {
                return Err(format!(
                    "--backend `{s}`: unknown option `{opt}` (weight=, admin=, password=, role=)"
                ))
            }
        }
    }
    Ok(b)
}

/// Builds the validated configuration from the file and flags.
pub fn build_config(args: &Args) -> anyhow::Result<config::ProxyConfig> {
    let mut raw = match &args.config {
        Some(path) => {
            let text = config::read_config_text(path).map_err(|e| UsageError(e.to_string()))?;
            if path.extension().is_some_and(|e| e == "toml") {
                parse_toml(&path.display().to_string(), &text)?
            } else {
                config::parse_raw(&path.display().to_string(), &text)
                    .map_err(|e| UsageError(e.to_string()))?
            }
        }
        None => RawConfig::new(Vec::new(), Vec::new()),
    };
    let protocol = match args.protocol {
        ProtocolArg::Tcp => Protocol::Tcp,
        ProtocolArg::Postgres => Protocol::Postgres,
        ProtocolArg::Redis => Protocol::Redis,
    };
    for l in &args.listen {
        raw.listeners.push(RawListener {
            address: l.clone(),
            protocol,
            mode: Default::default(),
        });
    }
    for b in &args.backend {
        raw.backends.push(parse_backend(b).map_err(UsageError)?);
    }
    if let Some(a) = &args.admin {
        raw.admin = Some(a.clone());
    }
    args.admin_security.apply(&mut raw);
    if let Some(w) = args.workers {
        raw.workers = Some(w);
    }
    if let Some(c) = args.health_check {
        raw.health.check = match c {
            CheckArg::Tcp => CheckKind::Tcp,
            CheckArg::Postgres => CheckKind::Postgres,
            CheckArg::Redis => CheckKind::Redis,
            CheckArg::None => CheckKind::None,
        };
    } else if args.config.is_none() && protocol == Protocol::Postgres {
        raw.health.check = CheckKind::Postgres;
    } else if args.config.is_none() && protocol == Protocol::Redis {
        raw.health.check = CheckKind::Redis;
    }
    let source = args
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "flags".into());
    raw.validate(&source)
        .map_err(|e| UsageError(e.to_string()).into())
}

/// The TOML form of the configuration file: the same keys as the YAML one. toml's error names
/// the line, the column and the key (an unknown key, a bad value).
fn parse_toml(source: &str, text: &str) -> Result<RawConfig, UsageError> {
    toml::from_str(text).map_err(|e| UsageError(format!("{source}: {}", e.to_string().trim_end())))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = build_config(&args)?;
    // Connections run on the proxy's own worker threads; this runtime only accepts, serves the
    // admin API and runs health checks.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let handle = ProxyHandle::start(config)
            .await
            .map_err(|e| UsageError(e.to_string()))?;
        // The start-up lines go to whoever started the proxy; a reader that has gone (a
        // closed pipe) must not stop a proxy that is serving, so write errors are ignored.
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for (l, a) in handle
            .shared()
            .config
            .listeners
            .iter()
            .zip(handle.listen_addrs())
        {
            let protocol = l.protocol.as_str();
            let _ = writeln!(out, "listening on {a} ({protocol})");
        }
        if let (Some(url), Some(token)) = (handle.admin_url(), handle.admin_token()) {
            let _ = writeln!(out, "admin api on {url}");
            let _ = writeln!(out, "admin token in {}", token.file().display());
        }
        let _ = writeln!(out, "{} worker threads", handle.shared().config.workers);
        let _ = out.flush();
        drop(out);
        wait_for_signal().await;
        tracing::info!(
            grace_seconds = handle.shared().config.shutdown_grace.as_secs_f64(),
            "Shutting down."
        );
        handle.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(argv: &[&str]) -> Args {
        use clap::Parser as _;
        Cli::parse_from(std::iter::once("proxy").chain(argv.iter().copied())).args
    }

    /// packaging/etc/bellwether/proxy.toml, through the parser `--config` uses; flags beside
    /// it win.
    #[test]
    fn the_example_toml_loads_and_flags_win() {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../packaging/etc/bellwether/proxy.toml"
        );
        let c = build_config(&args(&["--config", file])).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].protocol, Protocol::Postgres);
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.health.check, CheckKind::Postgres);
        assert_eq!(
            c.admin.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9901")
        );
        let c = build_config(&args(&[
            "--config",
            file,
            "--admin",
            "127.0.0.1:9999",
            "--workers",
            "3",
            "--health-check",
            "tcp",
        ]))
        .unwrap();
        assert_eq!(
            c.admin.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9999")
        );
        assert_eq!(c.workers, 3);
        assert_eq!(c.health.check, CheckKind::Tcp);
    }

    #[test]
    fn a_bad_toml_key_or_value_names_the_line() {
        let e = parse_toml("p.toml", "admin = \"127.0.0.1:1\"\nadmn = 1\n").unwrap_err();
        assert!(
            e.0.starts_with("p.toml: ") && e.0.contains("line 2") && e.0.contains("admn"),
            "{e}"
        );
        let e = parse_toml(
            "p.toml",
            "listeners = []\nbackends = []\n[health]\ninterval = \"soon\"\n",
        )
        .unwrap_err();
        assert!(e.0.contains("line 4") && e.0.contains("soon"), "{e}");
    }

    #[test]
    fn backend_flags() {
        let b = parse_backend("a=127.0.0.1:5432,weight=5,admin=drain").unwrap();
        assert_eq!(
            (b.name.as_str(), b.weight, b.admin),
            ("a", 5, AdminState::Drain)
        );
        assert!(parse_backend("a").unwrap_err().contains("NAME=HOST:PORT"));
        assert!(parse_backend("a=h:x").unwrap_err().contains("bad port"));
        assert!(parse_backend("a=h:1,color=red")
            .unwrap_err()
            .contains("unknown option"));
    }
}
