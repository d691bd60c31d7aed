//! `bellwether proxy`: run the L4 traffic manager from a YAML file or from flags.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bellwether_proxy::config::{self, AdminState, CheckKind, HostPort, Protocol, RawBackend, RawConfig, RawListener};
use bellwether_proxy::ProxyHandle;

use super::UsageError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A YAML configuration file (see docs/proxy.md). Flags given beside it add listeners and
    /// backends and override the admin address.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to accept clients on, as IP:PORT (port 0 picks a free one). Repeatable.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// How the flag listeners treat traffic: `tcp` copies bytes; `postgres` follows the
    /// protocol (transaction boundaries, query timing, re-homing).
    #[arg(long, value_enum, default_value = "tcp")]
    protocol: ProtocolArg,
    /// A backend as NAME=HOST:PORT, optionally followed by `,weight=N` and `,admin=drain`.
    /// Repeatable.
    #[arg(long, value_name = "NAME=HOST:PORT")]
    backend: Vec<String>,
    /// Address of the admin HTTP API (backends, connections, /metrics), as IP:PORT.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// Active health check for flag configurations: tcp, postgres or none.
    #[arg(long, value_enum)]
    health_check: Option<CheckArg>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ProtocolArg {
    Tcp,
    Postgres,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CheckArg {
    Tcp,
    Postgres,
    None,
}

/// Parses `NAME=HOST:PORT[,weight=N][,admin=STATE][,password=P]`.
fn parse_backend(s: &str) -> Result<RawBackend, String> {
    let mut parts = s.split(',');
    let first = parts.next().unwrap_or_default();
    let (name, addr) = first.split_once('=').ok_or_else(|| format!("--backend `{s}`: expected NAME=HOST:PORT"))?;
    let address = HostPort::parse(addr).map_err(|e| format!("--backend `{s}`: {e}"))?;
    let mut b = RawBackend { name: name.to_string(), address, weight: 100, admin: AdminState::Ready, password: None };
    for opt in parts {
        match opt.split_once('=') {
            Some(("weight", w)) => b.weight = w.parse().map_err(|_| format!("--backend `{s}`: bad weight `{w}`"))?,
            Some(("admin", a)) => b.admin = a.parse().map_err(|e| format!("--backend `{s}`: {e}"))?,
            Some(("password", p)) => b.password = Some(p.to_string()),
            _ => return Err(format!("--backend `{s}`: unknown option `{opt}` (weight=, admin=, password=)")),
        }
    }
    Ok(b)
}

/// Builds the validated configuration from the file and flags.
pub fn build_config(args: &Args) -> anyhow::Result<config::ProxyConfig> {
    let mut raw = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            config::parse_raw(&path.display().to_string(), &text).map_err(|e| UsageError(e.to_string()))?
        }
        None => RawConfig::new(Vec::new(), Vec::new()),
    };
    let protocol = match args.protocol {
        ProtocolArg::Tcp => Protocol::Tcp,
        ProtocolArg::Postgres => Protocol::Postgres,
    };
    for l in &args.listen {
        raw.listeners.push(RawListener { address: l.clone(), protocol });
    }
    for b in &args.backend {
        raw.backends.push(parse_backend(b).map_err(UsageError)?);
    }
    if let Some(a) = &args.admin {
        raw.admin = Some(a.clone());
    }
    if let Some(c) = args.health_check {
        raw.health.check = match c {
            CheckArg::Tcp => CheckKind::Tcp,
            CheckArg::Postgres => CheckKind::Postgres,
            CheckArg::None => CheckKind::None,
        };
    } else if args.config.is_none() && protocol == Protocol::Postgres {
        raw.health.check = CheckKind::Postgres;
    }
    let source = args.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "flags".into());
    raw.validate(&source).map_err(|e| UsageError(e.to_string()).into())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = build_config(&args)?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let handle = ProxyHandle::start(config).await.map_err(|e| UsageError(e.to_string()))?;
        for (l, a) in handle.shared().config.listeners.iter().zip(handle.listen_addrs()) {
            println!("listening on {a} ({})", match l.protocol { Protocol::Tcp => "tcp", Protocol::Postgres => "postgres" });
        }
        if let Some(a) = handle.admin_addr() {
            println!("admin api on http://{a}");
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        wait_for_signal().await;
        tracing::info!(grace_seconds = handle.shared().config.shutdown_grace.as_secs_f64(), "Shutting down.");
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

    #[test]
    fn backend_flags() {
        let b = parse_backend("a=127.0.0.1:5432,weight=5,admin=drain").unwrap();
        assert_eq!((b.name.as_str(), b.weight, b.admin), ("a", 5, AdminState::Drain));
        assert!(parse_backend("a").unwrap_err().contains("NAME=HOST:PORT"));
        assert!(parse_backend("a=h:x").unwrap_err().contains("bad port"));
        assert!(parse_backend("a=h:1,color=red").unwrap_err().contains("unknown option"));
    }
}
