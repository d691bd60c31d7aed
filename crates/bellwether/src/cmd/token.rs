//! `bellwether token`: where the server's tokens are, a fresh one to give it, making, listing
//! and revoking tokens by role (admin), and the audit log. Also the flags every operator
//! command shares (`--server`, `--token`) and how they find a token.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bellwether_model::text::{escape, Escaped};
use bellwether_server::client::{Client, ClientError};

use super::{OutputFormat, Unreachable, UsageError};

/// The default directory of `bellwether server`, where it writes `operator.token`.
pub const DEFAULT_DATA_DIR: &str = "bellwether-data";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: TokenCmd,
}

/// The flags of the commands that call the server.
#[derive(Debug, clap::Args)]
struct Remote {
    #[command(flatten)]
    client: ClientArgs,
    /// `human` (a table) or `json` (the API's JSON).
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCmd {
    /// Print a token the server wrote to its data dir, for example
    /// `export BELLWETHER_TOKEN=$(bellwether token show)`.
    Show {
        /// Which token: `operator` (for the CLI), `admin` (to make and revoke tokens) or
        /// `enrol` (for agents).
        #[arg(long, default_value = "operator", value_parser = ["operator", "admin", "enrol"])]
        kind: String,
        /// The server's data directory.
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Print a fresh random token (32 random bytes in hex), to pass to
    /// `bellwether server --operator-token`, `--admin-token` or `--enrol-token`.
    New,
    /// Make a viewer, operator or admin token on the server (needs an admin token; by
    /// default ./bellwether-data/admin.token). Prints the token once, on stdout.
    Create {
        /// `viewer` (reads), `operator` (also starts and steers changes) or `admin` (also
        /// makes and revokes tokens).
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Who or what the token is for, such as `grafana` or `alice`.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the server's tokens: id, role, name, host (never the tokens). Needs an admin token.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a token by its id (see `bellwether token list`); it stops working at once.
    /// Needs an admin token. A revoked `<kind>.token` of the server is generated afresh at
    /// its next start.
    Revoke {
        /// The token's id.
        id: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// The audit log, newest first: who (token id and role) called which route, and the
    /// answer. Needs a viewer, operator or admin token.
    Audit {
        /// How many events.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        remote: Remote,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.cmd {
        TokenCmd::Show { kind, data_dir } => {
            let path = data_dir.join(format!("{kind}.token"));
            let token = read_token_file(&path)?.ok_or_else(|| {
                UsageError(format!(
                    "{} does not exist; start `bellwether server --data-dir {}` once to generate it",
                    path.display(),
                    data_dir.display()
                ))
            })?;
            println!("{token}");
        }
        TokenCmd::New => println!("{}", bellwether_server::generate_token()),
        TokenCmd::Create { role, name, remote } => {
            let client = remote.client.client_with_default("admin.token")?;
            let made = runtime()?
                .block_on(client.create_token(&role, &name))
                .map_err(client_error)?;
            if remote.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&made)?);
            } else {
                eprintln!(
                    "Made {} token {} ({}); it is shown only this once:",
                    made.info.kind,
                    made.info.id,
                    printable(&made.info.name)
                );
                println!("{}", made.token);
            }
        }
        TokenCmd::List { remote } => {
            let client = remote.client.client_with_default("admin.token")?;
            let tokens = runtime()?.block_on(client.tokens()).map_err(client_error)?;
            if remote.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        t.kind.to_string(),
                        if t.name.is_empty() {
                            "-".into()
                        } else {
                            printable(&t.name)
                        },
                        t.host
                            .as_ref()
                            .map(|h| printable(h.as_str()))
                            .unwrap_or_else(|| "-".into()),
                        age(Some(t.created_at_ms)),
                    ]
                })
                .collect();
            print_table(&["ID", "ROLE", "NAME", "HOST", "CREATED"], &rows);
        }
        TokenCmd::Revoke { id, remote } => {
            let client = remote.client.client_with_default("admin.token")?;
            let t = runtime()?
                .block_on(client.revoke_token(id))
                .map_err(client_error)?;
            if remote.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!(
                    "Revoked {} token {} ({}).",
                    t.kind,
                    t.id,
                    printable(&t.name)
                );
            }
        }
        TokenCmd::Audit { limit, remote } => {
            if !(1..=10_000).contains(&limit) {
                return Err(UsageError(format!("--limit {limit} is outside 1..=10000")).into());
            }
            let client = remote.client.client()?;
            let events = runtime()?
                .block_on(client.events(Some("audit"), limit))
                .map_err(client_error)?;
            if remote.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&events)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    let f = &e.figures;
                    let text = |v: &serde_json::Value| match v {
                        serde_json::Value::Null => "-".to_string(),
                        serde_json::Value::String(s) => printable(s),
                        other => printable(&other.to_string()),
                    };
                    let request = match f.get("suppressed") {
                        Some(n) => format!("({} refusals not logged one by one)", text(n)),
                        None => format!("{} {}", text(&f["method"]), text(&f["path"])),
                    };
                    vec![
                        age(Some(e.ts_ms)),
                        text(&f["token_id"]),
                        text(&f["role"]),
                        request,
                        text(&f["status"]),
                    ]
                })
                .collect();
            print_table(&["WHEN", "TOKEN", "ROLE", "REQUEST", "STATUS"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `s` with control characters escaped, for a terminal (the one rule of every human output).
fn printable(s: &str) -> String {
    bellwether_model::text::escape(s).into_owned()
}

/// Reads a token file: `None` when it does not exist, an error naming it when unreadable or
/// empty.
pub fn read_token_file(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().is_empty() => {
            Err(UsageError(format!("{} is empty", path.display())).into())
        }
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// How an operator command reaches the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's URL. Several servers (replicas on one PostgreSQL store): repeat the flag
    /// or give a comma-separated list; a call tries the one that last answered first and fails
    /// over to the others when one is down or not the leader (503).
    #[arg(
        long,
        env = "BELLWETHER_SERVER",
        default_value = "http://127.0.0.1:7878",
        global = true,
        action = clap::ArgAction::Append,
        value_name = "URL[,URL...]"
    )]
    pub server: Vec<String>,
    /// The operator token. When absent, it is read from ./bellwether-data/operator.token
    /// (the file `bellwether server` writes on first start in the current directory).
    #[arg(long, env = "BELLWETHER_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: super::tls::ClientTlsArgs,
}

impl ClientArgs {
    /// The client, with the token from the flag, the environment or the default data dir.
    pub fn client(&self) -> anyhow::Result<Client> {
        self.client_with_default("operator.token")
    }

    /// The client, with the token from the flag, the environment or `file` (such as
    /// `admin.token`) in the default data dir.
    pub fn client_with_default(&self, file: &str) -> anyhow::Result<Client> {
        let token = match &self.token {
            Some(t) => t.clone(),
            None => {
                let path = Path::new(DEFAULT_DATA_DIR).join(file);
                let kind = file.trim_end_matches(".token");
                read_token_file(&path)?.ok_or_else(|| {
                    UsageError(format!(
                        "no {kind} token: pass --token, set BELLWETHER_TOKEN, or run where {} exists \
                         (`bellwether token show --kind {kind} --data-dir DIR` prints it)",
                        path.display()
                    ))
                })?
            }
        };
        let tls = self.tls.tls()?;
        let servers = bellwether_model::wire::servers::ServerList::parse(&self.server)
            .map_err(|e| UsageError(format!("--server: {e}")))?;
        Ok(Client::with_servers(&servers, &token, &tls).map_err(|e| UsageError(e.to_string()))?)
    }
}

/// Turns a client error into the CLI's error kinds: unreachable (exit 3), a refused token with
/// the hint which token to use, or the API's own message.
pub fn client_error(err: ClientError) -> anyhow::Error {
    match err {
        ClientError::Unreachable { .. } => Unreachable(format!(
            "{err}; is `bellwether server` running there? (--server or BELLWETHER_SERVER)"
        ))
        .into(),
        ClientError::Unauthorized { url, message } => anyhow::anyhow!(
            "the server at {url} refused the token ({message}); use the operator token: --token, \
             BELLWETHER_TOKEN, or ./bellwether-data/operator.token"
        ),
        ClientError::Untrusted { .. } => Unreachable(err.to_string()).into(),
        ClientError::NoServer { .. } => Unreachable(format!(
            "{err}; is a `bellwether server` running at one of them? (--server or BELLWETHER_SERVER)"
        ))
        .into(),
        ClientError::Api {
            status: 403,
            message,
            ..
        } => anyhow::anyhow!(
            "the server refused: {message}; ask an admin for a token of that role \
             (`bellwether token create --role ROLE --name NAME`)"
        ),
        ClientError::BadUrl { .. } | ClientError::Tls(_) => UsageError(err.to_string()).into(),
        other => other.into(),
    }
}

/// A small runtime for one operator command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`, or `never`.
pub fn age(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "never".into() };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let s = ((now - ms).max(0)) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// `k=v,k=v`, or `-` when empty. Labels are the agents' to choose: control characters in
/// them are shown escaped.
pub fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        "-".into()
    } else {
        labels
            .iter()
            .map(|(k, v)| format!("{}={}", Escaped(k), Escaped(v)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Rows as left-aligned columns under a header, one line each. Cells often hold what a server
/// or an agent chose, so their control characters are shown escaped: a label holding an
/// escape sequence or a newline cannot rewrite the terminal or fake a row.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape(c).into_owned()).collect())
        .collect();
    let rows = &rows[..];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for row in rows {
        line(row);
    }
    out
}

/// Prints [`table`].
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", table(header, rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_by_characters() {
        let t = table(
            &["HOST", "DRIFT"],
            &[
                vec!["web-01".into(), "0.500".into()],
                vec!["é".into(), "-".into()],
            ],
        );
        assert_eq!(t, "HOST    DRIFT\nweb-01  0.500\né       -\n");
        let t = table(
            &["HOST", "LABELS"],
            &[vec!["a".into(), "x\x1b[2J\ny".into()]],
        );
        assert_eq!(t, "HOST  LABELS\na     x\\u{1b}[2J\\ny\n");
        let labels = std::collections::BTreeMap::from([("k\n".to_string(), "v\r".to_string())]);
        assert_eq!(labels_text(&labels), "k\\n=v\\r");
    }

    #[test]
    fn unreachable_servers_map_to_exit_3_and_refused_tokens_name_the_operator_token() {
        let rt = runtime().unwrap();
        let client = Client::new("http://127.0.0.1:1", "some-token").unwrap();
        let err = client_error(rt.block_on(client.hosts()).unwrap_err());
        assert_eq!(crate::cmd::exit_code_for(&err), 3);
        assert!(err.to_string().contains("http://127.0.0.1:1"), "{err}");
        let err = client_error(ClientError::Unauthorized {
            url: "http://x".into(),
            message: "unknown or revoked token".into(),
        });
        assert_eq!(crate::cmd::exit_code_for(&err), 1);
        assert!(err.to_string().contains("operator token"), "{err}");
        let err = ClientArgs {
            server: vec!["127.0.0.1:7878".into()],
            token: Some("t".into()),
            tls: Default::default(),
        }
        .client()
        .unwrap_err();
        assert_eq!(crate::cmd::exit_code_for(&err), 2);
        assert!(err.to_string().contains("http://"), "{err}");
        // Several addresses: repeated and comma-separated; a stray comma is named.
        let args = |server: Vec<&str>| ClientArgs {
            server: server.into_iter().map(str::to_owned).collect(),
            token: Some("t".into()),
            tls: Default::default(),
        };
        let c = args(vec!["http://a:1,http://b:2", "http://c:3"])
            .client()
            .unwrap();
        assert_eq!(
            c.servers().urls(),
            ["http://a:1", "http://b:2", "http://c:3"]
        );
        let err = args(vec!["http://a:1,"]).client().unwrap_err();
        assert_eq!(crate::cmd::exit_code_for(&err), 2);
        assert!(
            err.to_string()
                .starts_with("--server: server address 2 in \"http://a:1,\" is empty"),
            "{err}"
        );
        // Every address down: exit 3, naming them.
        let err = client_error(
            rt.block_on(
                args(vec!["http://127.0.0.1:1,http://127.0.0.1:2"])
                    .client()
                    .unwrap()
                    .with_failover_budget(std::time::Duration::from_millis(300))
                    .hosts(),
            )
            .unwrap_err(),
        );
        assert_eq!(crate::cmd::exit_code_for(&err), 3);
        assert!(
            err.to_string().contains("http://127.0.0.1:1")
                && err.to_string().contains("http://127.0.0.1:2"),
            "{err}"
        );
    }

    #[test]
    fn token_files_are_read_trimmed_and_empty_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("operator.token");
        assert_eq!(read_token_file(&p).unwrap(), None);
        std::fs::write(&p, "abc123\n").unwrap();
        assert_eq!(read_token_file(&p).unwrap().as_deref(), Some("abc123"));
        std::fs::write(&p, "\n").unwrap();
        let err = read_token_file(&p).unwrap_err();
        assert!(err.to_string().contains("operator.token is empty"), "{err}");
    }
}
