//! `bellwether proxy` as a real process, and a server that may drive it (the tests whose
//! tasks switch a proxy's routing: mirrors, PostgreSQL shadows).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Backend, Server};

/// `bellwether proxy` with the admin API (token file named `edge` to the server); killed on drop.
pub struct Proxy {
    child: Child,
    pub listen: String,
    pub admin: String,
    pub token_file: String,
}

impl Proxy {
    /// A `redis` or `postgres` (or `tcp`) listener in front of `backends`, each
    /// `NAME=HOST:PORT[,role=primary|replica]` as `--backend` takes it.
    pub fn start(protocol: &str, backends: &[&str]) -> Proxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bellwether"))
            .args(["proxy", "--listen", "127.0.0.1:0", "--protocol", protocol])
            .args(["--admin", "127.0.0.1:0", "--health-check", "none"])
            .args(backends.iter().flat_map(|b| ["--backend", b]))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bellwether proxy starts");
        let mut out = BufReader::new(child.stdout.take().expect("its stdout"));
        let mut line = String::new();
        let mut next = |prefix: &str| {
            line.clear();
            out.read_line(&mut line).expect("a line from the proxy");
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{prefix:?} expected, the proxy said {line:?}"))
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        };
        let listen = next("listening on ");
        let admin = next("admin api on ");
        let token_file = next("admin token in ");
        // The proxy keeps logging to stdout: drain it so it never blocks.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        Proxy {
            child,
            listen,
            admin,
            token_file,
        }
    }

    pub fn backends(&self) -> serde_json::Value {
        let token = std::fs::read_to_string(&self.token_file).expect("the admin token");
        let host = self.admin.trim_start_matches("http://");
        let mut s = TcpStream::connect(host).expect("the admin API");
        write!(
            s,
            "GET /backends HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        )
        .expect("a request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("a reply");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("GET /backends: {e}: {text}"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server (SQLite store) that knows the proxy's admin token file as `edge`; its tokens are
/// `operator-token-TAG` and `enrol-token-TAG`.
pub fn start_server_with_proxy(dir: &Path, proxy_token_file: &str, tag: &str) -> Server {
    let token_file = format!("edge={proxy_token_file}");
    Server::start_with(
        dir,
        &Backend::Sqlite,
        "127.0.0.1:0",
        &format!("operator-token-{tag}"),
        &format!("enrol-token-{tag}"),
        &["--proxy-token-file", &token_file],
    )
}

/// One statement on a fresh connection to `addr` (`HOST:PORT`, user `postgres`, trust);
/// the first column of each row, which must be text.
pub async fn pg(addr: &str, sql: &str) -> Result<Vec<String>, String> {
    let url = format!("postgres://postgres@{addr}/postgres?connect_timeout=5");
    let inst = bellwether_pg::connect(&url)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let rows = tokio::time::timeout(Duration::from_secs(20), inst.client.query(sql, &[]))
        .await
        .map_err(|_| format!("{addr}: {sql}: no answer in 20 s"))?
        .map_err(|e| format!("{addr}: {sql}: {e:?}"))?;
    rows.iter()
        .map(|r| {
            r.try_get::<usize, String>(0)
                .map_err(|e| format!("{addr}: {sql}: {e}"))
        })
        .collect()
}
