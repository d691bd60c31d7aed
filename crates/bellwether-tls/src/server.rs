//! The server side: a rustls config from `--tls-cert` and `--tls-key`, and [`TlsIncoming`],
//! which accepts TCP connections and completes their handshakes concurrently.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::TlsError;

/// How long a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many handshakes may be in progress at once; the accept loop waits beyond that.
pub const MAX_HANDSHAKES: usize = 256;

/// Reads every certificate of a PEM file, in order (the server's first, then intermediates).
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(pem_reason(e)))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            kind: "CERTIFICATE",
        });
    }
    Ok(certs)
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        other => format!("not a valid PEM file: {other}"),
    }
}

/// The server's rustls config: the chain in `cert` (PEM, server certificate first), the
/// private key in `key` (PEM: PKCS#8, PKCS#1 or SEC1), TLS 1.2 and 1.3, HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_for(cert, key, ("--tls-cert", "--tls-key"))
}

/// [`server_config`] for files given under other flags (the proxy's `--admin-tls-cert` and
/// `--admin-tls-key`), which its errors name.
pub fn server_config_for(
    cert: &Path,
    key: &Path,
    (cert_flag, key_flag): (&'static str, &'static str),
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs(cert_flag, cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: key_flag,
            path: key.to_owned(),
            kind: "PRIVATE KEY",
        },
        other => TlsError::File {
            what: key_flag,
            path: key.to_owned(),
            reason: pem_reason(other),
        },
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            TlsError::Config(format!(
                "{cert_flag} {} with {key_flag} {}: {e} (is the key the certificate's?)",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS connections accepted on a TCP listener. Handshakes run in their own tasks, each
/// bounded by [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES`] at once; a failed handshake
/// is logged and dropped. Dropping this stops accepting.
pub struct TlsIncoming {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsIncoming {
    /// Starts accepting on `listener` (inside a tokio runtime).
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsIncoming { rx, local, task })
    }

    /// The next connection whose handshake completed; `None` once the accept loop is gone.
    pub async fn accept(&mut self) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
        self.rx.recv().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "Could not accept a connection; retrying in 1 s.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::info!(peer = %peer, error = %e, "TLS handshake failed.");
                }
                Err(_) => {
                    tracing::info!(peer = %peer, timeout_ms = HANDSHAKE_TIMEOUT.as_millis() as u64,
                        "TLS handshake timed out.");
                }
            }
        });
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
